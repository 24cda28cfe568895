//! Figure 4: clean vs PGD-20 accuracy of models trained at several ε_train, one series per method, each
//! point labelled with its ε_train. Drawing only.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::chart;
use super::data::LineChart;
use crate::error::Result;

pub fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &LineChart) -> Result<()> {
    chart::draw(area, c)
}
