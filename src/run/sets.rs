//! The data a run uses and its model: the fixed seeded train/test subsets (the same images for every run,
//! whatever its seed), the analyses' training images, and loading an epoch checkpoint into its architecture.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;

use super::checkpoint::Checkpoint;
use super::spec::TrainSpec;
use crate::data::{self, Dataset};
use crate::error::{CovfError, Result};
use crate::models::{self, ArchSpec, PreActResNet};

/// Seed of the fixed train/test subsets: the same images for every run, whatever its training seed.
pub const DATA_SEED: u64 = 0;

/// Training images whose per-example state (APART's ω) every epoch keeps for the analyses
/// (`covf analyze --images train`): the first of `train_image_positions`.
pub const TRAIN_IMAGES_KEPT: usize = 1000;

/// The key of the image ids (positions in the full training set) in a `.train-images.safetensors` file;
/// row k of every other tensor there belongs to image k.
pub const IMAGE_IDS: &str = "image_ids";

/// Positions, in a run's training set `train`, of the analyses' `n` training images: the first `n` of the
/// images it trains on in a fixed seeded order of the full training set, ascending. Every run on the full
/// set gets the same images whatever its seed, and a smaller `n` picks a subset of a larger one.
pub fn train_image_positions(train: &Dataset, n: usize) -> Vec<usize> {
    let at: HashMap<usize, usize> = train.index.iter().enumerate().map(|(p, &id)| (id, p)).collect();
    let mut picked: Vec<usize> = data::seeded_order(train.source_len(), DATA_SEED, "train-images")
        .into_iter()
        .filter_map(|id| at.get(&id).copied())
        .take(n)
        .collect();
    picked.sort_unstable();
    picked
}

/// Loads the datasets a spec asks for (subsets applied).
pub fn load_data(spec: &TrainSpec) -> Result<(Dataset, Dataset)> {
    let (train, test) = data::load(spec.dataset, spec.data_dir.as_deref())?;
    let train = train_subset(spec, train)?;
    let test = if spec.eval.test_subset < test.len() {
        test.subset(spec.eval.test_subset, DATA_SEED, "test")?
    } else {
        test
    };
    Ok((train, test))
}

/// The training set a run trains on (`--train-subset` applied), read from `dir` or the spec's directory.
pub fn train_set(spec: &TrainSpec, dir: Option<&Path>) -> Result<Dataset> {
    let (train, _) = data::load(spec.dataset, dir.or(spec.data_dir.as_deref()))?;
    train_subset(spec, train)
}

fn train_subset(spec: &TrainSpec, train: Dataset) -> Result<Dataset> {
    match spec.train_subset {
        Some(n) if n < train.len() => train.subset(n, DATA_SEED, "train"),
        Some(n) if n > train.len() => Err(CovfError::spec(
            "train subset",
            format!("{n} requested, the training set has {}", train.len()),
        )),
        _ => Ok(train),
    }
}

/// The test images of a run's dataset, the seeded subset of size `n`.
pub fn test_set(train: &TrainSpec, data_dir: Option<&Path>, n: usize) -> Result<Dataset> {
    let dir = data_dir.or(train.data_dir.as_deref());
    let (_, test) = data::load(train.dataset, dir)?;
    if n > test.len() {
        return Err(CovfError::spec(
            "--n",
            format!(
                "{n} test images requested, the {} test set has {}",
                train.dataset.name(),
                test.len()
            ),
        ));
    }
    if n < test.len() {
        test.subset(n, DATA_SEED, "test")
    } else {
        Ok(test)
    }
}

/// Loads an epoch checkpoint into a fresh model of the architecture its run was trained with.
pub fn load_model(spec: &TrainSpec, path: &Path, dev: &Device) -> Result<(PreActResNet, Checkpoint)> {
    let arch = ArchSpec::new(spec.arch, spec.dataset);
    let (model, store) = models::build(&arch, dev, spec.seed)?;
    let ck = Checkpoint::load(path, dev)?;
    store.load(&ck.tensors, path)?;
    Ok((model, ck))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DatasetKind;

    #[test]
    fn the_analyses_training_images_are_fixed_nested_and_follow_a_subset_run() {
        let full = Dataset::new(
            DatasetKind::FashionMnist,
            vec![0; 100 * 784],
            (0..100).map(|i| i % 10).collect(),
        );
        let ten = train_image_positions(&full, 10);
        let five = train_image_positions(&full, 5);
        assert_eq!(ten.len(), 10);
        assert!(ten.windows(2).all(|w| w[0] < w[1]), "{ten:?}");
        assert!(five.iter().all(|p| ten.contains(p)), "{five:?} ⊄ {ten:?}");
        assert_eq!(ten, train_image_positions(&full, 10));
        // On the full set positions are image ids: the first ten of the seeded order.
        let mut first: Vec<usize> = data::seeded_order(100, DATA_SEED, "train-images")[..10].to_vec();
        first.sort_unstable();
        assert_eq!(ten, first);
        // A run on a 30-image subset: the first ten of *its* images in the same order; where the full
        // set's ten are among its images they are the same images.
        let sub = full.subset(30, DATA_SEED, "train").unwrap();
        let ids: Vec<usize> = train_image_positions(&sub, 10).iter().map(|&p| sub.index[p]).collect();
        let order = data::seeded_order(100, DATA_SEED, "train-images");
        let mut want: Vec<usize> = order.into_iter().filter(|id| sub.index.contains(id)).take(10).collect();
        want.sort_unstable();
        assert_eq!(ids, want);
        assert!(ten
            .iter()
            .filter(|id| sub.index.contains(id))
            .all(|id| ids.contains(id)));
        assert_eq!(train_image_positions(&sub, 50).len(), 30);
    }
}
