//! Accuracy of a model on a dataset, clean or under an attack, batched in evaluation mode.

use candle_core::Device;

use crate::attacks::{correct, per_sample_ce, Attack, AttackCtx};
use crate::data::Dataset;
use crate::error::Result;
use crate::models::{Classifier, Mode};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccLoss {
    pub acc: f64,
    pub loss: f64,
    pub n: usize,
}

/// Accuracy and mean cross-entropy of `model` on `ds` (at x + δ when `attack` is given), BN in eval mode.
pub fn evaluate(
    model: &dyn Classifier,
    ds: &Dataset,
    attack: Option<&dyn Attack>,
    batch_size: usize,
    rng: &mut Rng,
    dev: &Device,
) -> Result<AccLoss> {
    let mut hits = 0usize;
    let mut loss = 0f64;
    let positions: Vec<usize> = (0..ds.len()).collect();
    for chunk in positions.chunks(batch_size.max(1)) {
        let b = ds.batch(chunk, None, dev)?;
        let x = match attack {
            Some(a) => {
                let p = a.perturb(model, &b.x, &b.y, &mut AttackCtx { mode: Mode::EVAL, rng })?;
                (&b.x + &p.delta)?
            }
            None => b.x.clone(),
        };
        let logits = model.logits(&x, Mode::EVAL)?.detach();
        hits += correct(&logits, &b.y)?;
        loss += f64::from(per_sample_ce(&logits, &b.y)?.sum_all()?.to_scalar::<f32>()?);
    }
    let n = ds.len().max(1);
    Ok(AccLoss {
        acc: hits as f64 / n as f64,
        loss: loss / n as f64,
        n: ds.len(),
    })
}
