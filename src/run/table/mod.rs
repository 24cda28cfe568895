//! Every table covf writes (a run's metrics and step sizes, `covf eval`'s results and checks, the analyses'
//! tidy tables): rows → a polars frame with typed columns, written as `<name>.parquet` (canonical) and
//! `<name>.csv`, each atomically. A row type is any struct that derives
//! `Serialize` and `Deserialize`: its columns are its fields (derive.rs), never a hand-kept list.

use std::path::Path;

mod derive;

use polars::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::checkpoint::atomic_write;
use crate::error::{CovfError, Result};

/// One value of a row; the column's type is its `Kind`.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Str(String),
    F64(f64),
    U64(Option<u64>),
    Bool(Option<bool>),
    /// A `None` field: null in a count or flag column.
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    F64,
    U64,
    Bool,
}

/// A table row: a struct of strings, numbers, flags and options of them.
pub trait TidyRow: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> TidyRow for T {}

pub fn frame<R: TidyRow>(rows: &[R]) -> Result<DataFrame> {
    let bad_type = |e: derive::Unsupported| CovfError::spec("table row", e.to_string());
    let schema = derive::schema::<R>().map_err(bad_type)?;
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(derive::cells)
        .collect::<std::result::Result<_, _>>()
        .map_err(bad_type)?;
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
                        Some(Cell::Null) => Ok(None),
                        _ => Err(bad(i)),
                    })
                    .collect::<Result<_>>()?;
                Column::new(name.into(), v)
            }
            Kind::Bool => {
                let v: Vec<Option<bool>> = (0..rows.len())
                    .map(|i| match at(i) {
                        Some(Cell::Bool(x)) => Ok(x),
                        Some(Cell::Null) => Ok(None),
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

    #[derive(serde::Serialize, serde::Deserialize)]
    struct R {
        run: String,
        v: f64,
        e: Option<u64>,
        b: Option<bool>,
    }

    fn r(run: &str, v: f64, e: Option<u64>, b: Option<bool>) -> R {
        R {
            run: run.into(),
            v,
            e,
            b,
        }
    }

    #[test]
    fn columns_come_from_the_fields_in_order() {
        assert_eq!(
            super::derive::schema::<R>().unwrap(),
            [
                ("run", Kind::Str),
                ("v", Kind::F64),
                ("e", Kind::U64),
                ("b", Kind::Bool)
            ]
        );
        assert_eq!(
            super::derive::cells(&r("a", 0.5, None, Some(true))).unwrap(),
            [
                Cell::Str("a".into()),
                Cell::F64(0.5),
                Cell::Null,
                Cell::Bool(Some(true))
            ]
        );
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Nested {
            inner: Vec<u64>,
        }
        assert!(super::derive::schema::<Nested>().is_err());
        assert!(frame(&[Nested { inner: vec![1] }]).is_err());
    }

    #[test]
    fn round_trips_through_parquet_with_nulls_and_writes_csv() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "t",
            &[r("a", 0.5, Some(3), None), r("b", f64::NAN, None, Some(true))],
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
