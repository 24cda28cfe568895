//! FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary
//! attack"), targeted, L∞; the third stage of AutoAttack. Defaults as in fra31/auto-attack's standard
//! version: 9 target classes (2nd- to 10th-largest clean logit), 1 restart (so no random start),
//! 100 iterations, α_max = 0.1, η = 1.05, β = 0.9.
//!
//! Each iteration linearises z_t − z_y at the current point, projects both the current point and the
//! original onto that hyperplane inside the [0, 1] box (minimal L∞ move), and steps to a convex
//! combination biased towards the original (α ≤ α_max), overshooting by η; once misclassified, it keeps
//! the smallest-norm point and backs off towards the original by β. A result counts only if it is
//! misclassified and within ε. The projection is docs/autoattack-reference.md §4.3.

use candle_core::Tensor;
use rayon::prelude::*;

use super::apgd_t::targets;
use super::loss::{loss_grad, AttackLoss};
use super::robust::{perturb_robust, predictions, Run};
use super::{Attack, AttackCtx, Perturbation};
use crate::error::Result;
use crate::models::{Classifier, Mode};

#[derive(Debug, Clone, Copy)]
pub struct FabT {
    pub eps: f32,
    pub n_iter: usize,
    pub n_targets: usize,
    pub alpha_max: f32,
    pub eta: f32,
    pub beta: f32,
}

impl FabT {
    /// AutoAttack's standard FAB-T.
    pub fn new(eps: f32) -> Self {
        FabT {
            eps,
            n_iter: 100,
            n_targets: 9,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
        }
    }
}

/// The minimal-L∞ move `d` from `t` ∈ [0, 1]^D onto {v : ⟨w, v⟩ = b} with `t + d` in the box; if the
/// hyperplane cannot be reached inside the box, the move to the box corner that gets closest.
pub fn project_linf(t: &[f32], w: &[f32], b: f32) -> Vec<f32> {
    let dot: f32 = w.iter().zip(t).map(|(w, t)| w * t).sum();
    let sigma = if dot - b >= 0.0 { 1.0 } else { -1.0 };
    // Oriented so that ⟨w, ·⟩ must decrease: coordinates with w < 0 go up, the others down.
    let w: Vec<f32> = w.iter().map(|v| v * sigma).collect();
    let b = b * sigma;
    let room: Vec<f32> = w
        .iter()
        .zip(t)
        .map(|(&w, &t)| if w < 0.0 { 1.0 - t } else { t })
        .collect();
    let full: Vec<f32> = w
        .iter()
        .zip(t)
        .map(|(&w, &t)| {
            if w < 0.0 {
                1.0 - t
            } else if w > 0.0 {
                -t
            } else {
                0.0
            }
        })
        .collect();
    let r = b - w.iter().zip(t).map(|(w, t)| w * t).sum::<f32>();
    let r0: f32 = w.iter().zip(&full).map(|(w, d)| w * d).sum();
    let dim = t.len();
    let mut order: Vec<usize> = (0..dim).collect();
    order.sort_by(|&i, &j| room[j].total_cmp(&room[i]));
    // Moving each coordinate by min(λ, room) changes ⟨w, ·⟩ by φ(λ); on the j-th segment
    // φ(λ) = B_j − λ·S_j, and G_j = φ(room of the j-th coordinate in the order).
    let (mut s, mut bsum) = (vec![0f32; dim], vec![0f32; dim]);
    let (mut acc_s, mut acc_b) = (0f32, r0);
    for (j, &i) in order.iter().enumerate() {
        acc_s += w[i].abs();
        acc_b += w[i].abs() * room[i];
        s[j] = acc_s;
        bsum[j] = acc_b;
    }
    let g = |j: usize| bsum[j] - s[j] * room[order[j]];
    let lambda_at = |j: usize| {
        if s[j] > 0.0 {
            ((bsum[j] - r) / s[j]).max(0.0)
        } else {
            0.0
        }
    };
    let mut d = if dim == 0 {
        Vec::new()
    } else if r > g(dim - 1) {
        let lam = lambda_at(dim - 1);
        w.iter().map(|&w| if w < 0.0 { lam } else { -lam }).collect()
    } else if r > r0 {
        let (mut lb, mut ub) = (0usize, dim - 1);
        for _ in 0..(dim as f64).log2().ceil() as usize {
            let m = (lb + ub) / 2;
            if r > g(m) {
                lb = m;
            } else {
                ub = m;
            }
        }
        let lam = lambda_at(lb);
        w.iter()
            .zip(t)
            .map(|(&w, &t)| if w < 0.0 { lam.min(1.0 - t) } else { (-lam).max(-t) })
            .collect()
    } else {
        full
    };
    for (di, &wi) in d.iter_mut().zip(&w) {
        if wi == 0.0 {
            *di = 0.0;
        }
    }
    d
}

fn linf(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

impl FabT {
    /// One targeted run on correctly classified examples; the smallest-norm misclassified point per
    /// example (the original where none was found), robust flags by the ε test.
    fn single_run(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, target: &Tensor, mode: Mode) -> Result<Run> {
        let n = x.dim(0)?;
        let dim = x.elem_count() / n.max(1);
        let y_host = y.to_vec1::<u32>()?;
        let xo = x.flatten_all()?.to_vec1::<f32>()?;
        let mut x1 = xo.clone();
        let mut best = xo.clone();
        let mut res = vec![f32::INFINITY; n];
        let (eta, amax) = (self.eta, self.alpha_max);
        let loss = AttackLoss::Targeted(target.clone());
        for _ in 0..self.n_iter {
            let cur = Tensor::from_vec(x1.clone(), x.shape(), x.device())?;
            let lg = loss_grad(model, &cur, y, &loss, mode)?;
            let g = lg.grad.flatten_all()?.to_vec1::<f32>()?;
            // Rows are independent: project them in parallel.
            x1.par_chunks_mut(dim.max(1)).enumerate().for_each(|(i, xi)| {
                let rows = i * dim..(i + 1) * dim;
                let (gi, oi) = (&g[rows.clone()], &xo[rows]);
                // Hyperplane f + ⟨g, v − x1⟩ = 0, i.e. ⟨g, v⟩ = ⟨g, x1⟩ − f.
                let b = gi.iter().zip(xi.iter()).map(|(g, x)| g * x).sum::<f32>() - lg.loss[i];
                let d1 = project_linf(xi, gi, b);
                let d2 = project_linf(oi, gi, b);
                let a1 = d1.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-8);
                let a2 = d2.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-8);
                let a = (a1 / (a1 + a2)).clamp(0.0, amax);
                for k in 0..dim {
                    xi[k] = ((1.0 - a) * (xi[k] + eta * d1[k]) + a * (oi[k] + eta * d2[k])).clamp(0.0, 1.0);
                }
            });
            let cur = Tensor::from_vec(x1.clone(), x.shape(), x.device())?;
            let pred = predictions(&model.logits(&cur, mode)?.detach())?;
            for i in 0..n {
                if pred[i] == y_host[i] {
                    continue;
                }
                let rows = i * dim..(i + 1) * dim;
                let norm = linf(&x1[rows.clone()], &xo[rows.clone()]);
                if norm < res[i] {
                    res[i] = norm;
                    best[rows.clone()].copy_from_slice(&x1[rows.clone()]);
                }
                for k in rows {
                    x1[k] = xo[k] + self.beta * (x1[k] - xo[k]);
                }
            }
        }
        let robust = res.iter().map(|&r| r > self.eps).collect();
        Ok(Run {
            robust,
            x_adv: Tensor::from_vec(best, x.shape(), x.device())?,
        })
    }
}

impl Attack for FabT {
    fn name(&self) -> String {
        "fab-t".into()
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        let mode = ctx.mode;
        let rounds = |k: usize| self.n_targets.min(k.saturating_sub(1));
        perturb_robust(model, x, y, mode, rounds, |round, xs, ys, idx, clean| {
            self.single_run(model, xs, ys, &targets(clean, idx, 2 + round)?, mode)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::linear::TwoClassLinear;
    use crate::rng::Rng;
    use candle_core::Device;

    #[test]
    fn projection_reaches_the_plane_with_the_smallest_linf_move() {
        // ⟨w, t⟩ = 1.5 and the plane is ⟨w, v⟩ = 1: with w = (1, 1, 1) the minimal L∞ move is −1/6 each.
        let t = [0.5f32, 0.5, 0.5];
        let d = project_linf(&t, &[1.0, 1.0, 1.0], 1.0);
        for v in &d {
            assert!((v + 1.0 / 6.0).abs() < 1e-6, "{d:?}");
        }
        // One coordinate has little room (0.05 above 0): it saturates and the others move further.
        let t = [0.05f32, 0.5, 0.5];
        let d = project_linf(&t, &[1.0, 1.0, 1.0], 0.55);
        let after: f32 = t.iter().zip(&d).map(|(t, d)| t + d).sum();
        assert!((after - 0.55).abs() < 1e-5, "{d:?}");
        assert!((d[0] + 0.05).abs() < 1e-6 && (d[1] + 0.225).abs() < 1e-6, "{d:?}");
        // Out of reach inside the box: the corner that gets closest.
        let d = project_linf(&[0.5, 0.5], &[1.0, 1.0], -3.0);
        assert_eq!(d, vec![-0.5, -0.5]);
        // Zero weights never move.
        let d = project_linf(&[0.5, 0.5], &[0.0, 2.0], 0.4);
        assert_eq!(d[0], 0.0);
        assert!((d[1] + 0.3).abs() < 1e-6);
    }

    #[test]
    fn finds_a_near_minimal_adversarial_on_a_linear_model() {
        let dev = Device::Cpu;
        let model = TwoClassLinear {
            w: Tensor::new(&[1.0f32, -2.0, 0.5, 4.0], &dev).unwrap(),
            b: -1.0,
        };
        // w·x + b = −0.45: class 0. The minimal L∞ distance to the boundary is 0.45 / Σ|w| = 0.06.
        let x = Tensor::new(&[0.5f32, 0.5, 0.5, 0.2], &dev)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        let mut rng = Rng::new(0);
        let fab = FabT {
            n_targets: 1,
            ..FabT::new(0.07)
        };
        let p = fab
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
        let norm = d.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(norm > 0.059 && norm <= 0.07, "{d:?}");
        // With ε below the minimal distance nothing is returned.
        let tight = FabT {
            n_targets: 1,
            ..FabT::new(0.05)
        };
        let p = tight
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
        assert_eq!(
            p.delta.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
    }
}
