//! Attacks behind one trait, plus the shared L∞ helpers (input gradient, projection, random start).
//!
//! Every attack returns a perturbation δ with ‖δ‖∞ ≤ ε and x + δ ∈ [0, 1]. The batch-norm mode used
//! while attacking is an explicit field of the context, never hidden model state.

pub mod apgd;
pub mod apgd_t;
pub mod autoattack;
pub mod cw;
pub mod fab;
pub mod fgsm;
pub mod fgsm_rs;
pub mod generator;
pub mod loss;
pub mod noise;
pub mod pgd;
mod robust;
pub mod square;

use candle_core::{DType, Tensor, D};

pub use apgd::Apgd;
pub use apgd_t::ApgdT;
pub use autoattack::AutoAttack;
pub use cw::CwInf;
pub use fab::FabT;
pub use fgsm::Fgsm;
pub use fgsm_rs::FgsmRs;
pub use generator::{cut_at_first_misclassified, Generator};
pub use loss::AttackLoss;
pub use noise::Noise;
pub use pgd::Pgd;
pub use square::Square;

use crate::error::Result;
use crate::models::{Classifier, Mode, Need};
use crate::rng::Rng;

/// Everything an attack may use besides the model and the batch.
pub struct AttackCtx<'a> {
    pub mode: Mode,
    pub rng: &'a mut Rng,
}

/// An attack's result: δ, and the logits of its first forward pass when it started from δ = 0
/// (then they are the clean logits, which training reuses instead of paying another forward).
pub struct Perturbation {
    pub delta: Tensor,
    pub clean_logits: Option<Tensor>,
}

pub trait Attack {
    /// A short label, e.g. `pgd10`.
    fn name(&self) -> String;
    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation>;

    /// As `perturb`, for the images at `rows` of the set being attacked batch by batch. Only a generator
    /// with per-image state (APART's learned initialisation on training images) reads `rows`.
    fn perturb_rows(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        _rows: std::ops::Range<usize>,
        ctx: &mut AttackCtx,
    ) -> Result<Perturbation> {
        self.perturb(model, x, y, ctx)
    }
}

/// Summed cross-entropy of `model` at `x + delta` and its gradient w.r.t. δ (with the logits).
/// Summing rather than averaging keeps per-example gradients independent of the batch size.
pub fn input_grad(
    model: &dyn Classifier,
    x: &Tensor,
    delta: &Tensor,
    y: &Tensor,
    mode: Mode,
) -> Result<(Tensor, Tensor)> {
    // d/dδ of a loss at x + δ is its gradient w.r.t. the input itself.
    let t = model.trace(&(x + delta)?, mode, Need::INPUT)?;
    let logits = t.logits.detach();
    let loss = per_sample_ce(&t.logits, y)?.sum_all()?;
    let g = match t.backward(&loss)?.input {
        Some(g) => g,
        // The loss does not depend on the input at all (a constant model): a zero gradient.
        None => delta.zeros_like()?,
    };
    Ok((g, logits))
}

/// Cross-entropy per example: (N, K) logits, (N,) u32 labels -> (N,).
pub fn per_sample_ce(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(lsm.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
}

/// Clips δ into the ε-ball and x + δ into [0, 1].
pub fn project(delta: &Tensor, x: &Tensor, eps: f32) -> Result<Tensor> {
    let d = delta.clamp(-eps, eps)?;
    Ok(((x + d)?.clamp(0f32, 1f32)? - x)?)
}

/// δ0 ~ U(-ε, ε), then projected so that x + δ0 ∈ [0, 1].
pub fn uniform_start(x: &Tensor, eps: f32, rng: &mut Rng) -> Result<Tensor> {
    let u = rng.uniform_tensor(x.dims(), -eps, eps, x.device())?;
    project(&u, x, eps)
}

/// One signed-gradient ascent step of size α, projected.
pub fn sign_step(
    model: &dyn Classifier,
    x: &Tensor,
    delta: &Tensor,
    y: &Tensor,
    alpha: f32,
    eps: f32,
    mode: Mode,
) -> Result<(Tensor, Tensor)> {
    let (g, logits) = input_grad(model, x, delta, y, mode)?;
    let d = (delta + (g.sign()? * f64::from(alpha))?)?;
    Ok((project(&d, x, eps)?, logits))
}

/// Number of correct predictions.
pub fn correct(logits: &Tensor, y: &Tensor) -> Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    Ok(pred.eq(y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize)
}

/// Per-example correctness as 0/1 f32.
pub fn correct_mask(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(logits.argmax(D::Minus1)?.eq(y)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
pub(crate) mod linear {
    //! A linear classifier whose L∞ attack optima are known in closed form.
    use super::*;

    /// Two classes, logits = [0, w·x + b]: the loss of class 0 rises along +sign(w), of class 1 along -sign(w).
    pub struct TwoClassLinear {
        pub w: Tensor,
        pub b: f32,
    }

    impl Classifier for TwoClassLinear {
        fn logits(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
            let n = x.dim(0)?;
            let z = (x.flatten_from(1)?.matmul(&self.w.unsqueeze(1)?)? + f64::from(self.b))?;
            Ok(Tensor::cat(&[&z.zeros_like()?, &z], 1)?.reshape((n, 2))?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A 10-class linear model on 4×4 inputs: logits = flatten(x)·W + b.
    struct LinearK {
        w: Tensor,
        b: Tensor,
    }

    impl Classifier for LinearK {
        fn logits(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
            Ok(x.flatten_from(1)?.matmul(&self.w)?.broadcast_add(&self.b)?)
        }
    }

    #[test]
    fn every_attack_stays_in_the_ball_and_box_and_repeats_under_a_seed() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(12);
        let model = LinearK {
            w: rng.uniform_tensor(&[16, 10], -1.0, 1.0, &dev).unwrap(),
            b: rng.uniform_tensor(&[10], -0.5, 0.5, &dev).unwrap(),
        };
        let x = rng.uniform_tensor(&[6, 1, 4, 4], 0.0, 1.0, &dev).unwrap();
        let y = model.logits(&x, Mode::EVAL).unwrap().argmax(1).unwrap();
        let eps = 0.1f32;
        let attacks: Vec<Box<dyn Attack>> = vec![
            Box::new(Fgsm::new(eps)),
            Box::new(FgsmRs::new(eps)),
            Box::new(Pgd::new(eps, 10)),
            Box::new(Pgd {
                restarts: 3,
                ..Pgd::new(eps, 5)
            }),
            Box::new(CwInf::new(eps)),
            Box::new(Noise::Sign { eps }),
            Box::new(Noise::Uniform { eps }),
            Box::new(Apgd::ce(eps)),
            Box::new(Apgd {
                loss: AttackLoss::Dlr,
                ..Apgd::ce(eps)
            }),
            Box::new(ApgdT::new(eps)),
            Box::new(FabT::new(eps)),
            Box::new(Square {
                n_queries: 300,
                ..Square::new(eps)
            }),
            Box::new(AutoAttack {
                square_queries: 300,
                ..AutoAttack::standard(eps)
            }),
        ];
        let clean = correct(&model.logits(&x, Mode::EVAL).unwrap(), &y).unwrap();
        for a in &attacks {
            let run = |seed: u64| {
                let mut r = Rng::new(seed);
                a.perturb(
                    &model,
                    &x,
                    &y,
                    &mut AttackCtx {
                        mode: Mode::EVAL,
                        rng: &mut r,
                    },
                )
                .unwrap()
                .delta
            };
            let d = run(5);
            let dv: Vec<f32> = d.flatten_all().unwrap().to_vec1().unwrap();
            let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for (dd, xx) in dv.iter().zip(&xv) {
                assert!(dd.abs() <= eps + 1e-6, "{}: |δ| = {dd}", a.name());
                assert!(
                    (-1e-6..=1.0 + 1e-6).contains(&(xx + dd)),
                    "{}: x + δ = {}",
                    a.name(),
                    xx + dd
                );
            }
            let adv = correct(&model.logits(&(&x + &d).unwrap(), Mode::EVAL).unwrap(), &y).unwrap();
            assert!(adv <= clean, "{}: {adv} > {clean}", a.name());
            let again: Vec<f32> = run(5).flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(dv, again, "{} is not deterministic under a seed", a.name());
        }
        // Gaussian noise is not ε-bounded, but stays in the box.
        let mut r = Rng::new(1);
        let g = Noise::Gaussian { sigma: 0.3 }
            .perturb(
                &model,
                &x,
                &y,
                &mut AttackCtx {
                    mode: Mode::EVAL,
                    rng: &mut r,
                },
            )
            .unwrap()
            .delta;
        let s = (&x + &g).unwrap();
        assert!(s.min_all().unwrap().to_scalar::<f32>().unwrap() >= 0.0);
        assert!(s.max_all().unwrap().to_scalar::<f32>().unwrap() <= 1.0);
    }

    #[test]
    fn projection_respects_ball_and_box() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[0.0f32, 0.5, 0.98], &dev).unwrap();
        let d = Tensor::new(&[-0.2f32, 0.3, 0.05], &dev).unwrap();
        let p: Vec<f32> = project(&d, &x, 0.1).unwrap().to_vec1().unwrap();
        assert_eq!(p[0], 0.0);
        assert!((p[1] - 0.1).abs() < 1e-7);
        assert!((p[2] - 0.02).abs() < 1e-6);
    }

    #[test]
    fn per_sample_ce_by_hand() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[0f32, 0.0], [0.0, 2.0f32.ln()]], &dev).unwrap();
        let y = Tensor::new(&[0u32, 1], &dev).unwrap();
        let l: Vec<f32> = per_sample_ce(&logits, &y).unwrap().to_vec1().unwrap();
        assert!((l[0] - 2f32.ln()).abs() < 1e-6);
        assert!((l[1] - (1.5f32).ln()).abs() < 1e-6);
    }
}
