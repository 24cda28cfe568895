//! Square Attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial
//! attack via random search"), L∞, ε; the black-box last stage of AutoAttack. Defaults as in
//! fra31/auto-attack's standard version: 5,000 queries, p_init = 0.8, 1 restart, margin loss, and the
//! square-size schedule *not* rescaled to the query budget (AutoAttack turns rescaling off).
//!
//! Start: vertical stripes of ±ε. Each iteration draws one s×s window and one sign per channel for the
//! whole batch, sets the window to x ± ε (clipped to the box), and keeps the candidate for an example when
//! its margin z_y − max_{j≠y} z_j drops (or reaches ≤ 0). Only examples still classified correctly are
//! queried. No gradients: a check against gradient masking.

use candle_core::Tensor;

use super::loss::max_other;
use super::robust::{index_tensor, indices, perturb_robust, recheck, where_rows};
use super::{Attack, AttackCtx, Perturbation};
use crate::error::Result;
use crate::models::{Classifier, Mode};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Square {
    pub eps: f32,
    pub n_queries: usize,
    pub p_init: f32,
    pub restarts: usize,
}

impl Square {
    /// AutoAttack's standard Square.
    pub fn new(eps: f32) -> Self {
        Square {
            eps,
            n_queries: 5000,
            p_init: 0.8,
            restarts: 1,
        }
    }
}

/// Fraction of pixels in the window at iteration `it` (thresholds designed for 10,000 queries).
pub fn p_selection(p_init: f32, it: usize) -> f32 {
    let halvings = match it {
        0..=10 => 0,
        11..=50 => 1,
        51..=200 => 2,
        201..=500 => 3,
        501..=1000 => 4,
        1001..=2000 => 5,
        2001..=4000 => 6,
        4001..=6000 => 7,
        6001..=8000 => 8,
        _ => 9,
    };
    p_init / (1u32 << halvings) as f32
}

/// Side of the square window for fraction `p` of an h×w image: round(√(p·h·w)) (ties to even), in [1, min(h, w)].
pub fn window_side(p: f32, h: usize, w: usize) -> usize {
    let s = (f64::from(p) * (h * w) as f64).sqrt().round_ties_even() as usize;
    s.max(1).min(h).min(w)
}

/// z_y − max_{j≠y} z_j per example (≤ 0: misclassified).
fn margins(model: &dyn Classifier, x: &Tensor, y: &Tensor, mode: Mode) -> Result<Vec<f32>> {
    let z = model.logits(x, mode)?.detach();
    let zy = z.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok((zy - max_other(&z, y)?)?.to_vec1::<f32>()?)
}

impl Square {
    /// One run on a batch of correctly classified examples; returns the best points found.
    fn single_run(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, mode: Mode, rng: &mut Rng) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let eps = f64::from(self.eps);
        let lo = (x - eps)?.clamp(0f32, 1f32)?;
        let hi = (x + eps)?.clamp(0f32, 1f32)?;
        let stripes: Vec<f32> = (0..n * c * w)
            .map(|_| {
                if rng.uniform() * 2.0 - 1.0 < 0.0 {
                    -self.eps
                } else {
                    self.eps
                }
            })
            .collect();
        let stripes = Tensor::from_vec(stripes, (n, c, 1, w), x.device())?;
        let mut x_best = x.broadcast_add(&stripes)?.clamp(0f32, 1f32)?;
        let mut margin = margins(model, &x_best, y, mode)?;
        let mut loss_min = margin.clone();
        for it in 0..self.n_queries {
            let active = indices(&margin.iter().map(|&m| m > 0.0).collect::<Vec<_>>());
            if active.is_empty() {
                break;
            }
            let s = window_side(p_selection(self.p_init, it), h, w);
            let vh = (rng.uniform() * (h - s) as f32) as usize;
            let vw = (rng.uniform() * (w - s) as f32) as usize;
            let mut window = vec![0f32; c * h * w];
            for ch in 0..c {
                let v = if rng.uniform() < 0.5 {
                    -2.0 * self.eps
                } else {
                    2.0 * self.eps
                };
                for r in vh..vh + s {
                    window[(ch * h + r) * w + vw..(ch * h + r) * w + vw + s].fill(v);
                }
            }
            let window = Tensor::from_vec(window, (1, c, h, w), x.device())?;
            let it_t = index_tensor(&active, x.device())?;
            let xb = x_best.index_select(&it_t, 0)?;
            let cand = xb
                .broadcast_add(&window)?
                .maximum(&lo.index_select(&it_t, 0)?)?
                .minimum(&hi.index_select(&it_t, 0)?)?;
            let m_new = margins(model, &cand, &y.index_select(&it_t, 0)?, mode)?;
            let mut accept = vec![false; active.len()];
            for (a, (&i, &m)) in accept.iter_mut().zip(active.iter().zip(&m_new)) {
                let improved = m < loss_min[i];
                if improved {
                    loss_min[i] = m;
                }
                if improved || m <= 0.0 {
                    margin[i] = m;
                    *a = true;
                }
            }
            if accept.iter().any(|&a| a) {
                let diff = where_rows(&accept, &(&cand - &xb)?, &xb.zeros_like()?)?;
                x_best = x_best.index_add(&it_t, &diff, 0)?;
            }
        }
        Ok(x_best)
    }
}

impl Attack for Square {
    fn name(&self) -> String {
        "square".into()
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        let mode = ctx.mode;
        perturb_robust(
            model,
            x,
            y,
            mode,
            |_| self.restarts.max(1),
            |_, xs, ys, _, _| {
                let x_adv = self.single_run(model, xs, ys, mode, ctx.rng)?;
                recheck(model, ys, x_adv, mode)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::linear::TwoClassLinear;
    use crate::attacks::robust::predictions;
    use candle_core::Device;

    #[test]
    fn schedule_and_window_sizes() {
        assert_eq!(p_selection(0.8, 0), 0.8);
        assert_eq!(p_selection(0.8, 10), 0.8);
        assert_eq!(p_selection(0.8, 11), 0.4);
        assert_eq!(p_selection(0.8, 4999), 0.8 / 128.0);
        assert_eq!(p_selection(0.8, 9000), 0.8 / 512.0);
        // 32×32 at p = 0.8/2^k: the reference's sizes 29, 20, 14, 10, 7, 5, 4, 3, 2, 1.
        let sides: Vec<usize> = (0..10).map(|k| window_side(0.8 / (1u32 << k) as f32, 32, 32)).collect();
        assert_eq!(sides, vec![29, 20, 14, 10, 7, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn fools_a_linear_model_within_the_ball() {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..16).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
        let model = TwoClassLinear {
            w: Tensor::new(w.as_slice(), &dev).unwrap(),
            b: -4.2,
        };
        // At x = 0.5 everywhere w·x + b = 0.5·(10 − 6) − 4.2 = −2.2: class 0. With ε = 0.3 the best move gains
        // 0.3·16 = 4.8, so a random search over signs can cross the boundary.
        let x = Tensor::full(0.5f32, (2, 1, 4, 4), &dev).unwrap();
        let y = Tensor::new(&[0u32, 0], &dev).unwrap();
        let mut rng = Rng::new(5);
        let sq = Square {
            n_queries: 500,
            ..Square::new(0.3)
        };
        let p = sq
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
        assert!(d.iter().all(|v| v.abs() <= 0.3 + 1e-6));
        let z = model.logits(&(&x + &p.delta).unwrap(), Mode::EVAL).unwrap();
        assert_eq!(predictions(&z).unwrap(), vec![1, 1]);
    }
}
