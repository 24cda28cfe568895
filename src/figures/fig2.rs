//! Figure 2: (a) transfer strength S_i(A) per epoch per method with the random baseline; (b) the strength
//! gap G_PGD-10,i(A) per epoch. Drawing only.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::chart;
use super::data::LineChart;
use crate::error::Result;

pub fn draw_a<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &LineChart) -> Result<()> {
    chart::draw(area, c)
}

pub fn draw_b<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &LineChart) -> Result<()> {
    chart::draw(area, c)
}
