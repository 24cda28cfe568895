//! `covf analyze co`: per run, the epoch its robust accuracy collapses (catastrophic overfitting), the
//! epoch its own perturbation deteriorates (the strength gap jumps, or transfer strength falls back to
//! the random-noise level), and whether the two coincide — the paper's question, answered for the user's runs.
//!
//! Deterioration is a *change*, never a level (criteria all configurable):
//! - CO at the first epoch whose test PGD accuracy (the run's per-epoch metric) is at least `drop` below
//!   the previous epoch's;
//! - a gap jump at the first epoch whose gap rose by at least `gap_jump` nats and to at least `gap_ratio`
//!   times the previous gap, after an earlier epoch with a gap of at most `gap_low` (a generator weak
//!   from the start has no jump to make);
//! - transfer back at the random level at the first epoch within `random_margin` of (or above) the
//!   reference's accuracy under random signs, after an earlier epoch at least `strong_margin` below it.
//!   A generator never that far below random gets its own verdict ("never stronger than random noise").
//!
//! Transfer strength here is always the method's *own* generator (`generator = own` rows), as the table
//! says in its `transfer_generator` column: deterioration is a property of the perturbation the method
//! trains on. The deterioration epoch is the first epoch showing either sign.
//!
//! Where a run has an in-training monitor the verdict is also given in steps: the CO step and each
//! signal's change step come from the monitor's detectors (`monitor::detect`), the deterioration step is
//! the first firing of the gap or transfer detector, and `co-signals` lists every signal's lead or lag.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::gap;
use super::registry::{opt, value, Analysis, Flag, Flags, Job, Outcome};
use super::tidy;
use super::transfer::Source;
use crate::error::{CovfError, Result};
use crate::monitor::detect::{changes, Changes};
use crate::run::checkpoint::RunDir;
use crate::run::metrics::{col_f64, col_str, col_u64, read_monitor, read_parquet};

/// The table of each signal's change step per run (runs with a monitor).
pub const CO_SIGNALS: &str = "co-signals";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoCriteria {
    /// Fall of test PGD accuracy (fraction) from one epoch to the next that counts as CO.
    pub drop: f64,
    /// Rise of the gap (nats) from one epoch to the next that counts as a jump...
    pub gap_jump: f64,
    /// ...when the gap also becomes at least this multiple of the previous one...
    pub gap_ratio: f64,
    /// ...and some earlier epoch had a gap of at most this (nats).
    pub gap_low: f64,
    /// Transferred accuracy within this much of the random baseline counts as noise-level...
    pub random_margin: f64,
    /// ...after an earlier epoch at least this much below it (clearly stronger than noise).
    pub strong_margin: f64,
}

const GAP_REF: Flag = Flag {
    name: "gap-ref",
    help: "Stronger attack of the gap",
    value: Some("pgdN"),
    default: "pgd10",
};
const DROP: Flag = Flag {
    name: "drop",
    help: "A fall of test PGD accuracy by at least this fraction from one epoch to the next is CO",
    value: Some("F"),
    default: "0.2",
};
const GAP_JUMP: Flag = Flag {
    name: "gap-jump",
    help: "A rise of the gap by at least this many nats (and to ≥ --gap-ratio × the previous gap) is a jump",
    value: Some("NATS"),
    default: "1.0",
};
const GAP_RATIO: Flag = Flag {
    name: "gap-ratio",
    help: "See --gap-jump",
    value: Some("X"),
    default: "2.0",
};
const GAP_LOW: Flag = Flag {
    name: "gap-low",
    help: "A gap jump counts only after an earlier epoch with a gap of at most this many nats",
    value: Some("NATS"),
    default: "0.5",
};
const RANDOM_MARGIN: Flag = Flag {
    name: "random-margin",
    help: "Transferred accuracy within this fraction of the random baseline is noise-level...",
    value: Some("F"),
    default: "0.02",
};
const STRONG_MARGIN: Flag = Flag {
    name: "strong-margin",
    help: "...once an earlier epoch transferred at least this fraction below it (clearly stronger than noise)",
    value: Some("F"),
    default: "0.1",
};

impl CoCriteria {
    /// The criteria the flags (or a study's `co` table) give, each checked; defaults as declared above.
    pub fn from_flags(f: &Flags) -> Result<CoCriteria> {
        let get = |flag: &Flag| -> Result<f64> {
            let v: f64 = value(f, flag)?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(CovfError::spec(
                    format!("--{}", flag.name),
                    format!("{v}: must be a finite number ≥ 0"),
                ));
            }
            Ok(v)
        };
        let gap_ratio = get(&GAP_RATIO)?;
        if gap_ratio < 1.0 {
            return Err(CovfError::spec("--gap-ratio", format!("{gap_ratio}: must be ≥ 1")));
        }
        Ok(CoCriteria {
            drop: get(&DROP)?,
            gap_jump: get(&GAP_JUMP)?,
            gap_ratio,
            gap_low: get(&GAP_LOW)?,
            random_margin: get(&RANDOM_MARGIN)?,
            strong_margin: get(&STRONG_MARGIN)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoRow {
    pub run: String,
    pub method: String,
    pub epochs: u64,
    pub co_epoch: Option<u64>,
    /// Test PGD accuracy before and at the CO epoch (NaN without CO).
    pub pgd_before: f64,
    pub pgd_at: f64,
    pub gap_jump_epoch: Option<u64>,
    pub gap_before: f64,
    pub gap_at: f64,
    /// Which transfer rows the verdict read: always `own`, the method's own generator.
    pub transfer_generator: String,
    /// The first epoch whose perturbation transferred clearly stronger than random noise.
    pub transfer_strong_epoch: Option<u64>,
    pub transfer_random_epoch: Option<u64>,
    pub transfer_at: f64,
    pub random_acc: f64,
    /// True when transfer rows exist and none was clearly stronger than random (null without rows).
    pub never_stronger_than_random: Option<bool>,
    pub deterioration_epoch: Option<u64>,
    /// Both epochs exist and are equal (null when neither happened).
    pub coincide: Option<bool>,
    /// At step resolution, from the run's in-training monitor (all null without one): steps between its
    /// points, the CO step (the probe's PGD accuracy `drop` below its best so far, and on average over the
    /// next half epoch: `detect::co_step`), the deterioration step (the first firing of the gap or transfer
    /// detector), deterioration − CO in steps, and whether the two are within one monitor interval of each
    /// other.
    pub monitor_every: Option<u64>,
    pub co_step: Option<u64>,
    pub deterioration_step: Option<u64>,
    /// NaN where either step is missing (tables hold no signed integers; these are exact in f64).
    pub lag_steps: f64,
    pub coincide_steps: Option<bool>,
    pub verdict: String,
}

/// `+12`, `-3`, or `–` for NaN.
pub fn signed(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:+}")
    }
}

/// One signal's change on one run, from its monitor: a row of `co-signals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoSignalRow {
    pub run: String,
    pub method: String,
    pub seed: u64,
    pub signal: String,
    /// The detector's rule at its default threshold.
    pub rule: String,
    pub co_step: Option<u64>,
    pub change_step: Option<u64>,
    /// change − CO, in steps: negative when the signal changed first (it leads); NaN where either is missing.
    pub lag_steps: f64,
    pub monitor_every: Option<u64>,
}

/// The first epoch (after the first) where `hit(previous, current)` and `before(earlier values)` holds
/// for the values up to the previous epoch, with the previous and current values.
fn first_change(
    series: &[(u64, f64)],
    hit: impl Fn(f64, f64) -> bool,
    before: impl Fn(&[(u64, f64)]) -> bool,
) -> Option<(u64, f64, f64)> {
    (1..series.len())
        .find(|&i| hit(series[i - 1].1, series[i].1) && before(&series[..i]))
        .map(|i| (series[i].0, series[i - 1].1, series[i].1))
}

/// The verdict for one run from its series, each sorted by epoch: test PGD accuracy, gap, and transferred
/// accuracy of the method's own generator with the random baseline (`(epoch, acc_ref, random_acc)`).
pub fn judge(
    run: &str,
    method: &str,
    pgd: &[(u64, f64)],
    gap: &[(u64, f64)],
    transfer: &[(u64, f64, f64)],
    c: &CoCriteria,
) -> CoRow {
    let co = first_change(pgd, |a, b| a - b >= c.drop, |_| true);
    let jump = first_change(
        gap,
        |a, b| b - a >= c.gap_jump && b >= c.gap_ratio * a.max(0.0),
        |earlier| earlier.iter().any(|x| x.1 <= c.gap_low),
    );
    let strong = transfer.iter().position(|&(_, acc, rnd)| acc <= rnd - c.strong_margin);
    let noise = strong.and_then(|i| {
        transfer[i + 1..]
            .iter()
            .find(|&&(_, acc, rnd)| acc >= rnd - c.random_margin)
    });
    let never_strong = (!transfer.is_empty()).then_some(strong.is_none());
    let det = match (jump.map(|j| j.0), noise.map(|t| t.0)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let co_epoch = co.map(|x| x.0);
    let coincide = match (co_epoch, det) {
        (None, None) => None,
        (a, b) => Some(a == b),
    };
    let mut verdict = match (co_epoch, det) {
        (Some(a), Some(b)) if a == b => format!("CO and perturbation deterioration coincide at epoch {a}"),
        (Some(a), Some(b)) => format!("CO at epoch {a}, perturbation deterioration at epoch {b}"),
        (Some(a), None) => format!("CO at epoch {a} without a measured perturbation deterioration"),
        (None, Some(b)) => format!("perturbation deterioration at epoch {b} without CO"),
        (None, None) => "no CO and no perturbation deterioration".into(),
    };
    if never_strong == Some(true) {
        verdict.push_str("; its own perturbation never transferred clearly stronger than random noise");
    }
    let nan = f64::NAN;
    CoRow {
        run: run.into(),
        method: method.into(),
        epochs: pgd.len().max(gap.len()).max(transfer.len()) as u64,
        co_epoch,
        pgd_before: co.map_or(nan, |x| x.1),
        pgd_at: co.map_or(nan, |x| x.2),
        gap_jump_epoch: jump.map(|x| x.0),
        gap_before: jump.map_or(nan, |x| x.1),
        gap_at: jump.map_or(nan, |x| x.2),
        transfer_generator: Source::Own.name().into(),
        transfer_strong_epoch: strong.map(|i| transfer[i].0),
        transfer_random_epoch: noise.map(|t| t.0),
        transfer_at: noise.map_or(nan, |t| t.1),
        random_acc: noise.or(transfer.last()).map_or(nan, |t| t.2),
        never_stronger_than_random: never_strong,
        deterioration_epoch: det,
        coincide,
        monitor_every: None,
        co_step: None,
        deterioration_step: None,
        lag_steps: f64::NAN,
        coincide_steps: None,
        verdict,
    }
}

/// `row` at step resolution from the run's monitor: the step columns, and the verdict in steps (the epoch
/// verdict stays in the epoch columns).
pub fn with_steps(mut row: CoRow, ch: &Changes) -> CoRow {
    let (co, det) = (ch.co_step, ch.deterioration_step());
    let lag = match (co, det) {
        (Some(a), Some(b)) => Some(b as i64 - a as i64),
        _ => None,
    };
    let within = |l: i64| ch.every.is_some_and(|k| l.unsigned_abs() <= k);
    let mut verdict = match (co, det, lag) {
        (Some(a), Some(_), Some(l)) if within(l) => format!(
            "CO and perturbation deterioration coincide at step {a} (deterioration {l:+} steps, within one \
             monitor interval of {} steps)",
            ch.every.unwrap_or(0)
        ),
        (Some(a), Some(b), _) => format!("CO at step {a}, perturbation deterioration at step {b}"),
        (Some(a), None, _) => format!("CO at step {a} without a measured perturbation deterioration"),
        (None, Some(b), _) => format!("perturbation deterioration at step {b} without CO"),
        (None, None, _) => "no CO and no perturbation deterioration".into(),
    };
    if row.never_stronger_than_random == Some(true) {
        verdict.push_str("; its own perturbation never transferred clearly stronger than random noise");
    }
    row.monitor_every = ch.every;
    row.co_step = co;
    row.deterioration_step = det;
    row.lag_steps = lag.map_or(f64::NAN, |l| l as f64);
    row.coincide_steps = match (co, det) {
        (None, None) => None,
        _ => Some(lag.is_some_and(within)),
    };
    row.verdict = verdict;
    row
}

/// Each detector's change step on one run, beside its CO step.
pub fn signal_rows(run: &str, method: &str, seed: u64, ch: &Changes) -> Vec<CoSignalRow> {
    ch.signals
        .iter()
        .map(|(d, step)| CoSignalRow {
            run: run.into(),
            method: method.into(),
            seed,
            signal: d.name().into(),
            rule: d.describe(None),
            co_step: ch.co_step,
            change_step: *step,
            lag_steps: match (ch.co_step, step) {
                (Some(a), Some(b)) => *b as f64 - a as f64,
                _ => f64::NAN,
            },
            monitor_every: ch.every,
        })
        .collect()
}

/// Test PGD accuracy per epoch from a run's metrics.
pub fn pgd_series(run: &RunDir) -> Result<Vec<(u64, f64)>> {
    let path = run.path.join("metrics.parquet");
    let df = read_parquet(&path)?;
    let e = col_u64(&df, "epoch", &path)?;
    let a = col_f64(&df, "test_acc_pgd", &path)?;
    let mut s: Vec<(u64, f64)> = e.into_iter().zip(a).collect();
    s.sort_by_key(|x| x.0);
    Ok(s)
}

/// A run's gap per epoch: (run, epoch, gap in nats).
type GapPoint = (String, u64, f64);
/// A run's own-generator transfer per epoch: (run, epoch, reference accuracy, random baseline).
type TransferPoint = (String, u64, f64, f64);

/// The gap and own-generator transfer series from the tables the upstream analyses wrote into `out`.
fn upstream_series(out: &Path, gap_table: &str) -> Result<(Vec<GapPoint>, Vec<TransferPoint>)> {
    let (gp, tp) = (out.join(format!("{gap_table}.parquet")), out.join("transfer.parquet"));
    let g = tidy::read(out, gap_table)?;
    let gaps = col_str(&g, "run", &gp)?
        .into_iter()
        .zip(col_u64(&g, "epoch", &gp)?)
        .zip(col_f64(&g, "gap", &gp)?)
        .map(|((r, e), v)| (r, e, v))
        .collect();
    let t = tidy::read(out, "transfer")?;
    let transfers = col_str(&t, "run", &tp)?
        .into_iter()
        .zip(col_str(&t, "generator", &tp)?)
        .zip(col_u64(&t, "epoch", &tp)?)
        .zip(
            col_f64(&t, "acc_ref", &tp)?
                .into_iter()
                .zip(col_f64(&t, "random_acc", &tp)?),
        )
        .filter(|(((_, g), _), _)| g == Source::Own.name())
        .map(|(((r, _), e), (a, b))| (r, e, a, b))
        .collect();
    Ok((gaps, transfers))
}

/// The verdict for each run, from its metrics and its gap and own-generator transfer series, at step
/// resolution where the run has a monitor (with each signal's change step).
pub fn run(
    runs: &[RunDir],
    gaps: &[GapPoint],
    transfers: &[TransferPoint],
    c: &CoCriteria,
) -> Result<(Vec<CoRow>, Vec<CoSignalRow>)> {
    let mut out = Vec::new();
    let mut signals = Vec::new();
    for r in runs {
        let spec = r.read_spec()?;
        let method = spec.method.label();
        let mut g: Vec<(u64, f64)> = gaps.iter().filter(|x| x.0 == r.name).map(|x| (x.1, x.2)).collect();
        g.sort_by_key(|x| x.0);
        let mut t: Vec<(u64, f64, f64)> = transfers
            .iter()
            .filter(|x| x.0 == r.name)
            .map(|x| (x.1, x.2, x.3))
            .collect();
        t.sort_by_key(|x| x.0);
        let row = judge(&r.name, &method, &pgd_series(r)?, &g, &t, c);
        match read_monitor(&r.path)? {
            Some(rows) => {
                let ch = changes(&rows, c.drop);
                signals.extend(signal_rows(&r.name, &method, spec.seed, &ch));
                out.push(with_steps(row, &ch));
            }
            None => out.push(row),
        }
    }
    Ok((out, signals))
}

/// `covf analyze co`; `co = [runs]` in a study. It reads the gap and transfer tables of its runs, written
/// just before by its upstream analyses (`covf analyze` and `covf study` run them first), and judges each run.
pub struct Co;

impl Analysis for Co {
    fn name(&self) -> &'static str {
        "co"
    }
    fn about(&self) -> &'static str {
        "Per run: the CO epoch, the perturbation-deterioration epoch, and whether they coincide"
    }
    fn example(&self) -> &'static str {
        "covf analyze co --runs fgsm-fmnist-preact-tiny-eps0.15-s0 pgd10-fmnist-preact-tiny-eps0.15-s0"
    }
    fn flags(&self) -> &'static [Flag] {
        &[
            GAP_REF,
            DROP,
            GAP_JUMP,
            GAP_RATIO,
            GAP_LOW,
            RANDOM_MARGIN,
            STRONG_MARGIN,
        ]
    }
    fn uses_reference(&self) -> bool {
        true
    }
    fn tables(&self, _flags: &Flags) -> Result<Vec<String>> {
        Ok(vec!["co".into(), CO_SIGNALS.into()])
    }
    fn upstream(&self, flags: &Flags) -> Result<Vec<(&'static str, Flags)>> {
        let b = flags.get(GAP_REF.name).unwrap_or(GAP_REF.default);
        gap::pgd_steps(b, "--gap-ref")?;
        Ok(vec![
            ("transfer", Flags::default()),
            ("gap", Flags::default().with("ref", b.trim().to_ascii_lowercase())),
        ])
    }
    fn check(&self, flags: &Flags, _: &crate::run::TrainSettings) -> Result<()> {
        CoCriteria::from_flags(flags)?;
        self.upstream(flags).map(|_| ())
    }
    fn run(&self, job: &Job) -> Result<Outcome> {
        let crit = CoCriteria::from_flags(&job.flags)?;
        let steps = gap::pgd_steps(job.flags.get(GAP_REF.name).unwrap_or(GAP_REF.default), "--gap-ref")?;
        // The upstream analyses wrote both tables just before, over (at least) these runs.
        let (gaps, transfers) = upstream_series(&job.ctx.out, &format!("gap-pgd{steps}"))?;
        let (rows, signals) = run(&job.runs, &gaps, &transfers, &crit)?;
        tidy::write(&job.ctx.out, "co", &rows)?;
        tidy::write(&job.ctx.out, CO_SIGNALS, &signals)?;
        let mut lines = vec![format!(
            "{:<44} {:>4} {:>6} {:>9} {:>10} {:>9} {:>8} {:>8}  verdict",
            "run", "CO", "gap↑", "S≈random", "deterior.", "coincide", "CO step", "det step"
        )];
        lines.extend(rows.iter().map(|x| {
            format!(
                "{:<44} {:>4} {:>6} {:>9} {:>10} {:>9} {:>8} {:>8}  {}",
                x.run,
                opt(x.co_epoch),
                opt(x.gap_jump_epoch),
                opt(x.transfer_random_epoch),
                opt(x.deterioration_epoch),
                x.coincide.map_or("–".to_string(), |c| c.to_string()),
                opt(x.co_step),
                opt(x.deterioration_step),
                x.verdict
            )
        }));
        if !signals.is_empty() {
            lines.push(String::new());
            lines.push(format!(
                "{:<44} {:<11} {:>8} {:>8} {:>6}  (lag: steps after CO; negative leads)",
                "run", "signal", "CO step", "change", "lag"
            ));
            lines.extend(signals.iter().map(|s| {
                format!(
                    "{:<44} {:<11} {:>8} {:>8} {:>6}",
                    s.run,
                    s.signal,
                    opt(s.co_step),
                    opt(s.change_step),
                    signed(s.lag_steps)
                )
            }));
        }
        Ok(Outcome {
            tables: vec!["co".into(), CO_SIGNALS.into()],
            lines,
            summary: rows.iter().map(|r| format!("{}: {}", r.run, r.verdict)).collect(),
            ..Outcome::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fgsm_like_series_coincide_pgd_like_series_do_not_overfit() {
        let c = CoCriteria::from_flags(&Flags::default()).unwrap();
        // The default FGSM run's shape: PGD-10 50% → 7.6%; the gap 0.3 → 4.0; transfer reaches noise at 2.
        let pgd = [(1, 0.50), (2, 0.076), (3, 0.092), (4, 0.027)];
        let gap = [(1, 0.3), (2, 4.0), (3, 5.0), (4, 7.0)];
        let tr = [(1, 0.55, 0.80), (2, 0.79, 0.80), (3, 0.81, 0.80), (4, 0.82, 0.80)];
        let r = judge("f", "fgsm", &pgd, &gap, &tr, &c);
        assert_eq!(
            (r.co_epoch, r.gap_jump_epoch, r.transfer_random_epoch),
            (Some(2), Some(2), Some(2))
        );
        assert_eq!((r.deterioration_epoch, r.coincide), (Some(2), Some(true)));
        assert_eq!(
            (r.pgd_before, r.pgd_at, r.gap_before, r.gap_at),
            (0.50, 0.076, 0.3, 4.0)
        );
        assert!(r.verdict.contains("coincide at epoch 2"), "{}", r.verdict);

        // PGD-10: accuracy rises, the gap stays ~0, transfer stays far below noise.
        let pgd = [(1, 0.54), (2, 0.58), (3, 0.67), (4, 0.71)];
        let gap = [(1, 0.0), (2, 0.01), (3, 0.0), (4, 0.02)];
        let tr = [(1, 0.5, 0.8), (2, 0.45, 0.8), (3, 0.4, 0.8), (4, 0.4, 0.8)];
        let r = judge("p", "pgd10", &pgd, &gap, &tr, &c);
        assert_eq!((r.co_epoch, r.deterioration_epoch, r.coincide), (None, None, None));
        assert_eq!(r.verdict, "no CO and no perturbation deterioration");
    }

    #[test]
    fn thresholds_are_respected_and_a_lag_is_reported() {
        let c = CoCriteria::from_flags(&Flags::default()).unwrap();
        // A 19-point fall is not CO; the later 30-point fall is. Rises of 0.9 nats are no jump, nor is
        // 1.5 nats to less than twice the previous gap (1.9 → 3.4); 0.4 → 2.5, one epoch after CO, is.
        let pgd = [(1, 0.5), (2, 0.31), (3, 0.01)];
        let gap = [(1, 0.1), (2, 1.0), (3, 1.9), (4, 3.4)];
        let r = judge("x", "fgsm", &pgd, &gap, &[], &c);
        assert_eq!(r.co_epoch, Some(3));
        assert_eq!(r.gap_jump_epoch, None, "{r:?}");
        let gap = [(1, 0.1), (2, 0.2), (3, 0.4), (4, 2.5)];
        let r = judge("x", "fgsm", &pgd, &gap, &[], &c);
        assert_eq!(
            (r.gap_jump_epoch, r.deterioration_epoch, r.coincide),
            (Some(4), Some(4), Some(false))
        );
        assert_eq!(r.verdict, "CO at epoch 3, perturbation deterioration at epoch 4");
        assert!(r.transfer_random_epoch.is_none() && r.random_acc.is_nan());
        assert_eq!(r.never_stronger_than_random, None);
    }

    #[test]
    fn deterioration_is_a_change_not_a_level() {
        let c = CoCriteria::from_flags(&Flags::default()).unwrap();
        let pgd = [(1, 0.5), (2, 0.52), (3, 0.55)];
        // Transfer at noise level from the first epoch (a generator that was never strong, e.g. APART's α1
        // step on test images): no deterioration, its own verdict.
        let weak = [(1, 0.79, 0.80), (2, 0.80, 0.80), (3, 0.81, 0.80)];
        let r = judge("w", "apart", &pgd, &[], &weak, &c);
        assert_eq!((r.transfer_strong_epoch, r.transfer_random_epoch), (None, None));
        assert_eq!(
            (r.deterioration_epoch, r.never_stronger_than_random),
            (None, Some(true))
        );
        assert_eq!(
            r.verdict,
            "no CO and no perturbation deterioration; its own perturbation never transferred clearly stronger \
             than random noise"
        );
        // 9 points below random is not "clearly stronger" (10 are): still never strong.
        let r = judge("w", "x", &pgd, &[], &[(1, 0.71, 0.80), (2, 0.80, 0.80)], &c);
        assert_eq!(r.never_stronger_than_random, Some(true));
        // Strong at epoch 1, back to the random band at epoch 3 (epoch 2 is 3 points short of it).
        let tr = [(1, 0.60, 0.80), (2, 0.75, 0.80), (3, 0.785, 0.80)];
        let r = judge("d", "fgsm", &pgd, &[], &tr, &c);
        assert_eq!((r.transfer_strong_epoch, r.transfer_random_epoch), (Some(1), Some(3)));
        assert_eq!((r.transfer_at, r.random_acc), (0.785, 0.80));
        assert_eq!((r.deterioration_epoch, r.coincide), (Some(3), Some(false)));
        assert_eq!(r.verdict, "perturbation deterioration at epoch 3 without CO");
        assert_eq!(r.never_stronger_than_random, Some(false));
        // A noise-level epoch before the first strong one does not count; the one after it does.
        let tr = [(1, 0.80, 0.80), (2, 0.65, 0.80), (3, 0.81, 0.80)];
        assert_eq!(judge("d", "fgsm", &pgd, &[], &tr, &c).transfer_random_epoch, Some(3));

        // A gap high from the start (never ≤ 0.5 nats) that keeps doubling is no jump; after a low it is.
        let high = [(1, 1.2), (2, 2.5), (3, 6.0)];
        let r = judge("g", "x", &pgd, &high, &[], &c);
        assert_eq!((r.gap_jump_epoch, r.deterioration_epoch), (None, None));
        let low_then_jump = [(1, 0.4), (2, 0.9), (3, 2.0)];
        let r = judge("g", "x", &pgd, &low_then_jump, &[], &c);
        assert_eq!((r.gap_jump_epoch, r.gap_before, r.gap_at), (Some(3), 0.9, 2.0));
    }
}
