//! N-FGSM (de Jorge et al. 2022, "Make some noise: reliable and efficient single-step adversarial
//! training"): a strong noise start δ0 ~ U(−kε, kε) (k = 2), one signed step of α = ε, and no
//! projection back to the ε-ball, so the training perturbation reaches up to (k + 1)·ε. Only the
//! image box [0, 1] is enforced. This is why it is a training method here and not an `Attack`: its
//! perturbations break the attack invariant ‖δ‖∞ ≤ ε on purpose.

use candle_core::Tensor;

use super::{descend, StepCtx, StepStats, TrainMethod};
use crate::attacks::input_grad;
use crate::data::Batch;
use crate::error::Result;
use crate::models::{Classifier, PreActResNet};

pub struct NfgsmTraining {
    eps: f32,
    alpha: f32,
    noise: f32,
}

impl NfgsmTraining {
    pub fn new(eps: f32, alpha: f32, noise: f32) -> Self {
        NfgsmTraining { eps, alpha, noise }
    }

    /// δ = δ0 + α·sign(∇x L(x + δ0)), start and result clipped only so that x + δ stays in [0, 1].
    pub fn perturbation(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut StepCtx) -> Result<Tensor> {
        let k = self.noise * self.eps;
        let u = ctx.rng.uniform_tensor(x.dims(), -k, k, x.device())?;
        let d0 = ((x + u)?.clamp(0f32, 1f32)? - x)?;
        let (g, _) = input_grad(model, x, &d0, y, ctx.attack_mode)?;
        let d = (d0 + (g.sign()? * f64::from(self.alpha))?)?;
        Ok(((x + d)?.clamp(0f32, 1f32)? - x)?)
    }
}

impl TrainMethod for NfgsmTraining {
    fn name(&self) -> String {
        "nfgsm".into()
    }

    fn alpha(&self) -> f32 {
        self.alpha
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        let (x, y) = (&batch.x, &batch.y);
        let delta = self.perturbation(&model.detached(), x, y, ctx)?;
        descend(model, batch, &delta, None, ctx)
    }
}
