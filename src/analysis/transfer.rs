//! `covf analyze transfer`: transfer strength (Figure 2a), perturbations generated on run A's epoch-i
//! checkpoint and evaluated on a separately trained reference model (by default the last epoch of the
//! PGD-10 run). Lower is stronger. The paper writes it two ways, and both are computed (`generator`):
//! - `own`: S_i(A) = Acc(θ_ref, f_A(θ_A^(i), ·)) with method A's own generator (§3.1); the CO verdict
//!   uses this one, since deterioration is a property of the perturbation the method trains on;
//! - `fgsm`: Acc(θ_ref, f_FGSM(θ_A^(i), ·)), plain FGSM (zero start, one signed step of ε) on A's
//!   checkpoint, as Figure 2a's caption draws the method lines.
//!
//! For FGSM the two coincide (computed once: the cache key is the generator as run). The random baseline
//! (random signs of the same ε on the reference) sits beside every row, because the paper's claim is
//! that at the CO epoch the perturbation becomes no stronger than that.

use serde::{Deserialize, Serialize};

use super::generator::own_generator;
use super::random::{self, NoiseKind};
use super::registry::{pct, Analysis, Job, Outcome};
use super::{tidy, AnalysisCtx, EpochRef};
use crate::attacks::Generator;
use crate::error::{CovfError, Result};
use crate::eval::Request;
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferRow {
    pub run: String,
    pub method: String,
    pub epoch: u64,
    /// `own` (the method's generator) or `fgsm` (plain FGSM on the method's checkpoint).
    pub generator: String,
    /// The generator as run, e.g. `step(a=0.15,start=0)`.
    pub attack: String,
    pub reference: String,
    pub eps: f64,
    /// `test` or `train` (`--images`): which images were perturbed.
    pub images: String,
    pub n: u64,
    /// S_i(A): the reference's accuracy on x + f_A(θ_A^(i), x, y).
    pub acc_ref: f64,
    /// The reference's mean cross-entropy there.
    pub loss_ref: f64,
    /// θ_A^(i)'s own accuracy on its perturbations (white-box).
    pub acc_self: f64,
    /// The reference's accuracy under random signs of the same ε.
    pub random_acc: f64,
}

/// Checks that the reference can take the run's perturbations: same dataset (hence shape and classes).
pub fn check_compatible(reference: &EpochRef, a: &EpochRef) -> Result<()> {
    if reference.spec.dataset != a.spec.dataset {
        return Err(CovfError::spec(
            "reference",
            format!(
                "{} was trained on {}, run {} on {}: perturbations only transfer between models of the same dataset",
                reference.label(),
                reference.spec.dataset.name(),
                a.run.name,
                a.spec.dataset.name()
            ),
        ));
    }
    Ok(())
}

/// Which generator makes the transferred perturbations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The method's own generator, f_A.
    Own,
    /// Plain FGSM, f_FGSM.
    Fgsm,
}

impl Source {
    pub const BOTH: [Source; 2] = [Source::Own, Source::Fgsm];

    pub fn name(self) -> &'static str {
        match self {
            Source::Own => "own",
            Source::Fgsm => "fgsm",
        }
    }

    fn generator(self, ctx: &AnalysisCtx, a: &EpochRef, ck: &crate::run::checkpoint::Checkpoint) -> Result<Generator> {
        let eps = a.spec.eps.value;
        match self {
            Source::Own => own_generator(ctx, a, ck),
            Source::Fgsm => Ok(Generator::Step {
                eps,
                alpha: eps,
                start: 0.0,
            }),
        }
    }
}

/// The transfer strength of one checkpoint's perturbations from `source` (scores cached by both checkpoints'
/// content and the generator as run, so a run whose own generator is FGSM computes them once).
pub fn one(ctx: &AnalysisCtx, reference: &EpochRef, a: &EpochRef, source: Source) -> Result<TransferRow> {
    check_compatible(reference, a)?;
    let eps = a.spec.eps.value;
    let random_acc = random::baseline(ctx, reference, &a.spec, NoiseKind::Sign, eps)?.accuracy;
    // The generator needs only the checkpoint's metadata (APART's α1).
    let meta = crate::run::checkpoint::Checkpoint {
        tensors: Default::default(),
        meta: crate::run::checkpoint::read_metadata(&a.path())?,
    };
    let generator = source.generator(ctx, a, &meta)?;
    let ds = ctx.image_set(&a.spec)?;
    let (model_a, _) = a.load(&ctx.device)?;
    let (model_ref, _) = reference.load(&ctx.device)?;
    let key = ctx.score_key(
        a,
        generator.describe(),
        "transfer",
        a.epoch,
        vec![reference.content_hash()?, a.content_hash()?],
        &a.spec,
    )?;
    let mut rng = Rng::derive(ctx.seed, "transfer", a.epoch as u64);
    let mut req = Request {
        source: &model_a,
        attack: Some(&generator),
        images: &ds,
        rng: &mut rng,
        label: format!("transfer {} → {}", a.label(), reference.run.name),
    };
    let scores = ctx.scorer().per_example(&key, &mut req, &[&model_ref, &model_a])?;
    let (on_ref, on_self) = match &scores[..] {
        [r, s] => (r, s),
        _ => {
            return Err(CovfError::spec(
                "transfer",
                "two scoring models gave other than two scores",
            ))
        }
    };
    let row = TransferRow {
        run: a.run.name.clone(),
        method: a.spec.method.label(),
        epoch: a.epoch as u64,
        generator: source.name().into(),
        attack: generator.describe(),
        reference: reference.label(),
        eps: f64::from(eps),
        images: ctx.images.name().into(),
        n: ds.len() as u64,
        acc_ref: on_ref.accuracy(),
        loss_ref: on_ref.mean_loss(),
        acc_self: on_self.accuracy(),
        random_acc,
    };
    Ok(row)
}

/// Every given checkpoint against the reference, with both generators (own first; a model covf did not
/// train has no own generator, only FGSM rows).
pub fn run(ctx: &AnalysisCtx, reference: &EpochRef, checkpoints: &[EpochRef]) -> Result<Vec<TransferRow>> {
    let mut rows = Vec::with_capacity(2 * checkpoints.len());
    for source in Source::BOTH {
        for a in checkpoints {
            if source == Source::Own && !a.spec.method.trainable() {
                continue;
            }
            rows.push(one(ctx, reference, a, source)?);
        }
    }
    Ok(rows)
}

/// `covf analyze transfer`; `transfer = [runs]` in a study.
pub struct Transfer;

impl Analysis for Transfer {
    fn name(&self) -> &'static str {
        "transfer"
    }
    fn about(&self) -> &'static str {
        "Transfer strength S_i(A): each epoch's own perturbations evaluated on a reference model, with the \
         random-noise baseline (Figure 2a)"
    }
    fn example(&self) -> &'static str {
        "covf analyze transfer --runs fgsm-fmnist-preact-tiny-eps0.15-s0 --study paper"
    }
    fn uses_reference(&self) -> bool {
        true
    }
    fn run(&self, job: &Job) -> Result<Outcome> {
        let reference = job.reference()?;
        let rows = run(job.ctx, reference, &job.checkpoints)?;
        tidy::write(&job.ctx.out, "transfer", &rows)?;
        let mut lines = vec![
            format!(
                "transfer strength on {} (accuracy %, lower = stronger)",
                reference.label()
            ),
            format!(
                "{:<44} {:>5} {:>9} {:>8} {:>8}  generator as run",
                "run", "epoch", "generator", "S_i", "random"
            ),
        ];
        lines.extend(rows.iter().map(|x| {
            format!(
                "{:<44} {:>5} {:>9} {:>8} {:>8}  {}",
                x.run,
                x.epoch,
                x.generator,
                pct(x.acc_ref),
                pct(x.random_acc),
                x.attack
            )
        }));
        Ok(Outcome {
            tables: vec!["transfer".into()],
            lines,
            ..Outcome::default()
        })
    }
}
