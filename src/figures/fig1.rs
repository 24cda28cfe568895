//! Figure 1: (a) the run's perturbations δ as images for epochs around CO, beside the clean input; (b) test
//! accuracy under PGD-10 per epoch. Drawing only.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::chart;
use super::data::{Image, LineChart, PerturbationGrid};
use super::style::{diverging, grey, plot_err, FONT, LABEL_PT, TICK_PT};
use crate::error::Result;

/// Pixel size for a grid of `rows` examples and `epochs` perturbations.
pub fn size_a(g: &PerturbationGrid) -> (u32, u32) {
    let cols = 1 + g.epochs.len() as u32;
    let rows = g.rows.len().max(1) as u32;
    ((cols * 156 + 120).max(760), rows * 184 + 96)
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

pub fn draw_a<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, g: &PerturbationGrid) -> Result<()> {
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

/// (b): PGD-10 accuracy per epoch.
pub fn draw_b<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &LineChart) -> Result<()> {
    chart::draw(area, c)
}
