//! PGD-N (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks").
//! Threat model L∞, ε. Uniform random start, N signed steps of α (default 2/255 at ε = 8/255, i.e. ε/4),
//! projection every step; with restarts, each example keeps its highest-loss δ. No early stop.

use candle_core::Tensor;

use super::{per_sample_ce, sign_step, uniform_start, Attack, AttackCtx, Perturbation};
use crate::error::Result;
use crate::models::Classifier;

#[derive(Debug, Clone, Copy)]
pub struct Pgd {
    pub eps: f32,
    pub alpha: f32,
    pub steps: usize,
    pub restarts: usize,
    pub random_start: bool,
}

impl Pgd {
    /// PGD with the usual step ε/4 (2/255 at 8/255), one restart, random start.
    pub fn new(eps: f32, steps: usize) -> Self {
        Pgd {
            eps,
            alpha: eps / 4.0,
            steps,
            restarts: 1,
            random_start: true,
        }
    }
}

impl Attack for Pgd {
    fn name(&self) -> String {
        format!("pgd{}", self.steps)
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        let mut best: Option<(Tensor, Tensor)> = None;
        for _ in 0..self.restarts.max(1) {
            let mut delta = if self.random_start {
                uniform_start(x, self.eps, ctx.rng)?
            } else {
                x.zeros_like()?
            };
            for _ in 0..self.steps {
                delta = sign_step(model, x, &delta, y, self.alpha, self.eps, ctx.mode)?.0;
            }
            if self.restarts <= 1 {
                return Ok(Perturbation {
                    delta,
                    clean_logits: None,
                });
            }
            let loss = per_sample_ce(&model.logits(&(x + &delta)?, ctx.mode)?, y)?.detach();
            best = Some(match best {
                None => (delta, loss),
                Some((bd, bl)) => {
                    let better = loss.ge(&bl)?;
                    let mask = better.reshape((better.dim(0)?, 1, 1, 1))?.broadcast_as(delta.shape())?;
                    (mask.where_cond(&delta, &bd)?, better.where_cond(&loss, &bl)?)
                }
            });
        }
        let delta = match best {
            Some((d, _)) => d,
            None => x.zeros_like()?,
        };
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
    use candle_core::{Device, Tensor};

    fn model(dev: &Device) -> TwoClassLinear {
        TwoClassLinear {
            w: Tensor::new(&[1.0f32, -2.0, 0.5, 4.0], dev).unwrap(),
            b: 0.3,
        }
    }

    #[test]
    fn converges_to_the_linear_optimum() {
        // Loss of class 0 is monotone in w·x: enough steps of ε/4 from any start reach ε·sign(w).
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.5f32, 0.5, 0.5, 0.5], [0.3, 0.7, 0.2, 0.6]], &dev)
            .unwrap()
            .reshape((2, 1, 2, 2))
            .unwrap();
        let y = Tensor::new(&[0u32, 0], &dev).unwrap();
        let mut rng = Rng::new(1);
        let p = Pgd::new(0.1, 10)
            .perturb(
                &model(&dev),
                &x,
                &y,
                &mut AttackCtx {
                    mode: Mode::EVAL,
                    rng: &mut rng,
                },
            )
            .unwrap();
        let d: Vec<f32> = p.delta.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in d.iter().zip([0.1f32, -0.1, 0.1, 0.1, 0.1, -0.1, 0.1, 0.1]) {
            assert!((a - b).abs() < 1e-6, "{d:?}");
        }
    }

    #[test]
    fn restarts_keep_the_worst_case_and_stay_feasible() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(2);
        let x = rng.uniform_tensor(&[8, 1, 2, 2], 0.0, 1.0, &dev).unwrap();
        let y = Tensor::new(&[0u32, 1, 0, 1, 0, 1, 0, 1], &dev).unwrap();
        // One step from random starts cannot reach the corner; restarts keep the higher loss per example.
        let m = model(&dev);
        let mut one = Pgd::new(0.1, 1);
        one.alpha = 0.01;
        let mut five = one;
        five.restarts = 5;
        let l1 = per_sample_ce(
            &m.logits(
                &(&x + one
                    .perturb(
                        &m,
                        &x,
                        &y,
                        &mut AttackCtx {
                            mode: Mode::EVAL,
                            rng: &mut Rng::new(5),
                        },
                    )
                    .unwrap()
                    .delta)
                    .unwrap(),
                Mode::EVAL,
            )
            .unwrap(),
            &y,
        )
        .unwrap();
        let p5 = five
            .perturb(
                &m,
                &x,
                &y,
                &mut AttackCtx {
                    mode: Mode::EVAL,
                    rng: &mut Rng::new(5),
                },
            )
            .unwrap()
            .delta;
        let l5 = per_sample_ce(&m.logits(&(&x + &p5).unwrap(), Mode::EVAL).unwrap(), &y).unwrap();
        let (l1, l5): (Vec<f32>, Vec<f32>) = (l1.to_vec1().unwrap(), l5.to_vec1().unwrap());
        // The first restart draws the same start as the single run, so each example can only improve.
        for (a, b) in l1.iter().zip(&l5) {
            assert!(b >= a, "{l1:?} {l5:?}");
        }
        let d: Vec<f32> = p5.flatten_all().unwrap().to_vec1().unwrap();
        let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        for (di, xi) in d.iter().zip(xv) {
            assert!(di.abs() <= 0.1 + 1e-6 && (0.0..=1.0).contains(&(xi + di)));
        }
    }
}
