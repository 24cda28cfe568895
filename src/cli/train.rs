//! `covf train`: flags → `TrainSettings` (the library fills in every default and validates), then fit.
//! A method's own flags (`--steps`, `--alpha`, …) come from the method registry: each method declares
//! them in its file (`covf::train::Method::FLAGS`).

use std::path::{Path, PathBuf};

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Parser};

use covf::device::parse_device;
use covf::fit::{fit, FitOptions};
use covf::run::checkpoint::RunDir;
use covf::run::{TrainSettings, TrainSpec};
use covf::train::method::all_flags;
use covf::train::{Flags, METHODS};
use covf::CovfError;

/// `--method`'s choices, with each method's one line of help.
fn method_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        METHODS
            .iter()
            .filter(|m| m.trainable())
            .map(|m| PossibleValue::new(m.name()).help(m.help())),
    )
}

/// The flags every method declares for itself, added to `covf train` as declared.
#[derive(Debug, Clone, Default)]
pub struct MethodFlagArgs(pub Flags);

impl FromArgMatches for MethodFlagArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut f = Flags::default();
        for (flag, _) in all_flags() {
            if flag.value.is_some() {
                if let Some(v) = m.get_one::<String>(flag.name) {
                    f.set(flag.name, v.clone());
                }
            } else if m.get_flag(flag.name) {
                f.set(flag.name, "true");
            }
        }
        Ok(MethodFlagArgs(f))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for MethodFlagArgs {
    fn augment_args(mut cmd: Command) -> Command {
        for (flag, users) in all_flags() {
            let who: Vec<String> = users
                .iter()
                .map(|(m, d)| {
                    if d.is_empty() {
                        m.to_string()
                    } else {
                        format!("{m}: {d}")
                    }
                })
                .collect();
            let arg = Arg::new(flag.name)
                .long(flag.name)
                .help(format!("{} [{}]", flag.help, who.join(", ")));
            cmd = cmd.arg(match flag.value {
                Some(v) => arg.value_name(v).action(ArgAction::Set),
                None => arg.action(ArgAction::SetTrue),
            });
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  covf train --method fgsm --save-every-epoch                 # the CPU default: Fashion-MNIST, shows CO
  covf train --method pgd --steps 10 --save-every-epoch       # the PGD-10 reference model
  covf train --method fgsm-rs --eps 8/255 --dataset cifar10 --data-dir ~/data/cifar-10-batches-bin --arch preact18
  covf train --method fgsm --name my-run --resume             # continue an interrupted run")]
pub struct TrainArgs {
    /// Training method [default: fgsm].
    #[arg(long, value_parser = method_names())]
    pub method: Option<String>,
    #[command(flatten)]
    pub method_flags: MethodFlagArgs,
    /// Perturbation budget ε (L∞, pixel units), e.g. 8/255 or 0.3 [default: 0.15 on fmnist, 0.3 on mnist, 8/255 on CIFAR].
    #[arg(long, value_name = "EPS")]
    pub eps: Option<String>,
    /// Dataset: fmnist, mnist, cifar10, cifar100 [default: fmnist].
    #[arg(long)]
    pub dataset: Option<String>,
    /// Directory with the dataset files [default for fmnist: /usr/share/datasets/fashion-mnist].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Architecture: preact-tiny (CPU default), preact18, wrn34-10 [default: preact-tiny on 28x28 sets, preact18 on CIFAR].
    #[arg(long)]
    pub arch: Option<String>,
    /// Epochs [default: 4 on fmnist, 10 on mnist, 30 on CIFAR].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// [default: 128]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning-rate schedule [default: cyclic].
    #[arg(long, value_parser = ["cyclic", "constant", "piecewise"])]
    pub lr_schedule: Option<String>,
    /// Peak (cyclic) or initial (constant, piecewise) learning rate [default: 0.3 on fmnist, 0.2 otherwise].
    #[arg(long)]
    pub lr_max: Option<f64>,
    /// Cyclic: where the peak sits, as a fraction of the run [default: 0.5].
    #[arg(long)]
    pub lr_peak: Option<f64>,
    /// Piecewise: fractions of the run at which the rate is multiplied by --lr-gamma [default: 0.5,0.75].
    #[arg(long, value_delimiter = ',')]
    pub lr_milestones: Option<Vec<f64>>,
    /// [default: 0.1]
    #[arg(long)]
    pub lr_gamma: Option<f64>,
    /// SGD momentum (with the cyclic schedule: at the ends of the cycle, see --cycle-momentum) [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Cycle the momentum inversely to the cyclic rate, --momentum → --base-momentum at the peak → back, as
    /// PyTorch's CyclicLR in fast_adversarial and the APART code [default: on with the cyclic schedule].
    #[arg(long, overrides_with = "no_cycle_momentum")]
    pub cycle_momentum: bool,
    /// Keep the momentum fixed at --momentum.
    #[arg(long, overrides_with = "cycle_momentum")]
    pub no_cycle_momentum: bool,
    /// The momentum at the learning-rate peak when it cycles (PyTorch CyclicLR's base_momentum) [default: 0.8].
    #[arg(long, value_name = "M")]
    pub base_momentum: Option<f64>,
    /// Batch norm while the method generates its training perturbation: train (batch statistics, and the
    /// attack's forwards update the running statistics, as PyTorch's train mode), batch (batch statistics,
    /// running statistics untouched) or eval (running statistics) [default: each method's reference code:
    /// eval for atta, train otherwise].
    #[arg(long, value_name = "MODE")]
    pub attack_bn: Option<String>,
    /// [default: 5e-4]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Train on a fixed, seeded subset of N images [default: all]; 0 = all.
    #[arg(long, value_name = "N")]
    pub train_subset: Option<usize>,
    /// Per-epoch test metrics on a fixed, seeded subset of N test images [default: 1000].
    #[arg(long, value_name = "N")]
    pub test_subset: Option<usize>,
    /// Augmentation on (the dataset's usual one: CIFAR crop+flip) or off [default: on for CIFAR, off otherwise].
    #[arg(long, overrides_with = "no_augment")]
    pub augment: bool,
    #[arg(long, overrides_with = "augment")]
    pub no_augment: bool,
    /// PGD steps of the per-epoch test evaluation [default: 10].
    #[arg(long)]
    pub eval_pgd_steps: Option<usize>,
    /// Keep a checkpoint of every epoch (otherwise only the last).
    #[arg(long)]
    pub save_every_epoch: bool,
    /// Run name [default: <method>-<dataset>-<arch>-eps<ε>-s<seed>].
    #[arg(long)]
    pub name: Option<String>,
    /// Overwrite an existing run of the same name.
    #[arg(long)]
    pub force: bool,
    /// Continue an interrupted run from its last complete epoch (its saved settings are used).
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    #[arg(long, short)]
    pub quiet: bool,
    /// cpu, cuda or cuda:N [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Compute dtype of the training passes: f32, or bf16/f16 mixed precision (f32 master weights, batch
    /// norm and loss; f16 with dynamic loss scaling). For GPUs: on the CPU half precision is slower than f32
    /// [default: f32].
    #[arg(long)]
    pub dtype: Option<String>,
    /// Steps between points of the in-training monitor (monitor.parquet/.csv in the run): a number, auto
    /// (steps per epoch / 8: at least 8 points an epoch) or 0 to turn it off [default: auto].
    #[arg(long, value_name = "K")]
    pub monitor_every: Option<String>,
    /// The monitor's signals, comma-separated: pgd, fgsm, gap, cos, grad-align, aaer, lle, transfer (needs
    /// --monitor-ref), wong; docs/monitor.md [default: all that apply].
    #[arg(long, value_name = "LIST")]
    pub monitor_signals: Option<String>,
    /// Test images the monitor probes (the first of the evaluation images), and training images of Wong's
    /// probe [default: 64].
    #[arg(long, value_name = "N")]
    pub monitor_probe: Option<usize>,
    /// Reference model of the monitor's transfer signal: a run under checkpoints/, its last epoch or RUN@EPOCH.
    #[arg(long, value_name = "RUN[@EPOCH]")]
    pub monitor_ref: Option<String>,
    /// Stop when a monitor signal's detector fires, and keep the monitor point before the alarm as the
    /// run's final checkpoint: pgd (probe PGD accuracy 0.2 below its best), wong, gap, transfer, cos,
    /// grad-align, lle, aaer; a threshold after ':' (pgd:0.3); docs/monitor.md [default: off].
    #[arg(long, value_name = "SIGNAL[:T]")]
    pub early_stop: Option<String>,
}

impl TrainArgs {
    /// The settings these flags give; every default is the library's (`TrainSettings::resolve`).
    pub fn settings(&self) -> TrainSettings {
        let pair = |on: bool, off: bool| {
            if on {
                Some(true)
            } else if off {
                Some(false)
            } else {
                None
            }
        };
        TrainSettings {
            method: self.method.clone(),
            eps: self.eps.clone(),
            dataset: self.dataset.clone(),
            data_dir: self.data_dir.clone(),
            arch: self.arch.clone(),
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr_schedule: self.lr_schedule.clone(),
            lr_max: self.lr_max,
            lr_peak: self.lr_peak,
            lr_milestones: self.lr_milestones.clone(),
            lr_gamma: self.lr_gamma,
            momentum: self.momentum,
            cycle_momentum: pair(self.cycle_momentum, self.no_cycle_momentum),
            no_cycle_momentum: false,
            base_momentum: self.base_momentum,
            attack_bn: self.attack_bn.clone(),
            weight_decay: self.weight_decay,
            seed: self.seed,
            train_subset: self.train_subset,
            test_subset: self.test_subset,
            augment: pair(self.augment, self.no_augment),
            no_augment: false,
            eval_pgd_steps: self.eval_pgd_steps,
            save_every_epoch: self.save_every_epoch,
            name: self.name.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            monitor_every: self.monitor_every.clone(),
            monitor_signals: self.monitor_signals.as_deref().map(covf::run::settings::split_names),
            monitor_probe: self.monitor_probe,
            monitor_ref: self.monitor_ref.clone(),
            early_stop: self.early_stop.clone(),
            method_flags: self.method_flags.0.clone(),
        }
    }
}

/// The validated spec these flags describe.
pub fn to_spec(a: &TrainArgs) -> covf::Result<TrainSpec> {
    a.settings().resolve()
}

/// `covf train`'s flags on their own, to read train settings given as words (`analyze tradeoff --train-args`)
/// exactly as the command line would.
#[derive(Debug, Parser)]
#[command(name = "train settings", no_binary_name = true)]
struct TrainOnly {
    #[command(flatten)]
    args: TrainArgs,
}

/// Train flags given as words (`["--method", "fgsm", "--eps", "0.1"]`) → the flags `covf train` would read.
pub fn args_from_words(words: &[String], what: &str) -> covf::Result<TrainArgs> {
    TrainOnly::try_parse_from(words).map(|t| t.args).map_err(|e| {
        let msg = e.to_string();
        let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        CovfError::spec(what, format!("{first} (in: {})", words.join(" ")))
    })
}

pub fn run(a: TrainArgs, root: &Path) -> anyhow::Result<()> {
    let mut spec = to_spec(&a)?;
    let dev = parse_device(&spec.device)?;
    if a.resume {
        let run = RunDir::new(root, &spec.name)?;
        if run.exists() {
            let stored = run.read_spec()?;
            if stored.method != spec.method
                || stored.eps != spec.eps
                || stored.epochs != spec.epochs
                || stored.seed != spec.seed
            {
                eprintln!(
                    "note: --resume continues {} with its saved settings (run.json); other flags are ignored",
                    spec.name
                );
            }
            // The directory names the run: a renamed or copied run directory resumes where it is.
            spec = TrainSpec {
                device: spec.device.clone(),
                name: spec.name.clone(),
                ..stored
            };
        }
    }
    let summary = fit(
        &spec,
        root,
        &dev,
        &FitOptions {
            quiet: a.quiet,
            resume: a.resume,
            force: a.force,
        },
    )?;
    if !a.quiet {
        if let Some(last) = summary.records.last() {
            eprintln!(
                "done: {} epochs in {}; final test clean {:.1}%, PGD-{} {:.1}%",
                last.epoch,
                summary.run.path.display(),
                100.0 * last.test_acc_clean,
                last.pgd_steps,
                100.0 * last.test_acc_pgd
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use covf::run::AttackBn;
    use covf::train::{apart, pgd};

    fn spec_of(args: &[&str]) -> TrainSpec {
        let cli = Cli::try_parse_from(std::iter::once("covf").chain(args.iter().copied())).unwrap();
        match cli.command {
            Command::Train(a) => to_spec(&a).unwrap(),
            _ => unreachable!("not a train command"),
        }
    }

    #[test]
    fn flags_become_the_settings_a_study_file_would_give() {
        assert_eq!(spec_of(&["train"]), TrainSettings::default().resolve().unwrap());
        let b = spec_of(&["train", "--attack-bn", "batch", "--no-cycle-momentum", "--no-augment"]);
        assert_eq!((b.attack_bn, b.cycle_momentum), (AttackBn::Batch, None));
        let p = spec_of(&[
            "train",
            "--method",
            "pgd",
            "--steps",
            "7",
            "--alpha",
            "1/255",
            "--restarts",
            "2",
        ]);
        let c = p.method.config::<pgd::Pgd>().unwrap();
        assert_eq!((c.steps, c.alpha, c.restarts), (7, 1.0 / 255.0, 2));
        let a = spec_of(&["train", "--method", "apart", "--no-init", "--apart-l2", "3"]);
        assert_eq!(a.method.label(), "apart-no-init");
        assert_eq!(a.method.config::<apart::Apart>().unwrap().alpha_l2, 3.0);
        assert!(Cli::try_parse_from(["covf", "train", "--method", "external"]).is_err());
    }
}
