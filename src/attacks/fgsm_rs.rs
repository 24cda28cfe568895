//! FGSM with a random start (Wong, Rice & Kolter 2020, "Fast is better than free"; F+FGSM / FGSM-RS).
//! Threat model L∞, ε. δ0 ~ U(-ε, ε), one signed-gradient step of α (default 1.25ε), projected.

use candle_core::Tensor;

use super::{sign_step, uniform_start, Attack, AttackCtx, Perturbation};
use crate::error::Result;
use crate::models::Classifier;

#[derive(Debug, Clone, Copy)]
pub struct FgsmRs {
    pub eps: f32,
    pub alpha: f32,
}

impl FgsmRs {
    pub fn new(eps: f32) -> Self {
        FgsmRs { eps, alpha: 1.25 * eps }
    }
}

impl Attack for FgsmRs {
    fn name(&self) -> String {
        "fgsm-rs".into()
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        let start = uniform_start(x, self.eps, ctx.rng)?;
        let (delta, _) = sign_step(model, x, &start, y, self.alpha, self.eps, ctx.mode)?;
        Ok(Perturbation {
            delta,
            clean_logits: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::linear::TwoClassLinear;
    use crate::models::Mode;
    use crate::rng::Rng;
    use candle_core::Device;

    #[test]
    fn one_step_moves_every_start_along_sign_w() {
        // δ = clip(u + α·sign(w), ±ε) with u ∈ [−ε, ε]: with α = 1.25ε each coordinate ends at least 0.25ε
        // along sign(w) (the worst start is u = −ε); with α = 2ε every start reaches the corner ε·sign(w).
        let dev = Device::Cpu;
        let model = TwoClassLinear {
            w: Tensor::new(&[3.0f32, -1.0, 2.0], &dev).unwrap(),
            b: 0.0,
        };
        let x = Tensor::new(&[[0.5f32, 0.5, 0.5], [0.4, 0.6, 0.3]], &dev).unwrap();
        let y = Tensor::new(&[0u32, 0], &dev).unwrap();
        let sign = [1.0f32, -1.0, 1.0, 1.0, -1.0, 1.0];
        let mut rng = Rng::new(4);
        let p = FgsmRs::new(0.2)
            .perturb(
                &model,
                &x,
                &y,
                &mut AttackCtx {
                    mode: Mode::EVAL,
                    rng: &mut rng,
                },
            )
            .unwrap();
        let d: Vec<f32> = p.delta.flatten_all().unwrap().to_vec1().unwrap();
        for (a, s) in d.iter().zip(sign) {
            assert!(a * s >= 0.25 * 0.2 - 1e-6 && a.abs() <= 0.2 + 1e-6, "{d:?}");
        }
        let wide = FgsmRs { eps: 0.2, alpha: 0.4 };
        let d: Vec<f32> = wide
            .perturb(
                &model,
                &x,
                &y,
                &mut AttackCtx {
                    mode: Mode::EVAL,
                    rng: &mut rng,
                },
            )
            .unwrap()
            .delta
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, s) in d.iter().zip(sign) {
            assert!((a - 0.2 * s).abs() < 1e-6, "{d:?}");
        }
    }
}
