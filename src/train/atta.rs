//! ATTA-K (Zheng et al. 2020, "Efficient adversarial training with transferable adversarial
//! examples"): each example's perturbation is kept across epochs and continued by K PGD steps when
//! the example comes round again, so the attack accumulates strength at K steps per epoch. Stored in
//! the padded image space and aligned through the crop and flip (per_example.rs); reset to
//! 0.001·N(0, 1) every `reset` epochs (10 by default, as the ATTA code does).

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;

use super::per_example::PerExampleStore;
use super::{descend, MethodEnv, StepCtx, StepStats, TrainMethod};
use crate::attacks::{project, sign_step};
use crate::data::Batch;
use crate::error::Result;
use crate::models::PreActResNet;
use crate::rng::Rng;

/// Scale of the random values ATTA starts (and restarts) every stored perturbation from.
const INIT_STD: f32 = 0.001;

pub struct AttaTraining {
    eps: f32,
    steps: usize,
    alpha: f32,
    reset: usize,
    seed: u64,
    store: PerExampleStore,
}

impl AttaTraining {
    pub fn new(env: &MethodEnv, steps: usize, alpha: f32, reset: usize) -> Result<Self> {
        let mut rng = Rng::derive(env.seed, "atta-init", 0);
        Ok(AttaTraining {
            eps: env.eps,
            steps,
            alpha,
            reset,
            seed: env.seed,
            store: PerExampleStore::new(env.n_train, env.shape, env.pad, || INIT_STD * rng.normal()),
        })
    }
}

impl TrainMethod for AttaTraining {
    fn name(&self) -> String {
        format!("atta{}", self.steps)
    }

    fn alpha(&self) -> f32 {
        self.alpha
    }

    fn begin_epoch(&mut self, epoch: usize) -> Result<()> {
        if self.reset > 0 && epoch > 0 && epoch % self.reset == 0 {
            let mut rng = Rng::derive(self.seed, "atta-init", epoch as u64);
            self.store.reset(|| INIT_STD * rng.normal());
        }
        Ok(())
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        let (x, y) = (&batch.x, &batch.y);
        let frozen = model.detached();
        let mut delta = project(&self.store.gather(batch, x.device())?, x, self.eps)?;
        for _ in 0..self.steps {
            delta = sign_step(&frozen, x, &delta, y, self.alpha, self.eps, ctx.attack_mode)?.0;
        }
        self.store.scatter(batch, &delta)?;
        descend(model, batch, &delta, None, ctx)
    }

    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let dev = candle_core::Device::Cpu;
        Ok(BTreeMap::from([(
            "atta.delta".to_string(),
            self.store.to_tensor(&dev)?,
        )]))
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        match state.get("atta.delta") {
            Some(t) => self.store.load(t, "atta.delta"),
            None => Ok(()),
        }
    }
}
