//! `covf analyze`: flags -> the runs, epochs and reference an analysis needs, then the analysis; each
//! writes its tidy table under `analyses/<study>/out/` and prints a short summary.

use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, Subcommand};

use covf::analysis::registry::{self, Analysis, Flags, Job};
use covf::analysis::{self, AnalysisCtx, EpochRef};
use covf::device::parse_device;
use covf::run::checkpoint::RunDir;
use covf::run::TrainSettings;
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

/// `covf analyze <analysis>`: one subcommand per registered analysis, with the shared flags, `--ref` where
/// it reads a reference model, `--train-args` where it trains runs, and the analysis's own flags.
#[derive(Debug)]
pub struct AnalyzeCmd {
    pub analysis: &'static dyn Analysis,
    pub common: Common,
    pub reference: RefArg,
    pub flags: Flags,
    pub train_args: String,
}

fn subcommand(a: &'static dyn Analysis) -> Command {
    // The shared flags first: their derive sets an `about` of its own, which the analysis's replaces.
    let mut cmd = Common::augment_args(Command::new(a.name())).about(a.about());
    if !a.example().is_empty() {
        cmd = cmd.after_help(format!("Example:\n  {}", a.example()));
    }
    if a.uses_reference() {
        cmd = RefArg::augment_args(cmd);
    }
    if a.trains() {
        cmd = cmd.arg(
            Arg::new("train-args")
                .long("train-args")
                .value_name("FLAGS")
                .allow_hyphen_values(true)
                .help("Further `covf train` flags for every run it trains, as one string (e.g. \"--epochs 4 --train-subset 10000\")"),
        );
    }
    for f in a.flags() {
        let help = if f.default.is_empty() {
            f.help.to_string()
        } else {
            format!("{} [default: {}]", f.help, f.default)
        };
        let arg = Arg::new(f.name).long(f.name).help(help);
        cmd = cmd.arg(match f.value {
            Some(v) => arg.value_name(v).action(ArgAction::Set),
            None => arg.action(ArgAction::SetTrue),
        });
    }
    cmd
}

impl FromArgMatches for AnalyzeCmd {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let (name, sub) = m
            .subcommand()
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::MissingSubcommand))?;
        let analysis =
            registry::lookup(name).ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))?;
        let mut flags = Flags::default();
        for f in analysis.flags() {
            if f.value.is_some() {
                if let Some(v) = sub.get_one::<String>(f.name) {
                    flags.set(f.name, v.clone());
                }
            } else if sub.get_flag(f.name) {
                flags.set(f.name, "true");
            }
        }
        Ok(AnalyzeCmd {
            analysis,
            common: Common::from_arg_matches(sub)?,
            reference: if analysis.uses_reference() {
                RefArg::from_arg_matches(sub)?
            } else {
                RefArg { reference: None }
            },
            flags,
            train_args: if analysis.trains() {
                sub.get_one::<String>("train-args").cloned().unwrap_or_default()
            } else {
                String::new()
            },
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Subcommand for AnalyzeCmd {
    fn augment_subcommands(mut cmd: Command) -> Command {
        for a in covf::analysis::ANALYSES {
            cmd = cmd.subcommand(subcommand(*a));
        }
        cmd.subcommand_required(true)
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        registry::lookup(name).is_some()
    }
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

/// The train settings every run of a sweep shares: `--train-args` plus the analysis's seed, device and data
/// directory, every epoch saved.
fn train_settings(train_args: &str, common: &Common) -> Result<TrainSettings, CovfError> {
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
    Ok(super::train::args_from_words(&w, "--train-args")?.settings())
}

/// The job `cmd` describes, for a given analysis and flags (the analysis itself, or one it reads from).
fn job<'a>(
    cmd: &AnalyzeCmd,
    ctx: &'a AnalysisCtx,
    root: &'a Path,
    analysis: &dyn Analysis,
    flags: Flags,
    train: &TrainSettings,
) -> Result<Job<'a>, CovfError> {
    let c = &cmd.common;
    // An analysis of the reference alone needs runs only to find the default reference.
    let rs = if analysis.reads_runs() || (analysis.uses_reference() && cmd.reference.reference.is_none()) {
        runs(c, root)?
    } else {
        Vec::new()
    };
    let reference = if analysis.uses_reference() {
        Some(reference(&cmd.reference, c, &rs, root)?)
    } else {
        None
    };
    let checkpoints = if analysis.reads_runs() {
        checkpoints(c, &rs)?
    } else {
        Vec::new()
    };
    Ok(Job {
        ctx,
        root,
        runs: if analysis.reads_runs() { rs } else { Vec::new() },
        checkpoints,
        reference,
        flags,
        train: train.clone(),
    })
}

pub fn run(a: AnalyzeArgs, root: &Path) -> anyhow::Result<()> {
    let cmd = a.cmd;
    let analysis = cmd.analysis;
    let ctx = ctx(&cmd.common)?;
    let train = if analysis.trains() {
        train_settings(&cmd.train_args, &cmd.common)?
    } else {
        TrainSettings::default()
    };
    analysis.check(&cmd.flags, &train)?;
    let wrote = |tables: &[String]| {
        for t in tables {
            eprintln!("wrote {}", ctx.out.join(format!("{t}.parquet")).display());
        }
    };
    // The analyses whose tables this one reads run first, on the same runs, writing their tables too.
    for (up, flags) in analysis.upstream(&cmd.flags)? {
        let up = registry::lookup(up).ok_or_else(|| CovfError::spec("analysis", format!("no analysis '{up}'")))?;
        wrote(&up.run(&job(&cmd, &ctx, root, up, flags, &train)?)?.tables);
    }
    let done = analysis.run(&job(&cmd, &ctx, root, analysis, cmd.flags.clone(), &train)?)?;
    for l in &done.lines {
        println!("{l}");
    }
    for w in &done.warnings {
        eprintln!("{w}");
    }
    wrote(&done.tables);
    Ok(())
}
