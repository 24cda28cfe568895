//! `covf analyze tradeoff`: clean vs robust accuracy of models trained at several ε_train, one run per
//! (method, ε_train), each evaluated on the same test subset at one evaluation ε (Figure 4). Runs are
//! trained when missing, resumed when partial and reused when complete; the evaluation of each final
//! checkpoint is cached by its content.

use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::tidy::{Cell, Kind, TidyRow};
use super::{cache, mean, per_sample, perturbed_batches, AnalysisCtx, EpochRef};
use crate::attacks::Pgd;
use crate::error::{CovfError, Result};
use crate::rng::Rng;
use crate::run::TrainSpec;
use crate::train::{fit_or_reuse, Reuse};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradeoffRow {
    pub run: String,
    pub method: String,
    pub eps_train: f64,
    pub eps_eval: f64,
    /// The evaluated (last) epoch.
    pub epoch: u64,
    pub n: u64,
    pub clean: f64,
    /// Accuracy under PGD-`pgd_steps` (random start, step ε/4, as in `covf eval`) at `eps_eval`.
    pub robust: f64,
    pub pgd_steps: u64,
}

impl TidyRow for TradeoffRow {
    fn schema() -> &'static [(&'static str, Kind)] {
        &[
            ("run", Kind::Str),
            ("method", Kind::Str),
            ("eps_train", Kind::F64),
            ("eps_eval", Kind::F64),
            ("epoch", Kind::U64),
            ("n", Kind::U64),
            ("clean", Kind::F64),
            ("robust", Kind::F64),
            ("pgd_steps", Kind::U64),
        ]
    }

    fn cells(&self) -> Vec<Cell> {
        vec![
            Cell::Str(self.run.clone()),
            Cell::Str(self.method.clone()),
            Cell::F64(self.eps_train),
            Cell::F64(self.eps_eval),
            Cell::U64(Some(self.epoch)),
            Cell::U64(Some(self.n)),
            Cell::F64(self.clean),
            Cell::F64(self.robust),
            Cell::U64(Some(self.pgd_steps)),
        ]
    }
}

/// Clean and PGD accuracy of one checkpoint at `eps_eval` (cached).
pub fn evaluate(ctx: &AnalysisCtx, a: &EpochRef, eps_eval: f32, steps: usize) -> Result<TradeoffRow> {
    if !(eps_eval > 0.0 && eps_eval <= 1.0) {
        return Err(CovfError::spec("--eps-eval", format!("{eps_eval}: must be in (0, 1]")));
    }
    let key = cache::key(&[
        &a.cache_id()?,
        &format!("eps_eval={eps_eval} pgd{steps}"),
        &ctx.key_parts(),
    ]);
    ctx.cache("tradeoff").get_or(&key, || {
        let ds = ctx.image_set(&a.spec)?;
        let (model, _) = a.load(&ctx.device)?;
        let pb = ctx.progress(
            ds.len().div_ceil(ctx.batch_size.max(1)),
            format!("pgd{steps} on {}", a.label()),
        );
        let mut rng = Rng::derive(ctx.seed, "tradeoff/pgd", a.epoch as u64);
        let xs = perturbed_batches(&model, &Pgd::new(eps_eval, steps), &ds, ctx, &mut rng, &pb)?;
        pb.finish_and_clear();
        let (mut clean, mut robust) = (Vec::new(), Vec::new());
        let positions: Vec<usize> = (0..ds.len()).collect();
        for chunk in positions.chunks(ctx.batch_size.max(1)) {
            let b = ds.batch(chunk, None, &ctx.device)?;
            clean.extend(per_sample(&model, &b.x, &b.y)?.0);
        }
        for (x, y) in &xs {
            robust.extend(per_sample(&model, x, y)?.0);
        }
        Ok(TradeoffRow {
            run: a.run.name.clone(),
            method: a.spec.method.label(),
            eps_train: f64::from(a.spec.eps.value),
            eps_eval: f64::from(eps_eval),
            epoch: a.epoch as u64,
            n: ds.len() as u64,
            clean: mean(&clean),
            robust: mean(&robust),
            pgd_steps: steps as u64,
        })
    })
}

/// Trains (or reuses) every run of the sweep, then evaluates each one's last epoch.
pub fn run(
    ctx: &AnalysisCtx,
    root: &Path,
    dev: &Device,
    specs: &[TrainSpec],
    eps_eval: f32,
    steps: usize,
) -> Result<Vec<TradeoffRow>> {
    if steps == 0 {
        return Err(CovfError::spec("--pgd-steps", "must be at least 1"));
    }
    let mut rows = Vec::new();
    for spec in specs {
        let (run, how) = fit_or_reuse(spec, root, dev, ctx.quiet)?;
        if !ctx.quiet && how == Reuse::Reused {
            eprintln!("tradeoff: reusing {}", run.name);
        }
        let last = *run
            .epochs()?
            .last()
            .ok_or_else(|| CovfError::run(&run.name, "has no epoch checkpoint after training"))?;
        rows.push(evaluate(ctx, &EpochRef::new(&run, last)?, eps_eval, steps)?);
    }
    rows.sort_by(|a, b| a.method.cmp(&b.method).then(a.eps_train.total_cmp(&b.eps_train)));
    Ok(rows)
}
