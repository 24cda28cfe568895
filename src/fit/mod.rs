//! The one generic training loop: data, schedule, method steps, per-epoch evaluation, checkpoints, resume.
//!
//! Every random draw of epoch e comes from streams derived from (seed, e): shuffling, augmentation,
//! attack starts, evaluation. Together with the saved momentum buffers this makes a resumed run end
//! with exactly the weights of an uninterrupted one on CPU.
//!
//! The in-training monitor's set-up is `fit/monitor_setup.rs`; replaying an epoch of a finished run
//! (pinpoint) is `fit/replay.rs`.

mod monitor_setup;
mod replay;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use crate::attacks::{correct, Attack, AttackCtx, Fgsm, Pgd};
use crate::data::{self, Batch, Dataset};
use crate::error::{CovfError, Result};
use crate::eval::evaluate;
use crate::models::{self, ArchSpec, Classifier, Mode, PreActResNet};
use crate::monitor::{self, At, Monitor, MonitorRow};
use crate::optim::{LossScaler, LrSchedule, Sgd};
use crate::rng::Rng;
use crate::run::checkpoint::{self, Checkpoint, RunDir};
use crate::run::metrics::{self, EpochRecord};
use crate::run::sets::{load_data, train_image_positions, IMAGE_IDS, TRAIN_IMAGES_KEPT};
use crate::run::TrainSpec;
use crate::train::{MethodEnv, StepCtx, StepStats, TrainMethod};
use monitor_setup::open_monitor;
pub use replay::{replay, weights_digest, Replay, ReplayPlan};

#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    pub quiet: bool,
    /// Continue the run in `checkpoints/<name>` from its last complete epoch.
    pub resume: bool,
    /// Delete an existing run of the same name and start over.
    pub force: bool,
}

#[derive(Debug, Clone)]
pub struct FitSummary {
    pub run: RunDir,
    pub records: Vec<EpochRecord>,
    pub resumed_from: Option<usize>,
}

fn state_meta(
    epoch: usize,
    records: &[EpochRecord],
    step_rows: &[metrics::StepSizeRow],
    monitor_rows: &[MonitorRow],
) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    m.insert("epoch".into(), epoch.to_string());
    m.insert("metrics".into(), crate::exact_json::to_string(&records)?);
    m.insert("step_sizes".into(), crate::exact_json::to_string(&step_rows)?);
    m.insert("monitor".into(), crate::exact_json::to_string(&monitor_rows)?);
    m.insert("covf_version".into(), checkpoint::COVF_VERSION.into());
    Ok(m)
}

struct Resume {
    epoch: usize,
    records: Vec<EpochRecord>,
    /// None for resume states written before they carried the step sizes.
    step_rows: Option<Vec<metrics::StepSizeRow>>,
    monitor_rows: Vec<MonitorRow>,
    kept: Option<Kept>,
    stopped: Option<Stop>,
}

/// Prefix of the method's own state in the resume file (the rest is optimizer momentum).
const METHOD_PREFIX: &str = "method/";
/// Prefix of the early stop's rolling snapshot in the resume file.
const KEPT_PREFIX: &str = "kept/";

/// With `--early-stop`: the weights at the last monitor point, which the run keeps if the next point
/// raises the alarm. Saved with each epoch's resume state, so that a resumed run keeps the same point.
struct Kept {
    step: u64,
    tensors: HashMap<String, Tensor>,
}

/// Why and where a run stopped early (`--early-stop`), as its resume state and metrics record it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stop {
    pub signal: String,
    /// The rule with its threshold, in words.
    pub rule: String,
    /// The monitor point where the rule fired.
    pub alarm_step: u64,
    /// The monitor point before it, whose weights the run keeps.
    pub kept_step: u64,
}

impl Stop {
    pub fn describe(&self) -> String {
        format!(
            "{} ({}) fired at step {}; kept step {}",
            self.signal, self.rule, self.alarm_step, self.kept_step
        )
    }
}

/// The files derived from the resume state after epoch `done`: metric tables, step-size tables, and
/// (without `--save-every-epoch`) the removal of earlier epoch checkpoints. Idempotent.
fn write_derived(
    spec: &TrainSpec,
    run: &RunDir,
    records: &[EpochRecord],
    step_rows: &[metrics::StepSizeRow],
    monitor_rows: &[MonitorRow],
    done: usize,
) -> Result<()> {
    metrics::write(&run.path, records)?;
    if !step_rows.is_empty() {
        metrics::write_step_sizes(&run.path, step_rows)?;
    }
    if !monitor_rows.is_empty() {
        crate::run::table::write(&run.path, monitor::TABLE, monitor_rows)?;
    }
    if !spec.save_every_epoch {
        for e in run.epochs()?.into_iter().filter(|&e| e < done) {
            for prev in [run.train_images_path(e), run.epoch_path(e)] {
                match std::fs::remove_file(&prev) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(CovfError::io(&prev, err)),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Temporary files of writes a killed process never finished (`atomic_write` names them
/// `.<file>.tmp-<pid>`): never read, removed so they do not pile up.
fn remove_stale_temporaries(run: &RunDir) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(&run.path) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ours = [
            ".epoch-",
            ".train-state.",
            ".metrics.",
            ".step-sizes.",
            ".monitor.",
            ".run.json.",
        ]
        .iter()
        .any(|p| name.starts_with(p));
        if ours && name.contains(".tmp-") {
            let p = e.path();
            std::fs::remove_file(&p).map_err(|err| CovfError::io(&p, err))?;
        }
    }
    Ok(())
}

/// Restores weights, momentum, the method's state and metric rows from the last complete epoch of `run`.
fn restore(
    run: &RunDir,
    store: &models::ParamStore,
    opt: &mut Sgd,
    method: &mut dyn TrainMethod,
    dev: &Device,
) -> Result<Option<Resume>> {
    let sp = run.state_path();
    if !sp.is_file() {
        return Ok(None);
    }
    let (bufs, meta) = checkpoint::load_tensors(&sp, dev)?;
    let epoch: usize = meta
        .get("epoch")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| CovfError::checkpoint(&sp, "no epoch in the metadata"))?;
    let records: Vec<EpochRecord> =
        crate::exact_json::from_str(meta.get("metrics").map(String::as_str).unwrap_or("[]"))
            .map_err(|e| CovfError::checkpoint(&sp, format!("bad metrics: {e}")))?;
    let step_rows: Option<Vec<metrics::StepSizeRow>> = match meta.get("step_sizes") {
        Some(j) => Some(
            crate::exact_json::from_str(j).map_err(|e| CovfError::checkpoint(&sp, format!("bad step sizes: {e}")))?,
        ),
        None => None,
    };
    let monitor_rows: Vec<MonitorRow> = match meta.get("monitor") {
        Some(j) => {
            crate::exact_json::from_str(j).map_err(|e| CovfError::checkpoint(&sp, format!("bad monitor rows: {e}")))?
        }
        None => Vec::new(),
    };
    let stopped: Option<Stop> = match meta.get("stopped") {
        Some(j) => {
            Some(serde_json::from_str(j).map_err(|e| CovfError::checkpoint(&sp, format!("bad stop record: {e}")))?)
        }
        None => None,
    };
    let ck = Checkpoint::load(&run.epoch_path(epoch), dev)?;
    store.load(&ck.tensors, &run.epoch_path(epoch))?;
    let (mut own, mut kept, mut momentum) = (HashMap::new(), HashMap::new(), HashMap::new());
    for (k, v) in bufs {
        if let Some(name) = k.strip_prefix(METHOD_PREFIX) {
            own.insert(name.to_string(), v);
        } else if let Some(name) = k.strip_prefix(KEPT_PREFIX) {
            kept.insert(name.to_string(), v);
        } else {
            momentum.insert(k, v);
        }
    }
    method.load_state(&own)?;
    opt.load_state(momentum)?;
    let kept = match meta.get("kept_step").and_then(|s| s.parse().ok()) {
        Some(step) if !kept.is_empty() => Some(Kept { step, tensors: kept }),
        _ => None,
    };
    Ok(Some(Resume {
        epoch,
        records: records.into_iter().filter(|r| r.epoch <= epoch).collect(),
        step_rows: step_rows.map(|rows| rows.into_iter().filter(|r| r.epoch <= epoch).collect()),
        monitor_rows: monitor_rows.into_iter().filter(|r| r.epoch <= epoch as u64).collect(),
        kept,
        stopped,
    }))
}

fn progress(quiet: bool, n: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(n as u64);
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(format!("{epoch}/{epochs}"));
    pb
}

/// PGD-5 accuracy on one batch, BN in eval mode (Wong et al.'s early-stop probe).
fn co_probe(model: &PreActResNet, batch: &Batch, spec: &TrainSpec, epoch: usize) -> Result<f64> {
    let mut pgd = Pgd::new(spec.eps.value, spec.eval.probe_steps);
    pgd.alpha = spec.eval.pgd_alpha;
    let mut rng = Rng::derive(spec.seed, "co-probe", epoch as u64);
    let p = pgd.perturb(
        model,
        &batch.x,
        &batch.y,
        &mut AttackCtx {
            mode: Mode::EVAL,
            rng: &mut rng,
        },
    )?;
    let logits = model.logits(&(&batch.x + &p.delta)?, Mode::EVAL)?;
    Ok(correct(&logits, &batch.y)? as f64 / batch.len().max(1) as f64)
}

/// The metadata of epoch `e1`'s checkpoint, from which the method's generator reads its learned step sizes.
fn generator_meta(spec: &TrainSpec, e1: usize, method: &dyn TrainMethod) -> Result<BTreeMap<String, String>> {
    let mut meta = checkpoint::epoch_metadata(spec, e1, method.alpha());
    let steps = method.step_sizes();
    if !steps.is_empty() {
        meta.insert("step_sizes".into(), serde_json::to_string(&steps)?);
    }
    Ok(meta)
}

/// What `fit_or_reuse` did with a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// The run was complete with the same settings: nothing trained.
    Reused,
    /// A partial run with the same settings was continued.
    Resumed,
    Trained,
}

/// The settings that decide what a run learns: the spec without where it ran, which epochs it kept and what
/// its monitor measured (the monitor never changes the weights).
fn same_training(a: &TrainSpec, b: &TrainSpec) -> bool {
    let norm = |s: &TrainSpec| TrainSpec {
        device: String::new(),
        data_dir: None,
        save_every_epoch: false,
        monitor: monitor::MonitorSpec::off(),
        ..s.clone()
    };
    norm(a) == norm(b)
}

/// Makes sure `root/<spec.name>` holds the finished run `spec` describes: reuses a complete run with the
/// same settings, resumes a partial one, trains a missing one. A run of that name trained with other
/// settings is an error (never overwritten): studies and sweeps must not silently mix two experiments.
pub fn fit_or_reuse(spec: &TrainSpec, root: &Path, dev: &Device, quiet: bool) -> Result<(RunDir, Reuse)> {
    let run = RunDir::new(root, &spec.name)?;
    let mut how = Reuse::Trained;
    let mut spec = spec.clone();
    if run.exists() {
        let stored = run.read_spec()?;
        if !same_training(&stored, &spec) {
            return Err(CovfError::run(
                &spec.name,
                format!(
                    "exists in {} with other settings than asked for (see its run.json); give this one another \
                     name or remove the old run",
                    run.path.display()
                ),
            ));
        }
        if run.is_finished(spec.epochs)? {
            return Ok((run, Reuse::Reused));
        }
        how = Reuse::Resumed;
        // A partial run goes on measuring what it measured, so that its monitor table stays one table.
        spec.monitor = stored.monitor;
    }
    let opts = FitOptions {
        quiet,
        resume: how == Reuse::Resumed,
        force: false,
    };
    let summary = fit(&spec, root, dev, &opts)?;
    Ok((summary.run, how))
}

/// Trains `spec` into `root/<spec.name>`, checkpointing every epoch (or only the last), and returns the metrics.
pub fn fit(spec: &TrainSpec, root: &Path, dev: &Device, opts: &FitOptions) -> Result<FitSummary> {
    let mut t = Trainer::open(spec, root, dev, opts)?;
    for epoch in t.start..spec.epochs {
        // A run that stopped early (now, or before a resume) is finished.
        if t.stopped.is_some() {
            break;
        }
        let trained = t.train_epoch(epoch)?;
        let rec = t.evaluate(epoch, &trained)?;
        t.commit(epoch, rec)?;
    }
    t.finish()
}

/// One run being trained: what `open` set up or restored, and what the epochs so far recorded.
struct Trainer<'a> {
    spec: &'a TrainSpec,
    dev: &'a Device,
    quiet: bool,
    run: RunDir,
    train: Dataset,
    test: Dataset,
    model: PreActResNet,
    store: models::ParamStore,
    opt: Sgd,
    method: Box<dyn TrainMethod>,
    /// The analyses' training images whose per-example state each epoch keeps.
    kept_positions: Vec<usize>,
    records: Vec<EpochRecord>,
    step_rows: Vec<metrics::StepSizeRow>,
    /// The in-training monitor, when the run has one; its rows so far.
    monitor: Option<Monitor>,
    /// `--early-stop`'s rolling snapshot.
    kept: Option<Kept>,
    /// In a replay: keep the weights every this many steps (0: never), here.
    snap_every: usize,
    snapshots: Vec<(u64, BTreeMap<String, Tensor>)>,
    /// Set when the early stop fired: the run ends with this epoch.
    stopped: Option<Stop>,
    /// Epochs already done when this process started (0 for a fresh run).
    start: usize,
}

/// A run's starting point: the seeded model, its optimizer and the method, before any step.
struct Fresh {
    model: PreActResNet,
    store: models::ParamStore,
    opt: Sgd,
    method: Box<dyn TrainMethod>,
}

impl Fresh {
    fn new(spec: &TrainSpec, train: &Dataset, dev: &Device) -> Result<Fresh> {
        let arch = ArchSpec::new(spec.arch, spec.dataset);
        let (model, store) = models::build(&arch, dev, spec.seed)?;
        let model = model.with_compute_dtype(spec.precision.dtype());
        let mut opt = Sgd::new(store.trainable(), spec.momentum, spec.weight_decay);
        if let (Some(base), LrSchedule::Cyclic { max, .. }) = (spec.cycle_momentum, &spec.schedule) {
            opt = opt.with_momentum_cycle(base, *max);
        }
        if spec.precision.needs_loss_scaling() {
            opt = opt.with_loss_scaling(LossScaler::default());
        }
        let method = spec.method.build(&MethodEnv {
            eps: spec.eps.value,
            n_train: train.len(),
            shape: spec.dataset.shape(),
            pad: spec.augment.pad,
            seed: spec.seed,
            epochs: spec.epochs,
        })?;
        Ok(Fresh {
            model,
            store,
            opt,
            method,
        })
    }
}

/// What one pass over the training data leaves for the evaluation and the epoch's record.
struct Trained {
    totals: StepStats,
    /// The epoch's first training batch, the CO probe's input.
    first: Option<Batch>,
    /// The rate of the epoch's last step.
    lr: f64,
    /// Training time, without the monitor's.
    seconds: f64,
    monitor_seconds: f64,
    /// Training steps behind the weights the epoch ends with.
    step: u64,
}

impl<'a> Trainer<'a> {
    /// Set-up and resume: the run directory (refused if it exists without --resume or --force), the data,
    /// a fresh model and optimizer and the method, then the last complete epoch's state when resuming.
    fn open(spec: &'a TrainSpec, root: &Path, dev: &'a Device, opts: &FitOptions) -> Result<Trainer<'a>> {
        spec.validate()?;
        spec.precision.check_device(dev)?;
        let run = RunDir::new(root, &spec.name)?;
        if run.exists() && !opts.resume {
            if !opts.force {
                return Err(CovfError::run(
                    &spec.name,
                    format!(
                        "already exists in {}: pass --resume to continue it or --force to start over",
                        run.path.display()
                    ),
                ));
            }
            std::fs::remove_dir_all(&run.path).map_err(|e| CovfError::io(&run.path, e))?;
        }
        let (train, test) = load_data(spec)?;
        let Fresh {
            model,
            store,
            mut opt,
            mut method,
        } = Fresh::new(spec, &train, dev)?;
        let kept_positions = train_image_positions(&train, TRAIN_IMAGES_KEPT);
        let mut monitor = open_monitor(spec, root, &train, dev)?;

        let resumed = if opts.resume && run.exists() {
            restore(&run, &store, &mut opt, method.as_mut(), dev)?
        } else {
            None
        };
        remove_stale_temporaries(&run)?;
        let mut step_rows = metrics::read_step_sizes(&run.path)?;
        let (mut kept, mut stopped) = (None, None);
        let (start, records) = match resumed {
            Some(r) => {
                if let Some(rows) = r.step_rows {
                    step_rows = rows;
                }
                if let Some(m) = monitor.as_mut() {
                    m.rows = r.monitor_rows;
                }
                (kept, stopped) = (r.kept, r.stopped);
                (r.epoch, r.records)
            }
            None => {
                run.write_spec(spec)?;
                step_rows.clear();
                (0, Vec::new())
            }
        };
        if !opts.quiet {
            match start {
                0 => eprintln!(
                    "training {} on {} ({} train, {} test images), {} ({} parameters), ε = {}",
                    spec.name,
                    spec.dataset.name(),
                    train.len(),
                    test.len(),
                    spec.arch.name(),
                    store.num_trainable(),
                    spec.eps.text
                ),
                e => eprintln!("resuming {} after epoch {e}/{}", spec.name, spec.epochs),
            }
        }
        Ok(Trainer {
            spec,
            dev,
            quiet: opts.quiet,
            run,
            train,
            test,
            model,
            store,
            opt,
            method,
            kept_positions,
            records,
            step_rows,
            monitor,
            kept,
            stopped,
            snap_every: 0,
            snapshots: Vec::new(),
            start,
        })
    }

    /// One pass over the training data (0-based `epoch`): every random draw comes from streams derived
    /// from (seed, epoch), so a resumed epoch repeats an uninterrupted one.
    fn train_epoch(&mut self, epoch: usize) -> Result<Trained> {
        let spec = self.spec;
        let e1 = epoch + 1;
        let t0 = Instant::now();
        self.method.begin_epoch(epoch)?;
        let batches = data::epoch_batches(self.train.len(), spec.batch_size, spec.seed, epoch, true);
        let nb = batches.len();
        let mut aug_rng = Rng::derive(spec.seed, "augment", epoch as u64);
        let mut step_rng = Rng::derive(spec.seed, "step", epoch as u64);
        let pb = progress(self.quiet, nb, e1, spec.epochs);
        let mut totals = StepStats::default();
        let mut first: Option<Batch> = None;
        let mut lr = 0.0;
        let mut monitor_seconds = 0.0;
        let first_step = (epoch * nb) as u64;
        if self.monitor.as_ref().is_some_and(|m| m.start() == first_step) {
            // The model the epoch starts from (the initial model in a run, the epoch's in a replay).
            let lr0 = spec.schedule.lr_at(epoch as f64 + 1.0 / nb.max(1) as f64);
            monitor_seconds += self.monitor_point(None, first_step, e1, 0.0, lr0)?;
            // The first point is the one an alarm at the second keeps.
            self.early_stop_at(first_step)?;
        }
        for (i, pos) in batches.iter().enumerate() {
            let batch = self.train.batch(pos, Some((&spec.augment, &mut aug_rng)), self.dev)?;
            let t = (
                epoch as f64 + i as f64 / nb as f64,
                epoch as f64 + (i + 1) as f64 / nb as f64,
            );
            lr = spec.schedule.lr_at(t.1);
            let s = self.method.step(
                &self.model,
                &batch,
                &mut StepCtx {
                    opt: &mut self.opt,
                    lr,
                    rng: &mut step_rng,
                    attack_mode: spec.attack_bn.mode(),
                    schedule: &spec.schedule,
                    t,
                },
            )?;
            if !s.loss_adv_sum.is_finite() {
                pb.abandon();
                let kept = if epoch == 0 {
                    format!(
                        "no epoch had completed; {} holds only run.json",
                        self.run.path.display()
                    )
                } else {
                    format!(
                        "the last good checkpoint is epoch {epoch} in {}",
                        self.run.path.display()
                    )
                };
                return Err(CovfError::Diverged(format!(
                    "non-finite training loss at epoch {e1}, batch {}/{nb} (lr {lr:.4}); nothing of this epoch was \
                     saved and {kept} (lower --lr-max, or start over with --force)",
                    i + 1
                )));
            }
            totals.add(&s);
            let step = (epoch * nb + i + 1) as u64;
            monitor_seconds += self.monitor_point(Some(&batch), step, e1, (i + 1) as f64 / nb as f64, lr)?;
            if self.early_stop_at(step)? {
                pb.abandon();
                break;
            }
            if self.snap_every > 0 && step.is_multiple_of(self.snap_every as u64) {
                self.snapshots.push((step, self.store.snapshot_copy()?));
            }
            if first.is_none() {
                first = Some(batch);
            }
            pb.inc(1);
            let n = totals.n.max(1) as f64;
            pb.set_message(format!(
                "loss {:.3} adv acc {:.3}",
                totals.loss_adv_sum / n,
                totals.correct_adv as f64 / n
            ));
        }
        pb.finish_and_clear();
        if !self.quiet && self.opt.skipped_steps() > 0 {
            eprintln!(
                "{}: {} steps skipped so far for f16 gradient overflow (loss scale now {})",
                spec.name,
                self.opt.skipped_steps(),
                self.opt.loss_scale()
            );
        }
        let step = match &self.stopped {
            Some(s) => s.kept_step,
            None => (e1 * nb) as u64,
        };
        Ok(Trained {
            totals,
            first,
            lr,
            seconds: t0.elapsed().as_secs_f64() - monitor_seconds,
            monitor_seconds,
            step,
        })
    }

    /// With `--early-stop`, at a monitor point: when the rule fires, puts the weights of the previous point
    /// back and returns true (the run ends with this epoch); otherwise this point becomes the one kept.
    fn early_stop_at(&mut self, step: u64) -> Result<bool> {
        let (Some(rule), Some(m)) = (&self.spec.early_stop, &self.monitor) else {
            return Ok(false);
        };
        if !m.due(step) {
            return Ok(false);
        }
        if rule.detector()?.fire(&m.rows, rule.threshold).is_none() {
            let tensors = self.store.snapshot_copy()?.into_iter().collect();
            self.kept = Some(Kept { step, tensors });
            return Ok(false);
        }
        let kept_step = match self.kept.take() {
            Some(k) => {
                self.store.load(&k.tensors, &self.run.state_path())?;
                k.step
            }
            // No earlier point (a run resumed from a state written before --early-stop kept one): the
            // weights at the alarm stay.
            None => step,
        };
        let stop = Stop {
            signal: rule.signal.clone(),
            rule: rule.describe()?,
            alarm_step: step,
            kept_step,
        };
        if !self.quiet {
            eprintln!("{}: early stop: {}", self.spec.name, stop.describe());
        }
        self.stopped = Some(stop);
        Ok(true)
    }

    /// Measures the monitor's signals when a point falls at `step`; returns the seconds it took.
    fn monitor_point(&mut self, batch: Option<&Batch>, step: u64, epoch: usize, frac: f64, lr: f64) -> Result<f64> {
        let Some(m) = self.monitor.as_mut() else {
            return Ok(0.0);
        };
        if !m.due(step) {
            return Ok(0.0);
        }
        let t0 = Instant::now();
        let spec = self.spec;
        let frozen = self.model.detached().with_compute_dtype(DType::F32);
        let generator = spec
            .method
            .generator(spec.eps.value, &generator_meta(spec, epoch, self.method.as_ref())?)?;
        let label = spec.method.label();
        m.measure(
            &frozen,
            batch,
            &generator,
            &At {
                run: &spec.name,
                method: &label,
                seed: spec.seed,
                step,
                epoch: epoch as u64,
                epoch_frac: frac,
                lr,
            },
        )?;
        Ok(t0.elapsed().as_secs_f64())
    }

    /// The epoch's test accuracies (clean, FGSM, PGD-N), the CO probe, and its metrics row.
    fn evaluate(&self, epoch: usize, trained: &Trained) -> Result<EpochRecord> {
        let spec = self.spec;
        let t1 = Instant::now();
        // Evaluated in f32 whatever the training precision, so that per-epoch accuracies compare across
        // runs and match `covf eval` of the saved (f32) checkpoint.
        let frozen = self.model.detached().with_compute_dtype(DType::F32);
        let fgsm = Fgsm::new(spec.eps.value);
        let mut pgd = Pgd::new(spec.eps.value, spec.eval.pgd_steps);
        pgd.alpha = spec.eval.pgd_alpha;
        let mut eval_rng = Rng::derive(spec.seed, "eval", epoch as u64);
        let bs = spec.batch_size.max(256);
        let (test, dev) = (&self.test, self.dev);
        let clean = evaluate(&frozen, test, None, bs, &mut eval_rng, dev)?;
        let fg = evaluate(&frozen, test, Some(&fgsm as &dyn Attack), bs, &mut eval_rng, dev)?;
        let pg = evaluate(&frozen, test, Some(&pgd as &dyn Attack), bs, &mut eval_rng, dev)?;
        let probe = match &trained.first {
            Some(b) => co_probe(&frozen, b, spec, epoch)?,
            None => 0.0,
        };
        let co_flag = self
            .records
            .last()
            .is_some_and(|p| probe - p.co_probe_acc < -f64::from(spec.eval.probe_drop));
        let totals = &trained.totals;
        let n = totals.n.max(1) as f64;
        Ok(EpochRecord {
            run: spec.name.clone(),
            method: spec.method.label(),
            epoch: epoch + 1,
            lr: trained.lr,
            train_loss_adv: totals.loss_adv_sum / n,
            train_acc_adv: totals.correct_adv as f64 / n,
            // NaN when the method never looked at clean inputs (see StepStats::n_clean).
            train_loss_clean: totals.loss_clean_sum / totals.n_clean as f64,
            train_acc_clean: totals.correct_clean as f64 / totals.n_clean as f64,
            test_acc_clean: clean.acc,
            test_acc_fgsm: fg.acc,
            test_acc_pgd: pg.acc,
            test_loss_pgd: pg.loss,
            pgd_steps: spec.eval.pgd_steps,
            test_n: test.len(),
            co_probe_acc: probe,
            co_flag,
            epoch_seconds: trained.seconds,
            eval_seconds: t1.elapsed().as_secs_f64(),
            monitor_seconds: trained.monitor_seconds,
            step: trained.step,
            stopped: self.stopped.as_ref().map(Stop::describe).unwrap_or_default(),
        })
    }

    /// Writes the epoch: its checkpoint (and the kept per-example state), then the resume state that
    /// points at it — the commit point — then the tables derived from it.
    fn commit(&mut self, epoch: usize, rec: EpochRecord) -> Result<()> {
        let (spec, run) = (self.spec, &self.run);
        let e1 = epoch + 1;
        self.records.push(rec);
        let steps = self.method.step_sizes();
        let mut meta = generator_meta(spec, e1, self.method.as_ref())?;
        if let Some(stop) = &self.stopped {
            meta.insert("step".into(), stop.kept_step.to_string());
            meta.insert("stopped".into(), stop.describe());
        }
        let mut images = self.method.example_state(&self.kept_positions)?;
        if !images.is_empty() {
            let ids: Vec<i64> = self
                .kept_positions
                .iter()
                .map(|&p| self.train.index[p] as i64)
                .collect();
            images.insert(IMAGE_IDS.into(), Tensor::new(ids.as_slice(), &Device::Cpu)?);
            checkpoint::save_tensors(&run.train_images_path(e1), &images, &meta)?;
        }
        checkpoint::save_tensors(&run.epoch_path(e1), &self.store.snapshot(), &meta)?;
        let mut state = self.opt.state().clone();
        for (k, v) in self.method.state()? {
            state.insert(format!("{METHOD_PREFIX}{k}"), v);
        }
        if let Some(k) = &self.kept {
            for (name, v) in &k.tensors {
                state.insert(format!("{KEPT_PREFIX}{name}"), v.clone());
            }
        }
        self.step_rows.retain(|r| r.epoch < e1);
        self.step_rows.extend(steps.iter().map(|s| metrics::StepSizeRow {
            run: spec.name.clone(),
            method: spec.method.label(),
            epoch: e1,
            layer: s.layer.clone(),
            alpha: s.value,
        }));
        // The resume state is the commit point: once it names epoch e1, the run holds e1 epochs. What
        // follows is derived from it and rewritten by `write_derived` if a kill lands in between.
        let monitor_rows = self.monitor_rows();
        let mut smeta = state_meta(e1, &self.records, &self.step_rows, monitor_rows)?;
        if let Some(k) = &self.kept {
            smeta.insert("kept_step".into(), k.step.to_string());
        }
        if let Some(stop) = &self.stopped {
            smeta.insert("stopped".into(), serde_json::to_string(stop)?);
        }
        checkpoint::save_tensors(&run.state_path(), &state, &smeta)?;
        write_derived(spec, run, &self.records, &self.step_rows, monitor_rows, e1)?;
        if !self.quiet {
            let rec = &self.records[self.records.len() - 1];
            eprintln!(
                "epoch {e1:>3}/{}  loss {:.4}  train adv {:.3} clean {:.3} | test clean {:.3} fgsm {:.3} pgd{} {:.3} | probe {:.3}{} | lr {:.4} | {:.1}s + eval {:.1}s{}",
                spec.epochs,
                rec.train_loss_adv,
                rec.train_acc_adv,
                rec.train_acc_clean,
                rec.test_acc_clean,
                rec.test_acc_fgsm,
                spec.eval.pgd_steps,
                rec.test_acc_pgd,
                rec.co_probe_acc,
                if rec.co_flag { " CO!" } else { "" },
                rec.lr,
                rec.epoch_seconds,
                rec.eval_seconds,
                if rec.monitor_seconds > 0.0 {
                    format!(" + monitor {:.1}s", rec.monitor_seconds)
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    }

    /// The monitor's rows so far (none without a monitor).
    fn monitor_rows(&self) -> &[MonitorRow] {
        self.monitor.as_ref().map_or(&[], |m| m.rows.as_slice())
    }

    fn finish(self) -> Result<FitSummary> {
        let committed = self.records.last().map_or(0, |r| r.epoch);
        if committed == self.start && (self.start == self.spec.epochs || self.stopped.is_some()) {
            // Resumed with nothing left to train: a kill may have landed after the last resume state was
            // written.
            write_derived(
                self.spec,
                &self.run,
                &self.records,
                &self.step_rows,
                self.monitor_rows(),
                self.start,
            )?;
        }
        if let (Some(m), false) = (&self.monitor, self.quiet) {
            let costs: Vec<String> = m
                .signals()
                .iter()
                .zip(&m.seconds)
                .map(|(s, t)| format!("{} {t:.1}s", s.name()))
                .collect();
            if !costs.is_empty() && committed > self.start {
                eprintln!(
                    "monitor every {} steps; time per signal: {}",
                    m.every(),
                    costs.join(", ")
                );
            }
        }
        Ok(FitSummary {
            run: self.run,
            records: self.records,
            resumed_from: (self.start > 0).then_some(self.start),
        })
    }
}
