//! What the figures draw, read from a study's tidy tables: series of points per run, the perturbation
//! images, markers for CO epochs. Selection and labelling only; every number was computed by an analysis.

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::*;

use super::style::{display_name, method_index};
use crate::analysis::tidy;
use crate::analysis::transfer::Source;
use crate::error::{CovfError, Result};

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

fn strs(df: &DataFrame, c: &str, p: &Path) -> Result<Vec<String>> {
    crate::run::metrics::col_str(df, c, p)
}
fn u64s(df: &DataFrame, c: &str, p: &Path) -> Result<Vec<u64>> {
    crate::run::metrics::col_u64(df, c, p)
}
fn f64s(df: &DataFrame, c: &str, p: &Path) -> Result<Vec<f64>> {
    crate::run::metrics::col_f64(df, c, p)
}

/// A run, its method, and its points.
type Group = (String, String, Vec<(f64, f64)>);

/// Groups (key, x, y) triples into series in first-seen order, x ascending within each.
fn group(keys: &[(String, String)], xs: &[f64], ys: &[f64]) -> Vec<Group> {
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
fn labelled(groups: Vec<Group>, scale: f64) -> Vec<Series> {
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
            return Err(CovfError::data(
                &path,
                format!(
                    "missing: run `covf analyze {}` for this study first",
                    table.split('-').next().unwrap_or(table)
                ),
            ));
        }
        Ok(path)
    }

    fn read(&self, table: &str) -> Result<(DataFrame, std::path::PathBuf)> {
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

    fn has_column(&self, table: &str, column: &str) -> Result<bool> {
        let (mut lf, path) = self.scan(table)?;
        let schema = lf
            .collect_schema()
            .map_err(|e| CovfError::data(&path, format!("unreadable table: {e}")))?;
        Ok(schema.contains(column))
    }

    /// The rows of `table` whose `column` is `value`: a lazy scan, so the filter runs as the file is read.
    fn read_where(&self, table: &str, column: &str, value: &str) -> Result<(DataFrame, std::path::PathBuf)> {
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

    fn co_lines(&self, runs: &[String]) -> Result<Vec<(f64, String)>> {
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

    /// Figure 1b: test PGD-10 accuracy per epoch.
    pub fn fig1b(&self) -> Result<LineChart> {
        let series = self.curve("test_acc_pgd10", None)?;
        let runs = self.runs_of("curves")?;
        Ok(LineChart {
            title: "Test accuracy under PGD-10".into(),
            x_desc: "Epoch".into(),
            y_desc: "PGD-10 accuracy (%)".into(),
            series,
            vlines: self.co_lines(&runs)?,
            integer_x: true,
            scatter: false,
        })
    }

    fn runs_of(&self, table: &str) -> Result<Vec<String>> {
        let (df, p) = self.read(table)?;
        strs(&df, "run", &p)
    }

    /// Figure 2a as the paper draws it: plain FGSM generated on each run's checkpoints, transferred to the
    /// reference, per epoch, with the random-sign baseline.
    pub fn fig2a(&self) -> Result<LineChart> {
        self.transfer_chart(Source::Fgsm)
    }

    /// Transfer strength of the rows from one generator (`fgsm`: Figure 2a; `own`: the methods' own
    /// generators, figure `2a-own`). Tables from before the `generator` column hold own-generator rows.
    pub fn transfer_chart(&self, source: Source) -> Result<LineChart> {
        let (df, p) = if self.has_column("transfer", "generator")? {
            self.read_where("transfer", "generator", source.name())?
        } else {
            let (df, p) = self.read("transfer")?;
            (if source == Source::Own { df } else { df.head(Some(0)) }, p)
        };
        let (runs, ms, ep, acc, random, reference) = (
            strs(&df, "run", &p)?,
            strs(&df, "method", &p)?,
            u64s(&df, "epoch", &p)?,
            f64s(&df, "acc_ref", &p)?,
            f64s(&df, "random_acc", &p)?,
            strs(&df, "reference", &p)?,
        );
        let keys: Vec<(String, String)> = runs.iter().cloned().zip(ms.iter().cloned()).collect();
        let xs: Vec<f64> = ep.iter().map(|&e| e as f64).collect();
        let mut series = labelled(group(&keys, &xs, &acc), 100.0);
        // The baseline depends only on the reference and ε: one dashed line per distinct value.
        let mut seen: Vec<u64> = Vec::new();
        let (lo, hi) = xs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
        for &r in &random {
            if !r.is_finite() || seen.contains(&r.to_bits()) {
                continue;
            }
            seen.push(r.to_bits());
            series.push(Series {
                label: "Random (±ε signs)".into(),
                style: 0,
                points: vec![(lo, 100.0 * r), (hi, 100.0 * r)],
                reference: true,
                point_labels: Vec::new(),
            });
        }
        let reference = reference.first().cloned().unwrap_or_default();
        let of = match source {
            Source::Fgsm => "FGSM on each run's checkpoints",
            Source::Own => "each method's own generator",
        };
        Ok(LineChart {
            title: format!("Transfer strength on {} ({of})", reference.replace('@', " epoch ")),
            x_desc: "Epoch of the generating checkpoint".into(),
            y_desc: "Reference accuracy (%, lower = stronger)".into(),
            series,
            vlines: self.co_lines(&runs)?,
            integer_x: true,
            scatter: false,
        })
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

    /// Figure 3: APART's learned step sizes per epoch, one line per layer.
    pub fn fig3(&self) -> Result<LineChart> {
        let (df, p) = self.read("steps")?;
        let (runs, ep, layer, alpha) = (
            strs(&df, "run", &p)?,
            u64s(&df, "epoch", &p)?,
            strs(&df, "layer", &p)?,
            f64s(&df, "alpha", &p)?,
        );
        let several = runs.iter().any(|r| Some(r) != runs.first());
        let name = |l: &str| match l {
            "input" => "input (α1)".to_string(),
            "init" => "init scale (αω)".to_string(),
            b => b
                .strip_prefix("block")
                .map_or(b.to_string(), |k| format!("block {k} input")),
        };
        let keys: Vec<(String, String)> = runs
            .iter()
            .zip(&layer)
            .map(|(r, l)| {
                (
                    if several { format!("{} ({r})", name(l)) } else { name(l) },
                    String::new(),
                )
            })
            .collect();
        let xs: Vec<f64> = ep.iter().map(|&e| e as f64).collect();
        let series = group(&keys, &xs, &alpha)
            .into_iter()
            .enumerate()
            .map(|(i, (label, _, points))| Series {
                label,
                style: i,
                points,
                reference: false,
                point_labels: Vec::new(),
            })
            .collect();
        Ok(LineChart {
            title: "APART step sizes".into(),
            x_desc: "Epoch".into(),
            y_desc: "Step size α (pixel units)".into(),
            series,
            vlines: Vec::new(),
            integer_x: true,
            scatter: false,
        })
    }

    /// Figure 4: clean vs robust accuracy, one series per method, points labelled with ε_train.
    pub fn fig4(&self) -> Result<LineChart> {
        let (df, p) = self.read("tradeoff")?;
        let (runs, ms, eps, eps_eval, clean, robust, steps) = (
            strs(&df, "run", &p)?,
            strs(&df, "method", &p)?,
            f64s(&df, "eps_train", &p)?,
            f64s(&df, "eps_eval", &p)?,
            f64s(&df, "clean", &p)?,
            f64s(&df, "robust", &p)?,
            u64s(&df, "pgd_steps", &p)?,
        );
        let mut order: Vec<String> = Vec::new();
        for m in &ms {
            if !order.contains(m) {
                order.push(m.clone());
            }
        }
        let mut series = Vec::new();
        for m in &order {
            let mut pts: Vec<(f64, f64, f64)> = (0..runs.len())
                .filter(|&i| &ms[i] == m)
                .map(|i| (eps[i], 100.0 * clean[i], 100.0 * robust[i]))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            series.push(Series {
                label: display_name(m),
                style: method_index(m, &order),
                points: pts.iter().map(|p| (p.1, p.2)).collect(),
                reference: false,
                point_labels: pts.iter().map(|p| format!("ε={}", trim(p.0))).collect(),
            });
        }
        series.sort_by_key(|s| s.style);
        Ok(LineChart {
            title: format!(
                "Clean vs robust accuracy (PGD-{}, ε = {})",
                steps.first().copied().unwrap_or(20),
                eps_eval.first().map_or("?".into(), |e| trim(*e))
            ),
            x_desc: "Clean accuracy (%)".into(),
            y_desc: format!("PGD-{} accuracy (%)", steps.first().copied().unwrap_or(20)),
            series,
            vlines: Vec::new(),
            integer_x: false,
            scatter: true,
        })
    }

    /// Figure 1a: the chosen run's perturbations (all epochs and examples in `perturbations.parquet`).
    pub fn fig1a(&self) -> Result<PerturbationGrid> {
        let (df, p) = self.read("perturbations")?;
        let dataset = strs(&df, "dataset", &p)?;
        let (runs, ms, ep, ex, label, pred, eps) = (
            strs(&df, "run", &p)?,
            strs(&df, "method", &p)?,
            u64s(&df, "epoch", &p)?,
            u64s(&df, "example", &p)?,
            u64s(&df, "label", &p)?,
            u64s(&df, "pred_adv", &p)?,
            f64s(&df, "eps", &p)?,
        );
        let (ch, row, col, x, delta) = (
            u64s(&df, "channel", &p)?,
            u64s(&df, "row", &p)?,
            u64s(&df, "col", &p)?,
            f64s(&df, "x", &p)?,
            f64s(&df, "delta", &p)?,
        );
        let Some(run) = runs.first().cloned() else {
            return Err(CovfError::data(&p, "holds no perturbations"));
        };
        let sel: Vec<usize> = (0..runs.len()).filter(|&i| runs[i] == run).collect();
        let dim = |v: &[u64]| sel.iter().map(|&i| v[i] as usize + 1).max().unwrap_or(0);
        let (c, h, w) = (dim(&ch), dim(&row), dim(&col));
        let mut epochs: Vec<u64> = sel.iter().map(|&i| ep[i]).collect();
        epochs.sort_unstable();
        epochs.dedup();
        let mut examples: Vec<u64> = sel.iter().map(|&i| ex[i]).collect();
        examples.sort_unstable();
        examples.dedup();
        let blank = || Image {
            channels: c,
            height: h,
            width: w,
            values: vec![f64::NAN; c * h * w],
        };
        let mut rows: Vec<ImageRow> = examples
            .iter()
            .map(|_| ImageRow {
                label: 0,
                input: blank(),
                deltas: epochs.iter().map(|&e| (e, blank(), 0)).collect(),
            })
            .collect();
        for &i in &sel {
            let (Some(r), Some(k)) = (
                examples.iter().position(|&e| e == ex[i]),
                epochs.iter().position(|&e| e == ep[i]),
            ) else {
                continue;
            };
            let at = ((ch[i] as usize) * h + row[i] as usize) * w + col[i] as usize;
            let target = &mut rows[r];
            target.label = label[i];
            target.input.values[at] = x[i];
            target.deltas[k].1.values[at] = delta[i];
            target.deltas[k].2 = pred[i];
        }
        let co_epoch = self
            .co_epochs()?
            .into_iter()
            .find(|(r, _, _)| *r == run)
            .map(|(_, _, e)| e);
        let kind = sel
            .first()
            .and_then(|&i| crate::data::DatasetKind::parse(&dataset[i]).ok());
        let classes = (0..100u64)
            .map(|k| kind.map_or_else(|| k.to_string(), |d| d.class_name(k)))
            .collect();
        Ok(PerturbationGrid {
            classes,
            method: sel.first().map(|&i| ms[i].clone()).unwrap_or_default(),
            eps: sel.first().map_or(f64::NAN, |&i| eps[i]),
            run,
            epochs,
            co_epoch,
            rows,
        })
    }
}

/// `0.15` rather than `0.15000000596046448` (ε is stored from an f32).
pub fn trim(v: f64) -> String {
    let s = format!("{:.4}", v);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

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

    #[test]
    fn trims_f32_noise_from_eps() {
        assert_eq!(trim(0.15000000596046448), "0.15");
        assert_eq!(trim(0.1), "0.1");
        assert_eq!(trim(8.0 / 255.0), "0.0314");
    }
}
