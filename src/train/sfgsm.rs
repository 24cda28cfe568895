//! S+FGSM (Kim et al. 2021, "Understanding catastrophic overfitting in single-step adversarial
//! training"; the authors' code Harry24k/catastrophic-overfitting, `co_adv_trainer.py`): take the
//! FGSM-RS perturbation δ; an example already misclassified at the random-start point trains on the
//! clean image; for the others check the c − 1 intermediate points x + (k/c)·δ, k = 1 … c − 1, without
//! gradients and with batch norm in eval mode (as the reference's `model.eval()` there), and train on
//! the smallest one that is misclassified (the full step when none is). Stopping at the decision
//! boundary keeps the step from overshooting into the distorted region that catastrophic overfitting
//! creates.

use serde::{Deserialize, Serialize};

use super::method::{alpha_flag, positive_alpha, Defaults, Flag, Flags, Meta, Method};
use super::{descend, MethodEnv, StepCtx, StepStats, TrainMethod};
use crate::attacks::{cut_at_first_misclassified, sign_step, uniform_start, Generator};
use crate::data::Batch;
use crate::error::{CovfError, Result};
use crate::models::PreActResNet;

/// `--method sfgsm`.
pub struct Sfgsm;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SfgsmConfig {
    pub alpha: f32,
    pub checkpoints: usize,
}

impl Method for Sfgsm {
    type Config = SfgsmConfig;
    const NAME: &'static str = "sfgsm";
    const HELP: &'static str = "S+FGSM (Kim et al. 2021): FGSM-RS stopped at the first misclassified checkpoint";
    const DISPLAY: &'static str = "S+FGSM";
    const COLOUR: Option<usize> = Some(5);
    const FLAGS: &'static [Flag] = &[
        alpha_flag("1.25ε"),
        Flag {
            name: "sfgsm-checkpoints",
            help: "S+FGSM: checkpoints c along the FGSM-RS step (c − 1 are checked)",
            value: Some("C"),
            default: "3",
        },
    ];

    fn config(f: &Flags, d: &Defaults) -> Result<SfgsmConfig> {
        Ok(SfgsmConfig {
            alpha: f.pixels("alpha")?.unwrap_or(1.25 * d.eps.value),
            checkpoints: f.parse("sfgsm-checkpoints")?.unwrap_or(3),
        })
    }

    fn alpha(c: &SfgsmConfig) -> Option<f32> {
        Some(c.alpha)
    }

    fn validate(c: &SfgsmConfig) -> Result<()> {
        positive_alpha(Self::NAME, c.alpha)?;
        if c.checkpoints == 0 {
            return Err(CovfError::spec("sfgsm", "checkpoints must be at least 1"));
        }
        Ok(())
    }

    fn build(c: &SfgsmConfig, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Ok(Box::new(SfgsmTraining::new(env.eps, c.alpha, c.checkpoints)))
    }

    /// The FGSM-RS step cut at the first of the c checkpoints that is misclassified, 0 where the random-start
    /// point is already misclassified (as in training).
    fn generator(c: &SfgsmConfig, eps: f32, _: &Meta) -> Result<Generator> {
        Ok(Generator::Sfgsm {
            eps,
            alpha: c.alpha,
            checkpoints: c.checkpoints,
        })
    }
}

pub struct SfgsmTraining {
    eps: f32,
    alpha: f32,
    checkpoints: usize,
}

impl SfgsmTraining {
    pub fn new(eps: f32, alpha: f32, checkpoints: usize) -> Self {
        SfgsmTraining {
            eps,
            alpha,
            checkpoints: checkpoints.max(1),
        }
    }
}

impl TrainMethod for SfgsmTraining {
    fn alpha(&self) -> f32 {
        self.alpha
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        let (x, y) = (&batch.x, &batch.y);
        let frozen = model.detached();
        let start = uniform_start(x, self.eps, ctx.rng)?;
        let (delta, start_logits) = sign_step(&frozen, x, &start, y, self.alpha, self.eps, ctx.attack_mode)?;
        let delta = cut_at_first_misclassified(&frozen, x, &delta, y, &start_logits, self.checkpoints)?;
        descend(model, batch, &delta, None, ctx)
    }
}
