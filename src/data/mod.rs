//! Datasets (IDX and CIFAR binary), seeded subsets and batches: pixels in [0, 1], labels as u32.

pub mod augment;
pub mod cifar;
pub mod idx;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use augment::{AugParams, Augment};

use crate::error::{CovfError, Result};
use crate::rng::Rng;

/// Where Debian's `dataset-fashion-mnist` package installs its gzipped IDX files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    FashionMnist,
    Mnist,
    Cifar10,
    Cifar100,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 4] = [
        DatasetKind::FashionMnist,
        DatasetKind::Mnist,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fmnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fmnist" | "fashion-mnist" | "fashion_mnist" | "fashionmnist" => Ok(DatasetKind::FashionMnist),
            "mnist" => Ok(DatasetKind::Mnist),
            "cifar10" | "cifar-10" => Ok(DatasetKind::Cifar10),
            "cifar100" | "cifar-100" => Ok(DatasetKind::Cifar100),
            other => Err(CovfError::spec(
                "dataset",
                format!("unknown dataset '{other}': expected fmnist, mnist, cifar10 or cifar100"),
            )),
        }
    }

    /// (channels, height, width)
    pub fn shape(self) -> (usize, usize, usize) {
        match self {
            DatasetKind::FashionMnist | DatasetKind::Mnist => (1, 28, 28),
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => (3, 32, 32),
        }
    }

    /// The name of class `k` as the dataset's documentation gives it (CIFAR-100 and MNIST: the number).
    pub fn class_name(self, k: u64) -> String {
        const FMNIST: [&str; 10] = [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ];
        const CIFAR10: [&str; 10] = [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ];
        let named = match self {
            DatasetKind::FashionMnist => FMNIST.get(k as usize),
            DatasetKind::Cifar10 => CIFAR10.get(k as usize),
            _ => None,
        };
        named.map_or_else(|| k.to_string(), |s| s.to_string())
    }

    pub fn num_classes(self) -> usize {
        match self {
            DatasetKind::Cifar100 => 100,
            _ => 10,
        }
    }

    /// covf's default budget ε on this dataset, as written: Fashion-MNIST 0.15 (the CPU setting that shows
    /// CO, docs/default-setting.md), MNIST its usual 0.3, CIFAR fast_adversarial's 8/255.
    pub fn default_eps(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "0.15",
            DatasetKind::Mnist => "0.3",
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => "8/255",
        }
    }

    /// Per-channel mean and std applied inside the model, so attacks work in pixel space.
    pub fn normalization(self) -> (Vec<f32>, Vec<f32>) {
        match self {
            DatasetKind::FashionMnist => (vec![0.2860], vec![0.3530]),
            DatasetKind::Mnist => (vec![0.1307], vec![0.3081]),
            DatasetKind::Cifar10 => (vec![0.4914, 0.4822, 0.4465], vec![0.2471, 0.2435, 0.2616]),
            DatasetKind::Cifar100 => (vec![0.5071, 0.4865, 0.4409], vec![0.2673, 0.2564, 0.2762]),
        }
    }

    /// The usual training augmentation: CIFAR pads 4 and crops 32 with flips; the 28x28 sets use none.
    pub fn default_augment(self) -> Augment {
        match self {
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => Augment { pad: 4, flip: true },
            _ => Augment::none(),
        }
    }

    pub fn default_dir(self) -> Option<PathBuf> {
        match self {
            DatasetKind::FashionMnist => Some(PathBuf::from(DEBIAN_FASHION_MNIST)),
            _ => None,
        }
    }
}

/// Images stored as u8 CHW (a quarter of f32's memory); converted per batch.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub images: Arc<Vec<u8>>,
    pub labels: Arc<Vec<u32>>,
    /// Positions into `images`/`labels`; a subset shares the storage of its parent.
    pub index: Vec<usize>,
}

impl Dataset {
    pub fn new(kind: DatasetKind, images: Vec<u8>, labels: Vec<u32>) -> Self {
        let n = labels.len();
        Dataset {
            kind,
            images: Arc::new(images),
            labels: Arc::new(labels),
            index: (0..n).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn image_len(&self) -> usize {
        let (c, h, w) = self.kind.shape();
        c * h * w
    }

    pub fn label(&self, i: usize) -> u32 {
        self.labels[self.index[i]]
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let l = self.image_len();
        let j = self.index[i];
        &self.images[j * l..(j + 1) * l]
    }

    /// A fixed subset of `n` examples chosen by `seed` (the same seed always picks the same examples),
    /// kept in their original order.
    pub fn subset(&self, n: usize, seed: u64, which: &str) -> Result<Dataset> {
        if n == 0 || n > self.len() {
            return Err(CovfError::spec(
                format!("{which} subset"),
                format!("{n} examples requested, the {which} set has {}", self.len()),
            ));
        }
        Ok(self.select(&subset_positions(self.len(), n, seed, which)))
    }

    /// The examples at `positions` (into this dataset), in that order, sharing the storage.
    pub fn select(&self, positions: &[usize]) -> Dataset {
        Dataset {
            kind: self.kind,
            images: Arc::clone(&self.images),
            labels: Arc::clone(&self.labels),
            index: positions.iter().map(|&i| self.index[i]).collect(),
        }
    }

    /// Size of the set this one was drawn from (its image ids run over 0..source_len()).
    pub fn source_len(&self) -> usize {
        self.labels.len()
    }

    /// The batch of examples at positions `pos` (into this dataset), augmented when `aug` is given.
    pub fn batch(&self, pos: &[usize], aug: Option<(&Augment, &mut Rng)>, dev: &Device) -> Result<Batch> {
        let (c, h, w) = self.kind.shape();
        let l = c * h * w;
        let mut x = vec![0f32; pos.len() * l];
        let mut params = Vec::with_capacity(pos.len());
        match aug {
            Some((a, rng)) if !a.is_none() => {
                for (k, &p) in pos.iter().enumerate() {
                    let ap = a.draw(rng);
                    augment::apply(self.image(p), c, h, w, a.pad, ap, &mut x[k * l..(k + 1) * l]);
                    params.push(ap);
                }
            }
            _ => {
                for (k, &p) in pos.iter().enumerate() {
                    for (o, &v) in x[k * l..(k + 1) * l].iter_mut().zip(self.image(p)) {
                        *o = f32::from(v) / 255.0;
                    }
                    params.push(AugParams {
                        dy: 0,
                        dx: 0,
                        flip: false,
                    });
                }
            }
        }
        let y: Vec<u32> = pos.iter().map(|&p| self.label(p)).collect();
        Ok(Batch {
            x: Tensor::from_vec(x, (pos.len(), c, h, w), dev)?,
            y: Tensor::from_vec(y, pos.len(), dev)?,
            positions: pos.to_vec(),
            aug: params,
        })
    }
}

/// The positions `Dataset::subset` keeps: the first `n` of a shuffle of 0..len seeded by (`seed`, `which`),
/// ascending. The first `n` of the same shuffle, so a smaller subset lies inside a larger one.
pub fn subset_positions(len: usize, n: usize, seed: u64, which: &str) -> Vec<usize> {
    let mut picked = seeded_order(len, seed, which);
    picked.truncate(n);
    picked.sort_unstable();
    picked
}

/// 0..len shuffled by the stream (`seed`, `which`).
pub fn seeded_order(len: usize, seed: u64, which: &str) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    Rng::derive(seed, which, 0).shuffle(&mut order);
    order
}

/// One minibatch: inputs in [0, 1] (N, C, H, W), labels (N,), and where each example came from.
#[derive(Debug, Clone)]
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    /// Positions of the examples in their dataset (stable ids for per-example state).
    pub positions: Vec<usize>,
    pub aug: Vec<AugParams>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// Batches of positions for one epoch: shuffled by (seed, epoch) when `shuffle`; the last batch may be short.
pub fn epoch_batches(n: usize, batch_size: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        Rng::derive(seed, "shuffle", epoch as u64).shuffle(&mut order);
    }
    order.chunks(batch_size.max(1)).map(|c| c.to_vec()).collect()
}

fn first_existing(dir: &Path, names: &[&str]) -> Result<PathBuf> {
    for n in names {
        let p = dir.join(n);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(CovfError::data(
        dir,
        format!("none of {} found in this directory", names.join(", ")),
    ))
}

fn load_idx_pair(kind: DatasetKind, dir: &Path, prefix: &str) -> Result<Dataset> {
    let img_names = [
        format!("{prefix}-images-idx3-ubyte.gz"),
        format!("{prefix}-images-idx3-ubyte"),
        format!("{prefix}-images.idx3-ubyte"),
    ];
    let lab_names = [
        format!("{prefix}-labels-idx1-ubyte.gz"),
        format!("{prefix}-labels-idx1-ubyte"),
        format!("{prefix}-labels.idx1-ubyte"),
    ];
    let img_path = first_existing(dir, &img_names.iter().map(String::as_str).collect::<Vec<_>>())?;
    let lab_path = first_existing(dir, &lab_names.iter().map(String::as_str).collect::<Vec<_>>())?;
    let img = idx::read_idx(&img_path)?;
    let lab = idx::read_idx(&lab_path)?;
    let (_, h, w) = kind.shape();
    if img.dims.len() != 3 || img.dims[1] != h || img.dims[2] != w {
        return Err(CovfError::data(
            &img_path,
            format!("image dims {:?}, expected [N, {h}, {w}]", img.dims),
        ));
    }
    if lab.dims.len() != 1 {
        return Err(CovfError::data(
            &lab_path,
            format!("label dims {:?}, expected [N]", lab.dims),
        ));
    }
    if lab.dims[0] != img.dims[0] {
        return Err(CovfError::data(
            &lab_path,
            format!(
                "{} labels but {} has {} images",
                lab.dims[0],
                img_path.display(),
                img.dims[0]
            ),
        ));
    }
    let classes = kind.num_classes();
    if let Some((i, &l)) = lab.data.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
        return Err(CovfError::data(
            &lab_path,
            format!("label {l} at index {i} is not below {classes}"),
        ));
    }
    let labels = lab.data.iter().map(|&l| u32::from(l)).collect();
    Ok(Dataset::new(kind, img.data, labels))
}

fn load_cifar_files(kind: DatasetKind, files: &[PathBuf]) -> Result<Dataset> {
    let label_bytes = if kind == DatasetKind::Cifar100 { 2 } else { 1 };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let (i, l) = cifar::read_cifar(f, label_bytes, kind.num_classes())?;
        images.extend(i);
        labels.extend(l);
    }
    Ok(Dataset::new(kind, images, labels))
}

/// Loads (train, test) for `kind` from `dir` (or the dataset's default location).
pub fn load(kind: DatasetKind, dir: Option<&Path>) -> Result<(Dataset, Dataset)> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => kind.default_dir().ok_or_else(|| {
            CovfError::spec(
                "data-dir",
                format!("{} has no default location: pass --data-dir DIR", kind.name()),
            )
        })?,
    };
    if !dir.is_dir() {
        let hint = if kind == DatasetKind::FashionMnist && dir == Path::new(DEBIAN_FASHION_MNIST) {
            " (install it with `apt-get install -y dataset-fashion-mnist`, or pass --data-dir)"
        } else {
            ""
        };
        return Err(CovfError::data(&dir, format!("dataset directory not found{hint}")));
    }
    match kind {
        DatasetKind::FashionMnist | DatasetKind::Mnist => {
            Ok((load_idx_pair(kind, &dir, "train")?, load_idx_pair(kind, &dir, "t10k")?))
        }
        DatasetKind::Cifar10 => {
            let train: Vec<PathBuf> = (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect();
            for f in &train {
                if !f.is_file() {
                    return Err(CovfError::data(f, "missing CIFAR-10 training batch"));
                }
            }
            let test = dir.join("test_batch.bin");
            Ok((load_cifar_files(kind, &train)?, load_cifar_files(kind, &[test])?))
        }
        DatasetKind::Cifar100 => Ok((
            load_cifar_files(kind, &[dir.join("train.bin")])?,
            load_cifar_files(kind, &[dir.join("test.bin")])?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_follow_the_datasets_label_order() {
        assert_eq!(DatasetKind::FashionMnist.class_name(0), "T-shirt/top");
        assert_eq!(DatasetKind::FashionMnist.class_name(9), "Ankle boot");
        assert_eq!(DatasetKind::Cifar10.class_name(3), "cat");
        assert_eq!(DatasetKind::Mnist.class_name(7), "7");
        assert_eq!(DatasetKind::Cifar100.class_name(42), "42");
        assert_eq!(DatasetKind::FashionMnist.class_name(10), "10");
    }

    fn toy(n: usize) -> Dataset {
        let images = (0..n * 784).map(|i| (i % 256) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u32).collect();
        Dataset::new(DatasetKind::FashionMnist, images, labels)
    }

    #[test]
    fn subsets_are_fixed_by_seed() {
        let d = toy(100);
        let a = d.subset(10, 5, "train").unwrap();
        let b = d.subset(10, 5, "train").unwrap();
        let c = d.subset(10, 6, "train").unwrap();
        assert_eq!(a.index, b.index);
        assert_ne!(a.index, c.index);
        assert!(d.subset(101, 5, "train").is_err());
    }

    #[test]
    fn batch_scales_pixels_and_keeps_labels() {
        let d = toy(4);
        let b = d.batch(&[1, 3], None, &Device::Cpu).unwrap();
        assert_eq!(b.x.dims(), &[2, 1, 28, 28]);
        let x: Vec<f32> = b.x.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(x[0], (784 % 256) as f32 / 255.0);
        assert_eq!(b.y.to_vec1::<u32>().unwrap(), vec![1, 3]);
    }

    #[test]
    fn epoch_batches_cover_everything_once() {
        let bs = epoch_batches(10, 4, 1, 0, true);
        assert_eq!(bs.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let mut all: Vec<usize> = bs.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(epoch_batches(10, 4, 1, 0, true), epoch_batches(10, 4, 1, 1, true));
    }
}
