//! FGSM + GradAlign (Andriushchenko & Flammarion 2020, "Understanding and improving fast adversarial
//! training"): FGSM training (zero init, α = ε) plus λ·(1 − cos(∇x L(x), ∇x L(x + η))) averaged over
//! the batch, η ~ U(−ε, ε): keeping the input gradient locally linear prevents catastrophic overfitting.
//!
//! The regulariser's weight gradient needs a double backward through the network. covf's CPU conv
//! and batch-norm kernels have first-order backward passes only, so the weight gradient is taken by
//! **finite differences**: with φ the alignment loss and v = ∂φ/∂g held fixed, ∇θ φ = J_gᵀ v, and
//! J_gᵀ v = ∇θ (g·v) where g·v is the directional derivative of the loss along v,
//! ≈ |v|·(L(x + r·v̂) − L(x − r·v̂))/(2r) (central difference, radius r). As the reference
//! (tml-epfl train.py detaches the first gradient), only g2 = ∇x L(x + η) is differentiated: its two
//! points go through one forward pass of 2N inputs. `through_clean` also differentiates g1 = ∇x L(x),
//! as the formula reads (4N inputs); it roughly doubles the regulariser's pull. Cost: two input-gradient
//! passes (the first also gives the FGSM direction and the clean logits), the training pass and the
//! finite-difference pass. The finite-difference points use batch statistics without updating the
//! running ones whatever `--attack-bn` says: they stand in for a double backward, which in PyTorch
//! adds no forward pass of its own.

use candle_core::{Tensor, D};

use serde::{Deserialize, Serialize};

use super::method::{Defaults, Flag, Flags, Meta, Method};
use super::{MethodEnv, StepCtx, StepStats, TrainMethod};
use crate::attacks::{input_grad, per_sample_ce, project, uniform_start, Generator};
use crate::data::Batch;
use crate::error::{CovfError, Result};
use crate::models::{Classifier, Mode, PreActResNet};
use crate::optim::Precision;

/// `--method gradalign`.
pub struct GradAlign;

/// The alignment gradient by finite differences of radius `fd_radius`. As the reference, ∇x L(x) is held
/// fixed and only ∇x L(x + η) is differentiated; `through_clean` differentiates both, as the paper's
/// formula reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradAlignConfig {
    pub lambda: f32,
    pub fd_radius: f32,
    /// Runs whose run.json predates the choice differentiated both gradients.
    #[serde(default = "differentiated_both")]
    pub through_clean: bool,
}

fn differentiated_both() -> bool {
    true
}

impl Method for GradAlign {
    type Config = GradAlignConfig;
    const NAME: &'static str = "gradalign";
    const HELP: &'static str =
        "FGSM + GradAlign (Andriushchenko & Flammarion 2020), finite-difference alignment gradient";
    const DISPLAY: &'static str = "GradAlign";
    const FLAGS: &'static [Flag] = &[
        Flag {
            name: "gradalign-lambda",
            help: "GradAlign: weight λ of the gradient-alignment term",
            value: Some("LAMBDA"),
            default: "0.2",
        },
        Flag {
            name: "fd-radius",
            help: "GradAlign: radius of the finite-difference approximation of the alignment gradient",
            value: Some("R"),
            default: "0.01",
        },
        Flag {
            name: "gradalign-through-clean",
            help: "GradAlign: also differentiate through ∇x L(x), as the paper's formula reads (the reference \
                   code detaches it, which is the default)",
            value: None,
            default: "",
        },
    ];

    fn config(f: &Flags, _: &Defaults) -> Result<GradAlignConfig> {
        Ok(GradAlignConfig {
            lambda: f.parse("gradalign-lambda")?.unwrap_or(0.2),
            fd_radius: f.parse("fd-radius")?.unwrap_or(0.01),
            through_clean: f.switch("gradalign-through-clean"),
        })
    }

    fn validate(c: &GradAlignConfig) -> Result<()> {
        if !(c.lambda >= 0.0 && c.fd_radius > 0.0) {
            return Err(CovfError::spec(
                "gradalign",
                format!(
                    "λ {} must be ≥ 0 and the finite-difference radius {} > 0",
                    c.lambda, c.fd_radius
                ),
            ));
        }
        Ok(())
    }

    fn check_precision(_: &GradAlignConfig, p: Precision) -> Result<()> {
        if p == Precision::F32 {
            return Ok(());
        }
        Err(CovfError::spec(
            "dtype",
            format!(
                "gradalign needs --dtype f32: its finite-difference alignment gradient subtracts two losses taken 2r \
                 apart, and in {} that difference is rounding noise",
                p.name()
            ),
        ))
    }

    fn build(c: &GradAlignConfig, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Ok(Box::new(GradAlignTraining::new(
            env.eps,
            c.lambda,
            c.fd_radius,
            c.through_clean,
        )))
    }

    /// FGSM, zero start, step ε: the regulariser changes the model, not the perturbation.
    fn generator(_: &GradAlignConfig, eps: f32, _: &Meta) -> Result<Generator> {
        Ok(Generator::Step {
            eps,
            alpha: eps,
            start: 0.0,
        })
    }
}

pub struct GradAlignTraining {
    eps: f32,
    lambda: f32,
    fd_radius: f32,
    through_clean: bool,
}

impl GradAlignTraining {
    pub fn new(eps: f32, lambda: f32, fd_radius: f32, through_clean: bool) -> Self {
        GradAlignTraining {
            eps,
            lambda,
            fd_radius,
            through_clean,
        }
    }
}

/// Per-example L2 norms of an (N, …) tensor, as (N,).
fn norms(g: &Tensor) -> Result<Tensor> {
    Ok(g.flatten_from(1)?.sqr()?.sum(D::Minus1)?.sqrt()?)
}

/// For φ = mean_n (1 − cos(g1_n, g2_n)): (∂φ/∂g1, ∂φ/∂g2, mean cos). Examples with a (numerically)
/// zero gradient have no defined cosine and are left out (their directions are 0).
pub fn alignment_directions(g1: &Tensor, g2: &Tensor) -> Result<(Tensor, Tensor, f64)> {
    let n = g1.dim(0)?;
    let shape = [n, 1, 1, 1];
    let (n1, n2) = (norms(g1)?, norms(g2)?);
    let ok = (n1.gt(1e-12)?.to_dtype(candle_core::DType::F32)? * n2.gt(1e-12)?.to_dtype(candle_core::DType::F32)?)?;
    let (n1, n2) = (n1.clamp(1e-12, f64::MAX)?, n2.clamp(1e-12, f64::MAX)?);
    let u1 = g1.broadcast_div(&n1.reshape(&shape[..g1.rank()])?)?;
    let u2 = g2.broadcast_div(&n2.reshape(&shape[..g2.rank()])?)?;
    let cos = (&u1 * &u2)?.flatten_from(1)?.sum(D::Minus1)?;
    // ∂(1 − cos)/∂g1 = −(u2 − cos·u1)/|g1|, and symmetrically; 1/N for the mean.
    let scale =
        |nrm: &Tensor| -> Result<Tensor> { Ok(((&ok / nrm)? * (-1.0 / n as f64))?.reshape(&shape[..g1.rank()])?) };
    let c = cos.reshape(&shape[..g1.rank()])?;
    let v1 = (&u2 - u1.broadcast_mul(&c)?)?.broadcast_mul(&scale(&n1)?)?;
    let v2 = (&u1 - u2.broadcast_mul(&c)?)?.broadcast_mul(&scale(&n2)?)?;
    let used = ok.sum_all()?.to_scalar::<f32>()?.max(1.0);
    let mean_cos = f64::from((&cos * &ok)?.sum_all()?.to_scalar::<f32>()? / used);
    Ok((v1, v2, mean_cos))
}

/// Σ_n |v_n|·(ℓ_n(x_n + r·v̂_n) − ℓ_n(x_n − r·v̂_n))/(2r) for each (x, v) pair, ℓ the per-example
/// cross-entropy: a scalar whose value approximates Σ_n ∇x ℓ_n·v_n and whose weight gradient
/// approximates ∇θ of it. All points go through `model` in one batch.
pub fn directional_fd(
    model: &dyn Classifier,
    pairs: &[(&Tensor, &Tensor)],
    y: &Tensor,
    r: f32,
    mode: Mode,
) -> Result<Tensor> {
    let mut points = Vec::with_capacity(2 * pairs.len());
    let mut weights = Vec::with_capacity(pairs.len());
    for (x, v) in pairs {
        let n = x.dim(0)?;
        let shape: Vec<usize> = std::iter::once(n).chain(std::iter::repeat_n(1, x.rank() - 1)).collect();
        let vn = norms(v)?;
        let unit = v.broadcast_div(&vn.clamp(1e-30, f64::MAX)?.reshape(shape.as_slice())?)?;
        let step = (unit * f64::from(r))?;
        points.push((*x + &step)?);
        points.push((*x - &step)?);
        weights.push((vn / (2.0 * f64::from(r)))?);
    }
    let k = pairs.len();
    let ys = Tensor::cat(&vec![y; 2 * k], 0)?;
    let ce = per_sample_ce(&model.logits(&Tensor::cat(&points, 0)?, mode)?, &ys)?;
    let n = y.dim(0)?;
    let mut total: Option<Tensor> = None;
    for (i, w) in weights.iter().enumerate() {
        let diff = (ce.narrow(0, 2 * i * n, n)? - ce.narrow(0, (2 * i + 1) * n, n)?)?;
        let term = (diff * w)?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + term)?,
            None => term,
        });
    }
    match total {
        Some(t) => Ok(t),
        None => Ok(Tensor::new(0f32, y.device())?),
    }
}

impl TrainMethod for GradAlignTraining {
    fn alpha(&self) -> f32 {
        self.eps
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        let (x, y) = (&batch.x, &batch.y);
        let frozen = model.detached();
        let (g1, clean) = input_grad(&frozen, x, &x.zeros_like()?, y, ctx.attack_mode)?;
        let delta = project(&(g1.sign()? * f64::from(self.eps))?, x, self.eps)?;
        let logits = model.logits(&(x + &delta)?, Mode::TRAIN)?;
        let mut loss = candle_nn::loss::cross_entropy(&logits, y)?;
        if self.lambda > 0.0 {
            let eta = uniform_start(x, self.eps, ctx.rng)?;
            let x_eta = (x + &eta)?;
            let (g2, _) = input_grad(&frozen, x, &eta, y, ctx.attack_mode)?;
            let (v1, v2, _) = alignment_directions(&g1, &g2)?;
            let pairs: &[(&Tensor, &Tensor)] = if self.through_clean {
                &[(x, &v1), (&x_eta, &v2)]
            } else {
                &[(&x_eta, &v2)]
            };
            let reg = directional_fd(model, pairs, y, self.fd_radius, Mode::ATTACK)?;
            loss = (loss + (reg * f64::from(self.lambda))?)?;
        }
        ctx.update(&loss)?;
        StepStats::from_logits(&clean, &logits.detach(), y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DatasetKind;
    use crate::models::{self, ArchSpec};
    use crate::rng::Rng;
    use candle_core::Device;

    #[test]
    fn alignment_directions_match_the_cosine_derivative_by_hand() {
        // g1 = (1, 0), g2 = (1, 1): cos = 1/√2. ∂(1 − cos)/∂g1 = −(u2 − cos·u1)/|g1| = −(1/√2 − 1/√2, 1/√2)
        // = (0, −1/√2); ∂/∂g2 = −(u1 − cos·u2)/|g2| = −((1 − 1/2), −1/2)/√2 = (−1/(2√2), 1/(2√2)).
        let dev = Device::Cpu;
        let g1 = Tensor::new(&[[1f32, 0.0]], &dev).unwrap();
        let g2 = Tensor::new(&[[1f32, 1.0]], &dev).unwrap();
        let (v1, v2, c) = alignment_directions(&g1, &g2).unwrap();
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((c - f64::from(s)).abs() < 1e-6);
        let v1: Vec<f32> = v1.flatten_all().unwrap().to_vec1().unwrap();
        let v2: Vec<f32> = v2.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in v1.iter().zip([0.0, -s]) {
            assert!((a - b).abs() < 1e-6, "{v1:?}");
        }
        for (a, b) in v2.iter().zip([-s / 2.0, s / 2.0]) {
            assert!((a - b).abs() < 1e-6, "{v2:?}");
        }
        // A zero gradient contributes nothing.
        let z = Tensor::zeros((1, 2), candle_core::DType::F32, &dev).unwrap();
        let (v1, v2, _) = alignment_directions(&z, &g2).unwrap();
        assert_eq!(v1.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(v2.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn finite_difference_matches_the_exact_directional_derivative() {
        let dev = Device::Cpu;
        let spec = ArchSpec::new(models::Arch::PreActTiny, DatasetKind::FashionMnist);
        let (m, _) = models::build(&spec, &dev, 3).unwrap();
        let mut rng = Rng::new(4);
        let x = rng.uniform_tensor(&[4, 1, 28, 28], 0.0, 1.0, &dev).unwrap();
        let y = Tensor::new(&[1u32, 2, 3, 4], &dev).unwrap();
        let v = rng.uniform_tensor(&[4, 1, 28, 28], -1.0, 1.0, &dev).unwrap();
        let (g, _) = input_grad(&m, &x, &x.zeros_like().unwrap(), &y, Mode::EVAL).unwrap();
        let exact = (&g * &v).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let fd = directional_fd(&m, &[(&x, &v)], &y, 1e-2, Mode::EVAL)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (fd - exact).abs() < 2e-2 * (1.0 + exact.abs()),
            "fd {fd} vs exact {exact}"
        );
    }
}
