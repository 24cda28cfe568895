//! S+FGSM (Kim et al. 2021, "Understanding catastrophic overfitting in single-step adversarial
//! training"): take the FGSM-RS perturbation δ, then check the c − 1 intermediate points
//! x + (k/c)·δ, k = 1 … c − 1, without gradients, and train each example on the smallest one that
//! is already misclassified (the full step when none is). Stopping at the decision boundary keeps
//! the step from overshooting into the distorted region that catastrophic overfitting creates.

use candle_core::{DType, Tensor};

use super::{descend, StepCtx, StepStats, TrainMethod};
use crate::attacks::{correct_mask, sign_step, uniform_start};
use crate::data::Batch;
use crate::error::Result;
use crate::models::{Classifier, Mode, PreActResNet};

pub struct SfgsmTraining {
    eps: f32,
    alpha: f32,
    checkpoints: usize,
}

impl SfgsmTraining {
    pub fn new(eps: f32, alpha: f32, checkpoints: usize) -> Self {
        SfgsmTraining {
            eps,
            alpha,
            checkpoints: checkpoints.max(1),
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

/// δ scaled per example to the first of the points x + (k/c)·δ, k = 1 … c − 1, that `model` misclassifies
/// (checked without gradients), or kept whole when none is.
pub fn cut_at_first_misclassified(
    model: &dyn Classifier,
    x: &Tensor,
    delta: &Tensor,
    y: &Tensor,
    checkpoints: usize,
    mode: Mode,
) -> Result<Tensor> {
    let c = checkpoints.max(1);
    let mut wrong = Vec::with_capacity(c - 1);
    for k in 1..c {
        let xk = (x + (delta * (k as f64 / c as f64))?)?;
        let ok: Vec<f32> = correct_mask(&model.logits(&xk, mode)?, y)?.to_vec1()?;
        wrong.push(ok.iter().map(|&v| v == 0.0).collect());
    }
    let n = x.dim(0)?;
    let frac = Tensor::from_vec(chosen_fractions(&wrong, n, c), (n, 1, 1, 1), x.device())?.to_dtype(DType::F32)?;
    Ok(delta.broadcast_mul(&frac)?)
}

impl TrainMethod for SfgsmTraining {
    fn name(&self) -> String {
        "sfgsm".into()
    }

    fn alpha(&self) -> f32 {
        self.alpha
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        let (x, y) = (&batch.x, &batch.y);
        let frozen = model.detached();
        let start = uniform_start(x, self.eps, ctx.rng)?;
        let (delta, _) = sign_step(&frozen, x, &start, y, self.alpha, self.eps, Mode::ATTACK)?;
        let delta = cut_at_first_misclassified(&frozen, x, &delta, y, self.checkpoints, Mode::ATTACK)?;
        descend(model, batch, &delta, None, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_misclassified_checkpoint_else_the_full_step() {
        // c = 3: checkpoints at 1/3 and 2/3. Example 0 is wrong at 1/3, example 1 only at 2/3,
        // example 2 never.
        let wrong = vec![vec![true, false, false], vec![true, true, false]];
        assert_eq!(chosen_fractions(&wrong, 3, 3), vec![1.0 / 3.0, 2.0 / 3.0, 1.0]);
        assert_eq!(chosen_fractions(&[], 2, 1), vec![1.0, 1.0]);
    }
}
