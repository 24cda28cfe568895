//! `covf analyze detectors`: how well each CO signal of the in-training monitor warns of catastrophic
//! overfitting. Per run and signal (each detector at its documented default threshold, `src/monitor/detect/`):
//! on runs that collapse (the probe's PGD accuracy falls `--drop` below its best so far, and on average over
//! the next half epoch: the CO step), the signal's lead — CO step minus the step its detector fired, positive
//! when it warned ahead; on runs that do not collapse, whether it fired anyway (a false alarm). Then one
//! summary row per signal.

use serde::{Deserialize, Serialize};

use super::co::signed;
use super::registry::{value, Analysis, Flag, Job, Outcome};
use super::{quantile, tidy};
use crate::error::{CovfError, Result};
use crate::monitor::detect::{changes, Changes};
use crate::run::metrics::read_monitor;

/// The step-resolution CO rule's threshold (also `pinpoint`'s).
pub const DROP: Flag = Flag {
    name: "drop",
    help: "A fall of the probe's PGD accuracy by at least this fraction below its best so far, and on average over \
           the next half epoch, is CO",
    value: Some("F"),
    default: "0.2",
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorRow {
    pub run: String,
    pub method: String,
    pub seed: u64,
    pub co_step: Option<u64>,
    pub signal: String,
    pub rule: String,
    pub fired_step: Option<u64>,
    /// CO step − fired step: positive when the signal fired first; NaN where either is missing.
    pub lead_steps: f64,
    /// `ahead` (fired at or before the CO step), `late`, `missed` (CO, never fired), `false alarm` (no CO,
    /// fired), `quiet` (no CO, never fired).
    pub outcome: String,
    pub monitor_every: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorSummary {
    pub signal: String,
    pub rule: String,
    /// Runs that collapsed, and of them: fired at all, fired at or before the CO step.
    pub collapsed: u64,
    pub fired: u64,
    pub ahead: u64,
    /// Median lead over the collapsed runs where it fired (steps; NaN when none).
    pub median_lead_steps: f64,
    /// Runs that did not collapse, and of them: fired anyway.
    pub stable: u64,
    pub false_alarms: u64,
}

fn outcome(co: Option<u64>, fired: Option<u64>) -> &'static str {
    match (co, fired) {
        (Some(c), Some(f)) if f <= c => "ahead",
        (Some(_), Some(_)) => "late",
        (Some(_), None) => "missed",
        (None, Some(_)) => "false alarm",
        (None, None) => "quiet",
    }
}

/// One row per detector of a run whose monitor changed as `ch` says.
pub fn detector_rows(run: &str, method: &str, seed: u64, ch: &Changes) -> Vec<DetectorRow> {
    ch.signals
        .iter()
        .map(|(d, fired)| DetectorRow {
            run: run.into(),
            method: method.into(),
            seed,
            co_step: ch.co_step,
            signal: d.name().into(),
            rule: d.describe(None),
            fired_step: *fired,
            lead_steps: match (ch.co_step, fired) {
                (Some(c), Some(f)) => c as f64 - *f as f64,
                _ => f64::NAN,
            },
            outcome: outcome(ch.co_step, *fired).into(),
            monitor_every: ch.every,
        })
        .collect()
}

/// Per-signal totals over the per-run rows, in the rows' signal order.
pub fn summarize(rows: &[DetectorRow]) -> Vec<DetectorSummary> {
    let mut signals: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        if !signals.iter().any(|(s, _)| *s == r.signal) {
            signals.push((r.signal.as_str(), r.rule.as_str()));
        }
    }
    signals
        .into_iter()
        .map(|(signal, rule)| {
            let mine: Vec<&DetectorRow> = rows.iter().filter(|r| r.signal == signal).collect();
            let count = |f: &dyn Fn(&DetectorRow) -> bool| mine.iter().filter(|r| f(r)).count() as u64;
            let leads: Vec<f64> = mine
                .iter()
                .filter(|r| r.co_step.is_some() && !r.lead_steps.is_nan())
                .map(|r| r.lead_steps)
                .collect();
            DetectorSummary {
                signal: signal.into(),
                rule: rule.into(),
                collapsed: count(&|r| r.co_step.is_some()),
                fired: count(&|r| r.co_step.is_some() && r.fired_step.is_some()),
                ahead: count(&|r| r.outcome == "ahead"),
                median_lead_steps: if leads.is_empty() {
                    f64::NAN
                } else {
                    quantile(&leads, 0.5)
                },
                stable: count(&|r| r.co_step.is_none()),
                false_alarms: count(&|r| r.outcome == "false alarm"),
            }
        })
        .collect()
}

/// `covf analyze detectors`; `detectors = [runs]` in a study.
pub struct Detectors;

impl Analysis for Detectors {
    fn name(&self) -> &'static str {
        "detectors"
    }
    fn about(&self) -> &'static str {
        "Per CO signal of the in-training monitor: lead before the CO step on runs that collapse, false \
         alarms on runs that do not"
    }
    fn example(&self) -> &'static str {
        "covf analyze detectors --runs fgsm-fmnist-preact-tiny-eps0.15-s1 pgd10-fmnist-preact-tiny-eps0.15-s0"
    }
    fn flags(&self) -> &'static [Flag] {
        &[DROP]
    }
    fn tables(&self, _: &super::registry::Flags) -> Result<Vec<String>> {
        Ok(vec!["detectors".into(), "detectors-summary".into()])
    }
    fn check(&self, flags: &super::registry::Flags, _: &crate::run::TrainSettings) -> Result<()> {
        let d: f64 = value(flags, &DROP)?;
        if !(d > 0.0 && d <= 1.0) {
            return Err(CovfError::spec("--drop", format!("{d}: must be in (0, 1]")));
        }
        Ok(())
    }
    fn run(&self, job: &Job) -> Result<Outcome> {
        self.check(&job.flags, &job.train)?;
        let drop: f64 = job.value(&DROP)?;
        let mut rows = Vec::new();
        for r in &job.runs {
            let Some(monitor) = read_monitor(&r.path)? else {
                return Err(CovfError::run(
                    &r.name,
                    "has no monitor table (monitor.parquet): it was trained with the monitor off or before \
                     covf had one; retrain it with --monitor-every",
                ));
            };
            let spec = r.read_spec()?;
            rows.extend(detector_rows(
                &r.name,
                &spec.method.label(),
                spec.seed,
                &changes(&monitor, drop),
            ));
        }
        let summary = summarize(&rows);
        tidy::write(&job.ctx.out, "detectors", &rows)?;
        tidy::write(&job.ctx.out, "detectors-summary", &summary)?;
        let mut lines = vec![format!(
            "{:<11} {:>9} {:>6} {:>6} {:>12} {:>7} {:>12}  rule",
            "signal", "collapsed", "fired", "ahead", "median lead", "stable", "false alarms"
        )];
        lines.extend(summary.iter().map(|s| {
            format!(
                "{:<11} {:>9} {:>6} {:>6} {:>12} {:>7} {:>12}  {}",
                s.signal,
                s.collapsed,
                s.fired,
                s.ahead,
                signed(s.median_lead_steps),
                s.stable,
                s.false_alarms,
                s.rule
            )
        }));
        Ok(Outcome {
            tables: vec!["detectors".into(), "detectors-summary".into()],
            lines,
            ..Outcome::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::detect::planted;
    use crate::monitor::MonitorRow;

    fn rows(metric: &str, values: &[f64]) -> Vec<MonitorRow> {
        planted(metric, values, 50)
    }

    fn detect(name: &str, monitor: &[MonitorRow]) -> Vec<DetectorRow> {
        detector_rows(name, "fgsm", 0, &changes(monitor, 0.2))
    }

    #[test]
    fn planted_collapses_give_known_leads_and_a_stable_run_counts_false_alarms() {
        // Run a: CO at step 300 (point 6); the gap jumps at 250 (lead +50), the cosine falls at 350 (late).
        let mut a = rows("pgd_acc", &[0.1, 0.3, 0.45, 0.5, 0.48, 0.52, 0.05, 0.0]);
        a.extend(rows("gap", &[0.4, 0.2, 0.3, 0.25, 0.3, 2.0, 2.5, 3.0]));
        a.extend(rows("cos_fgsm_pgd", &[0.5, 0.7, 0.75, 0.8, 0.78, 0.8, 0.79, 0.2]));
        // Run b: CO at step 150; the gap jumps with it (lead 0), the cosine never falls (missed).
        let mut b = rows("pgd_acc", &[0.2, 0.45, 0.5, 0.1, 0.0]);
        b.extend(rows("gap", &[0.3, 0.2, 0.2, 3.0, 3.5]));
        b.extend(rows("cos_fgsm_pgd", &[0.6, 0.7, 0.7, 0.65, 0.6]));
        // Run c never collapses; its gap wobbles by 1.2 nats once (a false alarm), its cosine holds.
        let mut c = rows("pgd_acc", &[0.2, 0.4, 0.5, 0.55, 0.6]);
        c.extend(rows("gap", &[0.3, 0.2, 0.2, 1.4, 0.3]));
        c.extend(rows("cos_fgsm_pgd", &[0.6, 0.7, 0.72, 0.7, 0.71]));
        let mut all = detect("a", &a);
        all.extend(detect("b", &b));
        all.extend(detect("c", &c));
        let by = |run: &str, signal: &str| all.iter().find(|r| r.run == run && r.signal == signal).unwrap();
        assert_eq!(
            (by("a", "gap").lead_steps, by("a", "gap").outcome.as_str()),
            (50.0, "ahead")
        );
        assert_eq!(
            (by("a", "cos").lead_steps, by("a", "cos").outcome.as_str()),
            (-50.0, "late")
        );
        assert_eq!(
            (by("b", "gap").lead_steps, by("b", "gap").outcome.as_str()),
            (0.0, "ahead")
        );
        assert_eq!(by("b", "cos").outcome, "missed");
        assert_eq!(
            (by("c", "gap").co_step, by("c", "gap").outcome.as_str()),
            (None, "false alarm")
        );
        assert_eq!(by("c", "cos").outcome, "quiet");
        let s = summarize(&all);
        let gap = s.iter().find(|x| x.signal == "gap").unwrap();
        assert_eq!(
            (gap.collapsed, gap.fired, gap.ahead, gap.stable, gap.false_alarms),
            (2, 2, 2, 1, 1)
        );
        assert_eq!(gap.median_lead_steps, 25.0, "median of +50 and 0");
        let cos = s.iter().find(|x| x.signal == "cos").unwrap();
        assert_eq!((cos.fired, cos.ahead, cos.false_alarms), (1, 0, 0));
        assert_eq!(cos.median_lead_steps, -50.0);
    }
}
