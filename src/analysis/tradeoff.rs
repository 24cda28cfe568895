//! `covf analyze tradeoff`: clean vs robust accuracy of models trained at several ε_train, one run per
//! (method, ε_train), each evaluated on the same test subset at one evaluation ε (Figure 4). Runs are
//! trained when missing, resumed when partial and reused when complete; the evaluation of each final
//! checkpoint goes through the scoring service, cached by its content (PGD shared with `curves`).

use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::{first, pgd_scores, AnalysisCtx, EpochRef};
use crate::error::{CovfError, Result};
use crate::eval::Request;
use crate::fit::{fit_or_reuse, Reuse};
use crate::rng::Rng;
use crate::run::TrainSpec;

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

/// Clean and PGD accuracy of one checkpoint at `eps_eval`. The PGD scores are the ones `curves` computes for
/// the same checkpoint, ε and steps (one computation, one cache entry).
pub fn evaluate(ctx: &AnalysisCtx, a: &EpochRef, eps_eval: f32, steps: usize) -> Result<TradeoffRow> {
    if !(eps_eval > 0.0 && eps_eval <= 1.0) {
        return Err(CovfError::spec("--eps-eval", format!("{eps_eval}: must be in (0, 1]")));
    }
    let robust = pgd_scores(ctx, a, eps_eval, steps)?;
    let ds = ctx.image_set(&a.spec)?;
    let (model, _) = a.load(&ctx.device)?;
    let key = ctx.score_key(a, "clean".into(), "clean", 0, vec![], &a.spec)?;
    let mut rng = Rng::derive(ctx.seed, "clean", 0);
    let mut req = Request {
        source: &model,
        attack: None,
        images: &ds,
        rng: &mut rng,
        label: format!("clean on {}", a.label()),
    };
    let clean = first(ctx.scorer().per_example(&key, &mut req, &[])?)?;
    Ok(TradeoffRow {
        run: a.run.name.clone(),
        method: a.spec.method.label(),
        eps_train: f64::from(a.spec.eps.value),
        eps_eval: f64::from(eps_eval),
        epoch: a.epoch as u64,
        n: ds.len() as u64,
        clean: clean.accuracy(),
        robust: robust.accuracy(),
        pgd_steps: steps as u64,
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
