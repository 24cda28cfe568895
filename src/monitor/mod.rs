//! The in-training monitor: every catastrophic-overfitting signal of the literature, measured side by side
//! every K training steps on fixed probes — its spec, the `Signal` trait with its registry (one file per
//! signal), the rows of `monitor.parquet`, and `Monitor`, which the fit loop calls.
//!
//! At a monitor point the model is frozen: weights detached, batch norm in eval mode (AAER's pass on the
//! training batch uses batch statistics, without touching the running ones), and every random draw comes
//! from a stream derived from (seed, signal, step). The monitor therefore never changes what a run learns,
//! its values do not depend on which other signals are on, and a resumed run's rows equal an
//! uninterrupted run's. docs/monitor.md documents the probes and every signal.

pub mod aaer;
pub mod align;
pub mod cos;
pub mod detect;
pub mod fgsm;
pub mod gap;
pub mod lle;
pub mod pgd;
mod point;
pub mod transfer;
pub mod wong;

use std::fmt;
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub use point::{Attacked, Point, ProbeCfg, Probes, Reference};

use crate::attacks::Generator;
use crate::data::Batch;
use crate::error::{CovfError, Result};
use crate::models::Classifier;

/// The run's table of monitor rows: `monitor.parquet` and `monitor.csv` beside `metrics.parquet`.
pub const TABLE: &str = "monitor";

/// Every signal covf measures, in the order of the monitor's table. A new signal is its file and one line
/// here.
pub static SIGNALS: &[&dyn Signal] = &[
    &pgd::PgdSignal,
    &fgsm::FgsmSignal,
    &gap::Gap,
    &cos::Cos,
    &align::GradAlign,
    &aaer::Aaer,
    &lle::Lle,
    &transfer::Transfer,
    &wong::Wong,
];

/// Which way a value lies while training is healthy; catastrophic overfitting pushes it the other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Healthy {
    High,
    Low,
}

/// One value a signal records at every point (a row of the table per point).
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The table's `metric` column, e.g. `pgd_acc`.
    pub name: &'static str,
    pub about: &'static str,
    pub healthy: Healthy,
}

/// One CO signal: what it measures at a monitor point.
pub trait Signal: Sync {
    /// `--monitor-signals` name and the table's `signal` column.
    fn name(&self) -> &'static str;
    /// One line for `covf train --help` and docs/monitor.md.
    fn about(&self) -> &'static str;
    /// The values it records, in the order `measure` returns them.
    fn metrics(&self) -> &'static [Metric];
    /// Whether it needs a reference model (`--monitor-ref`).
    fn needs_reference(&self) -> bool {
        false
    }
    /// One value per metric (NaN where the value is undefined at this point).
    fn measure(&self, p: &Point) -> Result<Vec<f64>>;
}

/// The registered signal called `name`.
pub fn lookup(name: &str) -> Result<&'static dyn Signal> {
    SIGNALS.iter().copied().find(|s| s.name() == name).ok_or_else(|| {
        CovfError::spec(
            "--monitor-signals",
            format!("'{name}' is not a signal; known: {}", names().join(", ")),
        )
    })
}

/// The registered signals' names.
pub fn names() -> Vec<&'static str> {
    SIGNALS.iter().map(|s| s.name()).collect()
}

/// The metric called `name`, with the signal that records it.
pub fn metric(name: &str) -> Option<(&'static dyn Signal, Metric)> {
    SIGNALS
        .iter()
        .flat_map(|s| s.metrics().iter().map(move |m| (*s, *m)))
        .find(|(_, m)| m.name == name)
}

/// Steps between monitor points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    Off,
    /// A run's steps per epoch / 8, at least 16: 8 points in every epoch of a run with 128+ steps an epoch.
    Auto,
    Steps(usize),
}

impl Every {
    /// Points per epoch `Auto` gives a run with `AUTO_POINTS · AUTO_MIN` steps an epoch or more.
    pub const AUTO_POINTS: usize = 8;
    /// The fewest steps between `Auto`'s points: a point costs about 4 training steps at the default probe,
    /// so a denser automatic monitor would cost more than a quarter of the training it watches (small runs:
    /// give `--monitor-every` to go denser).
    pub const AUTO_MIN: usize = 16;

    pub fn parse(s: &str) -> Result<Every> {
        match s.trim() {
            "auto" => Ok(Every::Auto),
            "0" | "off" => Ok(Every::Off),
            t => match t.parse::<usize>() {
                Ok(k) => Ok(Every::Steps(k)),
                Err(_) => Err(CovfError::spec(
                    "--monitor-every",
                    format!("'{s}': give a number of steps, auto, or 0 to turn the monitor off"),
                )),
            },
        }
    }

    /// Steps between points for a run of `per_epoch` steps an epoch (0: off).
    pub fn steps(self, per_epoch: usize) -> usize {
        match self {
            Every::Off => 0,
            Every::Auto => (per_epoch / Self::AUTO_POINTS).max(Self::AUTO_MIN),
            Every::Steps(k) => k,
        }
    }
}

impl fmt::Display for Every {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Every::Off => f.write_str("0"),
            Every::Auto => f.write_str("auto"),
            Every::Steps(k) => write!(f, "{k}"),
        }
    }
}

impl Serialize for Every {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Every {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Every, D::Error> {
        let s = String::deserialize(d)?;
        Every::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What a run monitors, as run.json stores it. Runs from before the monitor read as `off`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorSpec {
    pub every: Every,
    /// Signal names, in registry order.
    pub signals: Vec<String>,
    /// Test images of the probe (the first of the run's evaluation images) and training images of Wong's
    /// probe.
    pub probe: usize,
    /// The reference model of the transfer signal: `RUN` (its last epoch) or `RUN@EPOCH`.
    pub reference: Option<String>,
}

impl Default for MonitorSpec {
    fn default() -> Self {
        MonitorSpec::off()
    }
}

/// Test (and training) images each point probes by default.
pub const DEFAULT_PROBE: usize = 64;

impl MonitorSpec {
    pub fn off() -> MonitorSpec {
        MonitorSpec {
            every: Every::Off,
            signals: Vec::new(),
            probe: DEFAULT_PROBE,
            reference: None,
        }
    }

    /// The spec `covf train`'s monitor flags give: `signals` None means every signal that applies (the
    /// transfer signal only with a reference); a named signal that needs a reference without one is refused.
    pub fn new(
        every: Every,
        signals: Option<&[String]>,
        probe: usize,
        reference: Option<String>,
    ) -> Result<MonitorSpec> {
        if probe == 0 {
            return Err(CovfError::spec("--monitor-probe", "must be at least 1 image"));
        }
        if every == Every::Off {
            return Ok(MonitorSpec {
                probe,
                reference,
                ..MonitorSpec::off()
            });
        }
        let chosen: Vec<&dyn Signal> = match signals {
            Some(names) => {
                let mut picked = Vec::new();
                for n in names.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
                    let s = lookup(n)?;
                    if s.needs_reference() && reference.is_none() {
                        return Err(CovfError::spec(
                            "--monitor-signals",
                            format!("'{n}' needs a reference model: add --monitor-ref RUN[@EPOCH]"),
                        ));
                    }
                    picked.push(s);
                }
                if picked.is_empty() {
                    return Err(CovfError::spec(
                        "--monitor-signals",
                        "names no signal: give some, or --monitor-every 0 to turn the monitor off",
                    ));
                }
                SIGNALS
                    .iter()
                    .copied()
                    .filter(|s| picked.iter().any(|p| p.name() == s.name()))
                    .collect()
            }
            None => SIGNALS
                .iter()
                .copied()
                .filter(|s| !s.needs_reference() || reference.is_some())
                .collect(),
        };
        Ok(MonitorSpec {
            every,
            signals: chosen.iter().map(|s| s.name().to_string()).collect(),
            probe,
            reference,
        })
    }

    pub fn is_on(&self) -> bool {
        self.every != Every::Off && !self.signals.is_empty()
    }

    /// The spec's signals from the registry (an unknown name is an error: a run.json edited by hand, or
    /// from a newer covf).
    pub fn registered(&self) -> Result<Vec<&'static dyn Signal>> {
        self.signals.iter().map(|n| lookup(n)).collect()
    }
}

/// One value of one signal at one monitor point: a row of `monitor.parquet` / `.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorRow {
    pub run: String,
    pub method: String,
    pub seed: u64,
    /// Training steps (minibatch updates) done when the point was measured; 0 is the initial model.
    pub step: u64,
    /// The 1-based epoch the step belongs to.
    pub epoch: u64,
    /// Fraction of that epoch done, in [0, 1].
    pub epoch_frac: f64,
    /// The learning rate of the step just taken (of the first step at step 0).
    pub lr: f64,
    pub signal: String,
    pub metric: String,
    /// NaN where undefined (e.g. a cosine with a zero gradient on every probe image).
    #[serde(deserialize_with = "crate::exact_json::nan_from_null")]
    pub value: f64,
}

/// Where in the run a point is.
#[derive(Debug, Clone)]
pub struct At<'a> {
    pub run: &'a str,
    pub method: &'a str,
    pub seed: u64,
    pub step: u64,
    pub epoch: u64,
    pub epoch_frac: f64,
    pub lr: f64,
}

/// A run's monitor: its signals, its probes, the rows so far and the time it took.
pub struct Monitor {
    signals: Vec<&'static dyn Signal>,
    probes: Probes,
    /// Steps between points (0: off).
    every: usize,
    /// The first point's step: 0 in a run (the initial model), the replayed epoch's first step in a replay.
    start: u64,
    pub rows: Vec<MonitorRow>,
    /// Seconds spent measuring, per signal (in `signals` order), in this process.
    pub seconds: Vec<f64>,
}

impl Monitor {
    /// A monitor every `every` steps (0: never).
    pub fn new(spec: &MonitorSpec, every: usize, probes: Probes) -> Result<Monitor> {
        let signals = if spec.is_on() { spec.registered()? } else { Vec::new() };
        if signals.iter().any(|s| s.needs_reference()) && probes.reference.is_none() {
            return Err(CovfError::spec(
                "monitor",
                "a signal needs the reference model and none was loaded (--monitor-ref)",
            ));
        }
        let n = signals.len();
        Ok(Monitor {
            signals,
            probes,
            every: if n == 0 { 0 } else { every },
            start: 0,
            rows: Vec::new(),
            seconds: vec![0.0; n],
        })
    }

    /// Steps between points (0: off).
    pub fn every(&self) -> usize {
        self.every
    }

    /// Points from `step` on, every `every()` steps after it (a replay of one epoch starts at its first
    /// step).
    pub fn starting_at(mut self, step: u64) -> Monitor {
        self.start = step;
        self
    }

    /// The step of the first point.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Whether a point falls at `step` (the first point, step 0 of a run, is one).
    pub fn due(&self, step: u64) -> bool {
        self.every > 0 && step >= self.start && (step - self.start).is_multiple_of(self.every as u64)
    }

    pub fn signals(&self) -> &[&'static dyn Signal] {
        &self.signals
    }

    /// Measures every signal at one point and appends its rows. `model` is the frozen model (f32, weights
    /// detached), `batch` the training batch of the step just taken (none at step 0), `generator` the
    /// method's perturbation generator as it stands.
    pub fn measure(
        &mut self,
        model: &dyn Classifier,
        batch: Option<&Batch>,
        generator: &Generator,
        at: &At,
    ) -> Result<()> {
        let point = Point::new(model, &self.probes, batch, generator, at.step);
        for (i, s) in self.signals.iter().enumerate() {
            let t0 = Instant::now();
            let values = s.measure(&point)?;
            self.seconds[i] += t0.elapsed().as_secs_f64();
            for (m, v) in s.metrics().iter().zip(values) {
                self.rows.push(MonitorRow {
                    run: at.run.to_string(),
                    method: at.method.to_string(),
                    seed: at.seed,
                    step: at.step,
                    epoch: at.epoch,
                    epoch_frac: at.epoch_frac,
                    lr: at.lr,
                    signal: s.name().to_string(),
                    metric: m.name.to_string(),
                    value: v,
                });
            }
        }
        Ok(())
    }

    /// One value per point of `metric`, in step order: (step, value).
    pub fn series(&self, metric: &str) -> Vec<(u64, f64)> {
        series(&self.rows, metric)
    }
}

/// The (step, value) series of one metric in `rows`, in step order.
pub fn series(rows: &[MonitorRow], metric: &str) -> Vec<(u64, f64)> {
    let mut s: Vec<(u64, f64)> = rows
        .iter()
        .filter(|r| r.metric == metric)
        .map(|r| (r.step, r.value))
        .collect();
    s.sort_by_key(|p| p.0);
    s
}

/// Per-example cosine similarity of two (N, …) tensors and which rows have one (both norms above 1e-12).
pub fn cosines(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let norm = |t: &Tensor| -> Result<Tensor> { Ok(t.flatten_from(1)?.sqr()?.sum(candle_core::D::Minus1)?.sqrt()?) };
    let (na, nb) = (norm(a)?, norm(b)?);
    let ok = (na.gt(1e-12)?.to_dtype(candle_core::DType::F32)? * nb.gt(1e-12)?.to_dtype(candle_core::DType::F32)?)?;
    let dot = (a.flatten_from(1)? * b.flatten_from(1)?)?.sum(candle_core::D::Minus1)?;
    let cos = ((dot / na.clamp(1e-12, f64::MAX)?)? / nb.clamp(1e-12, f64::MAX)?)?;
    Ok(((cos * &ok)?, ok))
}

/// The mean of the defined cosines (NaN when none is).
pub fn mean_cosine(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (cos, ok) = cosines(a, b)?;
    let used = ok.sum_all()?.to_scalar::<f32>()?;
    if used == 0.0 {
        return Ok(f64::NAN);
    }
    let total: Vec<f32> = cos.to_vec1()?;
    Ok(total.iter().map(|&c| f64::from(c)).sum::<f64>() / f64::from(used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::linear::TwoClassLinear;
    use crate::models::Mode;
    use candle_core::Device;

    /// Two classes with logits [w·x, w·x + 1]: the cross-entropy is log(1 + e) for class 0 whatever x is,
    /// a loss linear (constant) in x.
    struct ParallelLogits {
        w: Tensor,
    }

    impl Classifier for ParallelLogits {
        fn logits(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
            let z = x.flatten_from(1)?.matmul(&self.w.unsqueeze(1)?)?;
            Ok(Tensor::cat(&[&z, &(&z + 1.0)?], 1)?)
        }
    }

    fn batch(n: usize, dev: &Device) -> Batch {
        // Mid-grey images: no coordinate is cut by the [0, 1] box at ε = 0.1.
        let x = Tensor::full(0.5f32, (n, 1, 2, 2), dev).unwrap();
        let mut rng = crate::rng::Rng::new(5);
        let x = (x + rng.uniform_tensor(&[n, 1, 2, 2], -0.2, 0.2, dev).unwrap()).unwrap();
        let y = Tensor::from_vec((0..n as u32).map(|i| i % 2).collect::<Vec<_>>(), n, dev).unwrap();
        Batch {
            x,
            y,
            positions: (0..n).collect(),
            aug: vec![Default::default(); n],
        }
    }

    fn probes(reference: Option<Reference>) -> Probes {
        let dev = Device::Cpu;
        Probes {
            test: batch(8, &dev),
            train: batch(6, &dev),
            reference,
            cfg: ProbeCfg {
                eps: 0.1,
                pgd_steps: 10,
                pgd_alpha: 0.025,
                wong_steps: 5,
                seed: 3,
            },
        }
    }

    fn linear() -> TwoClassLinear {
        TwoClassLinear {
            w: Tensor::new(&[1.0f32, -2.0, 0.5, -0.1], &Device::Cpu).unwrap(),
            b: 0.0,
        }
    }

    const FGSM: Generator = Generator::Step {
        eps: 0.1,
        alpha: 0.1,
        start: 0.0,
    };

    /// The point every test measures at.
    const AT: At<'static> = At {
        run: "r",
        method: "fgsm",
        seed: 3,
        step: 7,
        epoch: 1,
        epoch_frac: 0.5,
        lr: 0.1,
    };

    fn value(m: &Monitor, metric: &str) -> f64 {
        let s = m.series(metric);
        assert_eq!(s.len(), 1, "{metric}: {s:?}");
        s[0].1
    }

    fn measure_all(model: &dyn Classifier, reference: Option<Reference>, generator: &Generator) -> Monitor {
        let spec = MonitorSpec::new(Every::Steps(1), None, 8, reference.as_ref().map(|r| r.label.clone())).unwrap();
        let mut m = Monitor::new(&spec, 1, probes(reference)).unwrap();
        let b = batch(6, &Device::Cpu);
        m.measure(model, Some(&b), generator, &AT).unwrap();
        m
    }

    #[test]
    fn a_linear_model_has_aligned_gradients_optimal_single_steps_and_no_abnormal_examples() {
        let model = linear();
        let m = measure_all(&model, None, &FGSM);
        // ∇x CE of a two-class linear model is (p1 − [y = 1])·w: the same direction everywhere for a label.
        assert!((value(&m, "grad_align") - 1.0).abs() < 1e-6);
        // PGD reaches the same corner ε·sign(±w) that FGSM jumps to.
        assert!((value(&m, "cos_fgsm_pgd") - 1.0).abs() < 1e-6);
        // Hence the same loss: no gap between PGD and the method's own (FGSM) perturbation.
        assert!(value(&m, "gap").abs() < 1e-6, "{}", value(&m, "gap"));
        assert_eq!(value(&m, "pgd_acc"), value(&m, "fgsm_acc"));
        // The cross-entropy is convex in x and the step ascends its gradient: the loss never falls.
        assert_eq!(value(&m, "aaer"), 0.0);
        // softplus is curved: a positive local-linearity error.
        assert!(value(&m, "lle") > 0.0);
        for metric in ["pgd_acc", "fgsm_acc", "wong_acc"] {
            let v = value(&m, metric);
            assert!((0.0..=1.0).contains(&v), "{metric} {v}");
        }
        // One row per metric of every signal that applies (no reference: no transfer), all at step 7.
        let want: usize = SIGNALS
            .iter()
            .filter(|s| !s.needs_reference())
            .map(|s| s.metrics().len())
            .sum();
        assert_eq!(m.rows.len(), want);
        assert!(m.rows.iter().all(|r| r.step == 7 && r.epoch == 1 && r.seed == 3));
    }

    #[test]
    fn the_local_linearity_error_of_a_loss_linear_in_x_is_zero() {
        let model = ParallelLogits {
            w: Tensor::new(&[1.0f32, -2.0, 0.5, -0.1], &Device::Cpu).unwrap(),
        };
        let m = measure_all(&model, None, &FGSM);
        assert!(value(&m, "lle") < 1e-10, "{}", value(&m, "lle"));
    }

    #[test]
    fn transfer_to_the_model_itself_equals_its_fgsm_accuracy_and_the_random_baseline_is_fixed() {
        let cfg = probes(None).cfg;
        let r = Reference::new(Box::new(linear()), "self@1".into(), &probes(None).test, &cfg).unwrap();
        let random = r.random_acc;
        let m = measure_all(&linear(), Some(r), &FGSM);
        assert_eq!(value(&m, "transfer_acc"), value(&m, "fgsm_acc"));
        assert_eq!(value(&m, "transfer_random"), random);
        assert!((0.0..=1.0).contains(&random));
    }

    #[test]
    fn values_do_not_depend_on_which_other_signals_run() {
        let all = measure_all(&linear(), None, &FGSM);
        let spec = MonitorSpec::new(Every::Steps(1), Some(&["lle".into(), "pgd".into()]), 8, None).unwrap();
        assert_eq!(spec.signals, ["pgd", "lle"], "registry order");
        let mut some = Monitor::new(&spec, 1, probes(None)).unwrap();
        let b = batch(6, &Device::Cpu);
        some.measure(&linear(), Some(&b), &FGSM, &AT).unwrap();
        for metric in ["pgd_acc", "pgd_loss", "lle"] {
            assert_eq!(
                value(&some, metric).to_bits(),
                value(&all, metric).to_bits(),
                "{metric}"
            );
        }
    }

    #[test]
    fn every_and_the_spec_are_checked() {
        assert_eq!(Every::parse("auto").unwrap().steps(469), 58);
        assert_eq!(
            Every::parse("auto").unwrap().steps(5),
            16,
            "never denser than every 16 steps"
        );
        assert_eq!(Every::parse("auto").unwrap().steps(200), 25);
        assert_eq!(Every::parse("0").unwrap(), Every::Off);
        assert_eq!(Every::parse("25").unwrap().steps(469), 25);
        assert!(Every::parse("often")
            .unwrap_err()
            .to_string()
            .contains("--monitor-every"));
        let e = MonitorSpec::new(Every::Auto, Some(&["transfer".into()]), 8, None).unwrap_err();
        assert!(e.to_string().contains("--monitor-ref"), "{e}");
        let e = MonitorSpec::new(Every::Auto, Some(&["pgdd".into()]), 8, None).unwrap_err();
        assert!(e.to_string().contains("grad-align"), "{e}");
        assert!(MonitorSpec::new(Every::Auto, None, 0, None).is_err());
        let all = MonitorSpec::new(Every::Auto, None, 8, Some("ref".into())).unwrap();
        assert_eq!(all.signals.len(), SIGNALS.len());
        assert!(!MonitorSpec::new(Every::Off, None, 8, None).unwrap().is_on());
        let json = serde_json::to_string(&all).unwrap();
        assert!(json.contains(r#""every":"auto""#), "{json}");
        assert_eq!(serde_json::from_str::<MonitorSpec>(&json).unwrap(), all);
        // `due` includes the initial model.
        let m = Monitor::new(
            &all,
            3,
            probes(Some(Reference {
                model: Box::new(linear()),
                label: "ref".into(),
                random_acc: 0.5,
            })),
        )
        .unwrap();
        assert!(m.due(0) && m.due(6) && !m.due(7));
    }
}
