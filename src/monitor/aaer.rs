//! `aaer`: the abnormal-adversarial-example ratio (Lin et al. 2024, "Eliminating catastrophic overfitting
//! via abnormal adversarial examples regularization") on the training batch of the step just taken: the
//! fraction of its examples whose loss at x + δ, δ from the method's own generator, is lower than at the
//! generator's starting point x + δ0 (the clean image for zero-start methods, the random start for
//! FGSM-RS and N-FGSM) — the inner step made them *less* adversarial. AAER's authors count these during
//! training; they multiply as CO sets in. Measured with batch statistics, as the training attack sees the
//! batch, without updating the running ones; APART's ω is taken as 0 (its generator as on test images).

use super::{Healthy, Metric, Point, Signal};
use crate::attacks::{per_sample_ce, AttackCtx};
use crate::error::Result;
use crate::models::Mode;

pub struct Aaer;

const METRICS: &[Metric] = &[Metric {
    name: "aaer",
    about: "fraction of the training batch whose loss the method's inner step lowered",
    healthy: Healthy::Low,
}];

impl Signal for Aaer {
    fn name(&self) -> &'static str {
        "aaer"
    }
    fn about(&self) -> &'static str {
        "abnormal adversarial examples: share of the training batch whose loss the method's step lowered"
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn measure(&self, p: &Point) -> Result<Vec<f64>> {
        // The initial model has not trained on a batch yet.
        let Some(b) = p.batch else {
            return Ok(vec![f64::NAN]);
        };
        let mut rng = p.rng("monitor-aaer");
        let (delta, start) = p.generator.perturb_from_start(
            p.model,
            &b.x,
            &b.y,
            0..b.len(),
            &mut AttackCtx {
                mode: Mode::ATTACK,
                rng: &mut rng,
            },
        )?;
        let Some(start) = start else {
            return Ok(vec![f64::NAN]);
        };
        let before: Vec<f32> = per_sample_ce(&start, &b.y)?.to_vec1()?;
        let after: Vec<f32> = per_sample_ce(&p.model.logits(&(&b.x + delta)?, Mode::ATTACK)?, &b.y)?.to_vec1()?;
        let abnormal = before.iter().zip(&after).filter(|(b, a)| a < b).count();
        Ok(vec![abnormal as f64 / before.len().max(1) as f64])
    }
}
