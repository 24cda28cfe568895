//! S+FGSM (Kim et al. 2021, "Understanding catastrophic overfitting in single-step adversarial
//! training"; the authors' code Harry24k/catastrophic-overfitting, `co_adv_trainer.py`): take the
//! FGSM-RS perturbation δ; an example already misclassified at the random-start point trains on the
//! clean image; for the others check the c − 1 intermediate points x + (k/c)·δ, k = 1 … c − 1, without
//! gradients and with batch norm in eval mode (as the reference's `model.eval()` there), and train on
//! the smallest one that is misclassified (the full step when none is). Stopping at the decision
//! boundary keeps the step from overshooting into the distorted region that catastrophic overfitting
//! creates.

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
        let (delta, start_logits) = sign_step(&frozen, x, &start, y, self.alpha, self.eps, ctx.attack_mode)?;
        let delta = cut_at_first_misclassified(&frozen, x, &delta, y, &start_logits, self.checkpoints)?;
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
