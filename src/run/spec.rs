//! The validated training specification: everything a run needs, as saved in `run.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::{Augment, DatasetKind};
use crate::error::{CovfError, Result};
use crate::models::{Arch, Mode};
use crate::optim::{LrSchedule, Precision};

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
    /// Free adversarial training: each minibatch replayed `replays` times (step ε); the run's epochs
    /// are passes over the data, already divided by `replays`.
    Free {
        replays: usize,
    },
    /// ATTA-K: per-example perturbations carried across epochs, `steps` PGD steps each epoch, reset
    /// every `reset` epochs (0 = never).
    Atta {
        steps: usize,
        alpha: f32,
        reset: usize,
    },
    /// S+FGSM: the FGSM-RS step checked at `checkpoints` − 1 intermediate points.
    Sfgsm {
        alpha: f32,
        checkpoints: usize,
    },
    Apart(ApartConfig),
    ApartSimple(ApartConfig),
    /// FGSM + GradAlign, the alignment gradient by finite differences of radius `fd_radius`. As the
    /// reference, ∇x L(x) is held fixed and only ∇x L(x + η) is differentiated; `through_clean`
    /// differentiates both, as the paper's formula reads.
    GradAlign {
        lambda: f32,
        fd_radius: f32,
        #[serde(default = "differentiated_both")]
        through_clean: bool,
    },
    /// N-FGSM: noise U(−noise·ε, noise·ε), one step α, no projection to the ε-ball.
    Nfgsm {
        alpha: f32,
        noise: f32,
    },
    /// A model covf did not train (a plain state dict, or a checkpoint from before covf embedded its spec):
    /// it can be evaluated and analysed, not trained; `label` is what tables call its method.
    External {
        label: String,
    },
}

/// Batch norm while a training method generates its perturbation (the update pass always uses batch
/// statistics and updates the running ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackBn {
    /// Batch statistics, running statistics left alone: what the evaluated model sees does not depend on
    /// the number of attack steps (covf before the fidelity issue, and runs whose run.json predates it).
    Batch,
    /// PyTorch's train mode: batch statistics, and every attack forward also updates the running
    /// statistics (fast_adversarial, APART, GradAlign, N-FGSM, S+FGSM's FGSM-RS step).
    Train,
    /// Running statistics (ATTA's `model.eval()` in its attack).
    Eval,
}

impl AttackBn {
    pub fn parse(s: &str) -> Result<AttackBn> {
        match s {
            "batch" => Ok(AttackBn::Batch),
            "train" => Ok(AttackBn::Train),
            "eval" => Ok(AttackBn::Eval),
            _ => Err(CovfError::spec(
                "attack batch norm",
                format!("'{s}': use train, batch or eval"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AttackBn::Batch => "batch",
            AttackBn::Train => "train",
            AttackBn::Eval => "eval",
        }
    }

    /// The batch-norm mode of the attack's forward passes.
    pub fn mode(self) -> Mode {
        match self {
            AttackBn::Batch => Mode::ATTACK,
            AttackBn::Train => Mode::TRAIN,
            AttackBn::Eval => Mode::EVAL,
        }
    }

    /// What the method's reference code does: ATTA attacks in eval mode, every other reference in train mode.
    pub fn reference_for(method: &MethodSpec) -> AttackBn {
        match method {
            MethodSpec::Atta { .. } => AttackBn::Eval,
            _ => AttackBn::Train,
        }
    }

    /// Runs written before the choice existed attacked with batch statistics.
    fn legacy() -> AttackBn {
        AttackBn::Batch
    }
}

/// GradAlign runs whose run.json predates `through_clean` differentiated both gradients.
fn differentiated_both() -> bool {
    true
}

/// APART's generator settings (Algorithm 1; defaults and their sources in cli/train.rs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApartConfig {
    /// Layer-wise perturbations δi at the residual blocks (off: the `--no-layerwise` ablation).
    pub layerwise: bool,
    /// Learned per-example initialisation ω_x (off: the `--no-init` ablation, δ starts at 0).
    pub learned_init: bool,
    /// Initial input step α1 (pixel units).
    pub alpha_init: f32,
    /// Initial α_ω, the scale of the learned initialisation.
    pub init_scale: f32,
    /// Initial αi of the residual blocks.
    pub block_alpha_init: f32,
    /// Peak of the cyclic step-size learning rate μα.
    pub alpha_lr: f64,
    /// L2 penalty λ on the step sizes.
    pub alpha_l2: f64,
    pub alpha_momentum: f64,
    /// Standard deviation of ω's random initialisation.
    pub omega_std: f32,
}

impl MethodSpec {
    /// The method's short label, used in run names and tables: `fgsm`, `fgsm-rs`, `pgd10`.
    pub fn label(&self) -> String {
        match self {
            MethodSpec::Clean => "clean".into(),
            MethodSpec::Fgsm { .. } => "fgsm".into(),
            MethodSpec::FgsmRs { .. } => "fgsm-rs".into(),
            MethodSpec::Pgd { steps, .. } => format!("pgd{steps}"),
            MethodSpec::Free { replays } => format!("free{replays}"),
            MethodSpec::Atta { steps, .. } => format!("atta{steps}"),
            MethodSpec::Sfgsm { .. } => "sfgsm".into(),
            MethodSpec::Apart(c) => match (c.layerwise, c.learned_init) {
                (true, true) => "apart".into(),
                (false, true) => "apart-no-layerwise".into(),
                (true, false) => "apart-no-init".into(),
                (false, false) => "apart-no-layerwise-no-init".into(),
            },
            MethodSpec::ApartSimple(_) => "apart-simple".into(),
            MethodSpec::GradAlign { .. } => "gradalign".into(),
            MethodSpec::Nfgsm { .. } => "nfgsm".into(),
            MethodSpec::External { label } => label.clone(),
        }
    }

    /// The fixed input step α, for methods that have one.
    pub fn alpha(&self) -> Option<f32> {
        match self {
            MethodSpec::Clean
            | MethodSpec::Free { .. }
            | MethodSpec::GradAlign { .. }
            | MethodSpec::External { .. } => None,
            MethodSpec::Apart(c) | MethodSpec::ApartSimple(c) => Some(c.alpha_init),
            MethodSpec::Fgsm { alpha }
            | MethodSpec::FgsmRs { alpha }
            | MethodSpec::Pgd { alpha, .. }
            | MethodSpec::Atta { alpha, .. }
            | MethodSpec::Sfgsm { alpha, .. }
            | MethodSpec::Nfgsm { alpha, .. } => Some(*alpha),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |w: &str, m: String| Err(CovfError::spec(w, m));
        if let Some(a) = self.alpha() {
            let apart = matches!(self, MethodSpec::Apart(_) | MethodSpec::ApartSimple(_));
            if !(a.is_finite() && (a > 0.0 || (apart && a >= 0.0))) {
                return bad("alpha", format!("{a} must be positive"));
            }
        }
        match self {
            MethodSpec::External { label } => bad(
                "method",
                format!("'{label}' names a model covf did not train: it can be evaluated and analysed, not trained"),
            ),
            MethodSpec::Pgd { steps, restarts, .. } if *steps == 0 || *restarts == 0 => bad(
                "pgd",
                format!("steps {steps} and restarts {restarts} must be at least 1"),
            ),
            MethodSpec::Free { replays } if *replays == 0 => bad("free", "replays must be at least 1".into()),
            MethodSpec::Atta { steps, .. } if *steps == 0 => bad("atta", "steps must be at least 1".into()),
            MethodSpec::Sfgsm { checkpoints, .. } if *checkpoints == 0 => {
                bad("sfgsm", "checkpoints must be at least 1".into())
            }
            MethodSpec::GradAlign { lambda, fd_radius, .. } if !(*lambda >= 0.0 && *fd_radius > 0.0) => bad(
                "gradalign",
                format!("λ {lambda} must be ≥ 0 and the finite-difference radius {fd_radius} > 0"),
            ),
            MethodSpec::Nfgsm { noise, .. } if !(*noise >= 0.0 && noise.is_finite()) => {
                bad("nfgsm", format!("noise multiplier {noise} must be ≥ 0"))
            }
            MethodSpec::Apart(c) | MethodSpec::ApartSimple(c) => {
                let ok = [
                    f64::from(c.init_scale),
                    f64::from(c.block_alpha_init),
                    c.alpha_lr,
                    c.alpha_l2,
                    f64::from(c.omega_std),
                ]
                .iter()
                .all(|v| v.is_finite() && *v >= 0.0)
                    && (0.0..1.0).contains(&c.alpha_momentum);
                if ok {
                    Ok(())
                } else {
                    bad(
                        "apart",
                        format!("step sizes, μα, λ and ω's scale must be finite and ≥ 0, momentum in [0, 1): {c:?}"),
                    )
                }
            }
            _ => Ok(()),
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
        self.method.validate()?;
        if self.precision != Precision::F32 && matches!(self.method, MethodSpec::GradAlign { .. }) {
            return bad(
                "dtype",
                format!(
                    "gradalign needs --dtype f32: its finite-difference alignment gradient subtracts two losses \
                     taken 2r apart, and in {} that difference is rounding noise",
                    self.precision.name()
                ),
            );
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
