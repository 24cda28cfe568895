//! CW∞ (Carlini & Wagner 2017's margin loss under an L∞ budget, as in Madry-style evaluations and the
//! APART paper's tables): PGD ascending max_{j≠y} z_j − z_y instead of cross-entropy. Threat model L∞, ε.
//! Defaults: 30 steps of ε/4, uniform random start, projection every step, no early stop.

use candle_core::Tensor;

use super::loss::{loss_grad, AttackLoss};
use super::{project, uniform_start, Attack, AttackCtx, Perturbation};
use crate::error::Result;
use crate::models::Classifier;

#[derive(Debug, Clone, Copy)]
pub struct CwInf {
    pub eps: f32,
    pub alpha: f32,
    pub steps: usize,
}

impl CwInf {
    pub fn new(eps: f32) -> Self {
        CwInf {
            eps,
            alpha: eps / 4.0,
            steps: 30,
        }
    }
}

impl Attack for CwInf {
    fn name(&self) -> String {
        "cw".into()
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        let mut delta = uniform_start(x, self.eps, ctx.rng)?;
        for _ in 0..self.steps {
            let lg = loss_grad(model, &(x + &delta)?, y, &AttackLoss::Margin, ctx.mode)?;
            delta = project(&(&delta + (lg.grad.sign()? * f64::from(self.alpha))?)?, x, self.eps)?;
        }
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
    fn reaches_the_linear_optimum() {
        // The margin of class 1 is −(w·x + b): it rises along −sign(w); 30 steps of ε/4 reach −ε·sign(w).
        let dev = Device::Cpu;
        let model = TwoClassLinear {
            w: Tensor::new(&[1.0f32, -2.0, 0.5, 4.0], &dev).unwrap(),
            b: 0.0,
        };
        let x = Tensor::full(0.5f32, (1, 1, 2, 2), &dev).unwrap();
        let y = Tensor::new(&[1u32], &dev).unwrap();
        let mut rng = Rng::new(4);
        let p = CwInf::new(0.1)
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
        for (v, s) in d.iter().zip([-1.0f32, 1.0, -1.0, -1.0]) {
            assert!((v - 0.1 * s).abs() < 1e-6, "{d:?}");
        }
    }
}
