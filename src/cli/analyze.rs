//! `covf analyze`: flags -> the runs, epochs and reference an analysis needs, then the analysis; each
//! writes its tidy table under `analyses/<study>/out/` and prints a short summary.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use covf::analysis::co::CoCriteria;
use covf::analysis::{self, tidy, AnalysisCtx, EpochRef};
use covf::device::parse_device;
use covf::run::checkpoint::RunDir;
use covf::run::Eps;
use covf::CovfError;

use super::eval::{resolve, resolve_target, select_epochs, ForeignArgs, Target};

#[derive(Debug, Args)]
pub struct Common {
    /// Study name (outputs in analyses/<name>/out) or a study directory.
    #[arg(long, default_value = "adhoc")]
    pub study: String,
    /// Runs to analyse (names under --checkpoints, or run directories) [default: every run there].
    #[arg(long, num_args = 1.., value_name = "RUN")]
    pub runs: Vec<String>,
    /// Epochs of each run: all, last, or a list such as 1,2,4.
    #[arg(long, default_value = "all")]
    pub epochs: String,
    /// Images: the first N of the seeded subset of --images.
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// test: the seeded test subset that training-time evaluation and `covf eval` use; train: a seeded
    /// subset of the training set, where APART's learned initialisation ω exists (kept for 1,000 images).
    #[arg(long, default_value = "test", value_name = "test|train")]
    pub images: String,
    #[arg(long, default_value_t = 250)]
    pub batch_size: usize,
    /// Seed of the generators' and attacks' random starts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Recompute even what the cache holds.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub quiet: bool,
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// How to read checkpoint files without covf metadata (plain PyTorch state dicts) among --runs and --ref.
    #[command(flatten)]
    pub foreign: ForeignArgs,
}

#[derive(Debug, Args)]
pub struct RefArg {
    /// Reference model: RUN (its last epoch), RUN@EPOCH or a checkpoint file (a model trained elsewhere too,
    /// with --arch/--dataset/--normalize) [default: the last epoch of the PGD-10 run on the runs' dataset].
    #[arg(long = "ref", value_name = "RUN[@EPOCH]")]
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct GapB {
    /// The stronger attack B of the gap: pgd10 or pgd20 (any pgdN).
    #[arg(long = "ref", default_value = "pgd10", value_name = "pgdN")]
    pub attack_b: String,
}

#[derive(Debug, Subcommand)]
pub enum AnalyzeCmd {
    /// Transfer strength S_i(A): each epoch's own perturbations evaluated on a reference model, with the
    /// random-noise baseline (Figure 2a).
    #[command(
        after_help = "Example:\n  covf analyze transfer --runs fgsm-fmnist-preact-tiny-eps0.15-s0 --study paper"
    )]
    Transfer {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        reference: RefArg,
    },
    /// Strength gap G_B,i(A) = L(δ_A) − L(δ_B) per epoch (Figures 2b, 5c).
    #[command(after_help = "Example:\n  covf analyze gap --ref pgd20 --runs RUN_A RUN_B")]
    Gap {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        b: GapB,
    },
    /// Accuracy of the reference model under random noise of radius ε (signs and uniform).
    Random {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        reference: RefArg,
        /// Noise radius [default: the reference run's training ε].
        #[arg(long)]
        eps: Option<String>,
    },
    /// APART's learned step sizes per epoch and layer (Figure 3).
    Steps {
        #[command(flatten)]
        common: Common,
    },
    /// Training accuracy and test clean / PGD-10 / PGD-20 accuracy per epoch (Figures 1b, 5a-b).
    Curves {
        #[command(flatten)]
        common: Common,
    },
    /// The run's own perturbations δ of a few test images at chosen epochs, pixel by pixel (Figure 1a).
    #[command(
        after_help = "Example:\n  covf analyze perturbations --runs fgsm-fmnist-preact-tiny-eps0.15-s0 --epochs 1,2,3 --examples 4"
    )]
    Perturbations {
        #[command(flatten)]
        common: Common,
        /// Test images to keep (the first of the seeded test subset).
        #[arg(long, default_value_t = 4)]
        examples: usize,
    },
    /// Clean vs PGD accuracy of one run per (method, ε_train), trained when missing (Figure 4).
    #[command(
        after_help = "Example:\n  covf analyze tradeoff --methods fgsm,apart --eps-train 0.05,0.1,0.15 --study paper-fmnist\n\n\
Runs are named as `covf train` names them; an existing run is reused when its settings match."
    )]
    Tradeoff {
        #[command(flatten)]
        common: Common,
        /// Training methods (as `covf train --method`; `pgd` takes --train-args "--steps 10").
        #[arg(long, value_delimiter = ',', required = true)]
        methods: Vec<String>,
        /// Training radii, e.g. 2/255,4/255,8/255 or 0.05,0.1.
        #[arg(long, value_delimiter = ',', required = true)]
        eps_train: Vec<String>,
        /// Evaluation radius [default: the dataset's default ε].
        #[arg(long)]
        eps_eval: Option<String>,
        /// Steps of the evaluating PGD.
        #[arg(long, default_value_t = 20)]
        pgd_steps: usize,
        /// Further `covf train` flags for every run, as one string (e.g. "--epochs 4 --train-subset 10000").
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        train_args: String,
    },
    /// Per run: the CO epoch, the perturbation-deterioration epoch, and whether they coincide.
    #[command(
        after_help = "Example:\n  covf analyze co --runs fgsm-fmnist-preact-tiny-eps0.15-s0 pgd10-fmnist-preact-tiny-eps0.15-s0"
    )]
    Co {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        reference: RefArg,
        /// Stronger attack of the gap.
        #[arg(long, default_value = "pgd10", value_name = "pgdN")]
        gap_ref: String,
        /// A fall of test PGD accuracy by at least this fraction from one epoch to the next is CO.
        #[arg(long, default_value_t = 0.2)]
        drop: f64,
        /// A rise of the gap by at least this many nats (and to ≥ --gap-ratio × the previous gap) is a jump.
        #[arg(long, default_value_t = 1.0)]
        gap_jump: f64,
        #[arg(long, default_value_t = 2.0)]
        gap_ratio: f64,
        /// A gap jump counts only after an earlier epoch with a gap of at most this many nats.
        #[arg(long, default_value_t = 0.5)]
        gap_low: f64,
        /// Transferred accuracy within this fraction of the random baseline is noise-level...
        #[arg(long, default_value_t = 0.02)]
        random_margin: f64,
        /// ...once an earlier epoch transferred at least this fraction below it (clearly stronger than noise).
        #[arg(long, default_value_t = 0.1)]
        strong_margin: f64,
    },
}

#[derive(Debug, Args)]
#[command(
    after_help = "Outputs: analyses/<study>/out/<analysis>.parquet and .csv (tidy, one row per run and epoch);
results are cached under out/cache by checkpoint content and parameters, so a rerun is near-free."
)]
pub struct AnalyzeArgs {
    #[command(subcommand)]
    pub cmd: AnalyzeCmd,
}

fn ctx(c: &Common) -> Result<AnalysisCtx, CovfError> {
    if c.n == 0 {
        return Err(CovfError::spec("--n", "must be at least 1"));
    }
    if c.batch_size == 0 {
        return Err(CovfError::spec("--batch-size", "must be at least 1"));
    }
    Ok(AnalysisCtx {
        out: analysis::study_out(&c.study)?,
        n: c.n,
        images: analysis::Images::parse(&c.images)?,
        batch_size: c.batch_size,
        seed: c.seed,
        force: c.force,
        quiet: c.quiet,
        data_dir: c.data_dir.clone(),
        device: parse_device(&c.device)?,
    })
}

/// The runs named by --runs, or every run under `root` that has a checkpoint.
fn runs(c: &Common, root: &Path) -> Result<Vec<RunDir>, CovfError> {
    if c.runs.is_empty() {
        let all: Vec<RunDir> = covf::runs::list(root)?
            .into_iter()
            .filter_map(|s| RunDir::new(root, &s.name).ok())
            .filter(|r| r.epochs().map(|e| !e.is_empty()).unwrap_or(false))
            .collect();
        if all.is_empty() {
            return Err(CovfError::spec(
                "--runs",
                format!("none given and {} holds no run with a checkpoint", root.display()),
            ));
        }
        return Ok(all);
    }
    let foreign = c.foreign.to_foreign(None)?;
    let mut out = Vec::new();
    for r in &c.runs {
        if let Target::Run(run, _) = resolve_target(r, root, &foreign)? {
            out.push(run);
        }
    }
    Ok(out)
}

/// The checkpoints to analyse: the selected epochs of `runs`, then every checkpoint file outside a run
/// directory that --runs names.
fn checkpoints(c: &Common, runs: &[RunDir]) -> Result<Vec<EpochRef>, CovfError> {
    let mut out = Vec::new();
    for r in runs {
        for e in select_epochs(r, &c.epochs)? {
            out.push(EpochRef::new(r, e)?);
        }
    }
    let foreign = c.foreign.to_foreign(None)?;
    for r in c.runs.iter().filter(|r| Path::new(r).is_file()) {
        if let Target::File(f) = resolve_target(r, Path::new("."), &foreign)? {
            out.push(EpochRef::from_file(*f));
        }
    }
    Ok(out)
}

/// The reference checkpoint: as given, or the last epoch of the one PGD-10 run on `runs`' dataset.
fn reference(arg: &RefArg, common: &Common, runs: &[RunDir], root: &Path) -> Result<EpochRef, CovfError> {
    if let Some(r) = &arg.reference {
        let p = Path::new(r);
        if p.is_file() {
            if let Target::File(f) = resolve_target(r, root, &common.foreign.to_foreign(None)?)? {
                return Ok(EpochRef::from_file(*f));
            }
        }
        let (name, epoch) = match r.rsplit_once('@') {
            Some((n, e)) => (
                n,
                Some(e.parse::<usize>().map_err(|_| {
                    CovfError::spec("--ref", format!("'{r}': expected RUN@EPOCH with a whole epoch number"))
                })?),
            ),
            None => (r.as_str(), None),
        };
        let (run, file_epoch) = resolve(name, root)?;
        let epoch = match epoch.or(file_epoch) {
            Some(e) => e,
            None => *run
                .epochs()?
                .last()
                .ok_or_else(|| CovfError::run(&run.name, "has no epoch checkpoint yet"))?,
        };
        return EpochRef::new(&run, epoch);
    }
    let dataset = runs.first().map(RunDir::read_spec).transpose()?.map(|s| s.dataset);
    let mut found = Vec::new();
    for s in covf::runs::list(root)? {
        let Ok(run) = RunDir::new(root, &s.name) else { continue };
        let Ok(spec) = run.read_spec() else { continue };
        if spec.method.label() == "pgd10" && Some(spec.dataset) == dataset && !run.epochs()?.is_empty() {
            found.push(run);
        }
    }
    match found.as_slice() {
        [one] => {
            let last = *one
                .epochs()?
                .last()
                .ok_or_else(|| CovfError::run(&one.name, "has no epoch checkpoint yet"))?;
            EpochRef::new(one, last)
        }
        [] => Err(CovfError::spec(
            "--ref",
            "no PGD-10 run on this dataset to use as the reference; train one (covf train --method pgd --steps 10 \
             --save-every-epoch) or name a checkpoint with --ref RUN[@EPOCH]",
        )),
        many => Err(CovfError::spec(
            "--ref",
            format!(
                "several PGD-10 runs could be the reference ({}); choose one with --ref RUN[@EPOCH]",
                many.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// `covf train` words shared by every run of a sweep: the user's extra flags plus the sweep's seed, device
/// and data directory.
fn base_words(train_args: &str, common: &Common) -> Vec<String> {
    let mut w: Vec<String> = train_args.split_whitespace().map(str::to_string).collect();
    w.extend([
        "--seed".into(),
        common.seed.to_string(),
        "--device".into(),
        common.device.clone(),
    ]);
    if let Some(d) = &common.data_dir {
        w.extend(["--data-dir".into(), d.display().to_string()]);
    }
    w.push("--save-every-epoch".into());
    w
}

/// One train spec per (method, ε_train), as `covf train` would build it.
pub fn tradeoff_specs(
    methods: &[String],
    eps_train: &[String],
    train_args: &str,
    common: &Common,
) -> Result<Vec<covf::run::TrainSpec>, CovfError> {
    let mut specs = Vec::new();
    for m in methods {
        for e in eps_train {
            let mut w = vec![
                "--method".to_string(),
                m.trim().to_string(),
                "--eps".into(),
                e.trim().to_string(),
            ];
            w.extend(base_words(train_args, common));
            let a = super::train::args_from_words(&w, "--train-args")?;
            specs.push(super::train::to_spec(&a)?);
        }
    }
    Ok(specs)
}

/// The ε `covf train` would default to for these settings (the evaluation radius of a sweep).
fn default_eps(train_args: &str, common: &Common) -> Result<f32, CovfError> {
    let a = super::train::args_from_words(&base_words(train_args, common), "--train-args")?;
    Ok(super::train::to_spec(&a)?.eps.value)
}

fn pgd_steps(s: &str, flag: &str) -> Result<usize, CovfError> {
    s.trim()
        .to_ascii_lowercase()
        .strip_prefix("pgd")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| CovfError::spec(flag, format!("'{s}': expected pgdN, e.g. pgd10 or pgd20")))
}

fn pct(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        format!("{:.1}", 100.0 * x)
    }
}

fn opt(e: Option<u64>) -> String {
    e.map_or("–".into(), |e| e.to_string())
}

pub fn run(a: AnalyzeArgs, root: &Path) -> anyhow::Result<()> {
    match a.cmd {
        AnalyzeCmd::Transfer { common, reference: r } => {
            let ctx = ctx(&common)?;
            let rs = runs(&common, root)?;
            let reference = reference(&r, &common, &rs, root)?;
            let rows = analysis::transfer::run(&ctx, &reference, &checkpoints(&common, &rs)?)?;
            tidy::write(&ctx.out, "transfer", &rows)?;
            println!(
                "transfer strength on {} (accuracy %, lower = stronger)",
                reference.label()
            );
            println!(
                "{:<44} {:>5} {:>9} {:>8} {:>8}  generator as run",
                "run", "epoch", "generator", "S_i", "random"
            );
            for x in &rows {
                println!(
                    "{:<44} {:>5} {:>9} {:>8} {:>8}  {}",
                    x.run,
                    x.epoch,
                    x.generator,
                    pct(x.acc_ref),
                    pct(x.random_acc),
                    x.attack
                );
            }
            eprintln!("wrote {}", ctx.out.join("transfer.parquet").display());
        }
        AnalyzeCmd::Gap { common, b } => {
            let ctx = ctx(&common)?;
            let steps = pgd_steps(&b.attack_b, "--ref")?;
            let rows = analysis::gap::run(&ctx, &checkpoints(&common, &runs(&common, root)?)?, steps)?;
            let name = format!("gap-pgd{steps}");
            tidy::write(&ctx.out, &name, &rows)?;
            println!("strength gap to PGD-{steps} (nats; larger = weaker own perturbation)");
            println!(
                "{:<44} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "run", "epoch", "gap", "p10", "p90", "acc A", "acc B"
            );
            for x in &rows {
                println!(
                    "{:<44} {:>5} {:>8.3} {:>8.3} {:>8.3} {:>8} {:>8}",
                    x.run,
                    x.epoch,
                    x.gap,
                    x.gap_p10,
                    x.gap_p90,
                    pct(x.acc_a),
                    pct(x.acc_b)
                );
            }
            eprintln!("wrote {}", ctx.out.join(format!("{name}.parquet")).display());
        }
        AnalyzeCmd::Random {
            common,
            reference: r,
            eps,
        } => {
            let ctx = ctx(&common)?;
            let rs = if common.runs.is_empty() && r.reference.is_some() {
                Vec::new()
            } else {
                runs(&common, root)?
            };
            let reference = reference(&r, &common, &rs, root)?;
            let e = match eps {
                Some(s) => Eps::parse(&s)?.value,
                None => reference.spec.eps.value,
            };
            let rows = analysis::random::run(&ctx, &reference, &[e])?;
            tidy::write(&ctx.out, "random", &rows)?;
            for x in &rows {
                println!(
                    "{} under {} (ε = {}): accuracy {}%, loss {:.3}",
                    x.reference,
                    x.noise,
                    x.eps,
                    pct(x.accuracy),
                    x.loss
                );
            }
        }
        AnalyzeCmd::Steps { common } => {
            let ctx = ctx(&common)?;
            let rows = analysis::steps::run(&runs(&common, root)?)?;
            tidy::write(&ctx.out, "steps", &rows)?;
            for x in &rows {
                println!("{:<44} {:>5} {:<8} {:.5}", x.run, x.epoch, x.layer, x.alpha);
            }
            if rows.is_empty() {
                eprintln!("none of these runs learns step sizes (only apart and apart-simple do)");
            }
        }
        AnalyzeCmd::Curves { common } => {
            let ctx = ctx(&common)?;
            let rs = runs(&common, root)?;
            let mut per_run = Vec::new();
            for r in &rs {
                per_run.push((r.clone(), checkpoints(&common, std::slice::from_ref(r))?));
            }
            let rows = analysis::curves::run(&ctx, &per_run)?;
            tidy::write(&ctx.out, "curves", &rows)?;
            println!("{:<44} {:>5} {:<16} {:>7}", "run", "epoch", "metric", "value %");
            for x in &rows {
                println!("{:<44} {:>5} {:<16} {:>7}", x.run, x.epoch, x.metric, pct(x.value));
            }
        }
        AnalyzeCmd::Perturbations { common, examples } => {
            let ctx = ctx(&common)?;
            let rs = runs(&common, root)?;
            let rows = analysis::perturbations::run(&ctx, &checkpoints(&common, &rs)?, examples)?;
            tidy::write(&ctx.out, "perturbations", &rows)?;
            let mut seen = std::collections::BTreeSet::new();
            for x in &rows {
                if seen.insert((x.run.clone(), x.epoch, x.example)) {
                    println!(
                        "{:<44} epoch {:>3} example {:>2}: class {} → {} under its own δ",
                        x.run, x.epoch, x.example, x.label, x.pred_adv
                    );
                }
            }
            eprintln!("wrote {}", ctx.out.join("perturbations.parquet").display());
        }
        AnalyzeCmd::Tradeoff {
            common,
            methods,
            eps_train,
            eps_eval,
            pgd_steps,
            train_args,
        } => {
            let ctx = ctx(&common)?;
            let specs = tradeoff_specs(&methods, &eps_train, &train_args, &common)?;
            let eps_eval = match eps_eval {
                Some(s) => Eps::parse(&s)?.value,
                None => default_eps(&train_args, &common)?,
            };
            let rows = analysis::tradeoff::run(&ctx, root, &ctx.device, &specs, eps_eval, pgd_steps)?;
            tidy::write(&ctx.out, "tradeoff", &rows)?;
            println!(
                "{:<44} {:>8} {:>8} {:>8}",
                "run",
                "ε_train",
                "clean",
                format!("PGD-{pgd_steps}")
            );
            for x in &rows {
                println!(
                    "{:<44} {:>8} {:>8} {:>8}",
                    x.run,
                    covf::figures::data::trim(x.eps_train),
                    pct(x.clean),
                    pct(x.robust)
                );
            }
            eprintln!("wrote {}", ctx.out.join("tradeoff.parquet").display());
        }
        AnalyzeCmd::Co {
            common,
            reference: r,
            gap_ref,
            drop,
            gap_jump,
            gap_ratio,
            gap_low,
            random_margin,
            strong_margin,
        } => {
            let ctx = ctx(&common)?;
            for (flag, v) in [
                ("--drop", drop),
                ("--gap-jump", gap_jump),
                ("--gap-low", gap_low),
                ("--random-margin", random_margin),
                ("--strong-margin", strong_margin),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(CovfError::spec(flag, format!("{v}: must be a finite number ≥ 0")).into());
                }
            }
            if !(gap_ratio.is_finite() && gap_ratio >= 1.0) {
                return Err(CovfError::spec("--gap-ratio", format!("{gap_ratio}: must be ≥ 1")).into());
            }
            let steps = pgd_steps(&gap_ref, "--gap-ref")?;
            let rs = runs(&common, root)?;
            let reference = reference(&r, &common, &rs, root)?;
            let cks = checkpoints(&common, &rs)?;
            let gaps = analysis::gap::run(&ctx, &cks, steps)?;
            let transfers = analysis::transfer::run(&ctx, &reference, &cks)?;
            let crit = CoCriteria {
                drop,
                gap_jump,
                gap_ratio,
                gap_low,
                random_margin,
                strong_margin,
            };
            let rows = analysis::co::run(&rs, &gaps, &transfers, &crit)?;
            tidy::write(&ctx.out, &format!("gap-pgd{steps}"), &gaps)?;
            tidy::write(&ctx.out, "transfer", &transfers)?;
            tidy::write(&ctx.out, "co", &rows)?;
            println!(
                "{:<44} {:>4} {:>6} {:>9} {:>10} {:>9}  verdict",
                "run", "CO", "gap↑", "S≈random", "deterior.", "coincide"
            );
            for x in &rows {
                println!(
                    "{:<44} {:>4} {:>6} {:>9} {:>10} {:>9}  {}",
                    x.run,
                    opt(x.co_epoch),
                    opt(x.gap_jump_epoch),
                    opt(x.transfer_random_epoch),
                    opt(x.deterioration_epoch),
                    x.coincide.map_or("–".to_string(), |c| c.to_string()),
                    x.verdict
                );
            }
            eprintln!("wrote {}", ctx.out.join("co.parquet").display());
        }
    }
    Ok(())
}
