//! `covf train`: flags -> a validated `TrainSpec` (dataset-dependent defaults resolved here), then fit.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, ValueEnum};

use covf::data::{Augment, DatasetKind};
use covf::device::parse_device;
use covf::models::Arch;
use covf::optim::{LrSchedule, Precision};
use covf::run::checkpoint::RunDir;
use covf::run::{ApartConfig, AttackBn, EpochEvalSpec, Eps, MethodSpec, TrainSpec};
use covf::train::{fit, FitOptions};
use covf::CovfError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Standard training, no perturbation (the non-robust baseline).
    Clean,
    Fgsm,
    FgsmRs,
    Pgd,
    /// Free-m (Shafahi et al. 2019): minibatch replays; epochs divided by m.
    Free,
    /// ATTA-K (Zheng et al. 2020): per-example perturbations accumulated across epochs.
    Atta,
    /// S+FGSM (Kim et al. 2021): FGSM-RS stopped at the first misclassified checkpoint.
    Sfgsm,
    /// APART-Simple (Eq. 3): FGSM with learned initialisation and step size.
    ApartSimple,
    /// APART (Algorithm 1): learned init, layer-wise perturbations, learned step sizes.
    Apart,
    /// FGSM + GradAlign (Andriushchenko & Flammarion 2020), finite-difference alignment gradient.
    #[value(name = "gradalign")]
    GradAlign,
    /// N-FGSM (de Jorge et al. 2022): noise 2ε, step ε, no projection.
    Nfgsm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    Cyclic,
    Constant,
    Piecewise,
}

/// Defaults of the CPU setting (Fashion-MNIST) chosen so that FGSM overfits catastrophically
/// within the run and PGD-10 does not; how they were found: docs/default-setting.md.
pub mod fmnist_defaults {
    pub const EPOCHS: usize = 4;
    pub const LR_MAX: f64 = 0.3;
    /// APART's step-size rate and L2 penalty at this scale (docs/methods.md).
    pub const APART_ALPHA_LR: f64 = 1e-6;
    pub const APART_L2: f64 = 10.0;
}

/// APART's generator settings: the paper's and its code's on CIFAR; on the small grey-scale sets the
/// step sizes start at ε/2 and learn faster, because the default runs are a few epochs long (the
/// tuning is in docs/methods.md).
fn apart_config(a: &TrainArgs, dataset: DatasetKind, eps: &Eps) -> ApartConfig {
    let small = small_images(dataset);
    let alpha_init = a.apart_alpha_init.unwrap_or(if small { eps.value / 2.0 } else { 1e-4 });
    ApartConfig {
        layerwise: !a.no_layerwise,
        learned_init: !a.no_init,
        alpha_init,
        init_scale: a.apart_init_scale.unwrap_or(alpha_init),
        block_alpha_init: 0.0,
        alpha_lr: a
            .apart_alpha_lr
            .unwrap_or(if small { fmnist_defaults::APART_ALPHA_LR } else { 5e-8 }),
        alpha_l2: a
            .apart_l2
            .unwrap_or(if small { fmnist_defaults::APART_L2 } else { 200.0 }),
        alpha_momentum: 0.9,
        omega_std: 0.001,
    }
}

/// Defaults elsewhere: MNIST 10 epochs; CIFAR as fast_adversarial (cyclic 0.2); ε per dataset: DatasetKind::default_eps.
const MNIST_EPOCHS: usize = 10;
const CIFAR_EPOCHS: usize = 30;
const LR_MAX: f64 = 0.2;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  covf train --method fgsm --save-every-epoch                 # the CPU default: Fashion-MNIST, shows CO
  covf train --method pgd --steps 10 --save-every-epoch       # the PGD-10 reference model
  covf train --method fgsm-rs --eps 8/255 --dataset cifar10 --data-dir ~/data/cifar-10-batches-bin --arch preact18
  covf train --method fgsm --name my-run --resume             # continue an interrupted run")]
pub struct TrainArgs {
    /// Training method.
    #[arg(long, value_enum, default_value = "fgsm")]
    pub method: MethodArg,
    /// Attack steps (methods pgd and atta).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Free: replays m of each minibatch; the epoch budget is divided by m (rounded up) for equal cost.
    #[arg(long, default_value_t = 8)]
    pub replays: usize,
    /// ATTA: reset the stored perturbations every N epochs (0 = never).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub atta_reset: usize,
    /// S+FGSM: checkpoints c along the FGSM-RS step (c − 1 are checked).
    #[arg(long, default_value_t = 3, value_name = "C")]
    pub sfgsm_checkpoints: usize,
    /// APART ablation: no layer-wise perturbations at the residual blocks.
    #[arg(long)]
    pub no_layerwise: bool,
    /// APART ablation: no learned per-example initialisation (δ starts at 0).
    #[arg(long)]
    pub no_init: bool,
    /// APART: initial input step α1 [default: 1e-4 as the APART code on CIFAR, ε/2 on fmnist/mnist].
    #[arg(long, value_name = "A")]
    pub apart_alpha_init: Option<f32>,
    /// APART: initial scale α_ω of the learned initialisation [default: as --apart-alpha-init].
    #[arg(long, value_name = "A")]
    pub apart_init_scale: Option<f32>,
    /// APART: peak of the cyclic step-size rate μα [default: 5e-8 on CIFAR (paper), see docs/methods.md for fmnist].
    #[arg(long, value_name = "MU")]
    pub apart_alpha_lr: Option<f64>,
    /// APART: L2 penalty λ on the step sizes [default: 200 on CIFAR (paper), see docs/methods.md for fmnist].
    #[arg(long, value_name = "LAMBDA")]
    pub apart_l2: Option<f64>,
    /// GradAlign: weight λ of the gradient-alignment term.
    #[arg(long, default_value_t = 0.2, value_name = "LAMBDA")]
    pub gradalign_lambda: f32,
    /// GradAlign: radius of the finite-difference approximation of the alignment gradient.
    #[arg(long, default_value_t = 0.01, value_name = "R")]
    pub fd_radius: f32,
    /// GradAlign: also differentiate through ∇x L(x), as the paper's formula reads (the reference code
    /// detaches it, which is the default).
    #[arg(long)]
    pub gradalign_through_clean: bool,
    /// N-FGSM: noise magnitude k (δ0 ~ U(−kε, kε)).
    #[arg(long, default_value_t = 2.0, value_name = "K")]
    pub nfgsm_noise: f32,
    /// PGD restarts per batch (method pgd).
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Input step size α in pixel units [default: fgsm ε, fgsm-rs and sfgsm 1.25ε, pgd and atta ε/4 (2/255 at 8/255), nfgsm ε].
    #[arg(long, value_name = "A")]
    pub alpha: Option<String>,
    /// Perturbation budget ε (L∞, pixel units), e.g. 8/255 or 0.3 [default: 0.15 on fmnist, 0.3 on mnist, 8/255 on CIFAR].
    #[arg(long, value_name = "EPS")]
    pub eps: Option<String>,
    /// Dataset: fmnist, mnist, cifar10, cifar100.
    #[arg(long, default_value = "fmnist")]
    pub dataset: String,
    /// Directory with the dataset files [default for fmnist: /usr/share/datasets/fashion-mnist].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Architecture: preact-tiny (CPU default), preact18, wrn34-10 [default: preact-tiny on 28x28 sets, preact18 on CIFAR].
    #[arg(long)]
    pub arch: Option<String>,
    /// Epochs [default: 4 on fmnist, 10 on mnist, 30 on CIFAR].
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "cyclic")]
    pub lr_schedule: ScheduleArg,
    /// Peak (cyclic) or initial (constant, piecewise) learning rate [default: 0.3 on fmnist, 0.2 otherwise].
    #[arg(long)]
    pub lr_max: Option<f64>,
    /// Cyclic: where the peak sits, as a fraction of the run.
    #[arg(long, default_value_t = 0.5)]
    pub lr_peak: f64,
    /// Piecewise: fractions of the run at which the rate is multiplied by --lr-gamma.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.75")]
    pub lr_milestones: Vec<f64>,
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f64,
    /// SGD momentum (with the cyclic schedule: at the ends of the cycle, see --cycle-momentum).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Cycle the momentum inversely to the cyclic rate, --momentum → --base-momentum at the peak → back, as
    /// PyTorch's CyclicLR in fast_adversarial and the APART code [default: on with the cyclic schedule].
    #[arg(long, overrides_with = "no_cycle_momentum")]
    pub cycle_momentum: bool,
    /// Keep the momentum fixed at --momentum.
    #[arg(long, overrides_with = "cycle_momentum")]
    pub no_cycle_momentum: bool,
    /// The momentum at the learning-rate peak when it cycles (PyTorch CyclicLR's base_momentum).
    #[arg(long, default_value_t = 0.8, value_name = "M")]
    pub base_momentum: f64,
    /// Batch norm while the method generates its training perturbation: train (batch statistics, and the
    /// attack's forwards update the running statistics, as PyTorch's train mode), batch (batch statistics,
    /// running statistics untouched) or eval (running statistics) [default: each method's reference code:
    /// eval for atta, train otherwise].
    #[arg(long, value_name = "MODE")]
    pub attack_bn: Option<String>,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on a fixed, seeded subset of N images [default: all]; 0 = all.
    #[arg(long, value_name = "N")]
    pub train_subset: Option<usize>,
    /// Per-epoch test metrics on a fixed, seeded subset of N test images.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub test_subset: usize,
    /// Augmentation on (the dataset's usual one: CIFAR crop+flip) or off [default: on for CIFAR, off otherwise].
    #[arg(long, overrides_with = "no_augment")]
    pub augment: bool,
    #[arg(long, overrides_with = "augment")]
    pub no_augment: bool,
    /// PGD steps of the per-epoch test evaluation.
    #[arg(long, default_value_t = 10)]
    pub eval_pgd_steps: usize,
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
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype of the training passes: f32, or bf16/f16 mixed precision (f32 master weights, batch
    /// norm and loss; f16 with dynamic loss scaling). For GPUs: on the CPU half precision is slower than f32.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

fn small_images(d: DatasetKind) -> bool {
    matches!(d, DatasetKind::FashionMnist | DatasetKind::Mnist)
}

/// Resolves defaults and validates: the library only ever sees the result.
pub fn to_spec(a: &TrainArgs) -> covf::Result<TrainSpec> {
    let dataset = DatasetKind::parse(&a.dataset)?;
    let small = small_images(dataset);
    let eps = Eps::parse(a.eps.as_deref().unwrap_or(dataset.default_eps()))?;
    let arch = match &a.arch {
        Some(s) => Arch::parse(s)?,
        None if small => Arch::PreActTiny,
        None => Arch::PreAct18,
    };
    let alpha = match &a.alpha {
        Some(s) => Some(
            Eps::parse(s)
                .map_err(|_| CovfError::spec("alpha", format!("'{s}': write it as 2/255 or 0.01, in (0, 1]")))?
                .value,
        ),
        None => None,
    };
    let requested_epochs = a.epochs.unwrap_or(match dataset {
        DatasetKind::FashionMnist => fmnist_defaults::EPOCHS,
        DatasetKind::Mnist => MNIST_EPOCHS,
        _ => CIFAR_EPOCHS,
    });
    let pgd_alpha = alpha.unwrap_or(eps.scaled(2.0 / 255.0));
    let method = match a.method {
        MethodArg::Clean => MethodSpec::Clean,
        MethodArg::Fgsm => MethodSpec::Fgsm {
            alpha: alpha.unwrap_or(eps.value),
        },
        MethodArg::FgsmRs => MethodSpec::FgsmRs {
            alpha: alpha.unwrap_or(1.25 * eps.value),
        },
        MethodArg::Pgd => MethodSpec::Pgd {
            steps: a.steps,
            alpha: pgd_alpha,
            restarts: a.restarts,
        },
        MethodArg::Free => MethodSpec::Free { replays: a.replays },
        MethodArg::Atta => MethodSpec::Atta {
            steps: a.steps,
            alpha: pgd_alpha,
            reset: a.atta_reset,
        },
        MethodArg::Sfgsm => MethodSpec::Sfgsm {
            alpha: alpha.unwrap_or(1.25 * eps.value),
            checkpoints: a.sfgsm_checkpoints,
        },
        MethodArg::Apart | MethodArg::ApartSimple => {
            let cfg = apart_config(a, dataset, &eps);
            if a.method == MethodArg::Apart {
                MethodSpec::Apart(cfg)
            } else {
                MethodSpec::ApartSimple(cfg)
            }
        }
        MethodArg::GradAlign => MethodSpec::GradAlign {
            lambda: a.gradalign_lambda,
            fd_radius: a.fd_radius,
            through_clean: a.gradalign_through_clean,
        },
        MethodArg::Nfgsm => MethodSpec::Nfgsm {
            alpha: alpha.unwrap_or(eps.value),
            noise: a.nfgsm_noise,
        },
    };
    // Free replays every minibatch m times: m times fewer passes cost the same as the other methods' epochs.
    let epochs = match method {
        MethodSpec::Free { replays } if replays > 0 => requested_epochs.div_ceil(replays),
        _ => requested_epochs,
    };
    let lr_max = a.lr_max.unwrap_or(if dataset == DatasetKind::FashionMnist {
        fmnist_defaults::LR_MAX
    } else {
        LR_MAX
    });
    let train_subset = a.train_subset.filter(|&n| n > 0);
    let schedule = match a.lr_schedule {
        ScheduleArg::Cyclic => LrSchedule::Cyclic {
            max: lr_max,
            peak: a.lr_peak,
            epochs,
        },
        ScheduleArg::Constant => LrSchedule::Constant { lr: lr_max },
        ScheduleArg::Piecewise => LrSchedule::Piecewise {
            lr: lr_max,
            milestones: a.lr_milestones.clone(),
            gamma: a.lr_gamma,
            epochs,
        },
    };
    let augment = if a.no_augment {
        Augment::none()
    } else if a.augment {
        match dataset.default_augment() {
            aug if aug.is_none() => Augment { pad: 2, flip: false },
            aug => aug,
        }
    } else {
        dataset.default_augment()
    };
    let precision = Precision::parse(&a.dtype)?;
    let attack_bn = match &a.attack_bn {
        Some(s) => AttackBn::parse(s)?,
        None => AttackBn::reference_for(&method),
    };
    let cyclic = matches!(schedule, LrSchedule::Cyclic { .. });
    if a.cycle_momentum && !cyclic {
        return Err(CovfError::spec(
            "cycle momentum",
            "--cycle-momentum needs --lr-schedule cyclic".to_string(),
        ));
    }
    let cycle_momentum = (cyclic && !a.no_cycle_momentum).then_some(a.base_momentum);
    let name = a.name.clone().unwrap_or_else(|| {
        let base = TrainSpec::default_name(&method, dataset, arch, &eps, a.seed);
        // A mixed-precision run is another experiment: it must not resume or reuse the f32 run.
        match precision {
            Precision::F32 => base,
            p => format!("{base}-{}", p.name()),
        }
    });
    let spec = TrainSpec {
        name,
        method,
        dataset,
        data_dir: a.data_dir.clone(),
        arch,
        eval: EpochEvalSpec {
            test_subset: a.test_subset,
            pgd_steps: a.eval_pgd_steps,
            pgd_alpha: eps.scaled(2.0 / 255.0),
            probe_steps: 5,
            probe_drop: 0.2,
        },
        eps,
        epochs,
        batch_size: a.batch_size,
        schedule,
        momentum: a.momentum,
        cycle_momentum,
        weight_decay: a.weight_decay,
        seed: a.seed,
        train_subset,
        augment,
        attack_bn,
        save_every_epoch: a.save_every_epoch,
        device: a.device.clone(),
        precision,
    };
    spec.validate()?;
    Ok(spec)
}

/// `covf train`'s flags on their own, to read train settings that come from elsewhere (a study file,
/// `analyze tradeoff --train-args`) exactly as the command line would.
#[derive(Debug, Parser)]
#[command(name = "train settings", no_binary_name = true)]
struct TrainOnly {
    #[command(flatten)]
    args: TrainArgs,
}

/// Train flags given as words (`["--method", "fgsm", "--eps", "0.1"]`) → the spec `covf train` would build.
pub fn args_from_words(words: &[String], what: &str) -> covf::Result<TrainArgs> {
    TrainOnly::try_parse_from(words).map(|t| t.args).map_err(|e| {
        let msg = e.to_string();
        let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        CovfError::spec(what, format!("{first} (in: {})", words.join(" ")))
    })
}

pub fn run(a: TrainArgs, root: &Path) -> anyhow::Result<()> {
    let mut spec = to_spec(&a)?;
    let dev = parse_device(&a.device)?;
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
                device: a.device.clone(),
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
    use clap::Parser;

    fn spec_of(args: &[&str]) -> TrainSpec {
        let cli = Cli::try_parse_from(std::iter::once("covf").chain(args.iter().copied())).unwrap();
        match cli.command {
            Command::Train(a) => to_spec(&a).unwrap(),
            _ => unreachable!("not a train command"),
        }
    }

    #[test]
    fn fashion_mnist_defaults_are_the_co_setting_and_others_keep_theirs() {
        let s = spec_of(&["train"]);
        assert_eq!(s.eps.value, 0.15);
        assert_eq!((s.epochs, s.train_subset), (4, None));
        assert_eq!(s.arch, Arch::PreActTiny);
        assert!(matches!(s.schedule, LrSchedule::Cyclic { max, .. } if max == 0.3));
        // As fast_adversarial: attacks in train mode, momentum cycling 0.9 → 0.8 → 0.9.
        assert_eq!(
            (s.attack_bn, s.momentum, s.cycle_momentum),
            (AttackBn::Train, 0.9, Some(0.8))
        );
        assert_eq!(spec_of(&["train", "--method", "atta"]).attack_bn, AttackBn::Eval);
        let b = spec_of(&["train", "--attack-bn", "batch", "--no-cycle-momentum"]);
        assert_eq!((b.attack_bn, b.cycle_momentum), (AttackBn::Batch, None));
        assert_eq!(spec_of(&["train", "--lr-schedule", "constant"]).cycle_momentum, None);
        let m = spec_of(&["train", "--dataset", "mnist"]);
        assert_eq!((m.eps.value, m.epochs, m.train_subset), (0.3, 10, None));
        assert!(matches!(m.schedule, LrSchedule::Cyclic { max, .. } if max == 0.2));
        let c = spec_of(&["train", "--dataset", "cifar10", "--lr-max", "0.1"]);
        assert_eq!((c.epochs, c.arch), (30, Arch::PreAct18));
        assert!(matches!(c.schedule, LrSchedule::Cyclic { max, .. } if max == 0.1));
    }

    #[test]
    fn free_divides_the_epoch_budget_by_its_replays() {
        let f = |args: &[&str]| spec_of(&[&["train", "--method", "free"], args].concat());
        assert_eq!(f(&[]).epochs, 1, "4 epochs / 8 replays, rounded up");
        assert_eq!(f(&["--epochs", "16"]).epochs, 2);
        let s = f(&["--epochs", "10", "--replays", "4"]);
        assert_eq!((s.epochs, s.method.clone()), (3, MethodSpec::Free { replays: 4 }));
        assert!(matches!(s.schedule, LrSchedule::Cyclic { epochs: 3, .. }));
        assert_eq!(spec_of(&["train", "--method", "apart", "--epochs", "10"]).epochs, 10);
    }

    #[test]
    fn apart_defaults_follow_the_dataset() {
        let m = spec_of(&["train", "--method", "apart"]);
        let MethodSpec::Apart(c) = m.method else {
            unreachable!("apart")
        };
        assert_eq!((c.alpha_init, c.init_scale), (0.075, 0.075));
        assert_eq!(
            (c.alpha_lr, c.alpha_l2),
            (fmnist_defaults::APART_ALPHA_LR, fmnist_defaults::APART_L2)
        );
        let m = spec_of(&["train", "--method", "apart-simple", "--dataset", "cifar10"]);
        let MethodSpec::ApartSimple(c) = m.method else {
            unreachable!("apart-simple")
        };
        assert_eq!((c.alpha_init, c.alpha_lr, c.alpha_l2), (1e-4, 5e-8, 200.0));
        assert_eq!(m.name, "apart-simple-cifar10-preact18-eps8-255-s0");
    }
}
