//! FGSM training (Goodfellow et al. 2015): zero init, α = ε by default — the method that catastrophically overfits.

use serde::{Deserialize, Serialize};

use super::method::{alpha_flag, positive_alpha, Defaults, Flag, Flags, Meta, Method};
use super::{perturb_then_descend, MethodEnv, StepCtx, StepStats, TrainMethod};
use crate::attacks::{Fgsm as FgsmAttack, Generator};
use crate::data::Batch;
use crate::error::Result;
use crate::models::PreActResNet;

/// `--method fgsm`.
pub struct Fgsm;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FgsmConfig {
    pub alpha: f32,
}

impl Method for Fgsm {
    type Config = FgsmConfig;
    const NAME: &'static str = "fgsm";
    const HELP: &'static str = "FGSM (Goodfellow et al. 2015): zero start, one signed step α";
    const DISPLAY: &'static str = "FGSM";
    const COLOUR: Option<usize> = Some(0);
    const FLAGS: &'static [Flag] = &[alpha_flag("ε")];

    fn config(f: &Flags, d: &Defaults) -> Result<FgsmConfig> {
        Ok(FgsmConfig {
            alpha: f.pixels("alpha")?.unwrap_or(d.eps.value),
        })
    }

    fn alpha(c: &FgsmConfig) -> Option<f32> {
        Some(c.alpha)
    }

    fn validate(c: &FgsmConfig) -> Result<()> {
        positive_alpha(Self::NAME, c.alpha)
    }

    fn build(c: &FgsmConfig, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Ok(Box::new(FgsmTraining::new(env.eps, c.alpha)))
    }

    /// FGSM, zero start, step α.
    fn generator(c: &FgsmConfig, eps: f32, _: &Meta) -> Result<Generator> {
        Ok(Generator::Step {
            eps,
            alpha: c.alpha,
            start: 0.0,
        })
    }
}

pub struct FgsmTraining {
    attack: FgsmAttack,
}

impl FgsmTraining {
    pub fn new(eps: f32, alpha: f32) -> Self {
        FgsmTraining {
            attack: FgsmAttack { eps, alpha },
        }
    }
}

impl TrainMethod for FgsmTraining {
    fn alpha(&self) -> f32 {
        self.attack.alpha
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        perturb_then_descend(&self.attack, model, batch, ctx)
    }
}
