//! Per-example attack losses (cross-entropy, C&W margin, DLR, targeted DLR) and their input gradient.
//!
//! All are written so that *larger is better for the attacker*, so every gradient attack ascends.
//! DLR and targeted DLR follow Croce & Hein 2020 as coded in fra31/auto-attack, including the 1e-12 in
//! the denominator; the sorted logits are gathered at indices sorted without gradient, so the gradient
//! flows through the values as it does through PyTorch's `sort`.

use candle_core::{DType, Tensor, D};

use super::per_sample_ce;
use crate::error::{CovfError, Result};
use crate::models::{Classifier, Mode, Need};

/// Which loss an attack ascends.
#[derive(Debug, Clone)]
pub enum AttackLoss {
    /// Cross-entropy.
    Ce,
    /// C&W margin: max_{j≠y} z_j − z_y (positive once misclassified).
    Margin,
    /// DLR (untargeted): −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12).
    Dlr,
    /// z_t − z_y towards per-example targets t (FAB-T's decision function; ≥ 0 once t wins over y).
    Targeted(Tensor),
    /// Targeted DLR towards per-example targets t: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12).
    DlrTargeted(Tensor),
}

/// A large negative logit offset that removes the true class from a max without producing NaN.
const MASK_OUT: f64 = 1e9;

/// (N, K) one-hot of `y` as f32.
fn one_hot(y: &Tensor, k: usize) -> Result<Tensor> {
    let classes = Tensor::arange(0u32, k as u32, y.device())?.unsqueeze(0)?;
    Ok(y.unsqueeze(1)?.broadcast_eq(&classes)?.to_dtype(DType::F32)?)
}

/// Logit of class `y` per row.
fn pick(z: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(z.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?)
}

/// max_{j≠y} z_j per row.
pub fn max_other(z: &Tensor, y: &Tensor) -> Result<Tensor> {
    let oh = one_hot(y, z.dim(1)?)?;
    Ok((z - (oh * MASK_OUT)?)?.max(D::Minus1)?)
}

/// The j-th largest logit per row (0-based), with gradient through the value.
fn sorted_col(z: &Tensor, order: &Tensor, j: usize) -> Result<Tensor> {
    Ok(z.gather(&order.narrow(1, j, 1)?.contiguous()?, 1)?.squeeze(1)?)
}

impl AttackLoss {
    /// Per-example loss (N,) of logits `z` (N, K) with labels `y`.
    pub fn per_sample(&self, z: &Tensor, y: &Tensor) -> Result<Tensor> {
        let k = z.dim(1)?;
        match self {
            AttackLoss::Ce => per_sample_ce(z, y),
            AttackLoss::Margin => Ok((max_other(z, y)? - pick(z, y)?)?),
            AttackLoss::Targeted(t) => Ok((pick(z, t)? - pick(z, y)?)?),
            AttackLoss::Dlr => {
                if k < 3 {
                    return Err(CovfError::spec(
                        "DLR loss",
                        format!("needs at least 3 classes, the model has {k}"),
                    ));
                }
                let order = z.detach().arg_sort_last_dim(false)?;
                let den = ((sorted_col(z, &order, 0)? - sorted_col(z, &order, 2)?)? + 1e-12)?;
                Ok(((max_other(z, y)? - pick(z, y)?)? / den)?)
            }
            AttackLoss::DlrTargeted(t) => {
                if k < 4 {
                    return Err(CovfError::spec(
                        "targeted DLR loss",
                        format!("needs at least 4 classes, the model has {k}"),
                    ));
                }
                let order = z.detach().arg_sort_last_dim(false)?;
                let s34 = ((sorted_col(z, &order, 2)? + sorted_col(z, &order, 3)?)? * 0.5)?;
                let den = ((sorted_col(z, &order, 0)? - s34)? + 1e-12)?;
                Ok(((pick(z, t)? - pick(z, y)?)? / den)?)
            }
        }
    }
}

/// Loss, gradient and logits at one point.
pub struct LossGrad {
    /// Per-example loss (N values).
    pub loss: Vec<f32>,
    /// d(Σ loss)/d x_adv, the shape of `x_adv`.
    pub grad: Tensor,
    /// Detached logits at `x_adv`.
    pub logits: Tensor,
}

/// Evaluates `loss` at `x_adv` and its gradient with respect to `x_adv` (summed over the batch, so each
/// example's gradient is its own).
pub fn loss_grad(
    model: &dyn Classifier,
    x_adv: &Tensor,
    y: &Tensor,
    loss: &AttackLoss,
    mode: Mode,
) -> Result<LossGrad> {
    let t = model.trace(x_adv, mode, Need::INPUT)?;
    let logits = t.logits.detach();
    let per = loss.per_sample(&t.logits, y)?;
    let grad = match t.backward(&per.sum_all()?)?.input {
        Some(g) => g,
        None => x_adv.zeros_like()?,
    };
    Ok(LossGrad {
        loss: per.detach().to_vec1::<f32>()?,
        grad,
        logits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn z(dev: &Device) -> Tensor {
        Tensor::new(&[[3.0f32, 1.0, 2.0, -1.0, 0.5], [0.0, 4.0, 1.0, 2.0, 3.0]], dev).unwrap()
    }

    #[test]
    fn margin_and_dlr_by_hand() {
        let dev = Device::Cpu;
        let y = Tensor::new(&[0u32, 2], &dev).unwrap();
        let m: Vec<f32> = AttackLoss::Margin.per_sample(&z(&dev), &y).unwrap().to_vec1().unwrap();
        // Row 0: max other 2 − 3 = −1. Row 1: max other 4 − 1 = 3.
        assert_eq!(m, vec![-1.0, 3.0]);
        let d: Vec<f32> = AttackLoss::Dlr.per_sample(&z(&dev), &y).unwrap().to_vec1().unwrap();
        // Sorted row 0: 3, 2, 1 -> den 2; row 1: 4, 3, 2 -> den 2.
        assert!((d[0] + 0.5).abs() < 1e-6 && (d[1] - 1.5).abs() < 1e-6, "{d:?}");
        let t = Tensor::new(&[2u32, 4], &dev).unwrap();
        let dt: Vec<f32> = AttackLoss::DlrTargeted(t)
            .per_sample(&z(&dev), &y)
            .unwrap()
            .to_vec1()
            .unwrap();
        // Row 0: (2 − 3) / (3 − (1 + 0.5)/2) = −1/2.25. Row 1: (3 − 1) / (4 − (2 + 1)/2) = 2/2.5.
        assert!(
            (dt[0] + 1.0 / 2.25).abs() < 1e-6 && (dt[1] - 0.8).abs() < 1e-6,
            "{dt:?}"
        );
    }

    #[test]
    fn margin_gradient_moves_the_two_logits() {
        let dev = Device::Cpu;
        let v = Var::from_tensor(&z(&dev)).unwrap();
        let y = Tensor::new(&[0u32, 2], &dev).unwrap();
        let l = AttackLoss::Margin.per_sample(v.as_tensor(), &y).unwrap();
        let g = l.sum_all().unwrap().backward().unwrap();
        let g: Vec<Vec<f32>> = g.get(v.as_tensor()).unwrap().to_vec2().unwrap();
        assert_eq!(g[0], vec![-1.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(g[1], vec![0.0, 1.0, -1.0, 0.0, 0.0]);
    }

    #[test]
    fn dlr_needs_enough_classes() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[1.0f32, 0.0]], &dev).unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        assert!(AttackLoss::Dlr.per_sample(&z, &y).is_err());
    }
}
