//! APART-Simple (Eq. 3 of the APART paper): FGSM whose initialisation and step size are learned by
//! gradient ascent, δ = clamp(α_ω·ω_x + α·sign(∇x L(θ; x + α_ω·ω_x, y)), ±ε), max over (α, ω),
//! min over θ. It is APART without the layer-wise block perturbations, so it runs APART's generator
//! (apart.rs) with those switched off; only the name differs from `apart --no-layerwise`.

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;

use super::apart::ApartTraining;
use super::{MethodEnv, StepCtx, StepSize, StepStats, TrainMethod};
use crate::data::Batch;
use crate::error::Result;
use crate::models::PreActResNet;
use crate::run::ApartConfig;

pub struct ApartSimpleTraining(ApartTraining);

impl ApartSimpleTraining {
    pub fn new(env: &MethodEnv, cfg: ApartConfig) -> Result<Self> {
        let cfg = ApartConfig {
            layerwise: false,
            learned_init: true,
            ..cfg
        };
        Ok(ApartSimpleTraining(
            ApartTraining::new(env, cfg)?.with_label("apart-simple"),
        ))
    }
}

impl TrainMethod for ApartSimpleTraining {
    fn name(&self) -> String {
        self.0.name()
    }

    fn alpha(&self) -> f32 {
        self.0.alpha()
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        self.0.step(model, batch, ctx)
    }

    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        self.0.state()
    }

    fn example_state(&self, positions: &[usize]) -> Result<BTreeMap<String, Tensor>> {
        self.0.example_state(positions)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.0.load_state(state)
    }

    fn step_sizes(&self) -> Vec<StepSize> {
        self.0.step_sizes()
    }
}
