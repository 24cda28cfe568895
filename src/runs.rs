//! `covf runs`: a summary of every run under a checkpoints root, read from run.json and metrics.parquet.

use std::path::Path;

use crate::error::{CovfError, Result};
use crate::run::checkpoint::RunDir;
use crate::run::metrics;
use crate::run::TrainSpec;

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub name: String,
    pub spec: Option<TrainSpec>,
    pub epochs_done: usize,
    pub last_clean: Option<f64>,
    pub last_pgd: Option<f64>,
    /// Epoch of the largest one-epoch drop in test PGD accuracy, and its size.
    pub largest_drop: Option<(usize, f64)>,
    /// Why the run stopped early (`--early-stop`).
    pub stopped: Option<String>,
    pub problem: Option<String>,
}

fn f64_col(df: &polars::prelude::DataFrame, name: &str) -> Vec<f64> {
    df.column(name)
        .ok()
        .and_then(|c| c.f64().ok().map(|c| c.iter().map(|v| v.unwrap_or(f64::NAN)).collect()))
        .unwrap_or_default()
}

pub fn summarize(run: &RunDir) -> RunSummary {
    let mut s = RunSummary {
        name: run.name.clone(),
        spec: None,
        epochs_done: 0,
        last_clean: None,
        last_pgd: None,
        largest_drop: None,
        stopped: None,
        problem: None,
    };
    match run.read_spec() {
        Ok(spec) => s.spec = Some(spec),
        Err(e) => s.problem = Some(e.to_string()),
    }
    let mp = run.path.join("metrics.parquet");
    if mp.is_file() {
        match metrics::read_parquet(&mp) {
            Ok(df) => {
                s.epochs_done = df.height();
                let clean = f64_col(&df, "test_acc_clean");
                let pgd = f64_col(&df, "test_acc_pgd");
                s.last_clean = clean.last().copied();
                s.last_pgd = pgd.last().copied();
                s.largest_drop = pgd
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| (i + 2, w[0] - w[1]))
                    .filter(|d| d.1 > 0.0)
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                s.stopped = df
                    .column("stopped")
                    .ok()
                    .and_then(|c| c.str().ok().and_then(|c| c.iter().flatten().last().map(str::to_string)))
                    .filter(|t| !t.is_empty());
            }
            Err(e) => s.problem = Some(e.to_string()),
        }
    }
    s
}

/// Every run directory (one holding run.json) under `root`, sorted by name.
pub fn list(root: &Path) -> Result<Vec<RunSummary>> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(CovfError::io(root, e)),
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("run.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names
        .iter()
        .filter_map(|n| RunDir::new(root, n).ok())
        .map(|r| summarize(&r))
        .collect())
}
