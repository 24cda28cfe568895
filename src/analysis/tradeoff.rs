//! `covf analyze tradeoff`: clean vs robust accuracy of models trained at several ε_train, one run per
//! (method, ε_train), each evaluated on the same test subset at one evaluation ε (Figure 4). Runs are
//! trained when missing, resumed when partial and reused when complete; the evaluation of each final
//! checkpoint goes through the scoring service, cached by its content (PGD shared with `curves`).

use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::registry::{list, pct, trim, value, Analysis, Flag, Flags, Job, Outcome};
use super::{first, pgd_scores, tidy, AnalysisCtx, EpochRef};
use crate::eps::Eps;
use crate::error::{CovfError, Result};
use crate::eval::Request;
use crate::fit::{fit_or_reuse, Reuse};
use crate::rng::Rng;
use crate::run::{TrainSettings, TrainSpec};

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

const METHODS: Flag = Flag {
    name: "methods",
    help: "Training methods, as `covf train --method` (method flags go in the train settings)",
    value: Some("M,..."),
    default: "",
};
const EPS_TRAIN: Flag = Flag {
    name: "eps-train",
    help: "Training radii, e.g. 2/255,4/255,8/255 or 0.05,0.1",
    value: Some("EPS,..."),
    default: "",
};
const EPS_EVAL: Flag = Flag {
    name: "eps-eval",
    help: "Evaluation radius [default: the dataset's default ε]",
    value: Some("EPS"),
    default: "",
};
const PGD_STEPS: Flag = Flag {
    name: "pgd-steps",
    help: "Steps of the evaluating PGD",
    value: Some("N"),
    default: "20",
};

/// One train spec per (method, ε_train) on the shared settings, and the evaluation ε.
pub fn sweep(flags: &Flags, train: &TrainSettings) -> Result<(Vec<TrainSpec>, f32)> {
    let (methods, radii) = (list(flags, &METHODS), list(flags, &EPS_TRAIN));
    for (f, v) in [(&METHODS, &methods), (&EPS_TRAIN, &radii)] {
        if v.is_empty() {
            return Err(CovfError::spec(
                format!("--{}", f.name),
                "is required (a comma-separated list)",
            ));
        }
    }
    let mut specs = Vec::new();
    for m in &methods {
        for e in &radii {
            let mut s = train.clone();
            s.method = Some(m.clone());
            s.eps = Some(e.clone());
            specs.push(s.resolve()?);
        }
    }
    let eps_eval = match flags.get(EPS_EVAL.name) {
        Some(s) => Eps::parse(s)?.value,
        // The dataset's default ε, as `covf train` resolves it for the sweep's settings.
        None => {
            let mut s = train.clone();
            s.eps = None;
            s.resolve()?.eps.value
        }
    };
    Ok((specs, eps_eval))
}

/// `covf analyze tradeoff`; a study's `[tradeoff]` table (its `train` table on top of the study's `[train]`).
pub struct Tradeoff;

impl Analysis for Tradeoff {
    fn name(&self) -> &'static str {
        "tradeoff"
    }
    fn about(&self) -> &'static str {
        "Clean vs PGD accuracy of one run per (method, ε_train), trained when missing (Figure 4)"
    }
    fn example(&self) -> &'static str {
        "covf analyze tradeoff --methods fgsm,apart --eps-train 0.05,0.1,0.15 --study paper-fmnist\n\n\
         Runs are named as `covf train` names them; an existing run is reused when its settings match."
    }
    fn flags(&self) -> &'static [Flag] {
        &[METHODS, EPS_TRAIN, EPS_EVAL, PGD_STEPS]
    }
    fn reads_runs(&self) -> bool {
        false
    }
    fn trains(&self) -> bool {
        true
    }
    fn check(&self, flags: &Flags, train: &TrainSettings) -> Result<()> {
        value::<usize>(flags, &PGD_STEPS)?;
        sweep(flags, train).map(|_| ())
    }
    fn run(&self, job: &Job) -> Result<Outcome> {
        let steps: usize = job.value(&PGD_STEPS)?;
        let (specs, eps_eval) = sweep(&job.flags, &job.train)?;
        let rows = run(job.ctx, job.root, &job.ctx.device, &specs, eps_eval, steps)?;
        tidy::write(&job.ctx.out, "tradeoff", &rows)?;
        let mut lines = vec![format!(
            "{:<44} {:>8} {:>8} {:>8}",
            "run",
            "ε_train",
            "clean",
            format!("PGD-{steps}")
        )];
        lines.extend(rows.iter().map(|x| {
            format!(
                "{:<44} {:>8} {:>8} {:>8}",
                x.run,
                trim(x.eps_train),
                pct(x.clean),
                pct(x.robust)
            )
        }));
        Ok(Outcome {
            tables: vec!["tradeoff".into()],
            lines,
            trained: specs.iter().map(|s| s.name.clone()).collect(),
            ..Outcome::default()
        })
    }
}
