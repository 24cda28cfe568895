//! ATTA-K (Zheng et al. 2020, "Efficient adversarial training with transferable adversarial
//! examples"): each example's perturbation is kept across epochs and continued by K PGD steps when
//! the example comes round again, so the attack accumulates strength at K steps per epoch. Stored in
//! the padded image space and aligned through the crop and flip (per_example.rs); reset to
//! 0.001·N(0, 1) every `reset` epochs (10 by default, as the ATTA code does).

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;

use serde::{Deserialize, Serialize};

use super::method::{alpha_flag, counted, positive_alpha, quarter_eps, Defaults, Flag, Flags, Meta, Method, STEPS};
use super::per_example::PerExampleStore;
use super::{descend, AttackBn, MethodEnv, StepCtx, StepStats, TrainMethod};
use crate::attacks::{project, sign_step, Generator};
use crate::data::Batch;
use crate::error::{CovfError, Result};
use crate::models::PreActResNet;
use crate::rng::Rng;

/// `--method atta`.
pub struct Atta;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttaConfig {
    pub steps: usize,
    pub alpha: f32,
    pub reset: usize,
}

impl Method for Atta {
    type Config = AttaConfig;
    const NAME: &'static str = "atta";
    const HELP: &'static str = "ATTA-K (Zheng et al. 2020): per-example perturbations accumulated across epochs";
    const DISPLAY: &'static str = "ATTA";
    const FLAGS: &'static [Flag] = &[
        STEPS,
        alpha_flag("ε/4"),
        Flag {
            name: "atta-reset",
            help: "ATTA: reset the stored perturbations every N epochs (0 = never)",
            value: Some("N"),
            default: "10",
        },
    ];

    fn config(f: &Flags, d: &Defaults) -> Result<AttaConfig> {
        Ok(AttaConfig {
            steps: f.parse("steps")?.unwrap_or(10),
            alpha: f.pixels("alpha")?.unwrap_or(quarter_eps(d)),
            reset: f.parse("atta-reset")?.unwrap_or(10),
        })
    }

    fn label(c: &AttaConfig) -> String {
        format!("atta{}", c.steps)
    }

    fn display(label: &str) -> Option<String> {
        counted(label, "atta").map(|k| format!("ATTA-{k}"))
    }

    fn flags_for_label(label: &str) -> Option<Flags> {
        if label == "atta" {
            return Some(Flags::default());
        }
        counted(label, "atta").map(|k| Flags::default().with("steps", k.to_string()))
    }

    fn alpha(c: &AttaConfig) -> Option<f32> {
        Some(c.alpha)
    }

    fn validate(c: &AttaConfig) -> Result<()> {
        positive_alpha(Self::NAME, c.alpha)?;
        if c.steps == 0 {
            return Err(CovfError::spec("atta", "steps must be at least 1"));
        }
        Ok(())
    }

    /// ATTA's code attacks with `model.eval()`.
    fn attack_bn(_: &AttaConfig) -> AttackBn {
        AttackBn::Eval
    }

    fn build(c: &AttaConfig, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Ok(Box::new(AttaTraining::new(env, c.steps, c.alpha, c.reset)?))
    }

    /// PGD-K from δ = 0 (its store starts at 0.001·N(0, 1)).
    fn generator(c: &AttaConfig, eps: f32, _: &Meta) -> Result<Generator> {
        Ok(Generator::Pgd {
            eps,
            alpha: c.alpha,
            steps: c.steps,
            random_start: false,
        })
    }
}

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
    fn alpha(&self) -> f32 {
        self.alpha
    }

    fn begin_epoch(&mut self, epoch: usize) -> Result<()> {
        if self.reset > 0 && epoch > 0 && epoch.is_multiple_of(self.reset) {
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
