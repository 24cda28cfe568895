//! Results as the paper's tables (Table 3's shape: one row per model, one column per attack, then
//! Time/Epoch), rendered as aligned text, Markdown, CSV or LaTeX. Rendering only; no evaluation here.

use std::fmt::Write;

use super::results::EvalRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Csv,
    Latex,
}

/// One table row: a checkpoint, its accuracies (in the table's column order) and its run's time per epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub run: String,
    pub epoch: usize,
    pub cells: Vec<Option<f64>>,
    pub epoch_seconds: Option<f64>,
}

/// The paper's column label for an attack name (`pgd20` -> `PGD-20`, `aa` -> `AA`, `cw` -> `C&W`).
pub fn label(attack: &str) -> String {
    if let Some(rest) = attack.strip_prefix("pgd") {
        return format!("PGD-{rest}");
    }
    match attack {
        "aa" => "AA".into(),
        "cw" => "C&W".into(),
        "gaussian" => "Gaussian".into(),
        "clean" => "Clean".into(),
        "fgsm" => "FGSM".into(),
        other => other.to_string(),
    }
}

/// Builds rows from stored results: for each (run, epoch) present, the accuracy of each column's attack
/// (the most recent row when several ε, n or seeds were stored: the last in file order).
pub fn rows_from_results(
    results: &[EvalRow],
    columns: &[String],
    epoch_seconds: &dyn Fn(&str) -> Option<f64>,
) -> Vec<TableRow> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in results {
        let k = (r.run.clone(), r.epoch);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(run, epoch)| TableRow {
            cells: columns
                .iter()
                .map(|c| {
                    results
                        .iter()
                        .rev()
                        .find(|r| r.run == run && r.epoch == epoch && &r.attack == c)
                        .map(|r| r.accuracy)
                })
                .collect(),
            epoch_seconds: epoch_seconds(&run),
            run,
            epoch,
        })
        .collect()
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}", 100.0 * v)).unwrap_or_else(|| "-".into())
}

fn secs(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
}

fn latex_escape(s: &str) -> String {
    s.replace('\\', "\\textbackslash{}")
        .replace('&', "\\&")
        .replace('_', "\\_")
        .replace('%', "\\%")
        .replace('#', "\\#")
}

/// Renders the table; accuracies in percent with two decimals, time per epoch in whole seconds.
pub fn render(columns: &[String], rows: &[TableRow], format: Format) -> String {
    let mut head: Vec<String> = vec!["Run".into(), "Epoch".into()];
    head.extend(columns.iter().map(|c| label(c)));
    head.push("Time/Epoch (s)".into());
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut v = vec![r.run.clone(), r.epoch.to_string()];
            v.extend(r.cells.iter().map(|c| pct(*c)));
            v.push(secs(r.epoch_seconds));
            v
        })
        .collect();
    let mut out = String::new();
    match format {
        Format::Csv => {
            let quote = |s: &String| {
                if s.contains([',', '"', '\n']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.clone()
                }
            };
            for line in std::iter::once(&head).chain(&body) {
                let _ = writeln!(out, "{}", line.iter().map(quote).collect::<Vec<_>>().join(","));
            }
        }
        Format::Markdown => {
            let _ = writeln!(out, "| {} |", head.join(" | "));
            let align: Vec<&str> = head
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---" } else { "---:" })
                .collect();
            let _ = writeln!(out, "| {} |", align.join(" | "));
            for line in &body {
                let _ = writeln!(out, "| {} |", line.join(" | "));
            }
        }
        Format::Latex => {
            let _ = writeln!(out, "\\begin{{tabular}}{{l{}}}", "r".repeat(head.len() - 1));
            let _ = writeln!(out, "\\toprule");
            let h: Vec<String> = head.iter().map(|s| latex_escape(s)).collect();
            let _ = writeln!(out, "{} \\\\", h.join(" & "));
            let _ = writeln!(out, "\\midrule");
            for line in &body {
                let l: Vec<String> = line.iter().map(|s| latex_escape(s)).collect();
                let _ = writeln!(out, "{} \\\\", l.join(" & "));
            }
            let _ = writeln!(out, "\\bottomrule\n\\end{{tabular}}");
        }
        Format::Text => {
            let widths: Vec<usize> = (0..head.len())
                .map(|i| {
                    std::iter::once(&head)
                        .chain(&body)
                        .map(|l| l[i].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for line in std::iter::once(&head).chain(&body) {
                let cells: Vec<String> = line
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(i, (s, &w))| if i == 0 { format!("{s:<w$}") } else { format!("{s:>w$}") })
                    .collect();
                let _ = writeln!(out, "{}", cells.join("  ").trim_end());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_table_3_shape_in_every_format() {
        let cols: Vec<String> = ["pgd20", "aa", "cw", "gaussian", "clean"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rows = vec![TableRow {
            run: "apart_s0".into(),
            epoch: 30,
            cells: vec![Some(0.513), Some(0.4592), None, Some(0.7365), Some(0.828)],
            epoch_seconds: Some(29.2),
        }];
        let md = render(&cols, &rows, Format::Markdown);
        assert!(md.starts_with("| Run | Epoch | PGD-20 | AA | C&W | Gaussian | Clean | Time/Epoch (s) |"));
        assert!(
            md.contains("| apart_s0 | 30 | 51.30 | 45.92 | - | 73.65 | 82.80 | 29 |"),
            "{md}"
        );
        let tex = render(&cols, &rows, Format::Latex);
        assert!(
            tex.contains("C\\&W") && tex.contains("apart\\_s0 & 30 & 51.30"),
            "{tex}"
        );
        let csv = render(&cols, &rows, Format::Csv);
        assert_eq!(csv.lines().nth(1), Some("apart_s0,30,51.30,45.92,-,73.65,82.80,29"));
        let txt = render(&cols, &rows, Format::Text);
        assert_eq!(txt.lines().count(), 2);
    }
}
