//! PGD-N adversarial training (Madry et al. 2018): the multi-step reference that does not overfit catastrophically.

use super::{perturb_then_descend, StepCtx, StepStats, TrainMethod};
use crate::attacks::Pgd;
use crate::data::Batch;
use crate::error::Result;
use crate::models::PreActResNet;

pub struct PgdTraining {
    attack: Pgd,
}

impl PgdTraining {
    pub fn new(eps: f32, alpha: f32, steps: usize, restarts: usize) -> Self {
        PgdTraining {
            attack: Pgd {
                eps,
                alpha,
                steps,
                restarts,
                random_start: true,
            },
        }
    }
}

impl TrainMethod for PgdTraining {
    fn name(&self) -> String {
        format!("pgd{}", self.attack.steps)
    }

    fn alpha(&self) -> f32 {
        self.attack.alpha
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        perturb_then_descend(&self.attack, model, batch, ctx)
    }
}
