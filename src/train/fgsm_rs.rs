//! FGSM-RS / F+FGSM training (Wong et al. 2020): uniform random start, α = 1.25ε by default.

use serde::{Deserialize, Serialize};

use super::method::{alpha_flag, positive_alpha, Defaults, Flag, Flags, Meta, Method};
use super::{perturb_then_descend, MethodEnv, StepCtx, StepStats, TrainMethod};
use crate::attacks::{FgsmRs as FgsmRsAttack, Generator};
use crate::data::Batch;
use crate::error::Result;
use crate::models::PreActResNet;

/// `--method fgsm-rs`.
pub struct FgsmRs;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FgsmRsConfig {
    pub alpha: f32,
}

impl Method for FgsmRs {
    type Config = FgsmRsConfig;
    const NAME: &'static str = "fgsm-rs";
    const HELP: &'static str = "FGSM-RS (Wong et al. 2020): uniform random start, one signed step α";
    const DISPLAY: &'static str = "FGSM-RS";
    const COLOUR: Option<usize> = Some(4);
    const FLAGS: &'static [Flag] = &[alpha_flag("1.25ε")];

    fn config(f: &Flags, d: &Defaults) -> Result<FgsmRsConfig> {
        Ok(FgsmRsConfig {
            alpha: f.pixels("alpha")?.unwrap_or(1.25 * d.eps.value),
        })
    }

    fn alpha(c: &FgsmRsConfig) -> Option<f32> {
        Some(c.alpha)
    }

    fn validate(c: &FgsmRsConfig) -> Result<()> {
        positive_alpha(Self::NAME, c.alpha)
    }

    fn build(c: &FgsmRsConfig, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Ok(Box::new(FgsmRsTraining::new(env.eps, c.alpha)))
    }

    /// Uniform start, step α.
    fn generator(c: &FgsmRsConfig, eps: f32, _: &Meta) -> Result<Generator> {
        Ok(Generator::Step {
            eps,
            alpha: c.alpha,
            start: 1.0,
        })
    }
}

pub struct FgsmRsTraining {
    attack: FgsmRsAttack,
}

impl FgsmRsTraining {
    pub fn new(eps: f32, alpha: f32) -> Self {
        FgsmRsTraining {
            attack: FgsmRsAttack { eps, alpha },
        }
    }
}

impl TrainMethod for FgsmRsTraining {
    fn alpha(&self) -> f32 {
        self.attack.alpha
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        perturb_then_descend(&self.attack, model, batch, ctx)
    }
}
