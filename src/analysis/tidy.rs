//! Tidy tables for the analyses: rows → a polars frame with typed columns, written as
//! `<name>.parquet` (canonical) and `<name>.csv`, each atomically.

use std::path::Path;

use polars::prelude::*;

use crate::error::{CovfError, Result};
use crate::run::checkpoint::atomic_write;

/// One value of a row; the column's type is its `Kind`.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Str(String),
    F64(f64),
    U64(Option<u64>),
    Bool(Option<bool>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    F64,
    U64,
    Bool,
}

/// A row type with a fixed schema.
pub trait TidyRow {
    fn schema() -> &'static [(&'static str, Kind)];
    fn cells(&self) -> Vec<Cell>;
}

pub fn frame<R: TidyRow>(rows: &[R]) -> Result<DataFrame> {
    let schema = R::schema();
    let cells: Vec<Vec<Cell>> = rows.iter().map(TidyRow::cells).collect();
    let mut cols = Vec::with_capacity(schema.len());
    for (j, &(name, kind)) in schema.iter().enumerate() {
        let at = |i: usize| cells[i].get(j).cloned();
        let bad = |i: usize| {
            CovfError::spec(
                "table row",
                format!("column {name} of row {i} does not match its type {kind:?}"),
            )
        };
        let col = match kind {
            Kind::Str => {
                let v: Vec<String> = (0..rows.len())
                    .map(|i| match at(i) {
                        Some(Cell::Str(s)) => Ok(s),
                        _ => Err(bad(i)),
                    })
                    .collect::<Result<_>>()?;
                Column::new(name.into(), v)
            }
            Kind::F64 => {
                let v: Vec<f64> = (0..rows.len())
                    .map(|i| match at(i) {
                        Some(Cell::F64(x)) => Ok(x),
                        _ => Err(bad(i)),
                    })
                    .collect::<Result<_>>()?;
                Column::new(name.into(), v)
            }
            Kind::U64 => {
                let v: Vec<Option<u64>> = (0..rows.len())
                    .map(|i| match at(i) {
                        Some(Cell::U64(x)) => Ok(x),
                        _ => Err(bad(i)),
                    })
                    .collect::<Result<_>>()?;
                Column::new(name.into(), v)
            }
            Kind::Bool => {
                let v: Vec<Option<bool>> = (0..rows.len())
                    .map(|i| match at(i) {
                        Some(Cell::Bool(x)) => Ok(x),
                        _ => Err(bad(i)),
                    })
                    .collect::<Result<_>>()?;
                Column::new(name.into(), v)
            }
        };
        cols.push(col);
    }
    Ok(DataFrame::new(rows.len(), cols)?)
}

/// Writes `dir/<name>.parquet` and `dir/<name>.csv`.
pub fn write<R: TidyRow>(dir: &Path, name: &str, rows: &[R]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CovfError::io(dir, e))?;
    let mut df = frame(rows)?;
    let mut pq: Vec<u8> = Vec::new();
    ParquetWriter::new(&mut pq).finish(&mut df)?;
    atomic_write(&dir.join(format!("{name}.parquet")), &pq)?;
    let mut csv: Vec<u8> = Vec::new();
    CsvWriter::new(&mut csv).include_header(true).finish(&mut df)?;
    atomic_write(&dir.join(format!("{name}.csv")), &csv)
}

/// Reads back a table `write` produced, as a frame.
pub fn read(dir: &Path, name: &str) -> Result<DataFrame> {
    let path = dir.join(format!("{name}.parquet"));
    let f = std::fs::File::open(&path).map_err(|e| CovfError::io(&path, e))?;
    ParquetReader::new(f)
        .finish()
        .map_err(|e| CovfError::data(&path, format!("unreadable table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(&'static str, f64, Option<u64>, Option<bool>);

    impl TidyRow for R {
        fn schema() -> &'static [(&'static str, Kind)] {
            &[
                ("run", Kind::Str),
                ("v", Kind::F64),
                ("e", Kind::U64),
                ("b", Kind::Bool),
            ]
        }
        fn cells(&self) -> Vec<Cell> {
            vec![
                Cell::Str(self.0.into()),
                Cell::F64(self.1),
                Cell::U64(self.2),
                Cell::Bool(self.3),
            ]
        }
    }

    #[test]
    fn round_trips_through_parquet_with_nulls_and_writes_csv() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "t",
            &[R("a", 0.5, Some(3), None), R("b", f64::NAN, None, Some(true))],
        )
        .unwrap();
        let df = read(dir.path(), "t").unwrap();
        assert_eq!(df.shape(), (2, 4));
        let e: Vec<Option<u64>> = df.column("e").unwrap().u64().unwrap().iter().collect();
        assert_eq!(e, vec![Some(3), None]);
        let b: Vec<Option<bool>> = df.column("b").unwrap().bool().unwrap().iter().collect();
        assert_eq!(b, vec![None, Some(true)]);
        let csv = std::fs::read_to_string(dir.path().join("t.csv")).unwrap();
        assert!(csv.starts_with("run,v,e,b\na,0.5,3,\n"), "{csv}");
        // An empty table still has its typed columns.
        write::<R>(dir.path(), "empty", &[]).unwrap();
        assert_eq!(read(dir.path(), "empty").unwrap().shape(), (0, 4));
    }
}
