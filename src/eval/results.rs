//! Evaluation results as tidy tables: one row per (run, epoch, attack, ε, n, seed), kept in
//! `<run>/eval/results.parquet` (canonical) and `results.csv`; gradient-masking flags in `checks.*`.
//! A new evaluation replaces the rows with the same key and keeps the others.

use std::path::Path;

use polars::prelude::*;

use serde::{Deserialize, Serialize};

use crate::error::{CovfError, Result};
use crate::run::metrics::{col_f64, col_str, col_u64};
use crate::run::table;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRow {
    pub run: String,
    pub epoch: usize,
    pub check: String,
    pub message: String,
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
    table::write(dir, "results", &rows)?;
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
    table::write(dir, "checks", &rows)
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
