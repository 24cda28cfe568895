//! Free adversarial training (Shafahi et al. 2019, "Adversarial training for free!"): each minibatch
//! is replayed m times (m = 8 by default); every replay's single backward pass gives both the weight
//! gradient (one SGD step) and the input gradient (one ε-sized signed step on δ). δ is carried across
//! replays, minibatches and epochs. The run's epochs are passes over the data, the requested epoch
//! budget divided by m, so the cost matches m fewer FGSM-like epochs (`Method::epochs` below does the division).

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;

use serde::{Deserialize, Serialize};

use super::method::{counted, Defaults, Flag, Flags, Meta, Method};
use super::{MethodEnv, StepCtx, StepStats, TrainMethod};
use crate::attacks::{project, Generator};
use crate::data::Batch;
use crate::error::{CovfError, Result};
use crate::models::{Mode, Need, PreActResNet};

/// `--method free`.
pub struct Free;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreeConfig {
    pub replays: usize,
}

impl Method for Free {
    type Config = FreeConfig;
    const NAME: &'static str = "free";
    const HELP: &'static str = "Free-m (Shafahi et al. 2019): minibatch replays; epochs divided by m";
    const DISPLAY: &'static str = "Free";
    const COLOUR: Option<usize> = Some(6);
    const FLAGS: &'static [Flag] = &[Flag {
        name: "replays",
        help: "Free: replays m of each minibatch; the epoch budget is divided by m (rounded up) for equal cost",
        value: Some("M"),
        default: "8",
    }];

    fn config(f: &Flags, _: &Defaults) -> Result<FreeConfig> {
        Ok(FreeConfig {
            replays: f.parse("replays")?.unwrap_or(8),
        })
    }

    fn label(c: &FreeConfig) -> String {
        format!("free{}", c.replays)
    }

    fn display(label: &str) -> Option<String> {
        counted(label, "free").map(|k| format!("Free-{k}"))
    }

    fn flags_for_label(label: &str) -> Option<Flags> {
        if label == "free" {
            return Some(Flags::default());
        }
        counted(label, "free").map(|k| Flags::default().with("replays", k.to_string()))
    }

    fn validate(c: &FreeConfig) -> Result<()> {
        if c.replays == 0 {
            return Err(CovfError::spec("free", "replays must be at least 1"));
        }
        Ok(())
    }

    /// Free replays every minibatch m times: m times fewer passes cost the same as the other methods' epochs.
    fn epochs(c: &FreeConfig, requested: usize) -> usize {
        requested.div_ceil(c.replays.max(1))
    }

    fn build(c: &FreeConfig, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Ok(Box::new(FreeTraining::new(env.eps, c.replays)))
    }

    /// FGSM with step ε: a fresh example's carried δ is 0.
    fn generator(_: &FreeConfig, eps: f32, _: &Meta) -> Result<Generator> {
        Ok(Generator::Step {
            eps,
            alpha: eps,
            start: 0.0,
        })
    }
}

pub struct FreeTraining {
    eps: f32,
    replays: usize,
    /// The carried perturbation, as wide as the largest batch seen.
    delta: Option<Tensor>,
}

impl FreeTraining {
    pub fn new(eps: f32, replays: usize) -> Self {
        FreeTraining {
            eps,
            replays: replays.max(1),
            delta: None,
        }
    }

    /// The carried δ for a batch like `x` (zeros at the start or when the shape changes).
    fn carried(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        match &self.delta {
            Some(d) if d.dim(0)? >= n && d.dims()[1..] == x.dims()[1..] => Ok(d.narrow(0, 0, n)?),
            _ => Ok(x.zeros_like()?),
        }
    }

    /// Keeps δ for the next minibatch; a short last batch only overwrites its own rows.
    fn keep(&mut self, delta: Tensor) -> Result<()> {
        let n = delta.dim(0)?;
        self.delta = Some(match &self.delta {
            Some(d) if d.dim(0)? > n && d.dims()[1..] == delta.dims()[1..] => {
                Tensor::cat(&[&delta, &d.narrow(0, n, d.dim(0)? - n)?], 0)?
            }
            _ => delta,
        });
        Ok(())
    }
}

impl TrainMethod for FreeTraining {
    fn alpha(&self) -> f32 {
        self.eps
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        let (x, y) = (&batch.x, &batch.y);
        let mut delta = project(&self.carried(x)?, x, self.eps)?;
        let mut last = None;
        let (t0, t1) = ctx.t;
        for j in 0..self.replays {
            let need = Need {
                input: true,
                params: true,
                deltas: false,
            };
            let t = model.trace_perturbed(&(x + &delta)?, &[], Mode::TRAIN, need)?;
            last = Some(t.logits.detach());
            let loss = candle_nn::loss::cross_entropy(&t.logits, y)?;
            // Each replay is one update, spread evenly over this minibatch's stretch of the schedule.
            let lr = ctx
                .schedule
                .lr_at(t0 + (t1 - t0) * (j + 1) as f64 / self.replays as f64);
            let up = ctx.update_traced_at(t, &loss, lr)?;
            if let (true, Some(g)) = (up.grads.applied, up.input) {
                delta = project(&(&delta + (g.sign()? * f64::from(self.eps))?)?, x, self.eps)?;
            }
        }
        self.keep(delta)?;
        match last {
            Some(adv) => StepStats::adv_only(&adv, y),
            None => Ok(StepStats::default()),
        }
    }

    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(self
            .delta
            .iter()
            .map(|d| ("free.delta".to_string(), d.clone()))
            .collect())
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.delta = state.get("free.delta").cloned();
        Ok(())
    }
}
