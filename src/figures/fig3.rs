//! Figure 3: APART's learned step sizes α_i per epoch, one line per layer. Drawing only.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::chart;
use super::data::LineChart;
use crate::error::Result;

pub fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &LineChart) -> Result<()> {
    chart::draw(area, c)
}
