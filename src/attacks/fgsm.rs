//! FGSM (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples").
//! Threat model L∞, ε. Zero start, one signed-gradient step of size α (default α = ε), projected.

use candle_core::Tensor;

use super::{sign_step, Attack, AttackCtx, Perturbation};
use crate::error::Result;
use crate::models::Classifier;

#[derive(Debug, Clone, Copy)]
pub struct Fgsm {
    pub eps: f32,
    pub alpha: f32,
}

impl Fgsm {
    pub fn new(eps: f32) -> Self {
        Fgsm { eps, alpha: eps }
    }
}

impl Attack for Fgsm {
    fn name(&self) -> String {
        "fgsm".into()
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        let (delta, logits) = sign_step(model, x, &x.zeros_like()?, y, self.alpha, self.eps, ctx.mode)?;
        Ok(Perturbation {
            delta,
            clean_logits: Some(logits),
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
    fn linear_optimum_is_eps_sign_w_inside_the_box() {
        // For class 0 the loss grows with w·x: the L∞ optimum is δ = ε·sign(w), clipped by the [0, 1] box.
        let dev = Device::Cpu;
        let model = TwoClassLinear {
            w: Tensor::new(&[1.0f32, -2.0, 0.5, -0.1], &dev).unwrap(),
            b: 0.0,
        };
        let x = Tensor::new(&[[0.5f32, 0.5, 0.95, 0.02]], &dev).unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        let mut rng = Rng::new(0);
        let p = Fgsm::new(0.1)
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
        let want = [0.1f32, -0.1, 0.05, -0.02];
        for (a, b) in d.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{d:?}");
        }
        // Label 1 flips the direction.
        let y1 = Tensor::new(&[1u32], &dev).unwrap();
        let p = Fgsm::new(0.1)
            .perturb(
                &model,
                &x,
                &y1,
                &mut AttackCtx {
                    mode: Mode::EVAL,
                    rng: &mut rng,
                },
            )
            .unwrap();
        let d: Vec<f32> = p.delta.flatten_all().unwrap().to_vec1().unwrap();
        assert!((d[0] + 0.1).abs() < 1e-6 && (d[1] - 0.1).abs() < 1e-6);
        assert!(p.clean_logits.is_some());
    }
}
