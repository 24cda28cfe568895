//! Run directories, safetensors checkpoints with metadata, atomic writes, and the state a resume needs.
//!
//! Layout of `checkpoints/<run>/`: `run.json` (the validated spec), `epoch-NNN.safetensors`
//! (weights + BN buffers under PyTorch's names, metadata strings), beside it for methods with per-example
//! state the analyses' generators use `epoch-NNN.train-images.safetensors` (that state on the analyses'
//! training images, with their ids), `train-state.safetensors`
//! (momentum buffers; metadata: last complete epoch and the metric rows so far), `metrics.parquet`/`.csv`.
//! Every file is written to a temporary name, fsynced and renamed, so a crash never leaves a torn file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{CovfError, Result};
use crate::run::spec::{validate_run_name, TrainSpec};

pub const COVF_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const FORMAT: &str = "covf-checkpoint-1";

/// Where the per-example state kept for the analyses' training images lives for the checkpoint at
/// `checkpoint`: `<stem>.train-images.safetensors` beside it (so a checkpoint copied with it keeps it).
pub fn train_images_path(checkpoint: &Path) -> PathBuf {
    let name = checkpoint.file_name().and_then(|f| f.to_str()).unwrap_or("checkpoint");
    let stem = name.strip_suffix(".safetensors").unwrap_or(name);
    checkpoint.with_file_name(format!("{stem}.train-images.safetensors"))
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fname = path.file_name().and_then(|f| f.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{fname}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok::<(), std::io::Error>(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(CovfError::io(path, e));
    }
    Ok(())
}

fn tensor_bytes(t: &Tensor) -> Result<(Dtype, Vec<u8>)> {
    let t = t.flatten_all()?.to_device(&Device::Cpu)?;
    Ok(match t.dtype() {
        DType::I64 => (
            Dtype::I64,
            t.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        DType::F64 => (
            Dtype::F64,
            t.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        _ => (
            Dtype::F32,
            t.to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    })
}

/// Serialises tensors and string metadata to safetensors bytes.
pub fn encode(tensors: &BTreeMap<String, Tensor>, meta: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (dt, bytes) = tensor_bytes(t)?;
        owned.push((name.clone(), dt, t.dims().to_vec(), bytes));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, dt, shape, bytes) in &owned {
        let v = TensorView::new(*dt, shape.clone(), bytes)
            .map_err(|e| CovfError::checkpoint(name, format!("cannot encode: {e}")))?;
        views.push((name.clone(), v));
    }
    let hashed: HashMap<String, String> = meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut bytes = safetensors::tensor::serialize(views, Some(hashed))
        .map_err(|e| CovfError::checkpoint("(memory)", format!("cannot serialise: {e}")))?;
    sort_metadata(&mut bytes, meta)?;
    Ok(bytes)
}

/// safetensors writes the metadata from a `HashMap`, in an order that changes from process to process, so
/// the same run gave checkpoint files with other bytes (and other content hashes for the analyses' cache).
/// The metadata object is rewritten in place with its keys sorted: the same entries, the same length.
fn sort_metadata(bytes: &mut [u8], meta: &BTreeMap<String, String>) -> Result<()> {
    const KEY: &[u8] = b"\"__metadata__\":";
    if meta.len() < 2 {
        return Ok(());
    }
    let sorted = serde_json::to_string(meta)?;
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
        .unwrap_or(0);
    let header = bytes.get_mut(8..8 + n).unwrap_or_default();
    let at = header
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|p| p + KEY.len())
        .filter(|&p| p + sorted.len() <= header.len() && header[p] == b'{')
        .ok_or_else(|| CovfError::checkpoint("(memory)", "serialised header without its metadata"))?;
    header[at..at + sorted.len()].copy_from_slice(sorted.as_bytes());
    Ok(())
}

/// Parses safetensors bytes into tensors on `dev` and the metadata; any fault names `origin`.
pub fn decode(
    bytes: &[u8],
    origin: &Path,
    dev: &Device,
) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| CovfError::checkpoint(origin, format!("not a valid safetensors file: {e}")))?;
    let (_, md) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| CovfError::checkpoint(origin, format!("bad safetensors header: {e}")))?;
    let meta: BTreeMap<String, String> = md.metadata().clone().unwrap_or_default().into_iter().collect();
    let mut out = HashMap::new();
    for (name, v) in st.tensors() {
        let shape = v.shape().to_vec();
        let data = v.data();
        let t = match v.dtype() {
            Dtype::F32 => {
                let vals: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Tensor::from_vec(vals, shape, dev)?
            }
            Dtype::F64 => {
                let vals: Vec<f64> = data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect();
                Tensor::from_vec(vals, shape, dev)?
            }
            Dtype::I64 => {
                let vals: Vec<i64> = data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect();
                Tensor::from_vec(vals, shape, dev)?
            }
            other => {
                return Err(CovfError::checkpoint(
                    origin,
                    format!("tensor {name} has unsupported dtype {other:?}"),
                ))
            }
        };
        out.insert(name, t);
    }
    Ok((out, meta))
}

/// The metadata of a safetensors file, reading only its header (resume states can hold per-example
/// perturbations of the whole training set).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let bad = |m: String| CovfError::checkpoint(path, m);
    let mut f = std::fs::File::open(path).map_err(|e| CovfError::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| CovfError::io(path, e))?;
    let n = u64::from_le_bytes(len);
    let size = f.metadata().map_err(|e| CovfError::io(path, e))?.len();
    // safetensors caps the header at 100 MB; a larger length is a corrupt or foreign file.
    if n > 100_000_000 || n + 8 > size {
        return Err(bad(format!(
            "header length {n} does not fit a {size}-byte file: not a safetensors file"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| CovfError::io(path, e))?;
    header_metadata(&header, path)
}

/// The `__metadata__` strings of a safetensors JSON header (the bytes after the 8-byte length).
pub fn header_metadata(header: &[u8], path: &Path) -> Result<BTreeMap<String, String>> {
    let bad = |m: String| CovfError::checkpoint(path, m);
    let v: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| bad(format!("bad safetensors header: {e}")))?;
    let mut out = BTreeMap::new();
    if let Some(m) = v.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in m {
            let s = v
                .as_str()
                .ok_or_else(|| bad(format!("metadata value of '{k}' is not a string")))?;
            out.insert(k.clone(), s.to_string());
        }
    }
    Ok(out)
}

pub fn save_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>, meta: &BTreeMap<String, String>) -> Result<()> {
    atomic_write(path, &encode(tensors, meta)?)
}

pub fn load_tensors(path: &Path, dev: &Device) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| CovfError::io(path, e))?;
    decode(&bytes, path, dev)
}

/// One run's directory under the checkpoints root.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub name: String,
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(root: &Path, name: &str) -> Result<RunDir> {
        validate_run_name(name)?;
        Ok(RunDir {
            name: name.to_string(),
            path: root.join(name),
        })
    }

    pub fn spec_path(&self) -> PathBuf {
        self.path.join("run.json")
    }

    pub fn state_path(&self) -> PathBuf {
        self.path.join("train-state.safetensors")
    }

    pub fn epoch_path(&self, epoch: usize) -> PathBuf {
        self.path.join(format!("epoch-{epoch:03}.safetensors"))
    }

    /// The method's per-example state on the analyses' training images after `epoch` (APART's ω),
    /// beside the epoch checkpoint; see `train_images_path`.
    pub fn train_images_path(&self, epoch: usize) -> PathBuf {
        train_images_path(&self.epoch_path(epoch))
    }

    pub fn exists(&self) -> bool {
        self.spec_path().is_file()
    }

    /// Epochs the run has committed: the epoch its resume state names (0 before the first). An epoch
    /// checkpoint can exist a moment before the state that commits it; a reader of whole runs asks this.
    pub fn completed_epochs(&self) -> Result<usize> {
        let p = self.state_path();
        if !p.is_file() {
            return Ok(0);
        }
        let meta = read_metadata(&p)?;
        meta.get("epoch")
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| CovfError::checkpoint(&p, "no epoch in the metadata"))
    }

    /// Whether the run needs no more training: `epochs` epochs committed, or stopped early
    /// (`--early-stop`, recorded in the resume state).
    pub fn is_finished(&self, epochs: usize) -> Result<bool> {
        let p = self.state_path();
        if !p.is_file() {
            return Ok(false);
        }
        Ok(read_metadata(&p)?.contains_key("stopped") || self.completed_epochs()? >= epochs)
    }

    /// Committed epochs with a checkpoint file, ascending. A checkpoint newer than the resume state (a
    /// run killed between the two writes) is left out: the resumed run rewrites it.
    pub fn epochs(&self) -> Result<Vec<usize>> {
        let mut v = self.epoch_files()?;
        if self.state_path().is_file() {
            let done = self.completed_epochs()?;
            v.retain(|&e| e <= done);
        }
        Ok(v)
    }

    /// Every epoch with a checkpoint file, committed or not, ascending.
    pub fn epoch_files(&self) -> Result<Vec<usize>> {
        let rd = match std::fs::read_dir(&self.path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(CovfError::io(&self.path, e)),
        };
        let mut v: Vec<usize> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("epoch-")?.strip_suffix(".safetensors")?.parse().ok()
            })
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    pub fn write_spec(&self, spec: &TrainSpec) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(|e| CovfError::io(&self.path, e))?;
        let doc = serde_json::json!({
            "covf_version": COVF_VERSION,
            "spec": spec,
        });
        atomic_write(&self.spec_path(), serde_json::to_string_pretty(&doc)?.as_bytes())
    }

    pub fn read_spec(&self) -> Result<TrainSpec> {
        let p = self.spec_path();
        let text = std::fs::read_to_string(&p).map_err(|e| CovfError::io(&p, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CovfError::checkpoint(&p, format!("invalid JSON: {e}")))?;
        let spec = v
            .get("spec")
            .cloned()
            .ok_or_else(|| CovfError::checkpoint(&p, "no \"spec\" field"))?;
        serde_json::from_value(spec).map_err(|e| CovfError::checkpoint(&p, format!("invalid spec: {e}")))
    }
}

/// Metadata written into every epoch checkpoint.
pub fn epoch_metadata(spec: &TrainSpec, epoch: usize, alpha: f32) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), FORMAT.into());
    m.insert("covf_version".into(), COVF_VERSION.into());
    m.insert("run".into(), spec.name.clone());
    m.insert("method".into(), spec.method.label());
    m.insert("epoch".into(), epoch.to_string());
    m.insert("epochs".into(), spec.epochs.to_string());
    m.insert("arch".into(), spec.arch.name().into());
    m.insert("dataset".into(), spec.dataset.name().into());
    m.insert("num_classes".into(), spec.dataset.num_classes().to_string());
    m.insert("eps".into(), spec.eps.value.to_string());
    m.insert("eps_text".into(), spec.eps.text.clone());
    m.insert("alpha".into(), alpha.to_string());
    m.insert("seed".into(), spec.seed.to_string());
    let (mean, std) = spec.dataset.normalization();
    m.insert(
        "normalization".into(),
        serde_json::json!({"mean": mean, "std": std}).to_string(),
    );
    // The whole spec, so that a checkpoint copied out of its run directory still describes itself.
    if let Ok(j) = serde_json::to_string(spec) {
        m.insert(crate::run::model_file::SPEC_KEY.into(), j);
    }
    m
}

/// A loaded epoch checkpoint.
pub struct Checkpoint {
    pub tensors: HashMap<String, Tensor>,
    pub meta: BTreeMap<String, String>,
}

impl Checkpoint {
    pub fn load(path: &Path, dev: &Device) -> Result<Checkpoint> {
        let (tensors, meta) = load_tensors(path, dev)?;
        Checkpoint::from_parts(tensors, meta, path)
    }

    /// A decoded file is a covf checkpoint only with covf's format tag.
    pub fn from_parts(
        tensors: HashMap<String, Tensor>,
        meta: BTreeMap<String, String>,
        path: &Path,
    ) -> Result<Checkpoint> {
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(CovfError::checkpoint(
                path,
                format!("no '{FORMAT}' format tag in the metadata: not a covf checkpoint"),
            ));
        }
        Ok(Checkpoint { tensors, meta })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        // Each HashMap gets its own hash keys, so before the metadata was sorted, encoding twice in one
        // process gave other key orders.
        let dev = Device::Cpu;
        let mut tensors = BTreeMap::new();
        tensors.insert("w".to_string(), Tensor::new(&[1f32, 2.0], &dev).unwrap());
        let meta: BTreeMap<String, String> = (0..12).map(|i| (format!("key{i:02}"), format!("v{i}"))).collect();
        let first = encode(&tensors, &meta).unwrap();
        for _ in 0..4 {
            assert_eq!(encode(&tensors, &meta).unwrap(), first);
        }
        let text = String::from_utf8_lossy(&first);
        let at: Vec<usize> = meta.keys().map(|k| text.find(&format!("\"{k}\"")).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        let (back, read) = decode(&first, Path::new("t.safetensors"), &dev).unwrap();
        assert_eq!(read, meta);
        assert_eq!(back["w"].to_vec1::<f32>().unwrap(), [1.0, 2.0]);
    }
    use crate::data::DatasetKind;
    use crate::models::{build, Arch, ArchSpec, Classifier, Mode};
    use crate::rng::Rng;

    #[test]
    fn save_load_gives_identical_logits_and_buffers() {
        let dev = Device::Cpu;
        let spec = ArchSpec::new(Arch::PreActTiny, DatasetKind::FashionMnist);
        let (m, store) = build(&spec, &dev, 11).unwrap();
        let x = Rng::new(1).uniform_tensor(&[3, 1, 28, 28], 0.0, 1.0, &dev).unwrap();
        // Move the BN statistics away from their init so that the buffers matter.
        m.logits(&x, Mode::TRAIN).unwrap();
        let before: Vec<f32> = m
            .logits(&x, Mode::EVAL)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("epoch-001.safetensors");
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("epoch".to_string(), "1".to_string());
        save_tensors(&p, &store.snapshot(), &meta).unwrap();
        let (m2, store2) = build(&spec, &dev, 99).unwrap();
        let ck = Checkpoint::load(&p, &dev).unwrap();
        assert_eq!(ck.get("epoch"), Some("1"));
        store2.load(&ck.tensors, &p).unwrap();
        let after: Vec<f32> = m2
            .logits(&x, Mode::EVAL)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(before, after);
        assert_eq!(ck.tensors["bn.num_batches_tracked"].to_scalar::<i64>().unwrap(), 1);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn the_train_images_file_sits_beside_its_checkpoint_under_any_name() {
        assert_eq!(
            train_images_path(Path::new("runs/r/epoch-003.safetensors")),
            Path::new("runs/r/epoch-003.train-images.safetensors")
        );
        assert_eq!(
            train_images_path(Path::new("shared/my.model")),
            Path::new("shared/my.model.train-images.safetensors")
        );
    }

    #[test]
    fn corrupt_and_foreign_files_are_rejected_with_the_path() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, b"not a checkpoint").unwrap();
        let e = Checkpoint::load(&p, &dev).err().unwrap().to_string();
        assert!(e.contains("bad.safetensors"), "{e}");
        // A valid safetensors file without covf's format tag.
        let mut t = BTreeMap::new();
        t.insert("w".to_string(), Tensor::new(&[1f32], &dev).unwrap());
        save_tensors(&p, &t, &BTreeMap::new()).unwrap();
        assert!(Checkpoint::load(&p, &dev)
            .err()
            .unwrap()
            .to_string()
            .contains("not a covf checkpoint"));
        // Another architecture's weights do not load.
        let (_, tiny) = build(&ArchSpec::new(Arch::PreActTiny, DatasetKind::FashionMnist), &dev, 0).unwrap();
        let (_, r18) = build(&ArchSpec::new(Arch::PreAct18, DatasetKind::FashionMnist), &dev, 0).unwrap();
        let snap: HashMap<String, Tensor> = r18.snapshot().into_iter().collect();
        assert!(tiny
            .load(&snap, &p)
            .unwrap_err()
            .to_string()
            .contains("another architecture"));
    }
}
