//! APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
//! parameter-free attacks"), L∞, ε; the first stage of AutoAttack. Defaults as in fra31/auto-attack's
//! standard version: 100 iterations, 1 restart, cross-entropy (`Apgd::ce`) or DLR loss, ρ = 0.75.
//!
//! Step size 2ε per example, momentum 0.75, halved at checkpoints (windows of 22, 19, 16, … iterations
//! down to 6 for 100 iterations) when fewer than ρ of the window's steps raised the loss, or when the
//! step was not halved last time and the best loss did not improve since; a halving restarts from the
//! best point. Each example returns the last iterate that was misclassified (the clean input if none);
//! restarts only attack examples still robust. Details and the reference's quirks (kept here):
//! docs/autoattack-reference.md §2.

use candle_core::{Tensor, D};

use super::loss::{loss_grad, AttackLoss};
use super::robust::{per_row, perturb_robust, predictions, row_shape, where_rows, Run};
use super::{Attack, AttackCtx, Perturbation};
use crate::error::Result;
use crate::models::{Classifier, Mode};
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct Apgd {
    pub eps: f32,
    pub n_iter: usize,
    pub restarts: usize,
    pub rho: f32,
    /// `Ce` or `Dlr` (targeted DLR is `ApgdT`).
    pub loss: AttackLoss,
    /// Gradients averaged per step (expectation over transformation, for randomized models; 1 otherwise).
    pub eot: usize,
}

impl Apgd {
    /// APGD-CE with AutoAttack's standard settings.
    pub fn ce(eps: f32) -> Self {
        Apgd {
            eps,
            n_iter: 100,
            restarts: 1,
            rho: 0.75,
            loss: AttackLoss::Ce,
            eot: 1,
        }
    }

    fn params(&self) -> RunParams {
        RunParams {
            eps: self.eps,
            n_iter: self.n_iter,
            rho: self.rho,
            eot: self.eot,
        }
    }
}

/// What one APGD run needs besides model, data and loss.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunParams {
    pub eps: f32,
    pub n_iter: usize,
    pub rho: f32,
    pub eot: usize,
}

/// `loss_grad` with the gradient averaged over `eot` evaluations (loss and logits of the last), as the
/// reference does for randomized models.
fn loss_grad_eot(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    loss: &AttackLoss,
    mode: Mode,
    eot: usize,
) -> Result<super::loss::LossGrad> {
    let mut lg = loss_grad(model, x, y, loss, mode)?;
    if eot > 1 {
        let mut sum = lg.grad.clone();
        for _ in 1..eot {
            lg = loss_grad(model, x, y, loss, mode)?;
            sum = (sum + &lg.grad)?;
        }
        lg.grad = (sum / eot as f64)?;
    }
    Ok(lg)
}

/// The iterations after which APGD checks its progress: windows start at ⌊0.22·N⌋ and shrink by ⌊0.03·N⌋
/// down to ⌊0.06·N⌋ (each at least 1). For N = 100: after iterations 21, 40, 56, 69, 79, 86, 92, 98.
pub fn checkpoints(n_iter: usize) -> Vec<usize> {
    let frac = |f: f64| ((f * n_iter as f64) as usize).max(1);
    let (mut k, k_min, decr) = (frac(0.22), frac(0.06), frac(0.03));
    let mut out = Vec::new();
    let mut at = k;
    while at <= n_iter {
        out.push(at - 1);
        k = k.saturating_sub(decr).max(k_min);
        at += k;
    }
    out
}

/// x0 = clip(x + ε·t / max|t|, 0, 1) with t ~ U[−1, 1): the reference's start, on the surface of the ball.
pub(crate) fn surface_start(x: &Tensor, eps: f32, rng: &mut Rng) -> Result<Tensor> {
    let t = rng.uniform_tensor(x.dims(), -1.0, 1.0, x.device())?;
    let m = t.abs()?.flatten_from(1)?.max(D::Minus1)?;
    let m = (m + 1e-12)?.reshape(row_shape(x.dim(0)?, x))?;
    Ok((x + (t.broadcast_div(&m)? * f64::from(eps))?)?.clamp(0f32, 1f32)?)
}

/// One APGD run (docs/autoattack-reference.md §2.3) of `n_iter` iterations from a surface start.
pub(crate) fn single_run(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    loss: &AttackLoss,
    p: RunParams,
    mode: Mode,
    rng: &mut Rng,
) -> Result<Run> {
    let RunParams { eps, n_iter, rho, eot } = p;
    let n = x.dim(0)?;
    let y_host = y.to_vec1::<u32>()?;
    let lo = (x - f64::from(eps))?.clamp(0f32, 1f32)?;
    let hi = (x + f64::from(eps))?.clamp(0f32, 1f32)?;
    let clip = |v: &Tensor| -> Result<Tensor> { Ok(v.maximum(&lo)?.minimum(&hi)?) };

    let x0 = surface_start(x, eps, rng)?;
    let first = loss_grad_eot(model, &x0, y, loss, mode, eot)?;
    let mut robust: Vec<bool> = predictions(&first.logits)?
        .iter()
        .zip(&y_host)
        .map(|(p, t)| p == t)
        .collect();
    let mut x_adv = x0.clone();
    let (mut x_best, mut grad_best, mut loss_best) = (x0.clone(), first.grad.clone(), first.loss.clone());
    let mut g = first.grad;
    let mut step = vec![2.0 * eps; n];
    let (mut x_cur, mut x_prev) = (x0.clone(), x0);
    let marks = checkpoints(n_iter);
    let mut next_mark = 0usize;
    let mut window_start = 0usize;
    let mut loss_best_last = loss_best.clone();
    let mut reduced_last = vec![true; n];
    let mut first_check = true;
    let mut steps: Vec<Vec<f32>> = Vec::with_capacity(n_iter);

    for i in 0..n_iter {
        let m = (&x_cur - &x_prev)?;
        x_prev = x_cur.clone();
        let a = if i == 0 { 1.0 } else { 0.75 };
        let z = clip(&(&x_cur + g.sign()?.broadcast_mul(&per_row(&step, x)?)?)?)?;
        let moved = ((&x_cur + ((&z - &x_cur)? * a)?)? + (m * (1.0 - a))?)?;
        x_cur = clip(&moved)?;

        let lg = loss_grad_eot(model, &x_cur, y, loss, mode, eot)?;
        let fooled: Vec<bool> = predictions(&lg.logits)?
            .iter()
            .zip(&y_host)
            .map(|(p, t)| p != t)
            .collect();
        x_adv = where_rows(&fooled, &x_cur, &x_adv)?;
        for (r, f) in robust.iter_mut().zip(&fooled) {
            *r &= !f;
        }
        let improved: Vec<bool> = lg.loss.iter().zip(&loss_best).map(|(l, b)| l > b).collect();
        x_best = where_rows(&improved, &x_cur, &x_best)?;
        grad_best = where_rows(&improved, &lg.grad, &grad_best)?;
        for ((b, &l), &imp) in loss_best.iter_mut().zip(&lg.loss).zip(&improved) {
            if imp {
                *b = l;
            }
        }
        steps.push(lg.loss);
        g = lg.grad;

        if next_mark < marks.len() && i == marks[next_mark] {
            let k = i + 1 - window_start;
            let mut halve = vec![false; n];
            for (j, h) in halve.iter_mut().enumerate() {
                // Rises of the loss within the window. The reference compares the window's first step with
                // an unwritten slot (0) at the first checkpoint rather than with the start's loss; kept.
                let rises = (window_start..=i)
                    .filter(|&u| {
                        let prev = if u == 0 { 0.0 } else { steps[u - 1][j] };
                        steps[u][j] > prev
                    })
                    .count();
                let oscillating = rises as f32 <= k as f32 * rho;
                let stalled = !first_check && !reduced_last[j] && loss_best_last[j] >= loss_best[j];
                *h = oscillating || stalled;
            }
            for (s, &h) in step.iter_mut().zip(&halve) {
                if h {
                    *s /= 2.0;
                }
            }
            x_cur = where_rows(&halve, &x_best, &x_cur)?;
            g = where_rows(&halve, &grad_best, &g)?;
            reduced_last = halve;
            loss_best_last = loss_best.clone();
            first_check = false;
            window_start = i + 1;
            next_mark += 1;
        }
    }
    Ok(Run { robust, x_adv })
}

impl Attack for Apgd {
    fn name(&self) -> String {
        match self.loss {
            AttackLoss::Ce => "apgd-ce".into(),
            AttackLoss::Dlr => "apgd-dlr".into(),
            AttackLoss::Margin => "apgd-margin".into(),
            AttackLoss::DlrTargeted(_) => "apgd-t".into(),
            AttackLoss::Targeted(_) => "apgd-targeted-margin".into(),
        }
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        let mode = ctx.mode;
        perturb_robust(
            model,
            x,
            y,
            mode,
            |_| self.restarts.max(1),
            |_, xs, ys, _, _| single_run(model, xs, ys, &self.loss, self.params(), mode, ctx.rng),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::linear::TwoClassLinear;
    use candle_core::Device;

    #[test]
    fn checkpoint_schedule_matches_the_reference() {
        assert_eq!(checkpoints(100), vec![21, 40, 56, 69, 79, 86, 92, 98]);
        // Small budgets: windows of at least one iteration, all inside the run.
        assert_eq!(checkpoints(10), vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert!(checkpoints(1000).iter().all(|&c| c < 1000));
    }

    #[test]
    fn finds_the_linear_optimum_and_stays_in_the_ball() {
        let dev = Device::Cpu;
        let model = TwoClassLinear {
            w: Tensor::new(&[1.0f32, -2.0, 0.5, 4.0], &dev).unwrap(),
            b: -1.0,
        };
        // w·x + b = −0.45 < 0 at x: class 0 is predicted. The CE ascent for y = 0 pushes w·x up; the L∞
        // optimum x + ε·sign(w) (inside the box here) raises it by ε·Σ|w| = 0.75 and crosses the boundary.
        let x = Tensor::new(&[0.5f32, 0.5, 0.5, 0.2], &dev)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        let eps = 0.1;
        let mut rng = Rng::new(3);
        let p = RunParams {
            eps,
            n_iter: 100,
            rho: 0.75,
            eot: 1,
        };
        let run = single_run(&model, &x, &y, &AttackLoss::Ce, p, Mode::EVAL, &mut rng).unwrap();
        assert_eq!(run.robust, vec![false]);
        let d: Vec<f32> = (run.x_adv - &x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(d.iter().all(|v| v.abs() <= eps + 1e-6), "{d:?}");
        // The margin at the returned point is positive (misclassified): w·x + b > 0.
        let wx: f32 = [1.0f32, -2.0, 0.5, 4.0]
            .iter()
            .zip([0.5f32, 0.5, 0.5, 0.2])
            .map(|(w, x)| w * x)
            .sum();
        let moved: f32 = [1.0f32, -2.0, 0.5, 4.0].iter().zip(&d).map(|(w, d)| w * d).sum();
        assert!(wx - 1.0 + moved > 0.0);
    }
}
