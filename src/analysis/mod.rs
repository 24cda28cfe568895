//! The analysis engine: epoch by epoch, how a run's model and its perturbations change (transfer
//! strength, strength gap, random baselines, accuracy curves, learned step sizes, the CO verdict),
//! written as tidy tables under `analyses/<study>/out/`. Every unit of work is cached by the content of
//! the checkpoints it reads and its parameters, so a rerun is near-free.

pub mod cache;
pub mod co;
pub mod curves;
pub mod gap;
pub mod generator;
pub mod perturbations;
pub mod random;
pub mod steps;
pub mod tidy;
pub mod tradeoff;
pub mod transfer;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use crate::attacks::{correct_mask, per_sample_ce, Attack, AttackCtx};
use crate::data::Dataset;
use crate::error::{CovfError, Result};
use crate::models::{Classifier, Mode, PreActResNet};
use crate::rng::Rng;
use crate::run::checkpoint::RunDir;
use crate::run::model_file::ModelFile;
use crate::run::TrainSpec;

const CACHE_VERSION: &str = "analysis-v2";

/// Which images the analyses perturb and score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Images {
    /// The seeded test subset that training-time evaluation and `covf eval` use (the default).
    #[default]
    Test,
    /// Images the run trains on, in a fixed seeded order (the same for every run on the full training
    /// set, whatever its seed), where APART's learned initialisation ω exists (kept beside each
    /// checkpoint for the first `TRAIN_IMAGES_KEPT`).
    Train,
}

impl Images {
    pub fn parse(s: &str) -> Result<Images> {
        match s {
            "test" => Ok(Images::Test),
            "train" => Ok(Images::Train),
            _ => Err(CovfError::spec("images", format!("'{s}': expected test or train"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Images::Test => "test",
            Images::Train => "train",
        }
    }
}

/// What every analysis shares: where results go, which images, how to batch.
#[derive(Debug, Clone)]
pub struct AnalysisCtx {
    /// `analyses/<study>/out`: tables and the cache.
    pub out: PathBuf,
    /// How many images: the first `n` of the seeded subset of `images`.
    pub n: usize,
    pub images: Images,
    pub batch_size: usize,
    /// Seed of the attacks' and generators' random draws.
    pub seed: u64,
    /// Recompute even when a cached result exists.
    pub force: bool,
    pub quiet: bool,
    pub data_dir: Option<PathBuf>,
    pub device: Device,
}

impl AnalysisCtx {
    pub fn cache(&self, analysis: &str) -> cache::Cache {
        cache::Cache::new(&self.out.join("cache").join(analysis), self.force)
    }

    pub fn progress(&self, len: usize, label: String) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len as u64);
        if let Ok(style) = ProgressStyle::with_template("{prefix:>36} [{bar:30}] {pos}/{len} {elapsed_precise}") {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_prefix(label);
        pb
    }

    /// The images the analyses use for a run: the seeded test subset of its dataset, or the first `n`
    /// of the images it trains on in a fixed seeded order (`crate::run::sets::train_image_positions`).
    pub fn image_set(&self, spec: &TrainSpec) -> Result<Dataset> {
        match self.images {
            Images::Test => crate::run::sets::test_set(spec, self.data_dir.as_deref(), self.n),
            Images::Train => {
                let train = crate::run::sets::train_set(spec, self.data_dir.as_deref())?;
                if self.n > train.len() {
                    return Err(CovfError::spec(
                        "--n",
                        format!(
                            "{} training images requested, run {} trains on {}",
                            self.n,
                            spec.name,
                            train.len()
                        ),
                    ));
                }
                Ok(train.select(&crate::run::sets::train_image_positions(&train, self.n)))
            }
        }
    }

    /// The part of a cache key that names which images of `spec`'s run were used: empty for the test
    /// images (shared by every run of a dataset); the training subset for training images.
    pub fn images_key(&self, spec: &TrainSpec) -> String {
        match self.images {
            Images::Test => String::new(),
            Images::Train => format!("train-subset={:?}", spec.train_subset),
        }
    }

    /// Parameters every cached unit depends on, and the version of the analyses' definitions (bumped
    /// whenever what a cached number means changes, so stale entries are never read back).
    pub fn key_parts(&self) -> String {
        let images = match self.images {
            // Keys of test-image results predate the choice and stay as they were.
            Images::Test => String::new(),
            Images::Train => " images=train".into(),
        };
        format!(
            "{CACHE_VERSION} n={} seed={} batch={}{images}",
            self.n, self.seed, self.batch_size
        )
    }
}

/// One checkpoint of one run: the unit most analyses iterate over. A checkpoint file outside any run
/// directory (`from_file`) is its own one-checkpoint run, named after the file.
#[derive(Debug, Clone)]
pub struct EpochRef {
    pub run: RunDir,
    pub spec: TrainSpec,
    pub epoch: usize,
    file: Option<ModelFile>,
}

impl EpochRef {
    pub fn from_file(f: ModelFile) -> EpochRef {
        let dir = f.path.parent().map(Path::to_path_buf).unwrap_or_default();
        EpochRef {
            run: RunDir {
                name: f.name.clone(),
                path: dir,
            },
            spec: f.spec.clone(),
            epoch: f.epoch,
            file: Some(f),
        }
    }

    pub fn new(run: &RunDir, epoch: usize) -> Result<EpochRef> {
        let spec = run.read_spec()?;
        let e = EpochRef {
            run: run.clone(),
            spec,
            epoch,
            file: None,
        };
        if !e.path().is_file() {
            return Err(CovfError::run(
                &run.name,
                format!(
                    "has no checkpoint for epoch {epoch} ({} is missing)",
                    e.path().display()
                ),
            ));
        }
        Ok(e)
    }

    pub fn path(&self) -> PathBuf {
        match &self.file {
            Some(f) => f.path.clone(),
            None => self.run.epoch_path(self.epoch),
        }
    }

    /// `run@epoch`, how tables name a checkpoint.
    pub fn label(&self) -> String {
        format!("{}@{}", self.run.name, self.epoch)
    }

    /// The model, weight-detached (analyses only need input gradients), and the checkpoint metadata.
    pub fn load(&self, dev: &Device) -> Result<(PreActResNet, crate::run::checkpoint::Checkpoint)> {
        let (m, ck) = match &self.file {
            Some(f) => f.load(dev)?,
            None => crate::run::load_model(&self.spec, &self.path(), dev)?,
        };
        Ok((m.detached(), ck))
    }

    pub fn content_hash(&self) -> Result<String> {
        cache::file_hash(&self.path())
    }

    /// The key part of cached results that name this checkpoint: its content and its label, so that a
    /// byte-identical copy under another name (a copied file) gets rows under its own name.
    pub fn cache_id(&self) -> Result<String> {
        Ok(format!("{} {}", self.content_hash()?, self.label()))
    }
}

/// Every epoch checkpoint of a run, oldest first (an error if it has none).
pub fn all_epochs(run: &RunDir) -> Result<Vec<EpochRef>> {
    let epochs = run.epochs()?;
    if epochs.is_empty() {
        return Err(CovfError::run(&run.name, "has no epoch checkpoint yet"));
    }
    epochs.into_iter().map(|e| EpochRef::new(run, e)).collect()
}

/// Per-example correctness (1/0) and cross-entropy of `model` at `x`, BN in eval mode.
pub fn per_sample(model: &dyn Classifier, x: &Tensor, y: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    let z = model.logits(x, Mode::EVAL)?.detach();
    Ok((correct_mask(&z, y)?.to_vec1()?, per_sample_ce(&z, y)?.to_vec1()?))
}

/// Adversarial (or noisy) inputs x + δ for a whole dataset, batch by batch, with δ from `attack` on `model`.
pub fn perturbed_batches(
    model: &dyn Classifier,
    attack: &dyn Attack,
    ds: &Dataset,
    ctx: &AnalysisCtx,
    rng: &mut Rng,
    pb: &ProgressBar,
) -> Result<Vec<(Tensor, Tensor)>> {
    let positions: Vec<usize> = (0..ds.len()).collect();
    let mut out = Vec::new();
    for chunk in positions.chunks(ctx.batch_size.max(1)) {
        let b = ds.batch(chunk, None, &ctx.device)?;
        let rows = chunk[0]..chunk[0] + chunk.len();
        let p = attack.perturb_rows(model, &b.x, &b.y, rows, &mut AttackCtx { mode: Mode::EVAL, rng })?;
        out.push(((&b.x + &p.delta)?.detach(), b.y));
        pb.inc(1);
    }
    Ok(out)
}

/// Mean of a slice (NaN when empty).
pub fn mean(v: &[f32]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().map(|&a| f64::from(a)).sum::<f64>() / v.len() as f64
}

/// The q-quantile (0 ≤ q ≤ 1) of `v` by linear interpolation between order statistics (NaN when empty).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// Population standard deviation (NaN when empty).
pub fn std_dev(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / v.len() as f64).sqrt()
}

/// `analyses/<study>/out` for a study given by name (under `analyses/`) or as a directory path.
pub fn study_out(study: &str) -> Result<PathBuf> {
    let p = Path::new(study);
    let dir = if p.components().count() > 1 || p.is_absolute() {
        p.to_path_buf()
    } else {
        crate::run::spec::validate_run_name(study).map_err(|_| {
            CovfError::spec(
                "study",
                format!("'{study}': a study name is letters, digits, '.', '_' and '-' (or give a directory)"),
            )
        })?;
        Path::new("analyses").join(study)
    };
    Ok(dir.join("out"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_spread_by_hand() {
        let v = [4.0, 1.0, 3.0, 2.0, 5.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        // Position 0.1·4 = 0.4 between 1 and 2.
        assert!((quantile(&v, 0.1) - 1.4).abs() < 1e-12);
        // Mean 3, squared deviations 4+1+0+1+4 = 10 over 5.
        assert!((std_dev(&v) - 2f64.sqrt()).abs() < 1e-12);
        assert!(quantile(&[], 0.5).is_nan());
        assert!((mean(&[1.0, 2.0]) - 1.5).abs() < 1e-12);
    }

    #[test]
    fn studies_by_name_or_directory() {
        assert_eq!(study_out("paper").unwrap(), Path::new("analyses/paper/out"));
        assert_eq!(study_out("x/y").unwrap(), Path::new("x/y/out"));
        assert!(study_out("..").is_err());
    }
}
