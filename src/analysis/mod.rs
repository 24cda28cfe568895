//! The analysis engine: epoch by epoch, how a run's model and its perturbations change (transfer
//! strength, strength gap, random baselines, accuracy curves, learned step sizes, the CO verdict),
//! written as tidy tables under `analyses/<study>/out/`. Every unit of work is cached by the content of
//! the checkpoints it reads and its parameters, so a rerun is near-free.

pub use crate::run::cache;
pub use crate::run::table as tidy;
pub mod co;
pub mod curves;
pub mod detectors;
pub mod gap;
pub mod generator;
pub mod monitor;
pub mod perturbations;
pub mod pinpoint;
pub mod random;
pub mod registry;
pub mod steps;
pub mod tradeoff;
pub mod transfer;

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::data::Dataset;
use crate::error::{CovfError, Result};
pub use crate::eval::score::mean;
use crate::eval::{Request, ScoreKey, Scorer, Scores};
use crate::models::PreActResNet;
use crate::rng::Rng;
use crate::run::checkpoint::RunDir;
use crate::run::model_file::ModelFile;
use crate::run::TrainSpec;

const CACHE_VERSION: &str = "analysis-v2";

/// Every analysis, in the order a study runs them (one runs after those whose tables it reads).
pub static ANALYSES: &[&dyn registry::Analysis] = &[
    &transfer::Transfer,
    &gap::Gap,
    &random::Random,
    &curves::Curves,
    &steps::Steps,
    &monitor::MonitorTable,
    &co::Co,
    &detectors::Detectors,
    &pinpoint::Pinpoint,
    &perturbations::Perturbations,
    &tradeoff::Tradeoff,
];

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

    /// The scoring service with this study's cache of per-example scores (`out/cache/scores`).
    pub fn scorer(&self) -> Scorer {
        Scorer::new(self.batch_size, &self.device, self.quiet).with_cache(self.cache("scores"))
    }

    /// The identity of scores of an attack on checkpoint `source`, drawn from `Rng::derive(seed, stream,
    /// index)`, on the analyses' images of `images_of`'s run, scored by `judges` (checkpoint ids; empty: the
    /// source).
    pub fn score_key(
        &self,
        source: &EpochRef,
        attack: String,
        stream: &str,
        index: usize,
        judges: Vec<String>,
        images_of: &TrainSpec,
    ) -> Result<ScoreKey> {
        Ok(ScoreKey {
            source: source.content_hash()?,
            attack,
            images: format!(
                "{} {} n={} {}",
                images_of.dataset.name(),
                self.images.name(),
                self.n,
                self.images_key(images_of)
            ),
            stream: format!("{stream}/{index}"),
            judges,
            params: self.key_parts(),
        })
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

/// The random stream of a checkpoint's PGD accuracy, shared by `curves` and `tradeoff` (one computation
/// when both ask for the same checkpoint, ε and steps).
pub const PGD_STREAM: &str = "curves/pgd";

/// Per-example scores of checkpoint `a` under PGD-`steps` at `eps` (random start, step ε/4), on the
/// analyses' images.
pub fn pgd_scores(ctx: &AnalysisCtx, a: &EpochRef, eps: f32, steps: usize) -> Result<Scores> {
    let ds = ctx.image_set(&a.spec)?;
    let (model, _) = a.load(&ctx.device)?;
    let attack = crate::attacks::Pgd::new(eps, steps);
    let key = ctx.score_key(a, format!("{attack:?}"), PGD_STREAM, a.epoch, vec![], &a.spec)?;
    let mut rng = Rng::derive(ctx.seed, PGD_STREAM, a.epoch as u64);
    let mut req = Request {
        source: &model,
        attack: Some(&attack),
        images: &ds,
        rng: &mut rng,
        label: format!("pgd{steps} on {}", a.label()),
    };
    first(ctx.scorer().per_example(&key, &mut req, &[])?)
}

/// The one judge's scores of a request that named one.
pub fn first(mut v: Vec<Scores>) -> Result<Scores> {
    if v.is_empty() {
        return Err(CovfError::spec("scores", "a request returned no scores"));
    }
    Ok(v.swap_remove(0))
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
