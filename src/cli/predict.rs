//! `covf predict`: the logits of one checkpoint on the seeded N-image test subset `covf eval --n N` uses, written
//! with the inputs as safetensors, so that another framework can check it computes the same function.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::DType;
use clap::Args;

use covf::device::parse_device;
use covf::models::{ArchSpec, Classifier, Mode};
use covf::run::checkpoint::{save_tensors, COVF_VERSION};
use covf::CovfError;

use super::eval::{resolve_target, ForeignArgs, Target};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  covf predict checkpoints/RUN/epoch-004.safetensors --n 64 --out logits.safetensors
  covf predict model.safetensors --arch preact18 --dataset cifar10 --normalize none --out logits.safetensors
Output tensors: x (f32, N×C×H×W pixels in [0, 1]), y (i64, N), logits (f32, N×K, batch norm in eval mode).
tools/pytorch_interop.py compares them with PyTorch's.")]
pub struct PredictArgs {
    /// A run (its last epoch), an epoch checkpoint, or any checkpoint file.
    #[arg(value_name = "RUN_OR_CHECKPOINT")]
    pub target: String,
    /// Test images: the fixed, seeded N-image subset `covf eval --n N` uses.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Output file (safetensors).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Dataset directory [default: the run's].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub foreign: ForeignArgs,
}

pub fn run(a: PredictArgs, root: &Path) -> anyhow::Result<()> {
    if a.n == 0 {
        return Err(CovfError::spec("--n", "must be at least 1").into());
    }
    let dev = parse_device(&a.device)?;
    let foreign = a.foreign.to_foreign(None)?;
    let (spec, arch, model, source) = match resolve_target(&a.target, root, &foreign)? {
        Target::File(f) => {
            let (m, _) = f.load(&dev)?;
            (f.spec.clone(), f.arch.clone(), m, f.path.clone())
        }
        Target::Run(run, epoch) => {
            let spec = run.read_spec()?;
            let epoch = match epoch {
                Some(e) => e,
                None => *run
                    .epochs()?
                    .last()
                    .ok_or_else(|| CovfError::run(&run.name, "has no epoch checkpoint yet"))?,
            };
            let path = run.epoch_path(epoch);
            let (m, _) = covf::run::load_model(&spec, &path, &dev)?;
            (spec.clone(), ArchSpec::new(spec.arch, spec.dataset), m, path)
        }
    };
    let ds = covf::run::sets::test_set(&spec, a.data_dir.as_deref(), a.n)?;
    let positions: Vec<usize> = (0..ds.len()).collect();
    let b = ds.batch(&positions, None, &dev)?;
    let logits = model.logits(&b.x, Mode::EVAL)?.detach();
    let mut tensors = BTreeMap::new();
    tensors.insert("x".to_string(), b.x.clone());
    tensors.insert("y".to_string(), b.y.to_dtype(DType::I64)?);
    tensors.insert("logits".to_string(), logits.clone());
    let mut meta = BTreeMap::new();
    meta.insert("covf_version".to_string(), COVF_VERSION.to_string());
    meta.insert("source".to_string(), source.display().to_string());
    meta.insert("arch".to_string(), spec.arch.name().to_string());
    meta.insert("dataset".to_string(), spec.dataset.name().to_string());
    meta.insert(
        "normalization".to_string(),
        serde_json::json!({"mean": arch.mean, "std": arch.std}).to_string(),
    );
    save_tensors(&a.out, &tensors, &meta)?;
    let acc = covf::attacks::correct(&logits, &b.y)? as f64 / ds.len() as f64;
    eprintln!(
        "wrote {}: logits of {} on {} test images (clean accuracy {:.1}%)",
        a.out.display(),
        source.display(),
        ds.len(),
        100.0 * acc
    );
    Ok(())
}
