//! Figure 3: APART's learned step sizes α_i per epoch, one line per layer.

use super::data::{f64s, group, strs, u64s, LineChart, Series, StudyTables};
use super::Figure;
use crate::error::Result;

pub struct Fig3;

impl Figure for Fig3 {
    type Data = LineChart;
    const ID: &'static str = "3";
    const NEEDS: &'static [&'static str] = &["steps"];

    fn select(t: &StudyTables) -> Result<LineChart> {
        let (df, p) = t.read("steps")?;
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
}
