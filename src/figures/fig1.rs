//! Figure 1: (a) the run's perturbations δ as images for epochs around CO, beside the clean input; (b) test
//! accuracy under PGD-10 per epoch.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::data::{f64s, strs, u64s, Image, ImageRow, LineChart, PerturbationGrid, StudyTables};
use super::style::{diverging, grey, plot_err, FONT, LABEL_PT, TICK_PT};
use super::{Drawing, Figure};
use crate::error::{CovfError, Result};

/// Figure 1a: the chosen run's perturbations (all epochs and examples in `perturbations.parquet`).
pub struct Fig1a;

impl Figure for Fig1a {
    type Data = PerturbationGrid;
    const ID: &'static str = "1a";
    const NEEDS: &'static [&'static str] = &["perturbations"];

    fn select(t: &StudyTables) -> Result<PerturbationGrid> {
        let (df, p) = t.read("perturbations")?;
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
        let co_epoch = t
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

impl Drawing for PerturbationGrid {
    /// A grid of `rows` examples and `epochs` perturbations.
    fn size(&self) -> (u32, u32) {
        let cols = 1 + self.epochs.len() as u32;
        let rows = self.rows.len().max(1) as u32;
        ((cols * 156 + 120).max(760), rows * 184 + 96)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        draw_a(area, self)
    }
}

/// Figure 1b: test PGD-10 accuracy per epoch, CO epochs marked.
pub struct Fig1b;

impl Figure for Fig1b {
    type Data = LineChart;
    const ID: &'static str = "1b";
    const NEEDS: &'static [&'static str] = &["curves"];

    fn select(t: &StudyTables) -> Result<LineChart> {
        let series = t.curve("test_acc_pgd10", None)?;
        let runs = t.runs_of("curves")?;
        Ok(LineChart {
            title: "Test accuracy under PGD-10".into(),
            x_desc: "Epoch".into(),
            y_desc: "PGD-10 accuracy (%)".into(),
            series,
            vlines: t.co_lines(&runs)?,
            integer_x: true,
            scatter: false,
        })
    }
}

/// Draws one image into a cell: greyscale (or RGB) for inputs, the diverging map of δ/ε for perturbations
/// (RGB perturbations as (δ/ε + 1)/2 per channel).
fn image<DB: DrawingBackend>(cell: &DrawingArea<DB, Shift>, img: &Image, eps: Option<f64>) -> Result<()> {
    let here = std::path::Path::new("figure 1a");
    let (w, h) = cell.dim_in_pixel();
    let side = (w.min(h) as usize).max(1);
    let px = (side / img.width.max(img.height).max(1)).max(1) as i32;
    let x0 = (w as i32 - px * img.width as i32) / 2;
    let y0 = (h as i32 - px * img.height as i32) / 2;
    for r in 0..img.height {
        for q in 0..img.width {
            let colour = match (eps, img.channels) {
                (None, 3) => RGBColor(
                    grey(img.at(0, r, q)).0,
                    grey(img.at(1, r, q)).0,
                    grey(img.at(2, r, q)).0,
                ),
                (None, _) => grey(img.at(0, r, q)),
                (Some(e), 3) => {
                    let v = |c| grey((img.at(c, r, q) / e + 1.0) / 2.0).0;
                    RGBColor(v(0), v(1), v(2))
                }
                (Some(e), _) => diverging(img.at(0, r, q) / e),
            };
            let (x, y) = (x0 + q as i32 * px, y0 + r as i32 * px);
            cell.draw(&Rectangle::new([(x, y), (x + px, y + px)], colour.filled()))
                .map_err(|e| plot_err(here, e))?;
        }
    }
    cell.draw(&Rectangle::new(
        [
            (x0 - 1, y0 - 1),
            (x0 + px * img.width as i32, y0 + px * img.height as i32),
        ],
        BLACK.mix(0.4).stroke_width(1),
    ))
    .map_err(|e| plot_err(here, e))?;
    Ok(())
}

fn draw_a<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, g: &PerturbationGrid) -> Result<()> {
    let here = std::path::Path::new("figure 1a");
    let e = |err: DrawingAreaErrorKind<DB::ErrorType>| plot_err(here, err);
    let title = format!(
        "{} perturbations δ per epoch (ε = {})",
        super::style::display_name(&g.method),
        super::data::trim(g.eps)
    );
    let (top, rest) = area.split_vertically(80);
    let (head, sub) = top.split_vertically(44);
    head.titled(&title, (FONT, super::style::title_pt(&head, &title)))
        .map_err(e)?;
    let note: TextStyle = (FONT, TICK_PT)
        .into_font()
        .color(&BLACK.mix(0.7))
        .pos(Pos::new(HPos::Center, VPos::Top));
    sub.draw_text(
        "→ the checkpoint's prediction on x + δ; white: δ = 0 (also where x + δ is clipped to [0, 1])",
        &note,
        (sub.dim_in_pixel().0 as i32 / 2, 4),
    )
    .map_err(e)?;
    let (grid, bar) = rest.split_horizontally(rest.dim_in_pixel().0.saturating_sub(110));
    let cols = 1 + g.epochs.len();
    let cells = grid.split_evenly((g.rows.len().max(1), cols));
    let caption: TextStyle = (FONT, TICK_PT).into_font().into();
    for (r, row) in g.rows.iter().enumerate() {
        let cell = &cells[r * cols];
        let (body, label) = cell.split_vertically(cell.dim_in_pixel().1.saturating_sub(48));
        image(&body.margin(4, 4, 4, 4), &row.input, None)?;
        label.draw_text("input", &caption, (8, 4)).map_err(e)?;
        label.draw_text(&g.class(row.label), &caption, (8, 24)).map_err(e)?;
        for (k, (epoch, delta, pred)) in row.deltas.iter().enumerate() {
            let cell = &cells[r * cols + 1 + k];
            let (body, label) = cell.split_vertically(cell.dim_in_pixel().1.saturating_sub(48));
            image(&body.margin(4, 4, 4, 4), delta, Some(g.eps))?;
            let co = if g.co_epoch == Some(*epoch) { " (CO)" } else { "" };
            label
                .draw_text(&format!("epoch {epoch}{co}"), &caption, (8, 4))
                .map_err(e)?;
            label
                .draw_text(&format!("→ {}", g.class(*pred)), &caption, (8, 24))
                .map_err(e)?;
        }
    }
    // Colour bar: δ from −ε (bottom) to +ε (top).
    let (_, bh) = bar.dim_in_pixel();
    let (x, y_top, y_bot) = (16, 40i32, bh as i32 - 30);
    let steps = 64;
    for i in 0..steps {
        let v = 1.0 - 2.0 * (i as f64 + 0.5) / steps as f64;
        let ya = y_top + (y_bot - y_top) * i / steps;
        let yb = y_top + (y_bot - y_top) * (i + 1) / steps;
        bar.draw(&Rectangle::new([(x, ya), (x + 22, yb)], diverging(v).filled()))
            .map_err(e)?;
    }
    let lab: TextStyle = (FONT, LABEL_PT).into_font().into();
    let eps = super::data::trim(g.eps);
    bar.draw_text(&format!("+{eps}"), &lab, (x + 28, y_top - 8))
        .map_err(e)?;
    bar.draw_text("0", &lab, (x + 28, (y_top + y_bot) / 2 - 8)).map_err(e)?;
    bar.draw_text(&format!("−{eps}"), &lab, (x + 28, y_bot - 8))
        .map_err(e)?;
    bar.draw_text("δ", &lab, (x + 4, y_top - 34)).map_err(e)?;
    Ok(())
}
