//! The scoring service: "perturb these images with this attack on this model, score them" — batched, with
//! progress, BN in eval mode, and per-example results cached by what they depend on (the source
//! checkpoint's content, the attack, the images, the random stream, the scoring models). The per-epoch
//! evaluation of training, `covf eval` and every analysis score through it, so one checkpoint's PGD-20
//! accuracy is computed once however many analyses ask for it.

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::attacks::{correct_mask, per_sample_ce, Attack, AttackCtx};
use crate::data::Dataset;
use crate::error::Result;
use crate::models::{Classifier, Mode};
use crate::rng::Rng;
use crate::run::cache::{self, Cache};

/// Per-example correctness (1/0) and cross-entropy under one scoring model, in image order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub correct: Vec<f32>,
    pub loss: Vec<f32>,
}

impl Scores {
    pub fn accuracy(&self) -> f64 {
        mean(&self.correct)
    }

    pub fn mean_loss(&self) -> f64 {
        mean(&self.loss)
    }
}

/// A progress bar over `len` batches (hidden when quiet).
pub fn progress_bar(quiet: bool, len: usize, label: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{prefix:>36} [{bar:30}] {pos}/{len} batches {elapsed_precise}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(label.to_string());
    pb
}

/// Mean of a slice in f64 (NaN when empty).
pub fn mean(v: &[f32]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().map(|&a| f64::from(a)).sum::<f64>() / v.len() as f64
}

/// What cached scores depend on. Two requests with equal keys are the same computation, whichever
/// analysis or command makes them.
#[derive(Debug, Clone)]
pub struct ScoreKey {
    /// Content of the checkpoint the attack runs on.
    pub source: String,
    /// The attack as run (its description, with ε and steps), or `clean`.
    pub attack: String,
    /// Which images: the set's name and size.
    pub images: String,
    /// The random stream: its name and index (`Rng::derive(seed, name, index)`), and the seed.
    pub stream: String,
    /// Content of each scoring model, in order (empty: the source itself).
    pub judges: Vec<String>,
    /// Batch size and other parameters a result depends on.
    pub params: String,
}

impl ScoreKey {
    fn hash(&self) -> String {
        let judges = self.judges.join(" ");
        cache::key(&[
            "scores-v1",
            &self.source,
            &self.attack,
            &self.images,
            &self.stream,
            &judges,
            &self.params,
        ])
    }
}

/// One request: x + δ for every image of `images`, δ from `attack` (none: clean) on `source`.
pub struct Request<'a> {
    pub source: &'a dyn Classifier,
    pub attack: Option<&'a dyn Attack>,
    pub images: &'a Dataset,
    pub rng: &'a mut Rng,
    /// Progress-bar label.
    pub label: String,
}

/// Batch size, device, progress and the cache every request shares.
#[derive(Debug, Clone)]
pub struct Scorer {
    pub batch_size: usize,
    pub device: Device,
    pub quiet: bool,
    /// Where per-example scores are cached (none: never cached).
    pub cache: Option<Cache>,
}

impl Scorer {
    pub fn new(batch_size: usize, device: &Device, quiet: bool) -> Scorer {
        Scorer {
            batch_size: batch_size.max(1),
            device: device.clone(),
            quiet,
            cache: None,
        }
    }

    pub fn with_cache(mut self, cache: Cache) -> Scorer {
        self.cache = Some(cache);
        self
    }

    /// For every batch: x + δ, then each judge's logits (BN in eval mode; the source when `judges` is
    /// empty), handed to `visit` with the labels. Batches run in image order, so the random stream is
    /// consumed as one pass over the set.
    pub fn for_each_batch(
        &self,
        req: &mut Request,
        judges: &[&dyn Classifier],
        mut visit: impl FnMut(&[Tensor], &Tensor) -> Result<()>,
    ) -> Result<()> {
        let ds = req.images;
        let positions: Vec<usize> = (0..ds.len()).collect();
        let chunks: Vec<&[usize]> = positions.chunks(self.batch_size).collect();
        let pb = progress_bar(self.quiet, chunks.len(), &req.label);
        for chunk in chunks {
            let b = ds.batch(chunk, None, &self.device)?;
            let x = match req.attack {
                Some(a) => {
                    let rows = chunk[0]..chunk[0] + chunk.len();
                    let p = a.perturb_rows(
                        req.source,
                        &b.x,
                        &b.y,
                        rows,
                        &mut AttackCtx {
                            mode: Mode::EVAL,
                            rng: req.rng,
                        },
                    )?;
                    (&b.x + &p.delta)?.detach()
                }
                None => b.x,
            };
            let logits = if judges.is_empty() {
                vec![req.source.logits(&x, Mode::EVAL)?.detach()]
            } else {
                judges
                    .iter()
                    .map(|j| Ok(j.logits(&x, Mode::EVAL)?.detach()))
                    .collect::<Result<Vec<_>>>()?
            };
            visit(&logits, &b.y)?;
            pb.inc(1);
        }
        pb.finish_and_clear();
        Ok(())
    }

    /// Per-example scores under each judge (the source when `judges` is empty), read from the cache when
    /// `key` was computed before.
    pub fn per_example(&self, key: &ScoreKey, req: &mut Request, judges: &[&dyn Classifier]) -> Result<Vec<Scores>> {
        let compute = |req: &mut Request| -> Result<Vec<Scores>> {
            let k = judges.len().max(1);
            let mut out = vec![
                Scores {
                    correct: Vec::new(),
                    loss: Vec::new(),
                };
                k
            ];
            self.for_each_batch(req, judges, |logits, y| {
                for (s, z) in out.iter_mut().zip(logits) {
                    s.correct.extend(correct_mask(z, y)?.to_vec1::<f32>()?);
                    s.loss.extend(per_sample_ce(z, y)?.to_vec1::<f32>()?);
                }
                Ok(())
            })?;
            Ok(out)
        };
        match &self.cache {
            Some(c) => c.get_or(&key.hash(), || compute(req)),
            None => compute(req),
        }
    }
}
