//! CO detectors: rules that read one monitor series and say at which point it changed — the early stop of
//! `covf train --early-stop`, the change steps of `covf analyze co` and pinpoint, and `covf analyze
//! detectors`. One file per detector, one line in `DETECTORS`; each names the metric it reads, its rule and
//! its default threshold (docs/monitor.md lists them).

pub mod aaer;
pub mod align;
pub mod cos;
pub mod gap;
pub mod lle;
pub mod pgd;
pub mod transfer;
pub mod wong;

use super::MonitorRow;
use crate::error::{CovfError, Result};

/// One point of a monitor metric: its step, where it sits in the run in epochs (0 at the start, 1.0 at the
/// end of the first epoch), and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub step: u64,
    pub at: f64,
    pub v: f64,
}

/// Signals whose untrained value is no baseline (the gap starts near 0 and grows as the model learns; the
/// cosines start high on the nearly linear untrained model; E_lin and the AAER start near 0) are read from
/// this far into the run on, in epochs: their best or lowest so far is a trained model's.
pub const WARMUP: f64 = 0.5;

/// How long, in epochs, the probe's PGD accuracy must stay down, on average, after the CO step: a fall it
/// recovers from within half an epoch is a swing, not the collapse (FGSM runs swing between robust and not
/// for an epoch or more before they stay collapsed, and runs that never collapse dip for one or two points;
/// docs/monitor.md).
pub const HOLD: f64 = 0.5;

/// A rule that finds the point where a signal changes the way CO changes it.
pub trait Detector: Sync {
    /// `--early-stop` name: the signal it reads.
    fn name(&self) -> &'static str;
    /// The rule, in one line, with `{t}` standing for the threshold.
    fn rule(&self) -> &'static str;
    fn default_threshold(&self) -> f64;
    /// The metric it reads (a run whose monitor did not record it has nothing to detect).
    fn metric(&self) -> &'static str;
    /// The step of the first point where the rule fires on `rows` (all of one run), if any.
    fn fire(&self, rows: &[MonitorRow], threshold: f64) -> Option<u64>;
    /// The rule in words with threshold `t` (the default's when `None`).
    fn describe(&self, t: Option<f64>) -> String {
        self.rule()
            .replace("{t}", &t.unwrap_or(self.default_threshold()).to_string())
    }
}

/// Every detector, in the order of the detectors table.
pub static DETECTORS: &[&dyn Detector] = &[
    &pgd::PgdDrop,
    &wong::WongDrop,
    &gap::GapJump,
    &transfer::TransferRandom,
    &cos::CosDrop,
    &align::AlignDrop,
    &lle::LleSpike,
    &aaer::AaerRise,
];

/// The detector for signal `name`.
pub fn lookup(name: &str) -> Result<&'static dyn Detector> {
    DETECTORS.iter().copied().find(|d| d.name() == name).ok_or_else(|| {
        let known: Vec<&str> = DETECTORS.iter().map(|d| d.name()).collect();
        CovfError::spec(
            "detector",
            format!("'{name}' has no detector; known: {}", known.join(", ")),
        )
    })
}

/// A detector with its threshold, as `--early-stop SIGNAL[:THRESHOLD]` gives it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    pub signal: String,
    pub threshold: f64,
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule> {
        let (name, t) = match text.split_once(':') {
            Some((n, t)) => (n.trim(), Some(t.trim())),
            None => (text.trim(), None),
        };
        let d = lookup(name)?;
        let threshold = match t {
            None => d.default_threshold(),
            Some(t) => match t.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => v,
                _ => {
                    return Err(CovfError::spec(
                        "--early-stop",
                        format!("'{text}': the threshold after ':' must be a number > 0"),
                    ))
                }
            },
        };
        Ok(Rule {
            signal: name.to_string(),
            threshold,
        })
    }

    pub fn detector(&self) -> Result<&'static dyn Detector> {
        lookup(&self.signal)
    }

    /// The rule in words, threshold filled in.
    pub fn describe(&self) -> Result<String> {
        Ok(self.detector()?.describe(Some(self.threshold)))
    }
}

/// The points of `metric` in `rows` that have a value, in step order.
pub fn points(rows: &[MonitorRow], metric: &str) -> Vec<Point> {
    let mut p: Vec<Point> = rows
        .iter()
        .filter(|r| r.metric == metric && !r.value.is_nan())
        .map(|r| Point {
            step: r.step,
            at: r.epoch.saturating_sub(1) as f64 + r.epoch_frac,
            v: r.value,
        })
        .collect();
    p.sort_by_key(|q| q.step);
    p
}

/// The step of the first point from `warmup` epochs on where `changed(value, baseline)` holds, the
/// baseline being `fold` over the earlier points from `warmup` on.
pub fn first_change(
    p: &[Point],
    warmup: f64,
    fold: fn(f64, f64) -> f64,
    changed: impl Fn(f64, f64) -> bool,
) -> Option<u64> {
    let mut base: Option<f64> = None;
    for q in p.iter().filter(|q| q.at >= warmup) {
        if base.is_some_and(|b| changed(q.v, b)) {
            return Some(q.step);
        }
        base = Some(base.map_or(q.v, |b| fold(b, q.v)));
    }
    None
}

/// The first point at least `t` below the best (highest) earlier value from `warmup` on.
pub fn drop_below_best(p: &[Point], t: f64, warmup: f64) -> Option<u64> {
    first_change(p, warmup, f64::max, |v, best| v <= best - t)
}

/// The first point at least `t` above the lowest earlier value from `warmup` on.
pub fn rise_above_low(p: &[Point], t: f64, warmup: f64) -> Option<u64> {
    first_change(p, warmup, f64::min, |v, low| v >= low + t)
}

/// The CO step: the first point where the probe's PGD accuracy is at least `drop` below its best so far,
/// and so is its mean over the later points within `hold` epochs, of which there must be one (a fall at the
/// record's last point is not confirmed: a stable run can dip there too). The mean, not every point, so that
/// the step does not depend on how densely the run is measured: replayed every few steps, a collapsing model
/// still swings back for a step now and then.
pub fn co_step(rows: &[MonitorRow], drop: f64, hold: f64) -> Option<u64> {
    let p = points(rows, "pgd_acc");
    let mut best = f64::NEG_INFINITY;
    for (i, q) in p.iter().enumerate() {
        let line = best - drop;
        let stays = || {
            let after: Vec<f64> = p[i + 1..]
                .iter()
                .take_while(|r| r.at <= q.at + hold)
                .map(|r| r.v)
                .collect();
            !after.is_empty() && after.iter().sum::<f64>() / after.len() as f64 <= line
        };
        if q.v <= line && stays() {
            return Some(q.step);
        }
        best = best.max(q.v);
    }
    None
}

/// Where each detector fires on one run's rows at its default threshold (detectors whose metric the run did
/// not record left out), in `DETECTORS` order, and the CO step (`co_step` at `co_drop` and `HOLD`).
pub fn changes(rows: &[MonitorRow], co_drop: f64) -> Changes {
    let has = |m: &str| rows.iter().any(|r| r.metric == m);
    Changes {
        co_step: co_step(rows, co_drop, HOLD),
        signals: DETECTORS
            .iter()
            .filter(|d| has(d.metric()))
            .map(|d| (*d, d.fire(rows, d.default_threshold())))
            .collect(),
        every: monitor_interval(rows),
    }
}

/// One run's change steps.
pub struct Changes {
    pub co_step: Option<u64>,
    pub signals: Vec<(&'static dyn Detector, Option<u64>)>,
    /// Steps between the run's monitor points (the smallest gap between distinct steps).
    pub every: Option<u64>,
}

impl Changes {
    /// The step the perturbation deteriorated: the first firing of the gap or transfer detector (the two
    /// signs the paper names).
    pub fn deterioration_step(&self) -> Option<u64> {
        self.signals
            .iter()
            .filter(|(d, _)| matches!(d.name(), "gap" | "transfer"))
            .filter_map(|(_, s)| *s)
            .min()
    }
}

fn monitor_interval(rows: &[MonitorRow]) -> Option<u64> {
    let mut steps: Vec<u64> = rows.iter().map(|r| r.step).collect();
    steps.sort_unstable();
    steps.dedup();
    steps.windows(2).map(|w| w[1] - w[0]).min()
}

/// Test series: one row of `metric` per value, a point every `every` steps from step 0, four points an
/// epoch (so the first two fall in the `WARMUP`).
#[cfg(test)]
pub(crate) fn planted(metric: &str, values: &[f64], every: u64) -> Vec<MonitorRow> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| MonitorRow {
            run: "r".into(),
            method: "fgsm".into(),
            seed: 0,
            step: every * i as u64,
            epoch: 1 + i as u64 / 4,
            epoch_frac: (i % 4) as f64 / 4.0,
            lr: 0.1,
            signal: String::new(),
            metric: metric.into(),
            value: v,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(metric: &str, values: &[f64]) -> Vec<MonitorRow> {
        planted(metric, values, 10)
    }

    /// Points 0, 1, 2, … at a quarter of an epoch each.
    fn quarters(v: &[f64]) -> Vec<Point> {
        v.iter()
            .enumerate()
            .map(|(i, &v)| Point {
                step: i as u64,
                at: i as f64 / 4.0,
                v,
            })
            .filter(|q| !q.v.is_nan())
            .collect()
    }

    #[test]
    fn running_best_and_low_rules_read_from_the_warm_up_on() {
        let s = quarters(&[0.1, 0.4, 0.5, f64::NAN, 0.35, 0.29, 0.0]);
        assert_eq!(drop_below_best(&s, 0.2, 0.0), Some(5), "0.29 ≤ 0.5 − 0.2, 0.35 is not");
        assert_eq!(drop_below_best(&s, 0.6, 0.0), None);
        let r = quarters(&[2.0, 0.3, 0.5, 1.2, 1.4]);
        assert_eq!(rise_above_low(&r, 1.0, 0.0), Some(4));
        assert_eq!(rise_above_low(&r, 0.1, 0.0), Some(2));
        // A gap that grows from the untrained model's 0 while it learns, then holds: no change once the
        // baseline is a trained model's (points 2 on), a change from step 0.
        let grows = quarters(&[0.0, 0.6, 1.1, 1.3, 1.2, 1.4]);
        assert_eq!(rise_above_low(&grows, 1.0, 0.0), Some(2));
        assert_eq!(rise_above_low(&grows, 1.0, WARMUP), None);
        assert_eq!(
            rise_above_low(&quarters(&[0.0, 0.6, 1.1, 1.3, 2.2]), 1.0, WARMUP),
            Some(4)
        );
    }

    #[test]
    fn the_co_step_is_the_first_fall_that_lasts() {
        // Four points an epoch, the hold two points: a swing at 40 recovered at 50 and 60, then the fall at
        // 70 that lasts.
        let swing = rows("pgd_acc", &[0.1, 0.3, 0.45, 0.5, 0.2, 0.5, 0.45, 0.05, 0.0, 0.02]);
        assert_eq!(co_step(&swing, 0.2, HOLD), Some(70));
        let online = lookup("pgd").unwrap().fire(&swing, 0.2);
        assert_eq!(online, Some(40), "online: the first swing");
        // A fall with no later point inside the hold is not confirmed: at the record's last point, or with
        // a hold shorter than the points' spacing.
        assert_eq!(co_step(&swing[..8], 0.2, HOLD), None);
        assert_eq!(co_step(&swing[..9], 0.2, HOLD), Some(70));
        assert_eq!(co_step(&swing, 0.2, 0.1), None);
        // The hold is on the mean: one point back up inside it (0.45, then 0.05: mean 0.25 ≤ 0.3) does not
        // undo a fall; a fall that comes back on average is no CO; one 0.1 below the best is not a 0.2 fall.
        assert_eq!(
            co_step(&rows("pgd_acc", &[0.4, 0.5, 0.1, 0.45, 0.05, 0.0]), 0.2, HOLD),
            Some(20)
        );
        assert_eq!(co_step(&rows("pgd_acc", &[0.4, 0.5, 0.1, 0.45, 0.5]), 0.2, HOLD), None);
        assert_eq!(co_step(&rows("pgd_acc", &[0.4, 0.5, 0.4, 0.4, 0.4]), 0.2, HOLD), None);
    }

    #[test]
    fn every_detector_fires_on_its_planted_change_and_not_before() {
        // A healthy stretch, then at index 6 the change CO makes: each detector reads its own metric.
        let planted: &[(&str, &str, &[f64])] = &[
            ("pgd", "pgd_acc", &[0.1, 0.3, 0.45, 0.5, 0.48, 0.52, 0.05, 0.0]),
            ("wong", "wong_acc", &[0.1, 0.3, 0.45, 0.5, 0.48, 0.52, 0.2, 0.0]),
            ("gap", "gap", &[0.4, 0.2, 0.3, 0.25, 0.3, 0.35, 2.5, 3.0]),
            ("cos", "cos_fgsm_pgd", &[0.5, 0.7, 0.75, 0.8, 0.78, 0.8, 0.3, 0.2]),
            (
                "grad-align",
                "grad_align",
                &[0.9, 0.95, 0.96, 0.97, 0.95, 0.96, 0.5, 0.3],
            ),
            ("lle", "lle", &[0.02, 0.01, 0.012, 0.011, 0.013, 0.012, 0.2, 0.3]),
            ("aaer", "aaer", &[0.0, 0.01, 0.0, 0.02, 0.01, 0.0, 0.3, 0.5]),
        ];
        for (name, metric, values) in planted {
            let d = lookup(name).unwrap();
            let r = rows(metric, values);
            assert_eq!(d.fire(&r, d.default_threshold()), Some(60), "{name}");
            assert_eq!(d.metric(), *metric);
            assert_eq!(d.fire(&r[..6], d.default_threshold()), None, "{name}: a false alarm");
        }
        // The untrained model's values are no baseline: a gap of 0 at step 0 rising to a trained 1.3.
        let gap = lookup("gap").unwrap();
        assert_eq!(gap.fire(&rows("gap", &[0.0, 0.6, 1.1, 1.3, 1.2, 1.4]), 1.0), None);
        // Transfer: well below random, then back at it.
        let mut r = rows("transfer_acc", &[0.6, 0.4, 0.35, 0.3, 0.32, 0.33, 0.69, 0.7]);
        r.extend(rows("transfer_random", &[0.7; 8]));
        let d = lookup("transfer").unwrap();
        assert_eq!(d.fire(&r, d.default_threshold()), Some(60));
        // Never clearly stronger than random: no alarm however close it gets.
        let mut weak = rows("transfer_acc", &[0.68, 0.69, 0.7]);
        weak.extend(rows("transfer_random", &[0.7; 3]));
        assert_eq!(d.fire(&weak, d.default_threshold()), None);
    }

    #[test]
    fn changes_give_the_co_step_each_signal_and_the_deterioration() {
        let mut r = rows("pgd_acc", &[0.1, 0.3, 0.45, 0.5, 0.48, 0.52, 0.05, 0.0]);
        r.extend(rows("gap", &[0.4, 0.2, 0.3, 0.25, 0.3, 2.0, 2.5, 3.0]));
        r.extend(rows("lle", &[0.02, 0.01, 0.012, 0.011, 0.013, 0.012, 0.011, 0.3]));
        let c = changes(&r, 0.2);
        assert_eq!((c.co_step, c.every), (Some(60), Some(10)));
        let fired: Vec<(&str, Option<u64>)> = c.signals.iter().map(|(d, s)| (d.name(), *s)).collect();
        assert_eq!(
            fired,
            [("pgd", Some(60)), ("gap", Some(50)), ("lle", Some(70))],
            "only the recorded metrics"
        );
        assert_eq!(c.deterioration_step(), Some(50));
        assert_eq!(changes(&r, 0.6).co_step, None);
    }

    #[test]
    fn rules_parse_with_defaults_and_refuse_bad_input() {
        assert_eq!(Rule::parse("pgd").unwrap().threshold, 0.2);
        assert_eq!(Rule::parse("gap:2.5").unwrap().threshold, 2.5);
        assert!(Rule::parse("pgd:-1").unwrap_err().to_string().contains("> 0"));
        assert!(Rule::parse("fgsm").unwrap_err().to_string().contains("known"));
        assert!(Rule::parse("pgd:0.3").unwrap().describe().unwrap().contains("0.3"));
    }
}
