//! `covf figures`: a study's tables → Figures 1–5 as PNG and SVG under `analyses/<study>/figures/`.

use std::path::{Path, PathBuf};

use clap::Args;

use covf::figures;
use covf::CovfError;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  covf figures --study analyses/paper-fmnist\n  covf figures --study paper-fmnist --fig 2a --fig 2b\n\n\
Each figure reads tables that `covf analyze` (or `covf study`) wrote: 1a perturbations, 1b curves,
2a transfer, 2b gap-pgd10, 3 steps, 4 tradeoff, 5 curves + gap-pgd20."
)]
pub struct FiguresArgs {
    /// Study name (under analyses/) or directory; tables are read from <study>/out.
    #[arg(long, default_value = "adhoc")]
    pub study: String,
    /// Figures to draw: 1a, 1b, 2a, 2a-own, 2b, 3, 4, 5 [default: every figure whose tables exist].
    #[arg(long = "fig", value_name = "ID")]
    pub figs: Vec<String>,
    /// Output directory [default: <study>/figures].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Draws the figures; with none asked for, every figure whose tables exist (and says which were skipped).
pub fn draw(study_out: &Path, figs: &[String], dir: &Path) -> Result<Vec<PathBuf>, CovfError> {
    let asked: Vec<&dyn figures::FigureDef> = figs.iter().map(|f| figures::lookup(f)).collect::<Result<_, _>>()?;
    let chosen: Vec<&dyn figures::FigureDef> = if asked.is_empty() {
        figures::FIGURES
            .iter()
            .copied()
            .filter(|f| {
                let ok = figures::available(*f, study_out);
                if !ok {
                    let how: Vec<String> = f
                        .needs()
                        .iter()
                        .map(|t| covf::analysis::registry::producer(t).unwrap_or_else(|| t.to_string()))
                        .collect();
                    eprintln!(
                        "skipping figure {}: {} has no {} table (made by {})",
                        f.id(),
                        study_out.display(),
                        f.needs().join(" / "),
                        how.join("; ")
                    );
                }
                ok
            })
            .collect()
    } else {
        asked
    };
    if chosen.is_empty() {
        return Err(CovfError::data(
            study_out,
            "holds none of the tables the figures need: run `covf study` or `covf analyze` first",
        ));
    }
    let mut files = Vec::new();
    for f in chosen {
        files.extend(f.render(study_out, dir)?);
    }
    Ok(files)
}

pub fn run(a: FiguresArgs) -> anyhow::Result<()> {
    let out = covf::analysis::study_out(&a.study)?;
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| out.parent().unwrap_or(Path::new(".")).join("figures"));
    for f in draw(&out, &a.figs, &dir)? {
        println!("{f}", f = f.display());
    }
    Ok(())
}
