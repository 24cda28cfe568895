//! Robustness evaluation: accuracy of a model clean or under an attack (batched, BN in eval mode), and
//! `covf eval`'s driver over runs, epochs and attacks, with AutoAttack resumable from per-example flags.

pub mod attack_spec;
pub mod checks;
pub mod results;
pub mod score;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use attack_spec::AttackSpec;
pub use results::{CheckRow, EvalRow};
pub use score::{Request, ScoreKey, Scorer, Scores};

use crate::attacks::autoattack::CascadeState;
use crate::attacks::{correct, per_sample_ce, Attack, AttackCtx};
use crate::data::Dataset;
use crate::error::{CovfError, Result};
use crate::models::{Classifier, Mode, PreActResNet};
use crate::rng::Rng;
use crate::run::checkpoint::{atomic_write, RunDir};
use crate::run::model_file::ModelFile;
use crate::run::sets::test_set;
use crate::run::{Eps, TrainSpec};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccLoss {
    pub acc: f64,
    pub loss: f64,
    pub n: usize,
}

/// Accuracy and mean cross-entropy of `model` on `ds` (at x + δ when `attack` is given), BN in eval mode.
pub fn evaluate(
    model: &dyn Classifier,
    ds: &Dataset,
    attack: Option<&dyn Attack>,
    batch_size: usize,
    rng: &mut Rng,
    dev: &Device,
) -> Result<AccLoss> {
    let mut hits = 0usize;
    let mut loss = 0f64;
    let scorer = Scorer::new(batch_size, dev, true);
    let mut req = Request {
        source: model,
        attack,
        images: ds,
        rng,
        label: String::new(),
    };
    scorer.for_each_batch(&mut req, &[], |logits, y| {
        hits += correct(&logits[0], y)?;
        loss += f64::from(per_sample_ce(&logits[0], y)?.sum_all()?.to_scalar::<f32>()?);
        Ok(())
    })?;
    let n = ds.len().max(1);
    Ok(AccLoss {
        acc: hits as f64 / n as f64,
        loss: loss / n as f64,
        n: ds.len(),
    })
}

/// One run and the epochs of it to evaluate, or one checkpoint file on its own.
#[derive(Debug, Clone)]
pub struct EvalTarget {
    /// The run (for a lone file: its name, and the directory its results go beside).
    pub run: RunDir,
    pub epochs: Vec<usize>,
    /// A checkpoint file outside a run directory (a copied covf checkpoint, a plain state dict).
    pub file: Option<ModelFile>,
}

impl EvalTarget {
    pub fn run(run: RunDir, epochs: Vec<usize>) -> Self {
        EvalTarget {
            run,
            epochs,
            file: None,
        }
    }

    /// A lone checkpoint file: results go to `<its directory>/<its name>.eval/`.
    pub fn file(f: ModelFile) -> Self {
        let dir = f
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        EvalTarget {
            run: RunDir {
                name: f.name.clone(),
                path: dir.join(format!("{}.eval", f.name)),
            },
            epochs: vec![f.epoch],
            file: Some(f),
        }
    }

    fn spec(&self) -> Result<TrainSpec> {
        match &self.file {
            Some(f) => Ok(f.spec.clone()),
            None => self.run.read_spec(),
        }
    }

    fn out_dir(&self) -> PathBuf {
        match &self.file {
            Some(_) => self.run.path.clone(),
            None => self.run.path.join("eval"),
        }
    }

    fn load(&self, train: &TrainSpec, epoch: usize, dev: &Device) -> Result<PreActResNet> {
        Ok(match &self.file {
            Some(f) => f.load(dev)?.0,
            None => crate::run::load_model(train, &self.run.epoch_path(epoch), dev)?.0,
        })
    }
}

/// A validated `covf eval` request.
#[derive(Debug, Clone)]
pub struct EvalSpec {
    pub targets: Vec<EvalTarget>,
    pub attacks: Vec<AttackSpec>,
    /// Test images, the same seeded subset the training-time evaluation uses for that size.
    pub n: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// The budget; `None` means each run's training ε.
    pub eps: Option<Eps>,
    pub data_dir: Option<PathBuf>,
    pub quiet: bool,
}

/// What one checkpoint's evaluation produced.
#[derive(Debug, Clone)]
pub struct EpochReport {
    pub run: String,
    pub method: String,
    pub epoch: usize,
    pub eps: f32,
    pub rows: Vec<EvalRow>,
    pub flags: Vec<checks::Flag>,
    /// Mean training seconds per epoch of the run (from its metrics), for Table 3's Time/Epoch.
    pub epoch_seconds: Option<f64>,
}

/// AutoAttack progress on one checkpoint, saved after every batch so an interrupted run resumes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct AaState {
    attack: String,
    eps: f32,
    n: usize,
    seed: u64,
    clean: Vec<bool>,
    robust: Vec<bool>,
    /// Finished stages: (name, robust accuracy after it, seconds).
    done: Vec<(String, f64, f64)>,
    /// Per-example robust flags after each finished stage.
    after: Vec<Vec<bool>>,
    /// Robust flags when the current stage started (its batches are chunks of these points).
    stage_start: Vec<bool>,
    batches_done: usize,
    stage_seconds: f64,
}

/// Mean of the run's `epoch_seconds` (training time per epoch), if its metrics are readable.
pub fn mean_epoch_seconds(run: &RunDir) -> Option<f64> {
    let df = crate::run::metrics::read_parquet(&run.path.join("metrics.parquet")).ok()?;
    let c = df.column("epoch_seconds").ok()?.f64().ok()?.clone();
    let v: Vec<f64> = c.iter().flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn stack(ds: &Dataset, idx: &[usize], dev: &Device) -> Result<(Tensor, Tensor)> {
    let b = ds.batch(idx, None, dev)?;
    Ok((b.x, b.y))
}

/// Accuracy under one (non-AutoAttack) attack, batched; returns (correct, seconds).
fn eval_attack(mut req: Request, spec: &EvalSpec, dev: &Device) -> Result<(usize, f64)> {
    let t = Instant::now();
    let mut hits = 0;
    let scorer = Scorer::new(spec.batch_size, dev, spec.quiet);
    scorer.for_each_batch(&mut req, &[], |logits, y| {
        hits += correct(&logits[0], y)?;
        Ok(())
    })?;
    Ok((hits, t.elapsed().as_secs_f64()))
}

/// AutoAttack over the test set, stage by stage on the points still robust, resuming from `state_path`.
/// Returns the state at the end (per-example flags and per-stage accuracies).
#[allow(clippy::too_many_arguments)]
fn eval_autoattack(
    model: &dyn Classifier,
    ds: &Dataset,
    a: &AttackSpec,
    eps: f32,
    epoch: usize,
    spec: &EvalSpec,
    state_path: &Path,
    dev: &Device,
) -> Result<AaState> {
    let aa = a
        .autoattack(eps)
        .ok_or_else(|| CovfError::spec("attack", format!("{a} is not AutoAttack")))?;
    let n = ds.len();
    let fresh = || -> Result<AaState> {
        let positions: Vec<usize> = (0..n).collect();
        let mut clean = Vec::with_capacity(n);
        for c in positions.chunks(spec.batch_size.max(1)) {
            let (x, y) = stack(ds, c, dev)?;
            let pred = model.logits(&x, Mode::EVAL)?.detach().argmax(1)?.to_vec1::<u32>()?;
            clean.extend(pred.iter().zip(y.to_vec1::<u32>()?).map(|(p, t)| *p == t));
        }
        Ok(AaState {
            attack: a.to_string(),
            eps,
            n,
            seed: spec.seed,
            robust: clean.clone(),
            stage_start: clean.clone(),
            clean,
            done: vec![],
            after: vec![],
            batches_done: 0,
            stage_seconds: 0.0,
        })
    };
    let mut st = match std::fs::read_to_string(state_path) {
        Ok(text) => match crate::exact_json::from_str::<AaState>(&text) {
            Ok(s) if s.attack == a.to_string() && s.eps == eps && s.n == n && s.seed == spec.seed => {
                if !spec.quiet && s.done.len() < aa.stages.len() {
                    eprintln!(
                        "resuming {a} from {} ({} stages done)",
                        state_path.display(),
                        s.done.len()
                    );
                }
                s
            }
            _ => fresh()?,
        },
        Err(_) => fresh()?,
    };
    // Exact floats: a resumed evaluation must report the accuracies an uninterrupted one does, bit for bit.
    let save = |s: &AaState| -> Result<()> { atomic_write(state_path, crate::exact_json::to_string(s)?.as_bytes()) };
    for (si, &stage) in aa.stages.iter().enumerate().skip(st.done.len()) {
        let points: Vec<usize> = (0..n).filter(|&i| st.stage_start[i]).collect();
        let chunks: Vec<&[usize]> = points.chunks(spec.batch_size.max(1)).collect();
        let pb = score::progress_bar(spec.quiet, chunks.len(), &format!("{a} {}", stage.name()));
        pb.set_position(st.batches_done as u64);
        for (ci, c) in chunks.iter().enumerate().skip(st.batches_done) {
            let t = Instant::now();
            let (x, y) = stack(ds, c, dev)?;
            let mut cs = CascadeState {
                robust: c.iter().map(|&i| st.robust[i]).collect(),
                delta: x.zeros_like()?,
            };
            let mut rng = Rng::derive(
                spec.seed,
                &format!("{a}/{}", stage.name()),
                (epoch * 1_000_000 + ci) as u64,
            );
            aa.run_stage(
                stage,
                model,
                &x,
                &y,
                &mut cs,
                &mut AttackCtx {
                    mode: Mode::EVAL,
                    rng: &mut rng,
                },
            )?;
            for (&i, &r) in c.iter().zip(&cs.robust) {
                st.robust[i] = r;
            }
            st.batches_done = ci + 1;
            st.stage_seconds += t.elapsed().as_secs_f64();
            save(&st)?;
            pb.inc(1);
        }
        pb.finish_and_clear();
        let acc = st.robust.iter().filter(|&&r| r).count() as f64 / n.max(1) as f64;
        st.done.push((stage.name().to_string(), acc, st.stage_seconds));
        st.after.push(st.robust.clone());
        st.stage_start = st.robust.clone();
        st.batches_done = 0;
        st.stage_seconds = 0.0;
        save(&st)?;
        if !spec.quiet {
            eprintln!(
                "  {a} after {:<8} robust accuracy {:6.2}%  ({:.1} s)",
                stage.name(),
                100.0 * acc,
                st.done[si].2
            );
        }
    }
    Ok(st)
}

/// Runs the evaluation: every attack on every requested epoch of every run; results are merged into each
/// run's `eval/` tables as each checkpoint finishes.
pub fn run(spec: &EvalSpec, dev: &Device) -> Result<Vec<EpochReport>> {
    let mut reports = Vec::new();
    for target in &spec.targets {
        let train = target.spec()?;
        let ds = test_set(&train, spec.data_dir.as_deref(), spec.n)?;
        let eps = spec.eps.as_ref().map(|e| e.value).unwrap_or(train.eps.value);
        let out_dir = target.out_dir();
        for &epoch in &target.epochs {
            // Weight-detached: attacks only need input gradients, so no weight gradient is ever computed.
            let model = target.load(&train, epoch, dev)?.detached();
            // Only once a checkpoint has loaded: a run whose checkpoints cannot be read gets no eval/.
            std::fs::create_dir_all(&out_dir).map_err(|e| CovfError::io(&out_dir, e))?;
            if !spec.quiet {
                eprintln!("{} epoch {epoch}: {} test images, ε = {eps}", target.run.name, ds.len());
            }
            let first: Vec<usize> = (0..ds.len().min(spec.batch_size.max(1))).collect();
            let (x0, y0) = stack(&ds, &first, dev)?;
            let mut flags = checks::model_checks(&model, &x0, &y0)?;
            let mut rows = Vec::new();
            let mut accs = Vec::new();
            let mut stages = Vec::new();
            let row = |attack: String, correct: usize, seconds: f64| EvalRow {
                run: target.run.name.clone(),
                method: train.method.label(),
                epoch,
                attack,
                eps: f64::from(eps),
                n: ds.len(),
                correct,
                accuracy: correct as f64 / ds.len().max(1) as f64,
                seconds,
                seed: spec.seed,
            };
            for a in &spec.attacks {
                if a.autoattack(eps).is_some() {
                    let key = format!("{a}").replace(['/', ':', '+'], "_");
                    let state = out_dir.join(format!(
                        "state-{key}-e{epoch:03}-n{}-s{}-eps{eps}.json",
                        ds.len(),
                        spec.seed
                    ));
                    let st = eval_autoattack(&model, &ds, a, eps, epoch, spec, &state, dev)?;
                    let total: f64 = st.done.iter().map(|d| d.2).sum();
                    for (name, acc, secs) in &st.done {
                        let c = (acc * ds.len() as f64).round() as usize;
                        rows.push(row(format!("{a}/{name}"), c, *secs));
                        stages.push((name.clone(), *acc));
                    }
                    let c = st.robust.iter().filter(|&&r| r).count();
                    rows.push(row(a.to_string(), c, total));
                    accs.push((a.clone(), c as f64 / ds.len().max(1) as f64));
                } else {
                    let attack = a.build(eps);
                    let mut rng = Rng::derive(spec.seed, &a.to_string(), epoch as u64);
                    let req = Request {
                        source: &model,
                        attack: attack.as_deref(),
                        images: &ds,
                        rng: &mut rng,
                        label: a.to_string(),
                    };
                    let (c, secs) = eval_attack(req, spec, dev)?;
                    rows.push(row(a.to_string(), c, secs));
                    accs.push((a.clone(), c as f64 / ds.len().max(1) as f64));
                }
            }
            flags.extend(checks::result_checks(&accs, &stages));
            for f in &flags {
                eprintln!(
                    "warning ({}, epoch {epoch}): {}: {}",
                    target.run.name, f.check, f.message
                );
            }
            results::merge_rows(&out_dir, &rows)?;
            let check_rows: Vec<CheckRow> = flags
                .iter()
                .map(|f| CheckRow {
                    run: target.run.name.clone(),
                    epoch,
                    check: f.check.to_string(),
                    message: f.message.clone(),
                })
                .collect();
            results::merge_checks(&out_dir, &[epoch], &check_rows)?;
            reports.push(EpochReport {
                run: target.run.name.clone(),
                method: train.method.label(),
                epoch,
                eps,
                rows,
                flags,
                epoch_seconds: mean_epoch_seconds(&target.run),
            });
        }
    }
    Ok(reports)
}
