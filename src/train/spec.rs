//! The validated training specification: everything a run needs, as saved in `run.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::{Augment, DatasetKind};
use crate::error::{CovfError, Result};
use crate::models::Arch;
use crate::optim::LrSchedule;

/// A perturbation budget in pixel units, kept with the text the user wrote (`8/255`, `0.3`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eps {
    pub value: f32,
    pub text: String,
}

impl Eps {
    /// Parses `8/255` or `0.3`; the value must be in (0, 1] (pixels live in [0, 1]).
    pub fn parse(s: &str) -> Result<Eps> {
        let s = s.trim();
        let bad = |m: &str| CovfError::spec("epsilon", format!("'{s}': {m}; write it as 8/255 or 0.3"));
        let value = match s.split_once('/') {
            Some((a, b)) => {
                let a: f64 = a.trim().parse().map_err(|_| bad("numerator is not a number"))?;
                let b: f64 = b.trim().parse().map_err(|_| bad("denominator is not a number"))?;
                if b == 0.0 {
                    return Err(bad("division by zero"));
                }
                a / b
            }
            None => s.parse::<f64>().map_err(|_| bad("not a number"))?,
        };
        if !(value > 0.0 && value <= 1.0) {
            return Err(bad("must be in (0, 1] in pixel units"));
        }
        Ok(Eps {
            value: value as f32,
            text: s.to_string(),
        })
    }

    /// For file names: `8/255` -> `8-255`.
    pub fn slug(&self) -> String {
        self.text.replace('/', "-")
    }

    /// The same fraction of a different budget (a step given at ε = 8/255 scaled to this ε).
    pub fn scaled(&self, at_8_255: f32) -> f32 {
        at_8_255 * self.value / (8.0 / 255.0)
    }
}

/// The training method and its own parameters (α in pixel units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum MethodSpec {
    /// Standard training on clean inputs (the non-robust baseline).
    Clean,
    Fgsm {
        alpha: f32,
    },
    FgsmRs {
        alpha: f32,
    },
    Pgd {
        steps: usize,
        alpha: f32,
        restarts: usize,
    },
}

impl MethodSpec {
    /// The method's short label, used in run names and tables: `fgsm`, `fgsm-rs`, `pgd10`.
    pub fn label(&self) -> String {
        match self {
            MethodSpec::Clean => "clean".into(),
            MethodSpec::Fgsm { .. } => "fgsm".into(),
            MethodSpec::FgsmRs { .. } => "fgsm-rs".into(),
            MethodSpec::Pgd { steps, .. } => format!("pgd{steps}"),
        }
    }

    pub fn alpha(&self) -> f32 {
        match self {
            MethodSpec::Clean => 0.0,
            MethodSpec::Fgsm { alpha } | MethodSpec::FgsmRs { alpha } | MethodSpec::Pgd { alpha, .. } => *alpha,
        }
    }
}

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
    pub weight_decay: f64,
    pub seed: u64,
    pub train_subset: Option<usize>,
    pub augment: Augment,
    pub eval: EpochEvalSpec,
    pub save_every_epoch: bool,
    pub device: String,
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
        self.schedule.validate()?;
        let bad = |w: &str, m: String| Err(CovfError::spec(w, m));
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch size", "must be at least 1".into());
        }
        let a = self.method.alpha();
        if !(a > 0.0 && a.is_finite()) {
            return bad("alpha", format!("{a} must be positive"));
        }
        if let MethodSpec::Pgd { steps, restarts, .. } = self.method {
            if steps == 0 || restarts == 0 {
                return bad(
                    "pgd",
                    format!("steps {steps} and restarts {restarts} must be at least 1"),
                );
            }
        }
        if !(0.0..1.0).contains(&self.momentum) || self.weight_decay < 0.0 {
            return bad(
                "optimizer",
                format!(
                    "momentum {} must be in [0, 1), weight decay {} ≥ 0",
                    self.momentum, self.weight_decay
                ),
            );
        }
        if self.eval.test_subset == 0 || self.eval.pgd_steps == 0 {
            return bad("evaluation", "test subset and PGD steps must be at least 1".into());
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
    fn eps_parsing() {
        assert!((Eps::parse("8/255").unwrap().value - 8.0 / 255.0).abs() < 1e-9);
        assert_eq!(Eps::parse("0.3").unwrap().value, 0.3);
        assert_eq!(Eps::parse("8/255").unwrap().slug(), "8-255");
        for bad in ["0", "-0.1", "1.5", "8/0", "abc", "8/x", "nan", "inf"] {
            assert!(Eps::parse(bad).is_err(), "{bad}");
        }
        assert!((Eps::parse("16/255").unwrap().scaled(2.0 / 255.0) - 4.0 / 255.0).abs() < 1e-7);
    }

    #[test]
    fn run_names() {
        assert!(validate_run_name("fgsm-fmnist-preact-tiny-eps0.3-s0").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", "..", "a\\b"] {
            assert!(validate_run_name(bad).is_err(), "{bad}");
        }
    }
}
