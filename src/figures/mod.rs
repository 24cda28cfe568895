//! Figures 1–5 of the paper, drawn from a study's tidy tables with plotters into
//! `analyses/<study>/figures/<id>.png` and `.svg`. `data` selects what to draw, `chart` and one file per
//! figure draw it, `style` fixes fonts, colours and the atomic PNG + SVG rendering.

pub mod chart;
pub mod data;
pub mod fig1;
pub mod fig2;
pub mod fig3;
pub mod fig4;
pub mod fig5;
pub mod style;

use std::path::{Path, PathBuf};

use data::{LineChart, StudyTables};
use style::SIZE;

use crate::analysis::transfer::Source;
use crate::error::{CovfError, Result};

/// Renders one generic drawing function `f(area, data)` with both backends.
macro_rules! both {
    ($dir:expr, $name:expr, $size:expr, $f:path, $data:expr) => {
        style::render(
            $dir,
            $name,
            $size,
            &|a: &plotters::prelude::DrawingArea<plotters::prelude::BitMapBackend<'_>, plotters::coord::Shift>| {
                $f(a, $data)
            },
            &|a: &plotters::prelude::DrawingArea<plotters::prelude::SVGBackend<'_>, plotters::coord::Shift>| {
                $f(a, $data)
            },
        )
    };
}

/// Every figure id, in order.
pub const ALL: [&str; 8] = ["1a", "1b", "2a", "2a-own", "2b", "3", "4", "5"];

/// Methods Figure 5 compares.
pub const FIG5_METHODS: [&str; 2] = ["apart", "pgd10"];

/// The tables a figure reads (to say what is missing).
pub fn needs(id: &str) -> &'static [&'static str] {
    match id {
        "1a" => &["perturbations"],
        "1b" => &["curves"],
        "2a" | "2a-own" => &["transfer"],
        "2b" => &["gap-pgd10"],
        "3" => &["steps"],
        "4" => &["tradeoff"],
        "5" => &["curves", "gap-pgd20"],
        _ => &[],
    }
}

/// Checks a figure id (`2a`, `fig2a` and `Fig. 2a` all name the same figure).
pub fn parse_id(s: &str) -> Result<String> {
    let t = s.trim().to_ascii_lowercase().replace(['.', ' '], "");
    let t = t.strip_prefix("fig").unwrap_or(&t).to_string();
    if ALL.contains(&t.as_str()) {
        Ok(t)
    } else {
        Err(CovfError::spec(
            "--fig",
            format!("'{s}': figures are {}", ALL.join(", ")),
        ))
    }
}

fn fig5_panels(t: &StudyTables) -> Result<Vec<LineChart>> {
    let m: &[&str] = &FIG5_METHODS;
    let chart = |title: &str, y: &str, series| LineChart {
        title: title.into(),
        x_desc: "Epoch".into(),
        y_desc: y.into(),
        series,
        vlines: Vec::new(),
        integer_x: true,
        scatter: false,
    };
    let mut gap = t.gap(20, Some(m))?;
    gap.title = "(c) Perturbation gap to PGD-20".into();
    Ok(vec![
        chart(
            "(a) Training accuracy",
            "Train accuracy, own perturbation (%)",
            t.curve("train_acc_adv", Some(m))?,
        ),
        chart(
            "(b) Test accuracy under PGD-20",
            "PGD-20 accuracy (%)",
            t.curve("test_acc_pgd20", Some(m))?,
        ),
        gap,
    ])
}

fn nonempty(id: &str, c: LineChart, t: &StudyTables) -> Result<LineChart> {
    if c.is_empty() {
        return Err(CovfError::data(
            &t.dir,
            format!("figure {id}: its table ({}) has no rows to draw", needs(id).join(", ")),
        ));
    }
    Ok(c)
}

/// Draws figure `id` from the tables in `out` into `dir`; returns the files written.
pub fn render(id: &str, out: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let t = StudyTables::new(out);
    let name = format!("fig{id}");
    match id {
        "1a" => {
            let g = t.fig1a()?;
            both!(dir, &name, fig1::size_a(&g), fig1::draw_a, &g)
        }
        "1b" => {
            let c = nonempty(id, t.fig1b()?, &t)?;
            both!(dir, &name, SIZE, fig1::draw_b, &c)
        }
        "2a" => {
            let c = nonempty(id, t.fig2a()?, &t)?;
            both!(dir, &name, SIZE, fig2::draw_a, &c)
        }
        "2a-own" => {
            let c = nonempty(id, t.transfer_chart(Source::Own)?, &t)?;
            both!(dir, &name, SIZE, fig2::draw_a, &c)
        }
        "2b" => {
            let c = nonempty(id, t.gap(10, None)?, &t)?;
            both!(dir, &name, SIZE, fig2::draw_b, &c)
        }
        "3" => {
            let c = nonempty(id, t.fig3()?, &t)?;
            both!(dir, &name, SIZE, fig3::draw, &c)
        }
        "4" => {
            let c = nonempty(id, t.fig4()?, &t)?;
            both!(dir, &name, SIZE, fig4::draw, &c)
        }
        "5" => {
            let panels = fig5_panels(&t)?;
            if panels.iter().all(LineChart::is_empty) {
                return Err(CovfError::data(
                    out,
                    format!("figure 5: no {} run in curves / gap-pgd20", FIG5_METHODS.join(" or ")),
                ));
            }
            let p: &[LineChart] = &panels;
            both!(dir, &name, fig5::size(panels.len()), fig5::draw, p)
        }
        other => Err(CovfError::spec("--fig", format!("'{other}': no such figure"))),
    }
}

/// Whether every table figure `id` needs exists in `out`.
pub fn available(id: &str, out: &Path) -> bool {
    let t = StudyTables::new(out);
    needs(id).iter().all(|n| t.has(n))
}
