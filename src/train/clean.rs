//! Standard (non-adversarial) training: the clean baseline, and the cost floor every method is compared against.

use super::{StepCtx, StepStats, TrainMethod};
use crate::data::Batch;
use crate::error::Result;
use crate::models::{Classifier, Mode, PreActResNet};

pub struct CleanTraining;

impl TrainMethod for CleanTraining {
    fn name(&self) -> String {
        "clean".into()
    }

    fn alpha(&self) -> f32 {
        0.0
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        let logits = model.logits(&batch.x, Mode::TRAIN)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &batch.y)?;
        ctx.update(&loss)?;
        let l = logits.detach();
        StepStats::from_logits(&l, &l, &batch.y)
    }
}
