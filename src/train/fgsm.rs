//! FGSM training (Goodfellow et al. 2015): zero init, α = ε by default — the method that catastrophically overfits.

use super::{perturb_then_descend, StepCtx, StepStats, TrainMethod};
use crate::attacks::Fgsm;
use crate::data::Batch;
use crate::error::Result;
use crate::models::PreActResNet;

pub struct FgsmTraining {
    attack: Fgsm,
}

impl FgsmTraining {
    pub fn new(eps: f32, alpha: f32) -> Self {
        FgsmTraining {
            attack: Fgsm { eps, alpha },
        }
    }
}

impl TrainMethod for FgsmTraining {
    fn name(&self) -> String {
        "fgsm".into()
    }

    fn alpha(&self) -> f32 {
        self.attack.alpha
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        perturb_then_descend(&self.attack, model, batch, ctx)
    }
}
