//! A whole study in one call: train (or reuse, or resume) its runs, run its analyses (from the registry,
//! `analysis::ANALYSES`) into tidy tables, draw the figures, and record what was done in `out/study.json`. Every stage is resumable:
//! training resumes from the last complete epoch and analyses read their cache, so an interrupted study
//! rerun with the same spec continues where it stopped.

pub mod file;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use crate::analysis::registry::{self, Analysis, Flags, Job};
use crate::analysis::{self, AnalysisCtx, EpochRef, Images};
use crate::error::{CovfError, Result};
use crate::fit::{fit_or_reuse, Reuse};
use crate::run::checkpoint::{atomic_write, RunDir};
use crate::run::spec::validate_run_name;
use crate::run::{TrainSettings, TrainSpec};

/// One run of the study, under the id the spec's analyses use.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRun {
    pub id: String,
    pub spec: TrainSpec,
}

/// One analysis the study runs: a key of its `[analyses]` table (or a top-level table such as `[tradeoff]`).
#[derive(Debug, Clone, PartialEq)]
pub struct StudyJob {
    /// The analysis's registry name (`gap` for the key `gap-pgd20`).
    pub analysis: String,
    /// Run ids it reads.
    pub runs: Vec<String>,
    /// Epochs it reads (empty: every epoch).
    pub epochs: Vec<usize>,
    /// Its flags, from the key (`gap-pgd20`) and its table.
    pub flags: Flags,
    /// Train settings of the runs it trains: `[train]` with its own `train` table on top.
    pub train: TrainSettings,
}

impl StudyJob {
    fn analysis(&self) -> Result<&'static dyn Analysis> {
        registry::lookup(&self.analysis)
            .ok_or_else(|| CovfError::spec("analyses", format!("no analysis named '{}'", self.analysis)))
    }

    /// The tables it writes, which also name it in messages and in `study.json`.
    fn tables(&self) -> Result<Vec<String>> {
        self.analysis()?.tables(&self.flags)
    }
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
    /// Run id whose last epoch is the reference of every analysis that reads one.
    pub reference: Option<String>,
    pub jobs: Vec<StudyJob>,
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
        for j in &self.jobs {
            let a = j.analysis()?;
            let at = format!("analyses.{}", j.tables()?.join(","));
            for id in &j.runs {
                known(id, &at)?;
            }
            if a.uses_reference() && self.reference.is_none() {
                return Err(CovfError::spec(
                    "analyses.reference",
                    format!("{at} needs a reference run (e.g. reference = \"pgd10\")"),
                ));
            }
            a.check(&j.flags, &j.train)?;
        }
        if let Some(r) = &self.reference {
            known(r, "analyses.reference")?;
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
            crate::figures::lookup(f)?;
        }
        Ok(())
    }

    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    pub fn figures_dir(&self) -> PathBuf {
        self.dir.join("figures")
    }

    /// The jobs in the order they run: each analysis's upstream analyses (the CO verdict's transfer and gap)
    /// are added, or given its runs where the study already has them, and every job runs after those whose
    /// tables it reads.
    pub fn plan(&self) -> Result<Vec<StudyJob>> {
        let mut jobs = self.jobs.clone();
        let mut i = 0;
        while i < jobs.len() {
            for (up, flags) in jobs[i].analysis()?.upstream(&jobs[i].flags)? {
                let want = StudyJob {
                    analysis: up.to_string(),
                    runs: jobs[i].runs.clone(),
                    epochs: jobs[i].epochs.clone(),
                    flags,
                    train: TrainSettings::default(),
                };
                let tables = want.tables()?;
                let mut same = None;
                for (k, j) in jobs.iter().enumerate() {
                    if j.analysis == want.analysis && j.epochs == want.epochs && j.tables()? == tables {
                        same = Some(k);
                        break;
                    }
                }
                match same {
                    Some(k) => {
                        for r in &want.runs {
                            if !jobs[k].runs.contains(r) {
                                jobs[k].runs.push(r.clone());
                            }
                        }
                    }
                    None => jobs.push(want),
                }
            }
            i += 1;
        }
        jobs.sort_by_key(|j| registry::order(&j.analysis));
        Ok(jobs)
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

    // 2. Analyses, each on the runs it names.
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
    for j in spec.plan()? {
        let t = Instant::now();
        let a = j.analysis()?;
        let stage = j.tables()?.join(",");
        say(quiet, &format!("{stage}: {}", a.about()));
        let runs: Vec<RunDir> = j.runs.iter().map(|id| dir_of(id)).collect::<Result<_>>()?;
        let mut checkpoints = Vec::new();
        if a.reads_runs() {
            for d in &runs {
                if j.epochs.is_empty() {
                    checkpoints.extend(analysis::all_epochs(d)?);
                } else {
                    for &e in &j.epochs {
                        checkpoints.push(EpochRef::new(d, e)?);
                    }
                }
            }
        }
        let job = Job {
            ctx: &ctx,
            root,
            runs,
            checkpoints,
            reference: if a.uses_reference() { reference.clone() } else { None },
            flags: j.flags.clone(),
            train: j.train.clone(),
        };
        let done = a.run(&job)?;
        for n in done.summary.iter().chain(&done.warnings) {
            say(quiet, n);
        }
        tables.extend(done.tables);
        let detail = if done.trained.is_empty() {
            &j.runs
        } else {
            &done.trained
        };
        timed(&mut stages, &stage, detail.join(","), t);
    }

    // 3. Figures.
    let mut figures = Vec::new();
    for id in &spec.figures {
        let t = Instant::now();
        let f = crate::figures::lookup(id)?;
        let files = f.render(&spec.out(), &spec.figures_dir())?;
        timed(&mut stages, &format!("figure {}", f.id()), String::new(), t);
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
