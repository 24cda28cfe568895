//! What the figures share: their data types (series, charts, perturbation images) and `StudyTables`, the
//! study's tidy tables with the selections several figures use (curves, the gap, CO markers). Each
//! figure's own selection is in its file; every number was computed by an analysis.

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::*;

use super::style::{display_name, method_index};
use crate::analysis::tidy;
use crate::error::{CovfError, Result};
use crate::monitor::detect::changes;
use crate::monitor::MonitorRow;
use crate::run::metrics::read_monitor;

/// One line (or point set) of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    /// Palette and marker index (fixed per method).
    pub style: usize,
    pub points: Vec<(f64, f64)>,
    /// Reference lines (random baseline) are drawn dashed and grey.
    pub reference: bool,
    /// Text beside each point (Figure 4: ε_train); empty for none.
    pub point_labels: Vec<String>,
}

/// A chart of lines over epochs (or any x).
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub series: Vec<Series>,
    /// Vertical markers: (x, text), e.g. the CO epoch.
    pub vlines: Vec<(f64, String)>,
    /// Whole-number x ticks (epochs).
    pub integer_x: bool,
    /// Points labelled and linked thinly in order (Figure 4), rather than epoch curves.
    pub scatter: bool,
}

impl LineChart {
    pub fn is_empty(&self) -> bool {
        self.series.iter().all(|s| s.points.is_empty())
    }
}

/// An image in channel-major layout, values as stored (pixels in [0, 1], δ in [−ε, ε]).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub values: Vec<f64>,
}

impl Image {
    pub fn at(&self, c: usize, r: usize, q: usize) -> f64 {
        self.values
            .get((c * self.height + r) * self.width + q)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// One test image and its perturbation at each chosen epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    pub label: u64,
    pub input: Image,
    /// (epoch, δ, prediction on x + δ).
    pub deltas: Vec<(u64, Image, u64)>,
}

/// Figure 1a's grid.
#[derive(Debug, Clone, PartialEq)]
pub struct PerturbationGrid {
    pub run: String,
    pub method: String,
    /// Class names in label order (the number where the dataset has none).
    pub classes: Vec<String>,
    pub eps: f64,
    pub epochs: Vec<u64>,
    pub co_epoch: Option<u64>,
    pub rows: Vec<ImageRow>,
}

impl PerturbationGrid {
    pub fn class(&self, k: u64) -> String {
        self.classes.get(k as usize).cloned().unwrap_or_else(|| k.to_string())
    }
}

/// The tables of one study's `out/` directory that exist.
pub struct StudyTables {
    pub dir: std::path::PathBuf,
}

pub fn strs(df: &DataFrame, c: &str, p: &Path) -> Result<Vec<String>> {
    crate::run::metrics::col_str(df, c, p)
}
pub fn u64s(df: &DataFrame, c: &str, p: &Path) -> Result<Vec<u64>> {
    crate::run::metrics::col_u64(df, c, p)
}
pub fn f64s(df: &DataFrame, c: &str, p: &Path) -> Result<Vec<f64>> {
    crate::run::metrics::col_f64(df, c, p)
}

/// A run, its method, and its points.
pub type Group = (String, String, Vec<(f64, f64)>);

/// Groups (key, x, y) triples into series in first-seen order, x ascending within each.
pub fn group(keys: &[(String, String)], xs: &[f64], ys: &[f64]) -> Vec<Group> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut by: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        if !by.contains_key(k) {
            order.push(k.clone());
        }
        by.entry(k.clone()).or_default().push((xs[i], ys[i]));
    }
    order
        .into_iter()
        .map(|k| {
            let mut pts = by.remove(&k).unwrap_or_default();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (k.0, k.1, pts)
        })
        .collect()
}

/// Series labels: the method's display name, plus the run name when a method has several runs.
pub fn labelled(groups: Vec<Group>, scale: f64) -> Vec<Series> {
    let methods: Vec<String> = groups.iter().map(|g| g.1.clone()).collect();
    let mut series: Vec<Series> = groups
        .iter()
        .map(|(run, method, pts)| {
            let dup = methods.iter().filter(|m| *m == method).count() > 1;
            Series {
                label: if dup {
                    format!("{} ({run})", display_name(method))
                } else {
                    display_name(method)
                },
                style: method_index(method, &methods),
                points: pts.iter().map(|&(x, y)| (x, y * scale)).collect(),
                reference: false,
                point_labels: Vec::new(),
            }
        })
        .collect();
    // Legends list methods in the same order in every figure.
    series.sort_by_key(|s| s.style);
    series
}

/// The monitor's rows of a study (`out/monitor.parquet`, written by `covf analyze monitor`).
pub fn monitor_rows(t: &StudyTables) -> Result<Vec<MonitorRow>> {
    Ok(read_monitor(&t.dir)?.unwrap_or_default())
}

/// Steps per epoch of a run, from any of its points inside an epoch (step = (epoch − 1 + frac)·steps).
fn steps_per_epoch(rows: &[&MonitorRow]) -> Option<f64> {
    rows.iter()
        .find(|r| r.epoch_frac > 0.0)
        .map(|r| (r.step as f64 / (r.epoch as f64 - 1.0 + r.epoch_frac)).round())
}

/// Lines of one monitor metric over training steps, one per run (values × `scale`), with the epoch boundaries
/// and each run's CO step (the `pgd` detector) as vertical markers.
pub fn step_series(rows: &[MonitorRow], metric: &str, scale: f64) -> (Vec<Series>, Vec<(f64, String)>) {
    let mut keys = Vec::new();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for r in rows.iter().filter(|r| r.metric == metric && r.value.is_finite()) {
        keys.push((r.run.clone(), r.method.clone()));
        xs.push(r.step as f64);
        ys.push(r.value);
    }
    let series = labelled(group(&keys, &xs, &ys), scale);
    let mut runs: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        if !runs.iter().any(|(n, _)| *n == r.run) {
            runs.push((r.run.as_str(), r.method.as_str()));
        }
    }
    let mut vlines = Vec::new();
    if let Some((first, _)) = runs.first() {
        let mine: Vec<&MonitorRow> = rows.iter().filter(|r| r.run == *first).collect();
        let last = mine.iter().map(|r| r.epoch).max().unwrap_or(1);
        if let Some(k) = steps_per_epoch(&mine) {
            vlines.extend((1..last).map(|e| (e as f64 * k, format!("epoch {}", e + 1))));
        }
    }
    for (run, method) in runs {
        let mine: Vec<MonitorRow> = rows.iter().filter(|r| r.run == run).cloned().collect();
        if let Some(s) = changes(&mine, 0.2).co_step {
            vlines.push((s as f64, format!("CO ({})", display_name(method))));
        }
    }
    (series, vlines)
}

/// A chart of one monitor metric over training steps.
pub fn step_chart(rows: &[MonitorRow], metric: &str, scale: f64, title: &str, y_desc: &str) -> LineChart {
    let (series, vlines) = step_series(rows, metric, scale);
    LineChart {
        title: title.into(),
        x_desc: "Training step".into(),
        y_desc: y_desc.into(),
        series,
        vlines,
        integer_x: false,
        scatter: false,
    }
}

impl StudyTables {
    pub fn new(out: &Path) -> StudyTables {
        StudyTables { dir: out.to_path_buf() }
    }

    pub fn has(&self, table: &str) -> bool {
        self.dir.join(format!("{table}.parquet")).is_file()
    }

    fn path_of(&self, table: &str) -> Result<std::path::PathBuf> {
        let path = self.dir.join(format!("{table}.parquet"));
        if !path.is_file() {
            let how = crate::analysis::registry::producer(table).unwrap_or_else(|| "covf analyze".into());
            return Err(CovfError::data(
                &path,
                format!("missing: run `{how}` for this study first"),
            ));
        }
        Ok(path)
    }

    pub fn read(&self, table: &str) -> Result<(DataFrame, std::path::PathBuf)> {
        let path = self.path_of(table)?;
        Ok((tidy::read(&self.dir, table)?, path))
    }

    fn scan(&self, table: &str) -> Result<(LazyFrame, std::path::PathBuf)> {
        let path = self.path_of(table)?;
        let text = path
            .to_str()
            .ok_or_else(|| CovfError::data(&path, "the path is not UTF-8"))?;
        let lf = LazyFrame::scan_parquet(PlRefPath::new(text), ScanArgsParquet::default())
            .map_err(|e| CovfError::data(&path, format!("unreadable table: {e}")))?;
        Ok((lf, path))
    }

    pub fn has_column(&self, table: &str, column: &str) -> Result<bool> {
        let (mut lf, path) = self.scan(table)?;
        let schema = lf
            .collect_schema()
            .map_err(|e| CovfError::data(&path, format!("unreadable table: {e}")))?;
        Ok(schema.contains(column))
    }

    /// The rows of `table` whose `column` is `value`: a lazy scan, so the filter runs as the file is read.
    pub fn read_where(&self, table: &str, column: &str, value: &str) -> Result<(DataFrame, std::path::PathBuf)> {
        let (lf, path) = self.scan(table)?;
        let df = lf
            .filter(col(column).eq(lit(value)))
            .collect()
            .map_err(|e| CovfError::data(&path, format!("unreadable table: {e}")))?;
        Ok((df, path))
    }

    /// CO epochs per run from `co.parquet`, when the study has one.
    pub fn co_epochs(&self) -> Result<Vec<(String, String, u64)>> {
        if !self.has("co") {
            return Ok(Vec::new());
        }
        let (df, p) = self.read("co")?;
        let runs = strs(&df, "run", &p)?;
        let methods = strs(&df, "method", &p)?;
        let co: Vec<Option<u64>> = df
            .column("co_epoch")
            .and_then(|c| c.u64().cloned())
            .map_err(|e| CovfError::data(&p, format!("column co_epoch: {e}")))?
            .iter()
            .collect();
        Ok(runs
            .into_iter()
            .zip(methods)
            .zip(co)
            .filter_map(|((r, m), c)| c.map(|c| (r, m, c)))
            .collect())
    }

    pub fn co_lines(&self, runs: &[String]) -> Result<Vec<(f64, String)>> {
        Ok(self
            .co_epochs()?
            .into_iter()
            .filter(|(r, _, _)| runs.contains(r))
            .map(|(_, m, e)| (e as f64, format!("CO ({})", display_name(&m))))
            .collect())
    }

    /// A metric of `curves.parquet` per epoch, one series per run (optionally only some methods).
    pub fn curve(&self, metric: &str, methods: Option<&[&str]>) -> Result<Vec<Series>> {
        let (df, p) = self.read_where("curves", "metric", metric)?;
        let (runs, ms, ep, val) = (
            strs(&df, "run", &p)?,
            strs(&df, "method", &p)?,
            u64s(&df, "epoch", &p)?,
            f64s(&df, "value", &p)?,
        );
        let mut keys = Vec::new();
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for i in 0..runs.len() {
            if methods.is_some_and(|m| !m.contains(&ms[i].as_str())) {
                continue;
            }
            keys.push((runs[i].clone(), ms[i].clone()));
            xs.push(ep[i] as f64);
            ys.push(val[i]);
        }
        Ok(labelled(group(&keys, &xs, &ys), 100.0))
    }

    pub fn runs_of(&self, table: &str) -> Result<Vec<String>> {
        let (df, p) = self.read(table)?;
        strs(&df, "run", &p)
    }

    /// The strength gap to PGD-`steps` per epoch (Figures 2b and 5c).
    pub fn gap(&self, steps: u64, methods: Option<&[&str]>) -> Result<LineChart> {
        let table = format!("gap-pgd{steps}");
        let (df, p) = self.read(&table)?;
        let (runs, ms, ep, gap) = (
            strs(&df, "run", &p)?,
            strs(&df, "method", &p)?,
            u64s(&df, "epoch", &p)?,
            f64s(&df, "gap", &p)?,
        );
        let (mut keys, mut xs, mut ys) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs.len() {
            if methods.is_some_and(|m| !m.contains(&ms[i].as_str())) {
                continue;
            }
            keys.push((runs[i].clone(), ms[i].clone()));
            xs.push(ep[i] as f64);
            ys.push(gap[i]);
        }
        let shown: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
        Ok(LineChart {
            title: format!("Perturbation gap to PGD-{steps}"),
            x_desc: "Epoch".into(),
            y_desc: format!("Gap L(δ PGD-{steps}) − L(own δ) (nats)"),
            series: labelled(group(&keys, &xs, &ys), 1.0),
            vlines: self.co_lines(&shown)?,
            integer_x: true,
            scatter: false,
        })
    }
}

pub use crate::analysis::registry::trim;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_first_seen_order_and_sort_x() {
        let keys = vec![
            ("b".to_string(), "fgsm".to_string()),
            ("a".to_string(), "pgd10".to_string()),
            ("b".to_string(), "fgsm".to_string()),
        ];
        let g = group(&keys, &[2.0, 1.0, 1.0], &[0.2, 0.5, 0.1]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, "b");
        assert_eq!(g[0].2, vec![(1.0, 0.1), (2.0, 0.2)]);
        let s = labelled(g, 100.0);
        assert_eq!(s[0].label, "FGSM");
        assert_eq!(s[1].label, "PGD-10");
        assert!((s[0].points[1].1 - 20.0).abs() < 1e-12);
    }
}
