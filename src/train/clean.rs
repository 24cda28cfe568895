//! Standard (non-adversarial) training: the clean baseline, and the cost floor every method is compared against.

use serde::{Deserialize, Serialize};

use super::method::{Defaults, Flags, Meta, Method};
use super::{MethodEnv, StepCtx, StepStats, TrainMethod};
use crate::attacks::Generator;
use crate::data::Batch;
use crate::error::Result;
use crate::models::{Mode, Need, PreActResNet};

/// `--method clean`.
pub struct Clean;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanConfig {}

impl Method for Clean {
    type Config = CleanConfig;
    const NAME: &'static str = "clean";
    const HELP: &'static str = "Standard training, no perturbation (the non-robust baseline)";
    const DISPLAY: &'static str = "Standard";

    fn config(_: &Flags, _: &Defaults) -> Result<CleanConfig> {
        Ok(CleanConfig {})
    }

    fn build(_: &CleanConfig, _: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Ok(Box::new(CleanTraining))
    }

    /// No generator: δ = 0.
    fn generator(_: &CleanConfig, _: f32, _: &Meta) -> Result<Generator> {
        Ok(Generator::Zero)
    }
}

pub struct CleanTraining;

impl TrainMethod for CleanTraining {
    fn alpha(&self) -> f32 {
        0.0
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        let t = model.trace_perturbed(&batch.x, &[], Mode::TRAIN, Need::PARAMS)?;
        let l = t.logits.detach();
        let loss = candle_nn::loss::cross_entropy(&t.logits, &batch.y)?;
        ctx.update_traced(t, &loss)?;
        StepStats::from_logits(&l, &l, &batch.y)
    }
}
