//! Figure 5: APART vs PGD-10 over a run, three panels side by side: (a) training accuracy, (b) test accuracy
//! under PGD-20, (c) the gap to PGD-20. Drawing only.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::chart;
use super::data::LineChart;
use crate::error::Result;

/// Three panels, each the size of a single figure.
pub fn size(panels: usize) -> (u32, u32) {
    (super::style::SIZE.0 * panels.max(1) as u32, super::style::SIZE.1)
}

pub fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panels: &[LineChart]) -> Result<()> {
    let cells = area.split_evenly((1, panels.len().max(1)));
    for (cell, c) in cells.iter().zip(panels) {
        chart::draw(cell, c)?;
    }
    Ok(())
}
