//! `covf study analyses/<name>.toml`: the study file → a validated `StudySpec` (`covf::study::file`), then
//! the study.

use std::path::{Path, PathBuf};

use clap::Args;

use covf::device::parse_device;
use covf::study::file::parse;
use covf::CovfError;

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  covf study analyses/paper-fmnist.toml\n\n\
The file names the runs to train (reused when they exist with the same settings, resumed when partial),
the analyses to run on them and the figures to draw; outputs go to analyses/<name>/out and
analyses/<name>/figures, with study.json recording what was done. Rerunning continues an interrupted study.
The format is described in docs/study.md.")]
pub struct StudyArgs {
    /// The study file.
    pub file: PathBuf,
    /// cpu, cuda or cuda:N (every run's training and the analyses).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Where the study's directory goes [default: beside the file: <dir of file>/<name>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(a: StudyArgs, root: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file).map_err(|e| CovfError::io(&a.file, e))?;
    let spec = parse(&text, &a.file, a.out.clone())?;
    let dev = parse_device(&a.device)?;
    let summary = covf::study::run(&spec, root, &dev, a.quiet)?;
    println!(
        "study {} done in {:.0} s: {} tables in {}, {} figure files in {}",
        summary.study,
        summary.seconds,
        summary.tables.len(),
        spec.out().display(),
        summary.figures.len(),
        spec.figures_dir().display()
    );
    for f in &summary.figures {
        println!("  {f}");
    }
    Ok(())
}
