//! f_A as the analyses run it: the method's own generator (`MethodSpec::generator`, declared in the
//! method's file) at one checkpoint, except that on the analyses' training images (`--images train`) an
//! APART run's generator starts from its learned ω at that epoch, kept beside the checkpoint
//! (`epoch-NNN.train-images.safetensors`); on test images ω = 0 and APART's generator is a signed step of
//! its learned α1.

use std::collections::HashMap;

use candle_core::Tensor;

use super::{AnalysisCtx, EpochRef, Images};
use crate::attacks::Generator;
use crate::error::{CovfError, Result};
use crate::run::checkpoint::{self, Checkpoint};
use crate::train::apart::{learned_step, OMEGA};

/// f_A as the analyses run it on `ctx`'s images: the method's own generator, except that on the training images
/// an APART run's generator starts from its learned ω at that epoch, read from the file kept beside the
/// checkpoint.
pub fn own_generator(ctx: &AnalysisCtx, a: &EpochRef, ck: &Checkpoint) -> Result<Generator> {
    if ctx.images != Images::Train || !a.spec.method.learned_init() {
        return a.spec.method.generator(a.spec.eps.value, &ck.meta);
    }
    let path = checkpoint::train_images_path(&a.path());
    if !path.is_file() {
        return Err(CovfError::run(
            &a.run.name,
            format!(
                "has no {} beside epoch {}'s checkpoint: APART's ω on the training images was not kept (a run \
                 trained before covf kept it, or a checkpoint copied without it); retrain it, or use --images test",
                path.display(),
                a.epoch
            ),
        ));
    }
    let (t, _) = checkpoint::load_tensors(&path, &ctx.device)?;
    let field = |k: &str| {
        t.get(k)
            .ok_or_else(|| CovfError::checkpoint(&path, format!("no '{k}' tensor")))
    };
    let ids: Vec<i64> = field(crate::run::sets::IMAGE_IDS)?.to_vec1()?;
    let omega = field(OMEGA)?;
    let row: HashMap<usize, usize> = ids.iter().enumerate().map(|(r, &id)| (id as usize, r)).collect();
    let ds = ctx.image_set(&a.spec)?;
    let rows = ds
        .index
        .iter()
        .map(|id| row.get(id).map(|&r| r as u32))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| {
            CovfError::run(
                &a.run.name,
                format!(
                    "keeps ω for the first {} of the analyses' training images, {} asked for: use --n {} or less, \
                     or --images test",
                    ids.len(),
                    ds.len(),
                    ids.len()
                ),
            )
        })?;
    let rows = Tensor::new(rows.as_slice(), &ctx.device)?;
    let alpha_init = learned_step(&ck.meta, "init")?;
    Ok(Generator::LearnedInit {
        eps: a.spec.eps.value,
        alpha: learned_step(&ck.meta, "input")?,
        alpha_init,
        init: (omega.index_select(&rows, 0)? * f64::from(alpha_init))?,
    })
}
