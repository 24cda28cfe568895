//! Evaluation results as tidy tables: one row per (run, epoch, attack, ε, n, seed), kept in
//! `<run>/eval/results.parquet` (canonical) and `results.csv`; gradient-masking flags in `checks.*`.
//! A new evaluation replaces the rows with the same key and keeps the others.

use std::path::Path;

use polars::prelude::*;

use crate::error::{CovfError, Result};
use crate::run::checkpoint::atomic_write;
use crate::run::metrics::{col_f64, col_str, col_u64};

#[derive(Debug, Clone, PartialEq)]
pub struct EvalRow {
    pub run: String,
    pub method: String,
    pub epoch: usize,
    /// The attack's name as `covf eval --attacks` takes it; AutoAttack stages are `aa/<stage>`.
    pub attack: String,
    pub eps: f64,
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub seconds: f64,
    pub seed: u64,
}

impl EvalRow {
    fn key(&self) -> (usize, &str, u64, usize, u64) {
        (self.epoch, &self.attack, self.eps.to_bits(), self.n, self.seed)
    }
}

/// A gradient-masking (or sanity) flag raised while evaluating.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRow {
    pub run: String,
    pub epoch: usize,
    pub check: String,
    pub message: String,
}

fn strings<T>(rows: &[T], f: impl Fn(&T) -> String) -> Vec<String> {
    rows.iter().map(f).collect()
}

pub fn rows_frame(rows: &[EvalRow]) -> Result<DataFrame> {
    let cols = vec![
        Column::new("run".into(), strings(rows, |r| r.run.clone())),
        Column::new("method".into(), strings(rows, |r| r.method.clone())),
        Column::new("epoch".into(), rows.iter().map(|r| r.epoch as u64).collect::<Vec<_>>()),
        Column::new("attack".into(), strings(rows, |r| r.attack.clone())),
        Column::new("eps".into(), rows.iter().map(|r| r.eps).collect::<Vec<_>>()),
        Column::new("n".into(), rows.iter().map(|r| r.n as u64).collect::<Vec<_>>()),
        Column::new(
            "correct".into(),
            rows.iter().map(|r| r.correct as u64).collect::<Vec<_>>(),
        ),
        Column::new("accuracy".into(), rows.iter().map(|r| r.accuracy).collect::<Vec<_>>()),
        Column::new("seconds".into(), rows.iter().map(|r| r.seconds).collect::<Vec<_>>()),
        Column::new("seed".into(), rows.iter().map(|r| r.seed).collect::<Vec<_>>()),
    ];
    Ok(DataFrame::new(rows.len(), cols)?)
}

pub fn checks_frame(rows: &[CheckRow]) -> Result<DataFrame> {
    let cols = vec![
        Column::new("run".into(), strings(rows, |r| r.run.clone())),
        Column::new("epoch".into(), rows.iter().map(|r| r.epoch as u64).collect::<Vec<_>>()),
        Column::new("check".into(), strings(rows, |r| r.check.clone())),
        Column::new("message".into(), strings(rows, |r| r.message.clone())),
    ];
    Ok(DataFrame::new(rows.len(), cols)?)
}

fn write_frame(dir: &Path, stem: &str, mut df: DataFrame) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CovfError::io(dir, e))?;
    let mut pq: Vec<u8> = Vec::new();
    ParquetWriter::new(&mut pq).finish(&mut df)?;
    atomic_write(&dir.join(format!("{stem}.parquet")), &pq)?;
    let mut csv: Vec<u8> = Vec::new();
    CsvWriter::new(&mut csv).include_header(true).finish(&mut df)?;
    atomic_write(&dir.join(format!("{stem}.csv")), &csv)
}

fn read_frame(path: &Path) -> Result<Option<DataFrame>> {
    if !path.is_file() {
        return Ok(None);
    }
    let f = std::fs::File::open(path).map_err(|e| CovfError::io(path, e))?;
    ParquetReader::new(f)
        .finish()
        .map(Some)
        .map_err(|e| CovfError::data(path, format!("unreadable results table: {e}")))
}

/// The stored results of a run (`dir` = `<run>/eval`); empty when there are none yet.
pub fn read_rows(dir: &Path) -> Result<Vec<EvalRow>> {
    let path = dir.join("results.parquet");
    let Some(df) = read_frame(&path)? else {
        return Ok(vec![]);
    };
    let (run, method, attack) = (
        col_str(&df, "run", &path)?,
        col_str(&df, "method", &path)?,
        col_str(&df, "attack", &path)?,
    );
    let (epoch, n, correct, seed) = (
        col_u64(&df, "epoch", &path)?,
        col_u64(&df, "n", &path)?,
        col_u64(&df, "correct", &path)?,
        col_u64(&df, "seed", &path)?,
    );
    let (eps, acc, secs) = (
        col_f64(&df, "eps", &path)?,
        col_f64(&df, "accuracy", &path)?,
        col_f64(&df, "seconds", &path)?,
    );
    Ok((0..df.height())
        .map(|i| EvalRow {
            run: run[i].clone(),
            method: method[i].clone(),
            epoch: epoch[i] as usize,
            attack: attack[i].clone(),
            eps: eps[i],
            n: n[i] as usize,
            correct: correct[i] as usize,
            accuracy: acc[i],
            seconds: secs[i],
            seed: seed[i],
        })
        .collect())
}

/// Adds `new` to the stored results (a row with the same key is replaced in place), sorted by epoch.
pub fn merge_rows(dir: &Path, new: &[EvalRow]) -> Result<Vec<EvalRow>> {
    let mut rows = read_rows(dir)?;
    for n in new {
        match rows.iter_mut().find(|r| r.key() == n.key()) {
            Some(r) => *r = n.clone(),
            None => rows.push(n.clone()),
        }
    }
    rows.sort_by_key(|r| r.epoch);
    write_frame(dir, "results", rows_frame(&rows)?)?;
    Ok(rows)
}

/// Replaces the stored flags of the evaluated epochs with `new`.
pub fn merge_checks(dir: &Path, epochs: &[usize], new: &[CheckRow]) -> Result<()> {
    let path = dir.join("checks.parquet");
    let mut rows: Vec<CheckRow> = match read_frame(&path)? {
        None => vec![],
        Some(df) => {
            let (run, check, message) = (
                col_str(&df, "run", &path)?,
                col_str(&df, "check", &path)?,
                col_str(&df, "message", &path)?,
            );
            let epoch = col_u64(&df, "epoch", &path)?;
            (0..df.height())
                .map(|i| CheckRow {
                    run: run[i].clone(),
                    epoch: epoch[i] as usize,
                    check: check[i].clone(),
                    message: message[i].clone(),
                })
                .collect()
        }
    };
    rows.retain(|r| !epochs.contains(&r.epoch));
    rows.extend(new.iter().cloned());
    rows.sort_by_key(|r| r.epoch);
    write_frame(dir, "checks", checks_frame(&rows)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: usize, attack: &str, acc: f64) -> EvalRow {
        EvalRow {
            run: "r".into(),
            method: "fgsm".into(),
            epoch,
            attack: attack.into(),
            eps: 0.15,
            n: 10,
            correct: (acc * 10.0) as usize,
            accuracy: acc,
            seconds: 1.5,
            seed: 0,
        }
    }

    #[test]
    fn merge_replaces_same_key_and_keeps_others() {
        let dir = tempfile::tempdir().unwrap();
        merge_rows(dir.path(), &[row(1, "clean", 0.8), row(1, "pgd20", 0.4)]).unwrap();
        let rows = merge_rows(dir.path(), &[row(1, "pgd20", 0.3), row(2, "clean", 0.9)]).unwrap();
        assert_eq!(rows.len(), 3);
        let back = read_rows(dir.path()).unwrap();
        assert_eq!(back, rows);
        assert_eq!(back.iter().find(|r| r.attack == "pgd20").unwrap().accuracy, 0.3);
        assert!(dir.path().join("results.csv").is_file());
    }
}
