//! Figure 5: APART vs PGD-10 over a run, three panels side by side: (a) training accuracy, (b) test accuracy
//! under PGD-20, (c) the gap to PGD-20.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::chart;
use super::data::{LineChart, StudyTables};
use super::{Drawing, Figure};
use crate::error::Result;

/// The methods Figure 5 compares.
pub const METHODS: [&str; 2] = ["apart", "pgd10"];

pub struct Fig5;

impl Figure for Fig5 {
    type Data = Panels;
    const ID: &'static str = "5";
    const NEEDS: &'static [&'static str] = &["curves", "gap-pgd20"];

    fn select(t: &StudyTables) -> Result<Panels> {
        let m: &[&str] = &METHODS;
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
        Ok(Panels::row(vec![
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
        ]))
    }
}

/// Line charts in a grid, row by row.
pub struct Panels {
    pub charts: Vec<LineChart>,
    pub columns: usize,
}

impl Panels {
    /// Side by side.
    pub fn row(charts: Vec<LineChart>) -> Panels {
        let columns = charts.len().max(1);
        Panels { charts, columns }
    }

    fn rows(&self) -> usize {
        self.charts.len().div_ceil(self.columns.max(1)).max(1)
    }
}

impl Drawing for Panels {
    /// Drawn when any panel has data.
    fn is_empty(&self) -> bool {
        self.charts.iter().all(LineChart::is_empty)
    }

    /// Each panel the size of a single figure.
    fn size(&self) -> (u32, u32) {
        let (w, h) = super::style::SIZE;
        (w * self.columns.max(1) as u32, h * self.rows() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let cells = area.split_evenly((self.rows(), self.columns.max(1)));
        for (cell, c) in cells.iter().zip(&self.charts) {
            chart::draw(cell, c)?;
        }
        Ok(())
    }
}
