//! FGSM-RS / F+FGSM training (Wong et al. 2020): uniform random start, α = 1.25ε by default.

use super::{perturb_then_descend, StepCtx, StepStats, TrainMethod};
use crate::attacks::FgsmRs;
use crate::data::Batch;
use crate::error::Result;
use crate::models::PreActResNet;

pub struct FgsmRsTraining {
    attack: FgsmRs,
}

impl FgsmRsTraining {
    pub fn new(eps: f32, alpha: f32) -> Self {
        FgsmRsTraining {
            attack: FgsmRs { eps, alpha },
        }
    }
}

impl TrainMethod for FgsmRsTraining {
    fn name(&self) -> String {
        "fgsm-rs".into()
    }

    fn alpha(&self) -> f32 {
        self.attack.alpha
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        perturb_then_descend(&self.attack, model, batch, ctx)
    }
}
