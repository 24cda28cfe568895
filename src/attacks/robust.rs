//! Per-example bookkeeping shared by the attacks that work on the examples still robust (APGD, APGD-T,
//! FAB-T, Square, the AutoAttack cascade): row masks, per-row scalars, predictions, and the loop that runs
//! an attack on the robust subset and keeps each example's first success.

use candle_core::{Device, Tensor, D};

use super::Perturbation;
use crate::error::Result;
use crate::models::{Classifier, Mode};

/// Row indices as a u32 tensor for `index_select` / `index_add`.
pub(crate) fn index_tensor(idx: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        idx.len(),
        dev,
    )?)
}

/// Positions where `mask` is true.
pub(crate) fn indices(mask: &[bool]) -> Vec<usize> {
    mask.iter().enumerate().filter(|(_, &m)| m).map(|(i, _)| i).collect()
}

/// (n, 1, …, 1) with the rank of `like`: the shape of one value per row.
pub(crate) fn row_shape(n: usize, like: &Tensor) -> Vec<usize> {
    let mut shape = vec![1usize; like.rank()];
    shape[0] = n;
    shape
}

/// Rows of `a` where `mask` is true, of `b` elsewhere; `a`, `b` are (N, …) and `mask` has N entries.
pub(crate) fn where_rows(mask: &[bool], a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let shape = row_shape(mask.len(), a);
    let m = Tensor::from_vec(mask.iter().map(|&v| u8::from(v)).collect::<Vec<_>>(), shape, a.device())?;
    Ok(m.broadcast_as(a.shape())?.where_cond(a, b)?)
}

/// One value per row, shaped (N, 1, …, 1) to broadcast against an (N, …) tensor.
pub(crate) fn per_row(v: &[f32], like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(v.to_vec(), row_shape(v.len(), like), like.device())?)
}

/// Row-wise argmax as host integers.
pub(crate) fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

/// Result of one attack run on a batch of still-robust examples.
pub(crate) struct Run {
    /// Per example: still classified correctly at every iterate.
    pub robust: Vec<bool>,
    /// The last misclassified iterate per example (the start point where there was none).
    pub x_adv: Tensor,
}

/// A run's result judged by the model itself at `x_adv` (as the reference driver re-checks every attack).
pub(crate) fn recheck(model: &dyn Classifier, y: &Tensor, x_adv: Tensor, mode: Mode) -> Result<Run> {
    let pred = predictions(&model.logits(&x_adv, mode)?.detach())?;
    let robust = pred.iter().zip(y.to_vec1::<u32>()?).map(|(p, t)| *p == t).collect();
    Ok(Run { robust, x_adv })
}

/// Runs `run` on the examples still robust, keeping each example's first success; returns the final δ
/// and the per-example robust flags. `robust` starts as clean correctness.
pub(crate) fn attack_robust_subset(
    x: &Tensor,
    y: &Tensor,
    robust: &mut [bool],
    delta: &mut Tensor,
    mut run: impl FnMut(&Tensor, &Tensor, &[usize]) -> Result<Run>,
) -> Result<()> {
    let idx = indices(robust);
    if idx.is_empty() {
        return Ok(());
    }
    let it = index_tensor(&idx, x.device())?;
    let (xs, ys) = (x.index_select(&it, 0)?, y.index_select(&it, 0)?);
    let out = run(&xs, &ys, &idx)?;
    let fooled: Vec<bool> = out.robust.iter().map(|r| !r).collect();
    let d = where_rows(&fooled, &(&out.x_adv - &xs)?, &xs.zeros_like()?)?;
    *delta = delta.index_add(&it, &d, 0)?;
    for (&i, f) in idx.iter().zip(&fooled) {
        if *f {
            robust[i] = false;
        }
    }
    Ok(())
}

/// Clean correctness per example.
pub(crate) fn clean_correct(model: &dyn Classifier, x: &Tensor, y: &Tensor, mode: Mode) -> Result<(Vec<bool>, Tensor)> {
    let logits = model.logits(x, mode)?.detach();
    let y_host = y.to_vec1::<u32>()?;
    let ok = predictions(&logits)?.iter().zip(&y_host).map(|(p, t)| p == t).collect();
    Ok((ok, logits))
}

/// The common shape of the attacks that only attack examples still robust: clean correctness first, then
/// `rounds(K)` runs for a K-class model (`run` gets the round, the robust subset, its indices and the clean logits of all
/// examples), each example keeping the first success; δ is 0 where none succeeded.
pub(crate) fn perturb_robust(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    mode: Mode,
    rounds: impl FnOnce(usize) -> usize,
    mut run: impl FnMut(usize, &Tensor, &Tensor, &[usize], &Tensor) -> Result<Run>,
) -> Result<Perturbation> {
    let (mut robust, clean) = clean_correct(model, x, y, mode)?;
    let mut delta = x.zeros_like()?;
    for round in 0..rounds(clean.dim(1)?) {
        attack_robust_subset(x, y, &mut robust, &mut delta, |xs, ys, idx| {
            run(round, xs, ys, idx, &clean)
        })?;
    }
    Ok(Perturbation {
        delta,
        clean_logits: None,
    })
}
