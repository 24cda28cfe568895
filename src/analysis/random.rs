//! `covf analyze random`: Acc(θ_ref, f_random), the reference model under random noise of radius ε
//! (random signs ±ε, the transfer-strength baseline of Figure 2a, and uniform U(−ε, ε)). A perturbation
//! generator whose transferred accuracy reaches this level is no stronger than noise.

use serde::{Deserialize, Serialize};

use super::tidy::{Cell, Kind, TidyRow};
use super::{cache, mean, per_sample, perturbed_batches, AnalysisCtx, EpochRef};
use crate::attacks::Noise;
use crate::error::Result;
use crate::rng::Rng;
use crate::run::TrainSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseKind {
    Sign,
    Uniform,
}

impl NoiseKind {
    pub fn name(self) -> &'static str {
        match self {
            NoiseKind::Sign => "random-sign",
            NoiseKind::Uniform => "random-uniform",
        }
    }

    pub fn noise(self, eps: f32) -> Noise {
        match self {
            NoiseKind::Sign => Noise::Sign { eps },
            NoiseKind::Uniform => Noise::Uniform { eps },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomRow {
    /// The reference checkpoint, `run@epoch`.
    pub reference: String,
    pub noise: String,
    pub eps: f64,
    pub n: u64,
    pub accuracy: f64,
    pub loss: f64,
}

impl TidyRow for RandomRow {
    fn schema() -> &'static [(&'static str, Kind)] {
        &[
            ("reference", Kind::Str),
            ("noise", Kind::Str),
            ("eps", Kind::F64),
            ("n", Kind::U64),
            ("accuracy", Kind::F64),
            ("loss", Kind::F64),
        ]
    }

    fn cells(&self) -> Vec<Cell> {
        vec![
            Cell::Str(self.reference.clone()),
            Cell::Str(self.noise.clone()),
            Cell::F64(self.eps),
            Cell::U64(Some(self.n)),
            Cell::F64(self.accuracy),
            Cell::F64(self.loss),
        ]
    }
}

/// The reference model's accuracy and loss under one kind of noise at `eps` (cached), on the images the
/// analyses use for `images_of`'s run (with training images, the run whose perturbations it is compared to).
pub fn baseline(
    ctx: &AnalysisCtx,
    reference: &EpochRef,
    images_of: &TrainSpec,
    kind: NoiseKind,
    eps: f32,
) -> Result<RandomRow> {
    let key = cache::key(&[
        &reference.cache_id()?,
        kind.name(),
        &eps.to_string(),
        &ctx.key_parts(),
        &ctx.images_key(images_of),
    ]);
    ctx.cache("random").get_or(&key, || {
        let ds = ctx.image_set(images_of)?;
        let (model, _) = reference.load(&ctx.device)?;
        let pb = ctx.progress(
            ds.len().div_ceil(ctx.batch_size.max(1)),
            format!("{} on {}", kind.name(), reference.label()),
        );
        let mut rng = Rng::derive(ctx.seed, kind.name(), 0);
        let batches = perturbed_batches(&model, &kind.noise(eps), &ds, ctx, &mut rng, &pb)?;
        pb.finish_and_clear();
        let (mut ok, mut loss) = (Vec::new(), Vec::new());
        for (x, y) in &batches {
            let (c, l) = per_sample(&model, x, y)?;
            ok.extend(c);
            loss.extend(l);
        }
        Ok(RandomRow {
            reference: reference.label(),
            noise: kind.name().into(),
            eps: f64::from(eps),
            n: ds.len() as u64,
            accuracy: mean(&ok),
            loss: mean(&loss),
        })
    })
}

/// Both kinds of noise on the reference, at each of `eps`.
pub fn run(ctx: &AnalysisCtx, reference: &EpochRef, eps: &[f32]) -> Result<Vec<RandomRow>> {
    let mut rows = Vec::new();
    for &e in eps {
        for kind in [NoiseKind::Sign, NoiseKind::Uniform] {
            rows.push(baseline(ctx, reference, &reference.spec, kind, e)?);
        }
    }
    Ok(rows)
}
