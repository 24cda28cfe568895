//! N-FGSM (de Jorge et al. 2022, "Make some noise: reliable and efficient single-step adversarial
//! training"): a strong noise start δ0 ~ U(−kε, kε) (k = 2), one signed step of α = ε, and no
//! projection back to the ε-ball, so the training perturbation reaches up to (k + 1)·ε. Only the
//! image box [0, 1] is enforced. This is why it is a training method here and not an `Attack`: its
//! perturbations break the attack invariant ‖δ‖∞ ≤ ε on purpose.

use candle_core::Tensor;

use serde::{Deserialize, Serialize};

use super::method::{alpha_flag, positive_alpha, Defaults, Flag, Flags, Meta, Method};
use super::{descend, MethodEnv, StepCtx, StepStats, TrainMethod};
use crate::attacks::{input_grad, Generator};
use crate::data::Batch;
use crate::error::{CovfError, Result};
use crate::models::{Classifier, PreActResNet};

/// `--method nfgsm`.
pub struct Nfgsm;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NfgsmConfig {
    pub alpha: f32,
    pub noise: f32,
}

impl Method for Nfgsm {
    type Config = NfgsmConfig;
    const NAME: &'static str = "nfgsm";
    const HELP: &'static str = "N-FGSM (de Jorge et al. 2022): noise 2ε, step ε, no projection";
    const DISPLAY: &'static str = "N-FGSM";
    const FLAGS: &'static [Flag] = &[
        alpha_flag("ε"),
        Flag {
            name: "nfgsm-noise",
            help: "N-FGSM: noise magnitude k (δ0 ~ U(−kε, kε))",
            value: Some("K"),
            default: "2",
        },
    ];

    fn config(f: &Flags, d: &Defaults) -> Result<NfgsmConfig> {
        Ok(NfgsmConfig {
            alpha: f.pixels("alpha")?.unwrap_or(d.eps.value),
            noise: f.parse("nfgsm-noise")?.unwrap_or(2.0),
        })
    }

    fn alpha(c: &NfgsmConfig) -> Option<f32> {
        Some(c.alpha)
    }

    fn validate(c: &NfgsmConfig) -> Result<()> {
        positive_alpha(Self::NAME, c.alpha)?;
        if !(c.noise >= 0.0 && c.noise.is_finite()) {
            return Err(CovfError::spec(
                "nfgsm",
                format!("noise multiplier {} must be ≥ 0", c.noise),
            ));
        }
        Ok(())
    }

    fn build(c: &NfgsmConfig, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Ok(Box::new(NfgsmTraining::new(env.eps, c.alpha, c.noise)))
    }

    /// Noise U(−kε, kε), one step α, then projected onto the ε-ball so that every generator is compared
    /// within the same budget (training itself does not project).
    fn generator(c: &NfgsmConfig, eps: f32, _: &Meta) -> Result<Generator> {
        Ok(Generator::Step {
            eps,
            alpha: c.alpha,
            start: c.noise,
        })
    }
}

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
    fn alpha(&self) -> f32 {
        self.alpha
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        let (x, y) = (&batch.x, &batch.y);
        let delta = self.perturbation(&model.detached(), x, y, ctx)?;
        descend(model, batch, &delta, None, ctx)
    }
}
