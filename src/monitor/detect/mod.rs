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

/// One (step, value) series of a monitor metric, in step order.
pub type Series = [(u64, f64)];

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

/// Every detector, in the order of the detectors table. The CO step is `pgd`'s.
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

/// The series of `metric` in `rows`, in step order.
pub fn series(rows: &[MonitorRow], metric: &str) -> Vec<(u64, f64)> {
    super::series(rows, metric)
}

/// The step of the first point at least `t` below the best (highest) earlier value; NaN points are skipped.
pub fn drop_below_best(s: &Series, t: f64) -> Option<u64> {
    let mut best = f64::NEG_INFINITY;
    for &(step, v) in s {
        if v.is_nan() {
            continue;
        }
        if v <= best - t {
            return Some(step);
        }
        best = best.max(v);
    }
    None
}

/// The step of the first point at least `t` above the lowest earlier value; NaN points are skipped.
pub fn rise_above_low(s: &Series, t: f64) -> Option<u64> {
    let mut low = f64::INFINITY;
    for &(step, v) in s {
        if v.is_nan() {
            continue;
        }
        if v >= low + t {
            return Some(step);
        }
        low = low.min(v);
    }
    None
}

/// Where each detector fires on one run's rows at its default threshold (detectors whose metric the run did
/// not record left out), in `DETECTORS` order; the CO step is `pgd`'s, at `co_drop`.
pub fn changes(rows: &[MonitorRow], co_drop: f64) -> Changes {
    let has = |m: &str| rows.iter().any(|r| r.metric == m);
    Changes {
        co_step: has("pgd_acc").then(|| pgd::PgdDrop.fire(rows, co_drop)).flatten(),
        signals: DETECTORS
            .iter()
            .filter(|d| d.name() != pgd::PgdDrop.name() && has(d.metric()))
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

/// Test series: one row of `metric` per value, a point every `every` steps from step 0.
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
            epoch: 1,
            epoch_frac: 0.0,
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

    #[test]
    fn running_best_and_low_rules() {
        let at = |v: &[f64]| -> Vec<(u64, f64)> { v.iter().enumerate().map(|(i, &v)| (i as u64, v)).collect() };
        let s = at(&[0.1, 0.4, 0.5, f64::NAN, 0.35, 0.29, 0.0]);
        assert_eq!(drop_below_best(&s, 0.2), Some(5), "0.29 ≤ 0.5 − 0.2, 0.35 is not");
        assert_eq!(drop_below_best(&s, 0.6), None);
        let r = at(&[2.0, 0.3, 0.5, 1.2, 1.4]);
        assert_eq!(rise_above_low(&r, 1.0), Some(4));
        assert_eq!(rise_above_low(&r, 0.1), Some(2));
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
            [("gap", Some(50)), ("lle", Some(70))],
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
