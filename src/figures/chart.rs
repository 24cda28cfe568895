//! The line chart most figures are: labelled axes, one coloured line with markers per series, dashed grey
//! reference lines, dotted vertical CO markers, and a legend; Figure 4's labelled scatter uses it too.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::data::LineChart;
use super::style::{self, color, plot_err, FONT, LABEL_PT, LINE_WIDTH, REFERENCE, TICK_PT};
use crate::error::Result;

/// Axis range with a margin, never empty (a single point still gets a visible span).
fn span(values: impl Iterator<Item = f64>, pad: f64, floor: Option<f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let d = (hi - lo).max(hi.abs().max(1e-6) * 0.1);
    let lo = lo - pad * d;
    let lo = floor.map_or(lo, |f| lo.max(f));
    (lo, hi + pad * d)
}

/// Marker `i` (circle, triangle, square, diamond, cycling) as a polygon around (0, 0) in pixels: one element
/// type for every shape, usable in series and in the legend alike.
pub fn marker_outline(i: usize, r: f64) -> Vec<(i32, i32)> {
    let poly = |n: usize, r: f64, turn: f64| -> Vec<(i32, i32)> {
        (0..n)
            .map(|k| {
                let a = turn + std::f64::consts::TAU * k as f64 / n as f64;
                ((r * a.cos()).round() as i32, (r * a.sin()).round() as i32)
            })
            .collect()
    };
    match i % 4 {
        0 => poly(16, r, 0.0),
        1 => poly(3, r * 1.35, -std::f64::consts::FRAC_PI_2),
        2 => poly(4, r * 1.25, std::f64::consts::FRAC_PI_4),
        _ => poly(4, r * 1.4, 0.0),
    }
}

/// The corner whose box (outer 40% of the width, 30% of the height) holds the fewest points, reference lines
/// sampled along their length, so the legend covers as little data as possible; ties prefer the top.
fn legend_corner(c: &LineChart, (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> SeriesLabelPosition {
    let mut pts: Vec<(f64, f64)> = Vec::new();
    for s in &c.series {
        for w in s.points.windows(2) {
            for k in 0..10 {
                let t = k as f64 / 10.0;
                pts.push((w[0].0 + t * (w[1].0 - w[0].0), w[0].1 + t * (w[1].1 - w[0].1)));
            }
        }
        pts.extend(s.points.iter().copied());
    }
    let norm = |(x, y): (f64, f64)| ((x - x0) / (x1 - x0).max(1e-12), (y - y0) / (y1 - y0).max(1e-12));
    let count = |right: bool, top: bool| {
        pts.iter()
            .map(|&p| norm(p))
            .filter(|&(x, y)| (if right { x > 0.6 } else { x < 0.4 }) && (if top { y > 0.7 } else { y < 0.3 }))
            .count()
    };
    [
        (count(true, true), SeriesLabelPosition::UpperRight),
        (count(false, true), SeriesLabelPosition::UpperLeft),
        (count(true, false), SeriesLabelPosition::LowerRight),
        (count(false, false), SeriesLabelPosition::LowerLeft),
    ]
    .into_iter()
    .min_by_key(|(n, _)| *n)
    .map_or(SeriesLabelPosition::UpperRight, |(_, p)| p)
}

pub fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &LineChart) -> Result<()> {
    let here = std::path::Path::new(&c.title);
    let e = |err: DrawingAreaErrorKind<DB::ErrorType>| plot_err(here, err);
    let pts = || c.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = if c.integer_x {
        let (lo, hi) = span(pts().map(|p| p.0), 0.0, None);
        (lo - 0.3, hi + 0.3)
    } else {
        // Room on the right for the point labels.
        let (lo, hi) = span(pts().map(|p| p.0), 0.08, None);
        (lo, hi + 0.1 * (hi - lo))
    };
    let x_digits = if x1 - x0 >= 8.0 {
        0
    } else if x1 - x0 >= 0.8 {
        1
    } else {
        3
    };
    let x_fmt = move |v: &f64| format!("{v:.x_digits$}");
    let floor = pts().all(|p| p.1 >= 0.0).then_some(0.0);
    let (y0, y1) = span(pts().map(|p| p.1), 0.08, floor);
    // Headroom for the legend, so it never hides a point.
    let y1 = y1 + 0.06 * (y1 - y0) * c.series.len().min(6) as f64;
    let y_digits = if y1 - y0 >= 8.0 {
        0
    } else if y1 - y0 >= 0.8 {
        1
    } else {
        3
    };
    let y_fmt = move |v: &f64| format!("{v:.y_digits$}");
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, (FONT, style::title_pt(area, &c.title)))
        .margin(14)
        .x_label_area_size(56)
        .y_label_area_size(78)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    let whole = |v: &f64| {
        if (v - v.round()).abs() < 1e-9 {
            format!("{}", v.round() as i64)
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(&c.x_desc)
        .y_desc(&c.y_desc)
        .axis_desc_style((FONT, LABEL_PT))
        .label_style((FONT, TICK_PT))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .y_label_formatter(&y_fmt);
    if c.integer_x {
        let n = (x1 - x0).round().max(1.0) as usize;
        mesh.x_labels(n.min(12) + 1).x_label_formatter(&whole);
    } else {
        mesh.x_label_formatter(&x_fmt);
    }
    mesh.draw().map_err(e)?;

    for (x, text) in &c.vlines {
        let (x, text) = (*x, text.clone());
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x, y0), (x, y1)],
                4,
                4,
                REFERENCE.stroke_width(1),
            ))
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(Text::new(
                text,
                (x, y1),
                (FONT, TICK_PT)
                    .into_font()
                    .color(&REFERENCE)
                    .pos(Pos::new(HPos::Left, VPos::Top)),
            )))
            .map_err(e)?;
    }

    for s in &c.series {
        if s.points.is_empty() {
            continue;
        }
        if s.reference {
            chart
                .draw_series(DashedLineSeries::new(
                    s.points.clone(),
                    10,
                    6,
                    REFERENCE.stroke_width(LINE_WIDTH),
                ))
                .map_err(e)?
                .label(s.label.clone())
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], REFERENCE.stroke_width(LINE_WIDTH)));
            continue;
        }
        let col = color(s.style);
        let width = if c.scatter { 1 } else { LINE_WIDTH };
        chart
            .draw_series(LineSeries::new(s.points.clone(), col.stroke_width(width)))
            .map_err(e)?;
        // Marker shapes cycle with the colours, so series stay apart in greyscale print.
        let outline = marker_outline(s.style, style::MARKER as f64);
        let filled = col.filled();
        let o = outline.clone();
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|&p| EmptyElement::at(p) + Polygon::new(o.clone(), filled)),
            )
            .map_err(e)?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (24, 0)], col.stroke_width(LINE_WIDTH))
                    + Polygon::new(outline.iter().map(|&(a, b)| (a + 12, b)).collect::<Vec<_>>(), filled)
            });
        for (p, text) in s.points.iter().zip(&s.point_labels) {
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at(*p) + Text::new(text.clone(), (8, -18), (FONT, TICK_PT).into_font().color(&col)),
                ))
                .map_err(e)?;
        }
    }
    chart
        .configure_series_labels()
        .label_font((FONT, TICK_PT))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(legend_corner(c, (x0, x1), (y0, y1)))
        .draw()
        .map_err(e)?;
    Ok(())
}

impl super::Drawing for LineChart {
    fn is_empty(&self) -> bool {
        LineChart::is_empty(self)
    }
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        draw(area, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_closed_shapes_of_the_right_size() {
        assert_eq!(marker_outline(0, 5.0).len(), 16);
        assert_eq!(marker_outline(1, 5.0).len(), 3);
        // The square's corners sit at ±r·1.25/√2 ≈ ±4.4 → ±4 px.
        assert!(marker_outline(2, 5.0)
            .iter()
            .all(|&(a, b)| a.abs() == 4 && b.abs() == 4));
        assert_eq!(marker_outline(3, 5.0)[0], (7, 0));
        assert_eq!(marker_outline(4, 5.0), marker_outline(0, 5.0));
    }

    #[test]
    fn spans_pad_and_never_collapse() {
        assert_eq!(span([1.0, 3.0].into_iter(), 0.0, None), (1.0, 3.0));
        let (lo, hi) = span([2.0].into_iter(), 0.1, None);
        assert!(lo < 2.0 && hi > 2.0);
        assert_eq!(span(std::iter::empty(), 0.1, None), (0.0, 1.0));
        // Accuracies stay above 0 even with padding.
        assert_eq!(span([0.0, 50.0].into_iter(), 0.1, Some(0.0)).0, 0.0);
    }
}
