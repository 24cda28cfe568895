//! `covf eval` and `covf table`: flags -> a validated `EvalSpec` (targets resolved to runs and epochs),
//! then the evaluation, printed as the paper's Table 3; `table` renders stored results only.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use covf::data::DatasetKind;
use covf::device::parse_device;
use covf::eval::table::{self, Format, TableRow};
use covf::eval::{self, AttackSpec, EvalSpec, EvalTarget};
use covf::models::Arch;
use covf::run::checkpoint::RunDir;
use covf::run::model_file::{epoch_of_name, identity_normalization, parse_normalize, Foreign, ModelFile};
use covf::run::Eps;
use covf::CovfError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Text,
    Md,
    Csv,
    Latex,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Text => Format::Text,
            FormatArg::Md => Format::Markdown,
            FormatArg::Csv => Format::Csv,
            FormatArg::Latex => Format::Latex,
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  covf eval fgsm-fmnist-preact-tiny-eps0.15-s0                      # last epoch: clean, PGD-20, C&W, Gaussian, AutoAttack
  covf eval RUN --epochs all --attacks clean,pgd20                  # every epoch
  covf eval RUN_A RUN_B --attacks aa --n 1000                       # AutoAttack (resumes if interrupted)
  covf eval checkpoints/RUN/epoch-002.safetensors --attacks pgd50x5,aa-custom:apgd-ce+square
  covf eval shared/model.safetensors                                # a covf checkpoint copied anywhere
  covf eval resnet.safetensors --arch preact18 --dataset cifar10 --data-dir ~/data/cifar-10-batches-bin \
            --normalize 0.4914,0.4822,0.4465/0.2471,0.2435,0.2616    # a plain PyTorch state dict
Attacks: clean, fgsm, pgdN or pgdNxR, cw, gaussian, random-sign, random-uniform, aa (standard AutoAttack),
aa-rand, aa-custom:STAGE+... (apgd-ce, apgd-dlr, apgd-t, fab-t, square).
Results go to <run>/eval/results.parquet and results.csv (gradient-masking flags to checks.*); for a checkpoint
file outside a run directory, to <its directory>/<its name>.eval/.")]
pub struct EvalArgs {
    /// Runs (names under --checkpoints, or run directories) or checkpoint files (any name; a file outside a run
    /// directory is read from its own metadata, or from --arch/--dataset/--normalize for a plain state dict).
    #[arg(required = true, value_name = "RUN_OR_CHECKPOINT")]
    pub targets: Vec<String>,
    /// Comma-separated attacks, in column order.
    #[arg(long, default_value = "clean,pgd20,cw,gaussian,aa")]
    pub attacks: String,
    /// Test images (a fixed seeded subset; the training-time evaluation uses the same subset at the same size).
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// Epochs of each run: last, all, or a list such as 1,5,10 (ignored for checkpoint files).
    #[arg(long, default_value = "last")]
    pub epochs: String,
    /// Perturbation budget [default: each run's training ε].
    #[arg(long)]
    pub eps: Option<String>,
    /// Standard deviation of the Gaussian noise.
    #[arg(long, default_value_t = 0.1)]
    pub sigma: f32,
    #[arg(long, default_value_t = 250)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dataset directory [default: the run's].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Table format printed at the end.
    #[arg(long, value_enum, default_value = "text")]
    pub format: FormatArg,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub foreign: ForeignArgs,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  covf table RUN_A RUN_B                       # Table 3's columns from stored results, as text
  covf table RUN --format latex --attacks pgd20,aa,cw,gaussian,clean")]
pub struct TableArgs {
    /// Runs (names under --checkpoints, or run directories).
    #[arg(required = true, value_name = "RUN")]
    pub targets: Vec<String>,
    /// Columns (attack names as stored by `covf eval`).
    #[arg(long, default_value = "pgd20,aa,cw,gaussian,clean")]
    pub attacks: String,
    #[arg(long, value_enum, default_value = "md")]
    pub format: FormatArg,
}

/// How to read a checkpoint file that has no covf metadata (a plain PyTorch state dict).
#[derive(Debug, Clone, Args, Default)]
pub struct ForeignArgs {
    /// Architecture of a plain state dict: preact-tiny, preact18, wrn34-10.
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Dataset of a plain state dict (its test images, shape and classes): fmnist, mnist, cifar10, cifar100.
    #[arg(long, value_name = "DATASET")]
    pub dataset: Option<String>,
    /// Input normalisation a plain state dict expects, MEAN/STD per channel
    /// (0.4914,0.4822,0.4465/0.2471,0.2435,0.2616), or none.
    #[arg(long, value_name = "MEAN/STD")]
    pub normalize: Option<String>,
}

impl ForeignArgs {
    pub fn to_foreign(&self, eps: Option<&str>) -> Result<Foreign, CovfError> {
        let dataset = self.dataset.as_deref().map(DatasetKind::parse).transpose()?;
        let normalize = match self.normalize.as_deref() {
            None => None,
            Some(s) => Some(match parse_normalize(s)? {
                Some(n) => n,
                None => identity_normalization(dataset.ok_or_else(|| {
                    CovfError::spec("--normalize", "none needs --dataset (to know the channel count)")
                })?),
            }),
        };
        Ok(Foreign {
            arch: self.arch.as_deref().map(Arch::parse).transpose()?,
            dataset,
            normalize,
            eps: eps.map(Eps::parse).transpose()?,
        })
    }
}

/// What a command-line target names.
pub(crate) enum Target {
    /// A run, and the epoch when an `epoch-NNN` file inside its directory was named.
    Run(RunDir, Option<usize>),
    /// A checkpoint file on its own.
    File(Box<ModelFile>),
}

/// A run named under `root`, a run directory, an epoch checkpoint in a run directory, or any checkpoint
/// file (a covf checkpoint describes itself; a plain state dict needs `foreign`).
pub(crate) fn resolve_target(target: &str, root: &Path, foreign: &Foreign) -> Result<Target, CovfError> {
    let p = Path::new(target);
    if p.is_file() {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let (Some(epoch), true) = (epoch_of_name(p), dir.join("run.json").is_file()) {
            return Ok(Target::Run(run_at(dir)?, Some(epoch)));
        }
        return Ok(Target::File(Box::new(ModelFile::open(p, foreign)?)));
    }
    let (run, epoch) = resolve(target, root)?;
    Ok(Target::Run(run, epoch))
}

/// A run named under `root`, a run directory, or (with its epoch) an epoch checkpoint file in a run directory.
pub(crate) fn resolve(target: &str, root: &Path) -> Result<(RunDir, Option<usize>), CovfError> {
    let p = Path::new(target);
    if p.is_file() {
        let epoch = epoch_of_name(p)
            .ok_or_else(|| CovfError::data(p, "not an epoch checkpoint of a run (expected epoch-NNN.safetensors)"))?;
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return Ok((run_at(dir)?, Some(epoch)));
    }
    if p.join("run.json").is_file() {
        return Ok((run_at(p)?, None));
    }
    let run = RunDir::new(root, target)?;
    if !run.exists() {
        return Err(CovfError::run(
            target,
            format!(
                "no such run (looked for {}); `covf runs` lists them",
                run.spec_path().display()
            ),
        ));
    }
    Ok((run, None))
}

fn run_at(dir: &Path) -> Result<RunDir, CovfError> {
    let name = dir
        .canonicalize()
        .map_err(|e| CovfError::io(dir, e))?
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(RunDir {
        name,
        path: dir.to_path_buf(),
    })
}

/// The epochs `sel` names among those with a checkpoint.
pub(crate) fn select_epochs(run: &RunDir, sel: &str) -> Result<Vec<usize>, CovfError> {
    let have = run.epochs()?;
    if have.is_empty() {
        return Err(CovfError::run(&run.name, "has no epoch checkpoint yet"));
    }
    match sel {
        "last" => Ok(have.last().copied().into_iter().collect()),
        "all" => Ok(have),
        list => {
            let mut out = Vec::new();
            for part in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let e: usize = part.parse().map_err(|_| {
                    CovfError::spec(
                        "--epochs",
                        format!("{part:?} is not an epoch number; use last, all or e.g. 1,5,10"),
                    )
                })?;
                if !have.contains(&e) {
                    return Err(CovfError::run(
                        &run.name,
                        format!("has no checkpoint for epoch {e} (it has {have:?})"),
                    ));
                }
                out.push(e);
            }
            if out.is_empty() {
                return Err(CovfError::spec("--epochs", "empty list"));
            }
            Ok(out)
        }
    }
}

pub fn to_spec(a: &EvalArgs, root: &Path) -> Result<EvalSpec, CovfError> {
    if a.n == 0 || a.batch_size == 0 {
        return Err(CovfError::spec("--n / --batch-size", "must be at least 1"));
    }
    if !(a.sigma.is_finite() && a.sigma >= 0.0) {
        return Err(CovfError::spec(
            "--sigma",
            format!("{} is not a non-negative number", a.sigma),
        ));
    }
    let attacks = AttackSpec::parse_list(&a.attacks, a.sigma)?;
    let foreign = a.foreign.to_foreign(a.eps.as_deref())?;
    let mut targets: Vec<EvalTarget> = Vec::new();
    for t in &a.targets {
        let (run, epoch) = match resolve_target(t, root, &foreign)? {
            Target::File(f) => {
                targets.push(EvalTarget::file(*f));
                continue;
            }
            Target::Run(run, epoch) => (run, epoch),
        };
        let epochs = match epoch {
            Some(e) => vec![e],
            None => select_epochs(&run, &a.epochs)?,
        };
        match targets.iter_mut().find(|x| x.file.is_none() && x.run.path == run.path) {
            Some(x) => x
                .epochs
                .extend(epochs.into_iter().filter(|e| !x.epochs.contains(e)).collect::<Vec<_>>()),
            None => targets.push(EvalTarget::run(run, epochs)),
        }
    }
    Ok(EvalSpec {
        targets,
        attacks,
        n: a.n,
        batch_size: a.batch_size,
        seed: a.seed,
        eps: a.eps.as_deref().map(Eps::parse).transpose()?,
        data_dir: a.data_dir.clone(),
        quiet: a.quiet,
    })
}

pub fn run(a: EvalArgs, root: &Path) -> anyhow::Result<()> {
    let spec = to_spec(&a, root)?;
    let dev = parse_device(&a.device)?;
    let reports = eval::run(&spec, &dev)?;
    let columns: Vec<String> = spec.attacks.iter().map(|x| x.to_string()).collect();
    let rows: Vec<TableRow> = reports
        .iter()
        .map(|r| TableRow {
            run: r.run.clone(),
            epoch: r.epoch,
            cells: columns
                .iter()
                .map(|c| r.rows.iter().find(|x| &x.attack == c).map(|x| x.accuracy))
                .collect(),
            epoch_seconds: r.epoch_seconds,
        })
        .collect();
    print!("{}", table::render(&columns, &rows, a.format.into()));
    Ok(())
}

pub fn run_table(a: TableArgs, root: &Path) -> anyhow::Result<()> {
    let columns: Vec<String> = a
        .attacks
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let mut rows = Vec::new();
    for t in &a.targets {
        let (run, _) = resolve(t, root)?;
        let stored = eval::results::read_rows(&run.path.join("eval"))?;
        if stored.is_empty() {
            return Err(CovfError::run(&run.name, "has no stored evaluation; run `covf eval` first").into());
        }
        let secs = eval::mean_epoch_seconds(&run);
        rows.extend(table::rows_from_results(&stored, &columns, &|_| secs));
    }
    print!("{}", table::render(&columns, &rows, a.format.into()));
    Ok(())
}
