//! Figure 4: clean vs PGD-20 accuracy of models trained at several ε_train, one series per method, each
//! point labelled with its ε_train.

use super::data::{f64s, strs, trim, u64s, LineChart, Series, StudyTables};
use super::style::{display_name, method_index};
use super::Figure;
use crate::error::Result;

pub struct Fig4;

impl Figure for Fig4 {
    type Data = LineChart;
    const ID: &'static str = "4";
    const NEEDS: &'static [&'static str] = &["tradeoff"];

    fn select(t: &StudyTables) -> Result<LineChart> {
        let (df, p) = t.read("tradeoff")?;
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
}
