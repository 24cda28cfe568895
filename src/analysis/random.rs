//! `covf analyze random`: Acc(θ_ref, f_random), the reference model under random noise of radius ε
//! (random signs ±ε, the transfer-strength baseline of Figure 2a, and uniform U(−ε, ε)). A perturbation
//! generator whose transferred accuracy reaches this level is no stronger than noise.

use serde::{Deserialize, Serialize};

use super::registry::{pct, Analysis, Flag, Job, Outcome};
use super::{first, tidy, AnalysisCtx, EpochRef};
use crate::attacks::Noise;
use crate::eps::Eps;
use crate::error::Result;
use crate::eval::Request;
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

/// The reference model's accuracy and loss under one kind of noise at `eps`, on the images the
/// analyses use for `images_of`'s run (with training images, the run whose perturbations it is compared to).
pub fn baseline(
    ctx: &AnalysisCtx,
    reference: &EpochRef,
    images_of: &TrainSpec,
    kind: NoiseKind,
    eps: f32,
) -> Result<RandomRow> {
    let ds = ctx.image_set(images_of)?;
    let (model, _) = reference.load(&ctx.device)?;
    let noise = kind.noise(eps);
    let key = ctx.score_key(reference, format!("{noise:?}"), kind.name(), 0, vec![], images_of)?;
    let mut rng = Rng::derive(ctx.seed, kind.name(), 0);
    let mut req = Request {
        source: &model,
        attack: Some(&noise),
        images: &ds,
        rng: &mut rng,
        label: format!("{} on {}", kind.name(), reference.label()),
    };
    let s = first(ctx.scorer().per_example(&key, &mut req, &[])?)?;
    Ok(RandomRow {
        reference: reference.label(),
        noise: kind.name().into(),
        eps: f64::from(eps),
        n: ds.len() as u64,
        accuracy: s.accuracy(),
        loss: s.mean_loss(),
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

const EPS: Flag = Flag {
    name: "eps",
    help: "Noise radius [default: the reference run's training ε]",
    value: Some("EPS"),
    default: "",
};

/// `covf analyze random`: the baselines on their own (transfer strength has them beside every row).
pub struct Random;

impl Analysis for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn about(&self) -> &'static str {
        "Accuracy of the reference model under random noise of radius ε (signs and uniform)"
    }
    fn example(&self) -> &'static str {
        "covf analyze random --ref pgd10-fmnist-preact-tiny-eps0.15-s0 --eps 0.1"
    }
    fn flags(&self) -> &'static [Flag] {
        &[EPS]
    }
    fn uses_reference(&self) -> bool {
        true
    }
    fn reads_runs(&self) -> bool {
        false
    }
    fn check(&self, flags: &super::registry::Flags, _: &crate::run::TrainSettings) -> Result<()> {
        flags.get(EPS.name).map(Eps::parse).transpose().map(|_| ())
    }
    fn run(&self, job: &Job) -> Result<Outcome> {
        let reference = job.reference()?;
        let e = match job.flags.get(EPS.name) {
            Some(s) => Eps::parse(s)?.value,
            None => reference.spec.eps.value,
        };
        let rows = run(job.ctx, reference, &[e])?;
        tidy::write(&job.ctx.out, "random", &rows)?;
        let lines = rows
            .iter()
            .map(|x| {
                format!(
                    "{} under {} (ε = {}): accuracy {}%, loss {:.3}",
                    x.reference,
                    x.noise,
                    x.eps,
                    pct(x.accuracy),
                    x.loss
                )
            })
            .collect();
        Ok(Outcome {
            tables: vec!["random".into()],
            lines,
            ..Outcome::default()
        })
    }
}
