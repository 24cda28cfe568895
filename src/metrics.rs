//! Per-epoch training metrics: one row per epoch, written as `metrics.parquet` (canonical) and `metrics.csv`.
//! The schema is documented in docs/metrics.md; columns never change meaning, new ones are appended.

use std::path::Path;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::atomic_write;
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
    pub train_loss_clean: f64,
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
    pub epoch_seconds: f64,
    pub eval_seconds: f64,
}

pub fn to_frame(records: &[EpochRecord]) -> Result<DataFrame> {
    let n = records.len();
    let f = |name: &str, get: &dyn Fn(&EpochRecord) -> f64| {
        Column::new(name.into(), records.iter().map(get).collect::<Vec<f64>>())
    };
    let u = |name: &str, get: &dyn Fn(&EpochRecord) -> u64| {
        Column::new(name.into(), records.iter().map(get).collect::<Vec<u64>>())
    };
    let cols = vec![
        Column::new(
            "run".into(),
            records.iter().map(|r| r.run.clone()).collect::<Vec<String>>(),
        ),
        Column::new(
            "method".into(),
            records.iter().map(|r| r.method.clone()).collect::<Vec<String>>(),
        ),
        u("epoch", &|r| r.epoch as u64),
        f("lr", &|r| r.lr),
        f("train_loss_adv", &|r| r.train_loss_adv),
        f("train_acc_adv", &|r| r.train_acc_adv),
        f("train_loss_clean", &|r| r.train_loss_clean),
        f("train_acc_clean", &|r| r.train_acc_clean),
        f("test_acc_clean", &|r| r.test_acc_clean),
        f("test_acc_fgsm", &|r| r.test_acc_fgsm),
        f("test_acc_pgd", &|r| r.test_acc_pgd),
        f("test_loss_pgd", &|r| r.test_loss_pgd),
        u("pgd_steps", &|r| r.pgd_steps as u64),
        u("test_n", &|r| r.test_n as u64),
        f("co_probe_acc", &|r| r.co_probe_acc),
        Column::new(
            "co_flag".into(),
            records.iter().map(|r| r.co_flag).collect::<Vec<bool>>(),
        ),
        f("epoch_seconds", &|r| r.epoch_seconds),
        f("eval_seconds", &|r| r.eval_seconds),
    ];
    Ok(DataFrame::new(n, cols)?)
}

/// Writes `metrics.parquet` and `metrics.csv` into `dir`, each atomically.
pub fn write(dir: &Path, records: &[EpochRecord]) -> Result<()> {
    let mut df = to_frame(records)?;
    let mut pq: Vec<u8> = Vec::new();
    ParquetWriter::new(&mut pq).finish(&mut df)?;
    atomic_write(&dir.join("metrics.parquet"), &pq)?;
    let mut csv: Vec<u8> = Vec::new();
    CsvWriter::new(&mut csv).include_header(true).finish(&mut df)?;
    atomic_write(&dir.join("metrics.csv"), &csv)
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
