//! Per-epoch training metrics: one row per epoch, written as `metrics.parquet` (canonical) and `metrics.csv`.
//! The schema is documented in docs/metrics.md; columns never change meaning, new ones are appended.

use std::path::Path;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{CovfError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub run: String,
    pub method: String,
    pub epoch: usize,
    /// Learning rate at the epoch's last batch.
    pub lr: f64,
    pub train_loss_adv: f64,
    pub train_acc_adv: f64,
    /// NaN for methods that never see the clean input during training (see `StepStats::n_clean`).
    #[serde(deserialize_with = "crate::exact_json::nan_from_null")]
    pub train_loss_clean: f64,
    #[serde(deserialize_with = "crate::exact_json::nan_from_null")]
    pub train_acc_clean: f64,
    pub test_acc_clean: f64,
    pub test_acc_fgsm: f64,
    pub test_acc_pgd: f64,
    pub test_loss_pgd: f64,
    pub pgd_steps: usize,
    pub test_n: usize,
    /// PGD-5 accuracy on the epoch's first training batch (Wong et al.'s CO detector).
    pub co_probe_acc: f64,
    pub co_flag: bool,
    /// Training time of the epoch, without the monitor's.
    pub epoch_seconds: f64,
    pub eval_seconds: f64,
    /// Time the in-training monitor took during the epoch (0 without it, and in runs from before it).
    #[serde(default)]
    pub monitor_seconds: f64,
    /// Training steps behind this epoch's checkpoint (the epochs' steps; the kept monitor point's after an
    /// early stop; 0 in runs from before the column).
    #[serde(default)]
    pub step: u64,
    /// Why the run stopped early at this epoch (`--early-stop`), empty otherwise.
    #[serde(default)]
    pub stopped: String,
}

/// One learned step size at the end of one epoch (APART): `step-sizes.parquet` / `.csv`, Figure 3's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSizeRow {
    pub run: String,
    pub method: String,
    pub epoch: usize,
    /// `input` (α1), `init` (α_ω) or `block<i>`.
    pub layer: String,
    pub alpha: f64,
}

const STEP_SIZES: &str = "step-sizes";

/// Writes `step-sizes.parquet` and `step-sizes.csv` into `dir`, each atomically.
pub fn write_step_sizes(dir: &Path, rows: &[StepSizeRow]) -> Result<()> {
    super::table::write(dir, STEP_SIZES, rows)
}

/// The step-size rows of a run directory (none when the method learns no step sizes).
pub fn read_step_sizes(dir: &Path) -> Result<Vec<StepSizeRow>> {
    let path = dir.join(format!("{STEP_SIZES}.parquet"));
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let df = read_parquet(&path)?;
    let (run, method, layer) = (
        col_str(&df, "run", &path)?,
        col_str(&df, "method", &path)?,
        col_str(&df, "layer", &path)?,
    );
    let (epoch, alpha) = (col_u64(&df, "epoch", &path)?, col_f64(&df, "alpha", &path)?);
    Ok((0..df.height())
        .map(|i| StepSizeRow {
            run: run[i].clone(),
            method: method[i].clone(),
            epoch: epoch[i] as usize,
            layer: layer[i].clone(),
            alpha: alpha[i],
        })
        .collect())
}

/// The monitor's rows of a run directory (`monitor.parquet`), none when it has no monitor table.
pub fn read_monitor(dir: &Path) -> Result<Option<Vec<crate::monitor::MonitorRow>>> {
    let path = dir.join(format!("{}.parquet", crate::monitor::TABLE));
    if !path.is_file() {
        return Ok(None);
    }
    let df = read_parquet(&path)?;
    let (run, method, signal, metric) = (
        col_str(&df, "run", &path)?,
        col_str(&df, "method", &path)?,
        col_str(&df, "signal", &path)?,
        col_str(&df, "metric", &path)?,
    );
    let (seed, step, epoch) = (
        col_u64(&df, "seed", &path)?,
        col_u64(&df, "step", &path)?,
        col_u64(&df, "epoch", &path)?,
    );
    let (frac, lr, value) = (
        col_f64(&df, "epoch_frac", &path)?,
        col_f64(&df, "lr", &path)?,
        col_f64(&df, "value", &path)?,
    );
    Ok(Some(
        (0..df.height())
            .map(|i| crate::monitor::MonitorRow {
                run: run[i].clone(),
                method: method[i].clone(),
                seed: seed[i],
                step: step[i],
                epoch: epoch[i],
                epoch_frac: frac[i],
                lr: lr[i],
                signal: signal[i].clone(),
                metric: metric[i].clone(),
                value: value[i],
            })
            .collect(),
    ))
}

pub(crate) fn col_str(df: &DataFrame, name: &str, path: &Path) -> Result<Vec<String>> {
    let c = df
        .column(name)
        .and_then(|c| c.str().cloned())
        .map_err(|e| CovfError::data(path, format!("column {name}: {e}")))?;
    Ok(c.iter().map(|v| v.unwrap_or_default().to_string()).collect())
}

pub(crate) fn col_u64(df: &DataFrame, name: &str, path: &Path) -> Result<Vec<u64>> {
    let c = df
        .column(name)
        .and_then(|c| c.u64().cloned())
        .map_err(|e| CovfError::data(path, format!("column {name}: {e}")))?;
    Ok(c.iter().map(|v| v.unwrap_or_default()).collect())
}

pub(crate) fn col_f64(df: &DataFrame, name: &str, path: &Path) -> Result<Vec<f64>> {
    let c = df
        .column(name)
        .and_then(|c| c.f64().cloned())
        .map_err(|e| CovfError::data(path, format!("column {name}: {e}")))?;
    Ok(c.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// Writes `metrics.parquet` and `metrics.csv` into `dir`, each atomically.
pub fn write(dir: &Path, records: &[EpochRecord]) -> Result<()> {
    super::table::write(dir, "metrics", records)
}

pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = std::fs::File::open(path).map_err(|e| CovfError::io(path, e))?;
    ParquetReader::new(f)
        .finish()
        .map_err(|e| CovfError::data(path, format!("unreadable metrics table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, pgd: f64) -> EpochRecord {
        EpochRecord {
            run: "r".into(),
            method: "fgsm".into(),
            epoch,
            lr: 0.1,
            train_loss_adv: 1.0,
            train_acc_adv: 0.5,
            train_loss_clean: 0.5,
            train_acc_clean: 0.8,
            test_acc_clean: 0.8,
            test_acc_fgsm: 0.4,
            test_acc_pgd: pgd,
            test_loss_pgd: 2.0,
            pgd_steps: 10,
            test_n: 1000,
            co_probe_acc: 0.3,
            co_flag: false,
            epoch_seconds: 1.5,
            eval_seconds: 0.5,
            monitor_seconds: 0.0,
            step: 10 * epoch as u64,
            stopped: String::new(),
        }
    }

    #[test]
    fn parquet_and_csv_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[rec(1, 0.3), rec(2, 0.01)]).unwrap();
        let df = read_parquet(&dir.path().join("metrics.parquet")).unwrap();
        assert_eq!(df.height(), 2);
        let pgd: Vec<Option<f64>> = df.column("test_acc_pgd").unwrap().f64().unwrap().iter().collect();
        assert_eq!(pgd, vec![Some(0.3), Some(0.01)]);
        let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
        assert!(csv.starts_with("run,method,epoch,lr,"));
        assert_eq!(csv.lines().count(), 3);
    }
}
