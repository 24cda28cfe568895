//! APART-Simple (Eq. 3 of the APART paper): FGSM whose initialisation and step size are learned by
//! gradient ascent, δ = clamp(α_ω·ω_x + α·sign(∇x L(θ; x + α_ω·ω_x, y)), ±ε), max over (α, ω),
//! min over θ. It is APART without the layer-wise block perturbations, so it runs APART's generator
//! (apart.rs) with those switched off; only the name differs from `apart --no-layerwise`.

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;

use super::apart::{
    apart_config, learned_step_generator, validate_config, ApartConfig, ApartTraining, GENERATOR_FLAGS,
};
use super::method::{Defaults, Flag, Flags, Meta, Method};
use super::{MethodEnv, StepCtx, StepSize, StepStats, TrainMethod};
use crate::attacks::Generator;
use crate::data::Batch;
use crate::error::Result;
use crate::models::PreActResNet;

/// `--method apart-simple`.
pub struct ApartSimple;

impl Method for ApartSimple {
    type Config = ApartConfig;
    const NAME: &'static str = "apart-simple";
    const HELP: &'static str = "APART-Simple (Eq. 3): FGSM with learned initialisation and step size";
    const DISPLAY: &'static str = "APART-Simple";
    const COLOUR: Option<usize> = Some(3);
    const FLAGS: &'static [Flag] = &GENERATOR_FLAGS;

    fn config(f: &Flags, d: &Defaults) -> Result<ApartConfig> {
        apart_config(f, d)
    }

    fn alpha(c: &ApartConfig) -> Option<f32> {
        Some(c.alpha_init)
    }

    fn validate(c: &ApartConfig) -> Result<()> {
        validate_config(c)
    }

    fn build(c: &ApartConfig, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Ok(Box::new(ApartSimpleTraining::new(env, c.clone())?))
    }

    fn generator(_: &ApartConfig, eps: f32, meta: &Meta) -> Result<Generator> {
        learned_step_generator(eps, meta)
    }

    fn learned_init(_: &ApartConfig) -> bool {
        true
    }
}

pub struct ApartSimpleTraining(ApartTraining);

impl ApartSimpleTraining {
    pub fn new(env: &MethodEnv, cfg: ApartConfig) -> Result<Self> {
        let cfg = ApartConfig {
            layerwise: false,
            learned_init: true,
            ..cfg
        };
        Ok(ApartSimpleTraining(ApartTraining::new(env, cfg)?))
    }
}

impl TrainMethod for ApartSimpleTraining {
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
