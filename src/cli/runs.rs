//! `covf runs`: prints the table of runs.

use std::path::Path;

use clap::Args;

use covf::runs;

#[derive(Debug, Args)]
pub struct RunsArgs {}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1}", 100.0 * v)).unwrap_or_else(|| "-".into())
}

pub fn run(_a: RunsArgs, root: &Path) -> anyhow::Result<()> {
    let list = runs::list(root)?;
    if list.is_empty() {
        println!("no runs under {}", root.display());
        return Ok(());
    }
    println!(
        "{:<44} {:<8} {:<8} {:<12} {:>7} {:>7} {:>7} {:>7} {:>14}",
        "run", "method", "dataset", "arch", "eps", "epochs", "clean%", "pgd%", "max pgd drop"
    );
    for s in list {
        let (method, dataset, arch, eps, total) = match &s.spec {
            Some(sp) => (
                sp.method.label(),
                sp.dataset.name().to_string(),
                sp.arch.name().to_string(),
                sp.eps.text.clone(),
                sp.epochs.to_string(),
            ),
            None => ("?".into(), "?".into(), "?".into(), "?".into(), "?".into()),
        };
        let drop = s
            .largest_drop
            .map(|(e, d)| format!("{:.1} @ ep {e}", 100.0 * d))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<44} {:<8} {:<8} {:<12} {:>7} {:>7} {:>7} {:>7} {:>14}",
            s.name,
            method,
            dataset,
            arch,
            eps,
            format!(
                "{}/{}{}",
                s.epochs_done,
                total,
                if s.stopped.is_some() { "!" } else { "" }
            ),
            pct(s.last_clean),
            pct(s.last_pgd),
            drop
        );
        if let Some(why) = s.stopped {
            println!("  stopped early: {why}");
        }
        if let Some(p) = s.problem {
            println!("  ! {p}");
        }
    }
    Ok(())
}
