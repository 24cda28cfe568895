//! A model named by one checkpoint file, outside any run directory: a covf checkpoint describes itself
//! (its metadata carries the training spec), a plain PyTorch state dict is described by the user
//! (`Foreign`: architecture, dataset, input normalisation, ε).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::spec::{AttackBn, EpochEvalSpec, Eps, MethodSpec, TrainSpec};
use crate::data::{Augment, DatasetKind};
use crate::error::{CovfError, Result};
use crate::models::{self, Arch, ArchSpec, PreActResNet};
use crate::optim::{LrSchedule, Precision};
use crate::run::checkpoint::{self, Checkpoint, FORMAT};

/// Metadata key of the full training spec (JSON) in every epoch checkpoint covf writes.
pub const SPEC_KEY: &str = "train_spec";

/// What a plain state dict cannot say about itself, given on the command line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Foreign {
    pub arch: Option<Arch>,
    pub dataset: Option<DatasetKind>,
    /// Per-channel (mean, std) the model expects its input normalised with.
    pub normalize: Option<(Vec<f32>, Vec<f32>)>,
    pub eps: Option<Eps>,
}

impl Foreign {
    pub fn is_empty(&self) -> bool {
        *self == Foreign::default()
    }
}

/// `0.4914,0.4822,0.4465/0.2471,0.2435,0.2616` → (mean, std); `none` → no normalisation (mean 0, std 1
/// per channel, sized when the dataset is known).
pub fn parse_normalize(s: &str) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let bad = |m: &str| {
        CovfError::spec(
            "--normalize",
            format!("'{s}': {m}; write MEAN/STD per channel, e.g. 0.4914,0.4822,0.4465/0.2471,0.2435,0.2616, or none"),
        )
    };
    let (m, d) = s.split_once('/').ok_or_else(|| bad("no '/' between mean and std"))?;
    let list = |t: &str| -> Result<Vec<f32>> {
        t.split(',')
            .map(|v| v.trim().parse::<f32>().map_err(|_| bad("not a number")))
            .collect()
    };
    let (mean, std) = (list(m)?, list(d)?);
    if mean.len() != std.len() || mean.is_empty() {
        return Err(bad("mean and std need one value per channel each"));
    }
    if !mean.iter().all(|v| v.is_finite()) || !std.iter().all(|v| v.is_finite() && *v > 0.0) {
        return Err(bad("values must be finite and std > 0"));
    }
    Ok(Some((mean, std)))
}

/// A checkpoint file and everything needed to rebuild the network it holds.
#[derive(Debug, Clone)]
pub struct ModelFile {
    pub path: PathBuf,
    /// How tables name it: the file name without `.safetensors`.
    pub name: String,
    /// The training spec (a covf checkpoint's own; for a plain state dict one describing what is known,
    /// method `external`).
    pub spec: TrainSpec,
    pub arch: ArchSpec,
    pub epoch: usize,
    /// A covf checkpoint (true) or a plain state dict (false).
    pub covf: bool,
}

fn stem(path: &Path) -> String {
    let f = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    f.strip_suffix(".safetensors").map(str::to_string).unwrap_or(f)
}

/// The `epoch-NNN` number of a file name, if it has one.
pub fn epoch_of_name(path: &Path) -> Option<usize> {
    stem(path).strip_prefix("epoch-")?.parse().ok()
}

/// The spec of a model covf did not train: what the user said, method `external`, nothing to train.
fn external_spec(name: &str, label: &str, arch: Arch, dataset: DatasetKind, eps: Eps) -> TrainSpec {
    TrainSpec {
        name: name.to_string(),
        method: MethodSpec::external(label),
        dataset,
        data_dir: None,
        arch,
        eps: eps.clone(),
        epochs: 0,
        batch_size: 128,
        schedule: LrSchedule::Constant { lr: 0.0 },
        momentum: 0.0,
        cycle_momentum: None,
        weight_decay: 0.0,
        seed: 0,
        train_subset: None,
        augment: Augment::none(),
        eval: EpochEvalSpec {
            test_subset: 1000,
            pgd_steps: 10,
            pgd_alpha: eps.scaled(2.0 / 255.0),
            probe_steps: 5,
            probe_drop: 0.2,
        },
        attack_bn: AttackBn::Batch,
        save_every_epoch: false,
        device: "cpu".into(),
        precision: Precision::F32,
        monitor: super::spec::MonitorSpec::off(),
        early_stop: None,
    }
}

/// The budget a plain model is evaluated at unless `--eps` says otherwise: covf's default on its dataset.
pub fn default_eps(dataset: DatasetKind) -> Result<Eps> {
    Eps::parse(dataset.default_eps())
}

impl ModelFile {
    /// Opens `path`: a covf checkpoint from its own metadata (the `foreign` flags may only repeat what it
    /// says), a plain state dict from `foreign` (architecture, dataset and normalisation required).
    pub fn open(path: &Path, foreign: &Foreign) -> Result<ModelFile> {
        if !path.is_file() {
            return Err(CovfError::data(path, "no such checkpoint file"));
        }
        let meta = checkpoint::read_metadata(path)?;
        let name = stem(path);
        if meta.get("format").map(String::as_str) == Some(FORMAT) {
            return Self::open_covf(path, name, &meta, foreign);
        }
        let need = |what: &str, flag: &str| {
            CovfError::spec(
                flag,
                format!(
                    "{} has no covf metadata (a plain state dict): name its {what} with {flag}",
                    path.display()
                ),
            )
        };
        let arch = foreign.arch.ok_or_else(|| need("architecture", "--arch"))?;
        let dataset = foreign.dataset.ok_or_else(|| need("dataset", "--dataset"))?;
        let normalize = foreign
            .normalize
            .as_ref()
            .ok_or_else(|| need("input normalisation (MEAN/STD, or none)", "--normalize"))?;
        let eps = match &foreign.eps {
            Some(e) => e.clone(),
            None => default_eps(dataset)?,
        };
        let mut a = ArchSpec::new(arch, dataset);
        set_normalization(&mut a, normalize, path)?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            spec: external_spec(&name, "external", arch, dataset, eps),
            name,
            arch: a,
            epoch: epoch_of_name(path).unwrap_or(0),
            covf: false,
        })
    }

    fn open_covf(path: &Path, name: String, meta: &BTreeMap<String, String>, foreign: &Foreign) -> Result<ModelFile> {
        let bad = |m: String| CovfError::checkpoint(path, m);
        let spec: TrainSpec = match meta.get(SPEC_KEY) {
            Some(j) => serde_json::from_str(j).map_err(|e| bad(format!("bad {SPEC_KEY} metadata: {e}")))?,
            // Checkpoints from before the spec was embedded: what their metadata names.
            None => {
                let get = |k: &str| meta.get(k).ok_or_else(|| bad(format!("no '{k}' in the metadata")));
                let arch = Arch::parse(get("arch")?)?;
                let dataset = DatasetKind::parse(get("dataset")?)?;
                let eps = Eps::parse(get("eps_text")?)?;
                let label = meta.get("method").cloned().unwrap_or_else(|| "external".into());
                external_spec(&name, &label, arch, dataset, eps)
            }
        };
        let conflict = |flag: &str, theirs: &str, ours: &str| {
            bad(format!(
                "{flag} {theirs} contradicts the checkpoint's own metadata ({ours}); a covf checkpoint needs no \
                 --arch/--dataset/--normalize"
            ))
        };
        if let Some(a) = foreign.arch.filter(|a| *a != spec.arch) {
            return Err(conflict("--arch", a.name(), spec.arch.name()));
        }
        if let Some(d) = foreign.dataset.filter(|d| *d != spec.dataset) {
            return Err(conflict("--dataset", d.name(), spec.dataset.name()));
        }
        let mut arch = ArchSpec::new(spec.arch, spec.dataset);
        if let Some(n) = meta.get("normalization") {
            let v: serde_json::Value = serde_json::from_str(n).map_err(|e| bad(format!("bad normalization: {e}")))?;
            let list = |k: &str| -> Option<Vec<f32>> {
                v.get(k)?
                    .as_array()?
                    .iter()
                    .map(|x| x.as_f64().map(|f| f as f32))
                    .collect()
            };
            let (Some(mean), Some(std)) = (list("mean"), list("std")) else {
                return Err(bad(format!("normalization metadata {n} lacks mean/std lists")));
            };
            set_normalization(&mut arch, &(mean, std), path)?;
        }
        if let Some(n) = &foreign.normalize {
            if (&arch.mean, &arch.std) != (&n.0, &n.1) {
                return Err(conflict(
                    "--normalize",
                    &format!("{:?}/{:?}", n.0, n.1),
                    &format!("{:?}/{:?}", arch.mean, arch.std),
                ));
            }
        }
        let epoch = meta
            .get("epoch")
            .and_then(|e| e.parse().ok())
            .or_else(|| epoch_of_name(path))
            .unwrap_or(0);
        let spec = TrainSpec {
            eps: foreign.eps.clone().unwrap_or(spec.eps),
            ..spec
        };
        Ok(ModelFile {
            path: path.to_path_buf(),
            name,
            spec,
            arch,
            epoch,
            covf: true,
        })
    }

    /// The network with the file's weights, and the file's tensors and metadata (no format check: a plain
    /// state dict has none).
    pub fn load(&self, dev: &Device) -> Result<(PreActResNet, Checkpoint)> {
        load_weights(&self.arch, &self.path, dev)
    }
}

/// No normalisation (`--normalize none`) is mean 0, std 1 on every channel.
fn set_normalization(arch: &mut ArchSpec, n: &(Vec<f32>, Vec<f32>), path: &Path) -> Result<()> {
    let c = arch.in_channels;
    if n.0.len() != c {
        return Err(CovfError::spec(
            "--normalize",
            format!(
                "{} values per statistic for {}, whose input has {c} channel(s)",
                n.0.len(),
                path.display()
            ),
        ));
    }
    arch.mean = n.0.clone();
    arch.std = n.1.clone();
    Ok(())
}

/// `none` for a known dataset: identity statistics of its channel count.
pub fn identity_normalization(dataset: DatasetKind) -> (Vec<f32>, Vec<f32>) {
    let c = dataset.shape().0;
    (vec![0.0; c], vec![1.0; c])
}

/// Builds `arch` and loads the tensors of `path` into it (every tensor the model has, nothing else).
pub fn load_weights(arch: &ArchSpec, path: &Path, dev: &Device) -> Result<(PreActResNet, Checkpoint)> {
    let (model, store) = models::build(arch, dev, 0)?;
    let (tensors, meta): (HashMap<String, Tensor>, BTreeMap<String, String>) = checkpoint::load_tensors(path, dev)?;
    store.load(&tensors, path)?;
    Ok((model, Checkpoint { tensors, meta }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_flags_parse_or_say_what_is_wrong() {
        let (m, s) = parse_normalize("0.4914,0.4822,0.4465/0.2471,0.2435,0.2616")
            .unwrap()
            .unwrap();
        assert_eq!((m.len(), s.len(), m[1], s[2]), (3, 3, 0.4822, 0.2616));
        assert_eq!(parse_normalize("none").unwrap(), None);
        for bad in ["0.5", "0.5/0", "a/b", "0.1,0.2/0.3", "/", "0.5/-1"] {
            let e = parse_normalize(bad).unwrap_err().to_string();
            assert!(e.contains("--normalize"), "{bad}: {e}");
        }
        assert_eq!(
            identity_normalization(DatasetKind::Cifar10),
            (vec![0.0; 3], vec![1.0; 3])
        );
    }

    #[test]
    fn epoch_numbers_come_from_names_like_epoch_nnn() {
        assert_eq!(epoch_of_name(Path::new("x/epoch-003.safetensors")), Some(3));
        assert_eq!(epoch_of_name(Path::new("model.safetensors")), None);
        assert_eq!(stem(Path::new("a/b/my.model.safetensors")), "my.model");
    }
}
