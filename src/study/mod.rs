//! A whole study in one call: train (or reuse, or resume) its runs, run its analyses into tidy tables, run
//! the ε sweep, draw the figures, and record what was done in `out/study.json`. Every stage is resumable:
//! training resumes from the last complete epoch and analyses read their cache, so an interrupted study
//! rerun with the same spec continues where it stopped.

pub mod file;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use crate::analysis::co::CoCriteria;
use crate::analysis::{self, tidy, AnalysisCtx, EpochRef, Images};
use crate::error::{CovfError, Result};
use crate::fit::{fit_or_reuse, Reuse};
use crate::run::checkpoint::{atomic_write, RunDir};
use crate::run::spec::validate_run_name;
use crate::run::TrainSpec;

/// One run of the study, under the id the spec's analyses use.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRun {
    pub id: String,
    pub spec: TrainSpec,
}

/// Figure 1a's selection.
#[derive(Debug, Clone, PartialEq)]
pub struct PerturbationSpec {
    pub run: String,
    /// Epochs to show (empty: all).
    pub epochs: Vec<usize>,
    pub examples: usize,
}

/// Figure 4's sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct TradeoffSpec {
    pub specs: Vec<TrainSpec>,
    pub eps_eval: f32,
    pub pgd_steps: usize,
}

/// A validated study (the CLI builds it from `analyses/<name>.toml`).
#[derive(Debug, Clone)]
pub struct StudySpec {
    pub name: String,
    /// `analyses/<name>`: tables in `out/`, figures in `figures/`.
    pub dir: PathBuf,
    pub n: usize,
    /// The images every analysis uses (`[study] images`).
    pub images: Images,
    pub seed: u64,
    pub batch_size: usize,
    pub runs: Vec<StudyRun>,
    /// Run id whose last epoch is the transfer reference.
    pub reference: Option<String>,
    pub transfer: Vec<String>,
    pub gap_pgd10: Vec<String>,
    pub gap_pgd20: Vec<String>,
    pub curves: Vec<String>,
    pub steps: Vec<String>,
    pub co: Vec<String>,
    pub co_criteria: CoCriteria,
    pub perturbations: Option<PerturbationSpec>,
    pub tradeoff: Option<TradeoffSpec>,
    pub figures: Vec<String>,
    /// The spec file's text, kept in the study's metadata.
    pub source: String,
}

impl StudySpec {
    /// Every id the analyses name must be a run of the study.
    pub fn validate(&self) -> Result<()> {
        // The name becomes a directory under analyses/: the same rule as run names (no separators, no
        // `..`), so a study file cannot write outside it.
        validate_run_name(&self.name).map_err(|_| {
            CovfError::spec(
                "study name",
                format!(
                    "'{}': use letters, digits, '-', '_', '.', '+' only, not starting with '.'",
                    self.name
                ),
            )
        })?;
        let known = |id: &String, what: &str| -> Result<()> {
            if self.runs.iter().any(|r| &r.id == id) {
                Ok(())
            } else {
                Err(CovfError::spec(
                    what,
                    format!(
                        "'{id}' is not a run of study {} (its runs: {})",
                        self.name,
                        self.runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        };
        for (what, ids) in [
            ("analyses.transfer", &self.transfer),
            ("analyses.gap-pgd10", &self.gap_pgd10),
            ("analyses.gap-pgd20", &self.gap_pgd20),
            ("analyses.curves", &self.curves),
            ("analyses.steps", &self.steps),
            ("analyses.co", &self.co),
        ] {
            for id in ids {
                known(id, what)?;
            }
        }
        if let Some(r) = &self.reference {
            known(r, "analyses.reference")?;
        }
        if let Some(p) = &self.perturbations {
            known(&p.run, "analyses.perturbations.run")?;
            if p.examples == 0 {
                return Err(CovfError::spec("analyses.perturbations.examples", "must be at least 1"));
            }
        }
        if (!self.transfer.is_empty() || !self.co.is_empty()) && self.reference.is_none() {
            return Err(CovfError::spec(
                "analyses.reference",
                "transfer strength and the CO verdict need a reference run (e.g. reference = \"pgd10\")",
            ));
        }
        for r in &self.runs {
            r.spec.validate()?;
        }
        let mut names: Vec<&str> = self.runs.iter().map(|r| r.spec.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(CovfError::spec(
                "runs",
                format!("two runs would both be named {}: give one a `name`", w[0]),
            ));
        }
        if self.n == 0 || self.batch_size == 0 {
            return Err(CovfError::spec("study", "n and batch-size must be at least 1"));
        }
        for f in &self.figures {
            crate::figures::parse_id(f)?;
        }
        Ok(())
    }

    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    pub fn figures_dir(&self) -> PathBuf {
        self.dir.join("figures")
    }
}

/// What one stage did, for `study.json` and the closing summary.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    pub stage: String,
    pub detail: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StudySummary {
    pub study: String,
    pub covf_version: String,
    pub seed: u64,
    pub n: usize,
    pub stages: Vec<StageRecord>,
    pub tables: Vec<String>,
    pub figures: Vec<String>,
    pub seconds: f64,
    pub spec_toml: String,
}

fn say(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("study: {msg}");
    }
}

/// Runs the study against the runs in `root` (`checkpoints/`).
pub fn run(spec: &StudySpec, root: &Path, dev: &Device, quiet: bool) -> Result<StudySummary> {
    spec.validate()?;
    let start = Instant::now();
    let ctx = AnalysisCtx {
        out: spec.out(),
        n: spec.n,
        images: spec.images,
        batch_size: spec.batch_size,
        seed: spec.seed,
        force: false,
        quiet,
        data_dir: None,
        device: dev.clone(),
    };
    let mut stages = Vec::new();
    let mut tables = Vec::new();
    let timed = |stages: &mut Vec<StageRecord>, stage: &str, detail: String, t: Instant| {
        stages.push(StageRecord {
            stage: stage.into(),
            detail,
            seconds: t.elapsed().as_secs_f64(),
        });
    };

    // 1. Runs.
    let mut dirs: Vec<(String, RunDir)> = Vec::new();
    for (i, r) in spec.runs.iter().enumerate() {
        let t = Instant::now();
        say(
            quiet,
            &format!("[run {}/{}] {} ({})", i + 1, spec.runs.len(), r.id, r.spec.name),
        );
        let (dir, how) = fit_or_reuse(&r.spec, root, dev, quiet)?;
        let what = match how {
            Reuse::Reused => "reused",
            Reuse::Resumed => "resumed",
            Reuse::Trained => "trained",
        };
        say(quiet, &format!("{} {what}", r.spec.name));
        timed(
            &mut stages,
            &format!("run {}", r.id),
            format!("{} {what}", r.spec.name),
            t,
        );
        dirs.push((r.id.clone(), dir));
    }
    let dir_of = |id: &str| -> Result<RunDir> {
        dirs.iter()
            .find(|(i, _)| i == id)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| CovfError::spec("study", format!("no run with id '{id}'")))
    };
    let epochs_of = |ids: &[String]| -> Result<Vec<EpochRef>> {
        let mut out = Vec::new();
        for id in ids {
            out.extend(analysis::all_epochs(&dir_of(id)?)?);
        }
        Ok(out)
    };
    let union = |a: &[String], b: &[String]| -> Vec<String> {
        let mut v = a.to_vec();
        for x in b {
            if !v.contains(x) {
                v.push(x.clone());
            }
        }
        v
    };

    // 2. Analyses.
    let reference = match &spec.reference {
        Some(id) => {
            let d = dir_of(id)?;
            let last = *d
                .epochs()?
                .last()
                .ok_or_else(|| CovfError::run(&d.name, "has no epoch checkpoint"))?;
            Some(EpochRef::new(&d, last)?)
        }
        None => None,
    };
    let transfer_ids = union(&spec.transfer, &spec.co);
    let mut transfers = Vec::new();
    if let Some(reference) = &reference {
        if !transfer_ids.is_empty() {
            let t = Instant::now();
            say(quiet, &format!("transfer strength on {}", reference.label()));
            transfers = analysis::transfer::run(&ctx, reference, &epochs_of(&transfer_ids)?)?;
            tidy::write(&ctx.out, "transfer", &transfers)?;
            tables.push("transfer".to_string());
            timed(&mut stages, "transfer", transfer_ids.join(","), t);
        }
    }
    let gap10_ids = union(&spec.gap_pgd10, &spec.co);
    let mut gaps10 = Vec::new();
    for (steps, ids) in [(10usize, &gap10_ids), (20, &spec.gap_pgd20)] {
        if ids.is_empty() {
            continue;
        }
        let t = Instant::now();
        say(quiet, &format!("gap to PGD-{steps}"));
        let rows = analysis::gap::run(&ctx, &epochs_of(ids)?, steps)?;
        let name = format!("gap-pgd{steps}");
        tidy::write(&ctx.out, &name, &rows)?;
        tables.push(name.clone());
        timed(&mut stages, &name, ids.join(","), t);
        if steps == 10 {
            gaps10 = rows;
        }
    }
    if !spec.curves.is_empty() {
        let t = Instant::now();
        say(quiet, "curves (with PGD-20 per epoch)");
        let mut per_run = Vec::new();
        for id in &spec.curves {
            let d = dir_of(id)?;
            per_run.push((d.clone(), analysis::all_epochs(&d)?));
        }
        let rows = analysis::curves::run(&ctx, &per_run)?;
        tidy::write(&ctx.out, "curves", &rows)?;
        tables.push("curves".to_string());
        timed(&mut stages, "curves", spec.curves.join(","), t);
    }
    if !spec.steps.is_empty() {
        let t = Instant::now();
        let ds: Vec<RunDir> = spec.steps.iter().map(|id| dir_of(id)).collect::<Result<_>>()?;
        let rows = analysis::steps::run(&ds)?;
        tidy::write(&ctx.out, "steps", &rows)?;
        tables.push("steps".to_string());
        timed(&mut stages, "steps", spec.steps.join(","), t);
    }
    if !spec.co.is_empty() {
        let t = Instant::now();
        let ds: Vec<RunDir> = spec.co.iter().map(|id| dir_of(id)).collect::<Result<_>>()?;
        let names: Vec<&str> = ds.iter().map(|d| d.name.as_str()).collect();
        let g: Vec<_> = gaps10
            .iter()
            .filter(|r| names.contains(&r.run.as_str()))
            .cloned()
            .collect();
        let tr: Vec<_> = transfers
            .iter()
            .filter(|r| names.contains(&r.run.as_str()))
            .cloned()
            .collect();
        let rows = analysis::co::run(&ds, &g, &tr, &spec.co_criteria)?;
        for r in &rows {
            say(quiet, &format!("{}: {}", r.run, r.verdict));
        }
        tidy::write(&ctx.out, "co", &rows)?;
        tables.push("co".to_string());
        timed(&mut stages, "co", spec.co.join(","), t);
    }
    if let Some(p) = &spec.perturbations {
        let t = Instant::now();
        let d = dir_of(&p.run)?;
        let cks: Vec<EpochRef> = if p.epochs.is_empty() {
            analysis::all_epochs(&d)?
        } else {
            p.epochs.iter().map(|&e| EpochRef::new(&d, e)).collect::<Result<_>>()?
        };
        let rows = analysis::perturbations::run(&ctx, &cks, p.examples)?;
        tidy::write(&ctx.out, "perturbations", &rows)?;
        tables.push("perturbations".to_string());
        timed(&mut stages, "perturbations", p.run.clone(), t);
    }

    // 3. The ε sweep (trains its own runs).
    if let Some(tr) = &spec.tradeoff {
        let t = Instant::now();
        say(quiet, &format!("trade-off sweep: {} runs", tr.specs.len()));
        let rows = analysis::tradeoff::run(&ctx, root, dev, &tr.specs, tr.eps_eval, tr.pgd_steps)?;
        tidy::write(&ctx.out, "tradeoff", &rows)?;
        tables.push("tradeoff".to_string());
        timed(
            &mut stages,
            "tradeoff",
            tr.specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
            t,
        );
    }

    // 4. Figures.
    let mut figures = Vec::new();
    for id in &spec.figures {
        let t = Instant::now();
        let id = crate::figures::parse_id(id)?;
        let files = crate::figures::render(&id, &spec.out(), &spec.figures_dir())?;
        timed(&mut stages, &format!("figure {id}"), String::new(), t);
        figures.extend(files.iter().map(|f| f.display().to_string()));
    }

    let summary = StudySummary {
        study: spec.name.clone(),
        covf_version: env!("CARGO_PKG_VERSION").to_string(),
        seed: spec.seed,
        n: spec.n,
        stages,
        tables,
        figures,
        seconds: start.elapsed().as_secs_f64(),
        spec_toml: spec.source.clone(),
    };
    let json = serde_json::to_vec_pretty(&summary)?;
    atomic_write(&spec.out().join("study.json"), &json)?;
    Ok(summary)
}
