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
    /// Figures to draw: 1a, 1b, 2a, 2b, 3, 4, 5 [default: every figure whose tables exist].
    #[arg(long = "fig", value_name = "ID")]
    pub figs: Vec<String>,
    /// Output directory [default: <study>/figures].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Draws the figures; with none asked for, every figure whose tables exist (and says which were skipped).
pub fn draw(study_out: &Path, figs: &[String], dir: &Path) -> Result<Vec<PathBuf>, CovfError> {
    let asked: Vec<String> = figs.iter().map(|f| figures::parse_id(f)).collect::<Result<_, _>>()?;
    let ids: Vec<String> = if asked.is_empty() {
        figures::ALL
            .iter()
            .filter(|id| {
                let ok = figures::available(id, study_out);
                if !ok {
                    eprintln!(
                        "skipping figure {id}: {} has no {} table",
                        study_out.display(),
                        figures::needs(id).join(" / ")
                    );
                }
                ok
            })
            .map(|s| s.to_string())
            .collect()
    } else {
        asked
    };
    if ids.is_empty() {
        return Err(CovfError::data(
            study_out,
            "holds none of the tables the figures need: run `covf study` or `covf analyze` first",
        ));
    }
    let mut files = Vec::new();
    for id in &ids {
        files.extend(figures::render(id, study_out, dir)?);
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
        println!("{}", f.display());
    }
    Ok(())
}
