//! The perturbation generators of the training methods, as attacks: f_A(θ, x, y) of the paper, which the
//! analyses run on a checkpoint of a method's run. Each method names its own in its `Method::generator`
//! (src/train/); where the training generator keeps per-example state that unseen test images do not
//! have, the state starts where training starts it. BN runs as the caller's `AttackCtx` says (eval mode in
//! the analyses, as for every attack in `covf eval`).

use candle_core::{DType, Tensor};

use super::{correct_mask, input_grad, project, sign_step, uniform_start, Attack, AttackCtx, Perturbation};
use crate::error::{CovfError, Result};
use crate::models::{Classifier, Mode};

#[derive(Debug, Clone)]
pub enum Generator {
    Zero,
    /// One signed step of α from δ0 ~ U(−start·ε, start·ε) (start = 0: from zero), projected to ε.
    Step {
        eps: f32,
        alpha: f32,
        start: f32,
    },
    /// N signed steps of α, projected every step, from a uniform start or from zero.
    Pgd {
        eps: f32,
        alpha: f32,
        steps: usize,
        random_start: bool,
    },
    /// FGSM-RS, then the first misclassified point among (k/c)·δ.
    Sfgsm {
        eps: f32,
        alpha: f32,
        checkpoints: usize,
    },
    /// APART's generator with its learned initialisation: clamp(s + α·sign(∇x L(x + clamp(s, ±ε))), ±ε)
    /// with s = α_ω·ω_x, one row of `init` per image of the set attacked (training images only).
    LearnedInit {
        eps: f32,
        alpha: f32,
        /// α_ω, for the description.
        alpha_init: f32,
        /// α_ω·ω, (N, C, H, W) for the N images of the set, in order.
        init: Tensor,
    },
}

impl Generator {
    /// A short description for tables, e.g. `step(a=0.15,start=0)`.
    pub fn describe(&self) -> String {
        match self {
            Generator::Zero => "zero".into(),
            Generator::Step { alpha, start, .. } => format!("step(a={alpha},start={start})"),
            Generator::Pgd {
                alpha,
                steps,
                random_start,
                ..
            } => format!("pgd{steps}(a={alpha},rs={random_start})"),
            Generator::Sfgsm { alpha, checkpoints, .. } => format!("sfgsm(a={alpha},c={checkpoints})"),
            Generator::LearnedInit { alpha, alpha_init, .. } => {
                format!("learned-init(a={alpha},a_init={alpha_init})")
            }
        }
    }
}

/// Per example, the fraction k/c of δ to train on: the smallest k whose point is misclassified
/// (`wrong[k − 1][i]`), c when none is.
pub fn chosen_fractions(wrong: &[Vec<bool>], n: usize, c: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let k = wrong.iter().position(|w| w[i]).map_or(c, |k| k + 1);
            k as f32 / c as f32
        })
        .collect()
}

/// S+FGSM's training perturbation from the FGSM-RS step `delta` and the logits at its random-start point:
/// 0 (the clean image) where the start point is misclassified, else δ scaled to the first of the points
/// x + (k/c)·δ, k = 1 … c − 1, that `model` misclassifies in BN eval mode (whole when none is).
pub fn cut_at_first_misclassified(
    model: &dyn Classifier,
    x: &Tensor,
    delta: &Tensor,
    y: &Tensor,
    start_logits: &Tensor,
    checkpoints: usize,
) -> Result<Tensor> {
    let c = checkpoints.max(1);
    let mut wrong = Vec::with_capacity(c - 1);
    for k in 1..c {
        let xk = (x + (delta * (k as f64 / c as f64))?)?;
        let ok: Vec<f32> = correct_mask(&model.logits(&xk, Mode::EVAL)?, y)?.to_vec1()?;
        wrong.push(ok.iter().map(|&v| v == 0.0).collect());
    }
    let n = x.dim(0)?;
    let ok_at_start: Vec<f32> = correct_mask(start_logits, y)?.to_vec1()?;
    let frac: Vec<f32> = chosen_fractions(&wrong, n, c)
        .into_iter()
        .zip(ok_at_start)
        .map(|(f, ok)| f * ok)
        .collect();
    let shape: Vec<usize> = std::iter::once(n)
        .chain(std::iter::repeat_n(1, delta.rank() - 1))
        .collect();
    let frac = Tensor::from_vec(frac, shape, x.device())?.to_dtype(DType::F32)?;
    Ok(delta.broadcast_mul(&frac)?)
}

impl Attack for Generator {
    fn name(&self) -> String {
        self.describe()
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        self.perturb_rows(model, x, y, 0..x.dim(0)?, ctx)
    }

    fn perturb_rows(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        rows: std::ops::Range<usize>,
        ctx: &mut AttackCtx,
    ) -> Result<Perturbation> {
        let (delta, _) = self.perturb_from_start(model, x, y, rows, ctx)?;
        Ok(Perturbation {
            delta,
            clean_logits: None,
        })
    }
}

impl Generator {
    /// As `perturb_rows`, with the logits at the generator's starting point x + δ0 (its first forward;
    /// `None` for `Zero`, which takes no step): what the abnormal-adversarial-example signal compares with.
    pub fn perturb_from_start(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        rows: std::ops::Range<usize>,
        ctx: &mut AttackCtx,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (delta, start_logits) = match *self {
            Generator::Zero => (x.zeros_like()?, None),
            Generator::Step { eps, alpha, start } => {
                let d0 = if start > 0.0 {
                    let k = start * eps;
                    let u = ctx.rng.uniform_tensor(x.dims(), -k, k, x.device())?;
                    ((x + u)?.clamp(0f32, 1f32)? - x)?
                } else {
                    x.zeros_like()?
                };
                let (g, logits) = input_grad(model, x, &d0, y, ctx.mode)?;
                (project(&(d0 + (g.sign()? * f64::from(alpha))?)?, x, eps)?, Some(logits))
            }
            Generator::Pgd {
                eps,
                alpha,
                steps,
                random_start,
            } => {
                let mut d = if random_start {
                    uniform_start(x, eps, ctx.rng)?
                } else {
                    x.zeros_like()?
                };
                let mut first = None;
                for _ in 0..steps {
                    let (next, logits) = sign_step(model, x, &d, y, alpha, eps, ctx.mode)?;
                    first.get_or_insert(logits);
                    d = next;
                }
                (d, first)
            }
            Generator::Sfgsm {
                eps,
                alpha,
                checkpoints,
            } => {
                let start = uniform_start(x, eps, ctx.rng)?;
                let (d, start_logits) = sign_step(model, x, &start, y, alpha, eps, ctx.mode)?;
                (
                    cut_at_first_misclassified(model, x, &d, y, &start_logits, checkpoints)?,
                    Some(start_logits),
                )
            }
            Generator::LearnedInit {
                eps, alpha, ref init, ..
            } => {
                if rows.end > init.dim(0)? || rows.len() != x.dim(0)? {
                    return Err(CovfError::spec(
                        "learned initialisation",
                        format!(
                            "rows {rows:?} of a batch of {} do not fit the {} images it was read for",
                            x.dim(0)?,
                            init.dim(0)?
                        ),
                    ));
                }
                let s = init.narrow(0, rows.start, rows.len())?;
                let d0 = project(&s, x, eps)?;
                let (g, logits) = input_grad(model, x, &d0, y, ctx.mode)?;
                (project(&(s + (g.sign()? * f64::from(alpha))?)?, x, eps)?, Some(logits))
            }
        };
        Ok((delta.detach(), start_logits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::linear::TwoClassLinear;
    use crate::models::Mode;
    use crate::rng::Rng;
    use candle_core::Device;

    fn run(g: &Generator, x: &Tensor, y: &Tensor, seed: u64) -> Vec<f32> {
        let model = TwoClassLinear {
            w: Tensor::new(&[3.0f32, -1.0, 2.0, 0.5], &Device::Cpu).unwrap(),
            b: 0.0,
        };
        let mut rng = Rng::new(seed);
        g.perturb(
            &model,
            x,
            y,
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
        .unwrap()
    }

    #[test]
    fn every_generator_stays_in_the_ball_and_the_box_and_moves_along_sign_w() {
        let dev = Device::Cpu;
        // Class 0: the loss rises along +sign(w) = (+, −, +, +). The second image sits on the box edges.
        let x = Tensor::new(&[[0.5f32, 0.5, 0.5, 0.5], [1.0, 0.0, 0.95, 0.5]], &dev).unwrap();
        let y = Tensor::new(&[0u32, 0], &dev).unwrap();
        let sign = [1.0f32, -1.0, 1.0, 1.0];
        let eps = 0.1;
        let gens = [
            Generator::Zero,
            Generator::Step {
                eps,
                alpha: eps,
                start: 0.0,
            },
            Generator::Step {
                eps,
                alpha: 1.25 * eps,
                start: 1.0,
            },
            Generator::Step {
                eps,
                alpha: eps,
                start: 2.0,
            },
            Generator::Pgd {
                eps,
                alpha: eps / 4.0,
                steps: 10,
                random_start: true,
            },
            Generator::Pgd {
                eps,
                alpha: eps / 4.0,
                steps: 10,
                random_start: false,
            },
            Generator::Sfgsm {
                eps,
                alpha: 1.25 * eps,
                checkpoints: 3,
            },
        ];
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        for g in &gens {
            let d = run(g, &x, &y, 3);
            for (i, (&di, &xi)) in d.iter().zip(&xs).enumerate() {
                assert!(di.abs() <= eps + 1e-6, "{g:?}: |δ| = {di}");
                assert!((0.0..=1.0).contains(&(xi + di)), "{g:?}: x + δ = {}", xi + di);
                // Zero start and enough total step: every free coordinate ends at the corner ε·sign(w).
                let free = i < 4;
                if free && matches!(g, Generator::Step { start, .. } if *start == 0.0) {
                    assert!((di - eps * sign[i]).abs() < 1e-6, "{g:?}: {d:?}");
                }
                if free && matches!(g, Generator::Pgd { .. }) {
                    assert!((di - eps * sign[i]).abs() < 1e-6, "{g:?}: {d:?}");
                }
            }
            if matches!(g, Generator::Zero) {
                assert!(d.iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    fn sfgsm_cuts_the_step_where_the_label_first_flips() {
        let dev = Device::Cpu;
        // w·x + b at x = 0.5: 0.5·4.5 − 2.3 = −0.05 (class 0). Any step along sign(w) gains
        // ~Σ|w_i|·|δ_i|; with ε = 0.1 the full step gains ~0.65, a third of it ~0.2 > 0.05: the first
        // checkpoint (k = 1 of c = 3) already flips the label, so δ is scaled by 1/3.
        let model = TwoClassLinear {
            w: Tensor::new(&[3.0f32, -1.0, 2.0, 0.5], &dev).unwrap(),
            b: -2.3,
        };
        let x = Tensor::full(0.5f32, (1, 4), &dev).unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        let g = Generator::Sfgsm {
            eps: 0.1,
            alpha: 0.125,
            checkpoints: 3,
        };
        let mut rng = Rng::new(1);
        let mut ctx = AttackCtx {
            mode: Mode::EVAL,
            rng: &mut rng,
        };
        let d = g.perturb(&model, &x, &y, &mut ctx).unwrap().delta;
        let mut rng = Rng::new(1);
        let full = Generator::Step {
            eps: 0.1,
            alpha: 0.125,
            start: 1.0,
        }
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
        .delta;
        let (d, full): (Vec<f32>, Vec<f32>) = (
            d.flatten_all().unwrap().to_vec1().unwrap(),
            full.flatten_all().unwrap().to_vec1().unwrap(),
        );
        for (a, b) in d.iter().zip(&full) {
            assert!((a - b / 3.0).abs() < 1e-6, "{d:?} vs {full:?}");
        }
    }

    #[test]
    fn the_learned_initialisation_starts_each_image_from_its_own_row() {
        let dev = Device::Cpu;
        let model = TwoClassLinear {
            w: Tensor::new(&[3.0f32, -1.0, 2.0, 0.5], &dev).unwrap(),
            b: 0.0,
        };
        let x = Tensor::full(0.5f32, (1, 4), &dev).unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        // Row 1: δ = clamp(s + 0.08·sign(w), ±0.1) with sign(w) = (+, −, +, +):
        // (0.05 + 0.08, 0.05 − 0.08, −0.3 + 0.08, 0 + 0.08) → (0.1, −0.03, −0.1, 0.08).
        let g = Generator::LearnedInit {
            eps: 0.1,
            alpha: 0.08,
            alpha_init: 0.5,
            init: Tensor::new(&[[0.0f32, 0.0, 0.0, 0.0], [0.05, 0.05, -0.3, 0.0]], &dev).unwrap(),
        };
        let mut rng = Rng::new(0);
        let mut ctx = AttackCtx {
            mode: Mode::EVAL,
            rng: &mut rng,
        };
        let d: Vec<f32> = g
            .perturb_rows(&model, &x, &y, 1..2, &mut ctx)
            .unwrap()
            .delta
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in d.iter().zip([0.1f32, -0.03, -0.1, 0.08]) {
            assert!((a - b).abs() < 1e-6, "{d:?}");
        }
        // Row 0 (ω = 0): a plain signed step of α.
        let d0 = run(&g, &x, &y, 0);
        for (a, b) in d0.iter().zip([0.08f32, -0.08, 0.08, 0.08]) {
            assert!((a - b).abs() < 1e-6, "{d0:?}");
        }
        assert!(g.perturb_rows(&model, &x, &y, 2..3, &mut ctx).is_err());
        assert_eq!(g.describe(), "learned-init(a=0.08,a_init=0.5)");
    }

    #[test]
    fn picks_the_first_misclassified_checkpoint_else_the_full_step() {
        // c = 3: checkpoints at 1/3 and 2/3. Example 0 is wrong at 1/3, example 1 only at 2/3,
        // example 2 never.
        let wrong = vec![vec![true, false, false], vec![true, true, false]];
        assert_eq!(chosen_fractions(&wrong, 3, 3), vec![1.0 / 3.0, 2.0 / 3.0, 1.0]);
        assert_eq!(chosen_fractions(&[], 2, 1), vec![1.0, 1.0]);
    }

    #[test]
    fn misclassified_at_the_start_trains_clean_the_rest_cut_at_the_first_flip() {
        use crate::attacks::linear::TwoClassLinear;
        use candle_core::Device;
        let dev = Device::Cpu;
        // logit of class 1 = w·x + b with w = (1, 1), b = −1. δ = (0.3, 0.3) adds 0.6 at the full step.
        let model = TwoClassLinear {
            w: Tensor::new(&[1.0f32, 1.0], &dev).unwrap(),
            b: -1.0,
        };
        // Example 0: z = −0.44 at x, −0.24 at δ/3, −0.04 at 2δ/3 (class 0 kept at both): the full step.
        // Example 1: z = −0.3 at x, −0.1 at δ/3, +0.1 at 2δ/3: cut at 2/3.
        // Example 2: as example 1, but misclassified at its start point: the clean image.
        let x = Tensor::new(&[[0.28f32, 0.28], [0.35, 0.35], [0.35, 0.35]], &dev).unwrap();
        let y = Tensor::new(&[0u32, 0, 0], &dev).unwrap();
        let delta = Tensor::full(0.3f32, (3, 2), &dev).unwrap();
        let start_logits = Tensor::new(&[[1.0f32, 0.0], [1.0, 0.0], [0.0, 1.0]], &dev).unwrap();
        let cut = cut_at_first_misclassified(&model, &x, &delta, &y, &start_logits, 3).unwrap();
        let cut: Vec<Vec<f32>> = cut.to_vec2().unwrap();
        let want = [[0.3f32, 0.3], [0.2, 0.2], [0.0, 0.0]];
        for (got, want) in cut.iter().zip(want) {
            for (a, b) in got.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "{cut:?}");
            }
        }
    }
}
