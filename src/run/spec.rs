//! The validated training specification: everything a run needs, as saved in `run.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::{Augment, DatasetKind};
pub use crate::eps::Eps;
use crate::error::{CovfError, Result};
use crate::models::Arch;
pub use crate::monitor::detect::Rule;
pub use crate::monitor::MonitorSpec;
use crate::optim::{LrSchedule, Precision};
pub use crate::train::{AttackBn, MethodSpec};

/// How each epoch's test metrics are measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochEvalSpec {
    /// Fixed, seeded subset of the test set (the whole test set when larger).
    pub test_subset: usize,
    pub pgd_steps: usize,
    pub pgd_alpha: f32,
    /// Wong et al.'s CO probe: PGD-`probe_steps` on the epoch's first training batch.
    pub probe_steps: usize,
    pub probe_drop: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    pub name: String,
    pub method: MethodSpec,
    pub dataset: DatasetKind,
    pub data_dir: Option<PathBuf>,
    pub arch: Arch,
    pub eps: Eps,
    pub epochs: usize,
    pub batch_size: usize,
    pub schedule: LrSchedule,
    pub momentum: f64,
    /// With the cyclic schedule: the momentum at the learning-rate peak, cycling `momentum` → this →
    /// `momentum` inversely to the rate (PyTorch's `CyclicLR(cycle_momentum=True)`, base_momentum 0.8).
    /// None: fixed momentum (also every run whose run.json predates the option).
    #[serde(default)]
    pub cycle_momentum: Option<f64>,
    pub weight_decay: f64,
    pub seed: u64,
    pub train_subset: Option<usize>,
    pub augment: Augment,
    pub eval: EpochEvalSpec,
    /// Batch norm while the method generates its training perturbation.
    #[serde(default = "AttackBn::legacy")]
    pub attack_bn: AttackBn,
    pub save_every_epoch: bool,
    pub device: String,
    /// Compute dtype of the training passes (master weights stay f32). Runs from before `--dtype` are f32.
    #[serde(default)]
    pub precision: Precision,
    /// The in-training monitor (`--monitor-every`, …). Runs from before it read as off.
    #[serde(default)]
    pub monitor: MonitorSpec,
    /// `--early-stop`: stop when this detector fires on the monitor, keeping the point before.
    #[serde(default)]
    pub early_stop: Option<Rule>,
}

impl TrainSpec {
    pub fn default_name(method: &MethodSpec, dataset: DatasetKind, arch: Arch, eps: &Eps, seed: u64) -> String {
        format!(
            "{}-{}-{}-eps{}-s{seed}",
            method.label(),
            dataset.name(),
            arch.name(),
            eps.slug()
        )
    }

    pub fn validate(&self) -> Result<()> {
        validate_run_name(&self.name)?;
        let bad = |w: &str, m: String| Err(CovfError::spec(w, m));
        if !self.method.trainable() {
            return bad(
                "method",
                format!(
                    "'{}' names a model covf did not train: it can be evaluated and analysed, not trained",
                    self.method.label()
                ),
            );
        }
        self.schedule.validate()?;
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch size", "must be at least 1".into());
        }
        self.method.validate()?;
        self.method.check_precision(self.precision)?;
        if !(0.0..1.0).contains(&self.momentum) || self.weight_decay < 0.0 {
            return bad(
                "optimizer",
                format!(
                    "momentum {} must be in [0, 1), weight decay {} ≥ 0",
                    self.momentum, self.weight_decay
                ),
            );
        }
        if let Some(low) = self.cycle_momentum {
            if !matches!(self.schedule, LrSchedule::Cyclic { .. }) {
                return bad(
                    "cycle momentum",
                    "momentum cycles with the cyclic learning rate only: pass --no-cycle-momentum with another \
                     schedule"
                        .into(),
                );
            }
            if !(0.0..=self.momentum).contains(&low) {
                return bad(
                    "cycle momentum",
                    format!("base momentum {low} must be in [0, momentum {}]", self.momentum),
                );
            }
        }
        if self.eval.test_subset == 0 || self.eval.pgd_steps == 0 {
            return bad("evaluation", "test subset and PGD steps must be at least 1".into());
        }
        if let Some(rule) = &self.early_stop {
            rule.detector()?;
            if !self.monitor.is_on() || !self.monitor.signals.contains(&rule.signal) {
                return bad(
                    "--early-stop",
                    format!(
                        "'{}' reads the monitor's {} signal, which this run does not measure: turn the monitor \
                         on (--monitor-every) with that signal (--monitor-signals)",
                        rule.signal, rule.signal
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Run names become directory names under checkpoints/: no separators, no `..`, nothing hidden.
pub fn validate_run_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(CovfError::spec(
            "run name",
            format!("'{name}': use letters, digits, '-', '_', '.', '+' only, not starting with '.'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names() {
        assert!(validate_run_name("fgsm-fmnist-preact-tiny-eps0.3-s0").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", "..", "a\\b"] {
            assert!(validate_run_name(bad).is_err(), "{bad}");
        }
    }
}
