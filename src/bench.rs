//! Training-step throughput (images per second) of each method on seeded synthetic data, and the cost of
//! one in-training monitor point per signal: `covf bench`.
//!
//! The steps timed are the real training methods (`TrainMethod::step`: attack, forward, backward, SGD
//! update), so a speed-up measured here is one `covf train` gets. Synthetic inputs are enough: no op's cost
//! depends on pixel values.

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::attacks::Generator;
use crate::data::{AugParams, Batch};
use crate::error::{CovfError, Result};
use crate::models::{self, ArchSpec};
use crate::monitor::{At, Every, Monitor, MonitorSpec, ProbeCfg, Probes, Reference, SIGNALS};
use crate::optim::LrSchedule;
use crate::optim::{LossScaler, Precision, Sgd};
use crate::rng::Rng;
use crate::run::MethodSpec;
use crate::train::{MethodEnv, StepCtx};

/// What to time: one model, one input shape, one batch size, several methods.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub arch: ArchSpec,
    pub batch: usize,
    pub eps: f32,
    pub methods: Vec<MethodSpec>,
    /// Untimed steps first (allocator and thread-pool warm-up).
    pub warmup: usize,
    pub iters: usize,
    pub seed: u64,
    pub precision: Precision,
}

impl BenchSpec {
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.iters == 0 {
            return Err(CovfError::spec(
                "bench",
                format!(
                    "batch ({}) and iterations ({}) must be at least 1",
                    self.batch, self.iters
                ),
            ));
        }
        if self.methods.is_empty() {
            return Err(CovfError::spec("bench", "no step to time"));
        }
        Ok(())
    }
}

/// One timed step.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub step: String,
    pub arch: String,
    /// `CxHxW`.
    pub input: String,
    pub batch: usize,
    pub threads: usize,
    pub device: String,
    /// Compute dtype (`f32`, `bf16`, `f16`).
    pub dtype: String,
    pub iters: usize,
    pub median_s: f64,
    pub min_s: f64,
    /// `batch / median_s`.
    pub images_per_s: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The seeded synthetic batch every timing uses.
fn synthetic_batch(spec: &BenchSpec, dev: &Device) -> Result<Batch> {
    let a = &spec.arch;
    let (c, s) = (a.in_channels, a.image_size);
    let mut rng = Rng::derive(spec.seed, "bench-data", 0);
    let x = rng.uniform_tensor(&[spec.batch, c, s, s], 0.0, 1.0, dev)?;
    let labels: Vec<u32> = (0..spec.batch).map(|_| rng.below(a.num_classes) as u32).collect();
    let y = Tensor::from_vec(labels, spec.batch, dev)?;
    Ok(Batch {
        x,
        y,
        positions: (0..spec.batch).collect(),
        aug: vec![AugParams::default(); spec.batch],
    })
}

/// A result row of `times` (seconds) for `step`.
fn row(spec: &BenchSpec, dev: &Device, step: String, mut times: Vec<f64>) -> BenchRow {
    let a = &spec.arch;
    let (c, s) = (a.in_channels, a.image_size);
    let min_s = times.iter().copied().fold(f64::INFINITY, f64::min);
    let median_s = median(&mut times);
    BenchRow {
        step,
        arch: a.arch.name().to_string(),
        input: format!("{c}x{s}x{s}"),
        batch: spec.batch,
        threads: candle_core::utils::get_num_threads(),
        device: if dev.is_cpu() { "cpu".into() } else { format!("{dev:?}") },
        dtype: spec.precision.name().into(),
        iters: spec.iters,
        median_s,
        min_s,
        images_per_s: spec.batch as f64 / median_s,
    }
}

/// Times one in-training monitor point of each signal alone (`monitor:<signal>`), then of every signal
/// together (`monitor:all`, PGD's and FGSM's perturbations shared), on a fresh seeded model, with the bench's
/// batch as the test probe, Wong's probe and the training batch, FGSM as the method's generator, and a second
/// seeded model as the transfer reference. The methods of `spec` are not used.
pub fn run_monitor(spec: &BenchSpec, dev: &Device, mut progress: impl FnMut(&BenchRow)) -> Result<Vec<BenchRow>> {
    spec.validate()?;
    let batch = synthetic_batch(spec, dev)?;
    let (model, _) = models::build(&spec.arch, dev, spec.seed)?;
    let model = model.detached();
    let cfg = ProbeCfg {
        eps: spec.eps,
        pgd_steps: 10,
        pgd_alpha: spec.eps / 4.0,
        wong_steps: 5,
        seed: spec.seed,
    };
    let probes = || -> Result<Probes> {
        let (other, _) = models::build(&spec.arch, dev, spec.seed + 1)?;
        Ok(Probes {
            test: batch.clone(),
            train: batch.clone(),
            reference: Some(Reference::new(
                Box::new(other.detached()),
                "bench".into(),
                &batch,
                &cfg,
            )?),
            cfg,
        })
    };
    let generator = Generator::Step {
        eps: spec.eps,
        alpha: spec.eps,
        start: 0.0,
    };
    let mut picks: Vec<(String, Option<Vec<String>>)> = SIGNALS
        .iter()
        .map(|s| (format!("monitor:{}", s.name()), Some(vec![s.name().to_string()])))
        .collect();
    picks.push(("monitor:all".into(), None));
    let mut rows = Vec::new();
    for (label, signals) in picks {
        let mspec = MonitorSpec::new(Every::Steps(1), signals.as_deref(), spec.batch, Some("bench".into()))?;
        let mut monitor = Monitor::new(&mspec, 1, probes()?)?;
        let mut times = Vec::with_capacity(spec.iters);
        for i in 0..spec.warmup + spec.iters {
            let t = Instant::now();
            monitor.measure(
                &model,
                Some(&batch),
                &generator,
                &At {
                    run: "bench",
                    method: "fgsm",
                    seed: spec.seed,
                    step: i as u64,
                    epoch: 1,
                    epoch_frac: 0.0,
                    lr: 0.0,
                },
            )?;
            dev.synchronize()?;
            if i >= spec.warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let r = row(spec, dev, label, times);
        progress(&r);
        rows.push(r);
    }
    Ok(rows)
}

/// Times every method of `spec` on a fresh model each (same seed), returning one row per method.
pub fn run(spec: &BenchSpec, dev: &Device, mut progress: impl FnMut(&BenchRow)) -> Result<Vec<BenchRow>> {
    spec.validate()?;
    spec.precision.check_device(dev)?;
    let a = &spec.arch;
    let (c, s) = (a.in_channels, a.image_size);
    let batch = synthetic_batch(spec, dev)?;
    let mut rows = Vec::new();
    for m in &spec.methods {
        let (model, store) = models::build(a, dev, spec.seed)?;
        let model = model.with_compute_dtype(spec.precision.dtype());
        let mut opt = Sgd::new(store.trainable(), 0.9, 5e-4);
        if spec.precision.needs_loss_scaling() {
            opt = opt.with_loss_scaling(LossScaler::default());
        }
        let env = MethodEnv {
            eps: spec.eps,
            n_train: spec.batch,
            shape: (c, s, s),
            pad: 0,
            seed: spec.seed,
            epochs: 1,
        };
        let mut method = m.build(&env)?;
        // A small constant rate keeps the model stable over many repeated steps on one batch.
        let schedule = LrSchedule::Constant { lr: 0.01 };
        let mut step_rng = Rng::derive(spec.seed, "bench-step", 0);
        let mut times = Vec::with_capacity(spec.iters);
        for i in 0..spec.warmup + spec.iters {
            let t = Instant::now();
            let mut ctx = StepCtx {
                opt: &mut opt,
                lr: 0.01,
                rng: &mut step_rng,
                attack_mode: m.reference_attack_bn().mode(),
                schedule: &schedule,
                t: (0.0, 0.5),
            };
            method.step(&model, &batch, &mut ctx)?;
            dev.synchronize()?;
            if i >= spec.warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let r = row(spec, dev, m.label(), times);
        progress(&r);
        rows.push(r);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DatasetKind;
    use crate::models::Arch;
    use crate::train::{clean, fgsm};

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn bench_runs_each_method_once_per_row() {
        let spec = BenchSpec {
            arch: ArchSpec::new(Arch::PreActTiny, DatasetKind::FashionMnist),
            batch: 4,
            eps: 0.1,
            methods: vec![
                MethodSpec::new::<clean::Clean>(clean::CleanConfig {}),
                MethodSpec::new::<fgsm::Fgsm>(fgsm::FgsmConfig { alpha: 0.1 }),
            ],
            warmup: 0,
            iters: 2,
            seed: 0,
            precision: Precision::F32,
        };
        let rows = run(&spec, &Device::Cpu, |_| {}).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].step, "clean");
        assert_eq!(rows[1].step, "fgsm");
        assert_eq!(rows[1].input, "1x28x28");
        assert!(rows.iter().all(|r| r.images_per_s > 0.0 && r.min_s <= r.median_s));
        let bad = BenchSpec {
            iters: 0,
            ..spec.clone()
        };
        assert!(run(&bad, &Device::Cpu, |_| {}).is_err());
        // One monitor row per signal, then all of them together.
        let rows = run_monitor(&spec, &Device::Cpu, |_| {}).unwrap();
        let steps: Vec<&str> = rows.iter().map(|r| r.step.as_str()).collect();
        assert_eq!(steps.len(), crate::monitor::SIGNALS.len() + 1);
        assert_eq!((steps[0], *steps.last().unwrap()), ("monitor:pgd", "monitor:all"));
        assert!(rows.iter().all(|r| r.median_s > 0.0));
    }
}
