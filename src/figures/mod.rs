//! Figures 1–5 of the paper (and Figure 2 and the monitor's signals at step resolution), drawn from a study's tidy tables with plotters into
//! `analyses/<study>/figures/fig<id>.png` and `.svg`. A figure is one file (`figN.rs`) implementing
//! `Figure` — its id, the tables it reads, its data selection, its size and a backend-generic `draw` —
//! and one line in `FIGURES`. `data` holds what several figures share, `chart` the line chart they draw,
//! `style` fonts, colours and the atomic PNG + SVG rendering.

pub mod chart;
pub mod data;
pub mod fig1;
pub mod fig2;
pub mod fig3;
pub mod fig4;
pub mod fig5;
pub mod figmonitor;
pub mod style;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::{DrawingArea, DrawingBackend};

use data::StudyTables;
use style::SIZE;

use crate::error::{CovfError, Result};

/// What a figure's data knows of drawing itself: a line chart, Figure 1a's image grid, Figure 5's panels.
pub trait Drawing {
    /// Nothing to draw: the tables exist but hold none of the rows the figure shows.
    fn is_empty(&self) -> bool {
        false
    }
    /// Pixel size (SVG uses the same units).
    fn size(&self) -> (u32, u32) {
        SIZE
    }
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// One figure: what it reads, what it selects, its size and how it draws (on any plotters backend; by default
/// as its data draws itself).
pub trait Figure: 'static {
    type Data: Drawing;
    /// `2a`: the file is `fig2a.png`, `covf figures --fig 2a` draws it.
    const ID: &'static str;
    /// The study tables it reads (to say which are missing).
    const NEEDS: &'static [&'static str];
    /// Its data, selected from the study's tables.
    fn select(t: &StudyTables) -> Result<Self::Data>;
    fn size(d: &Self::Data) -> (u32, u32) {
        d.size()
    }
    fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, d: &Self::Data) -> Result<()> {
        d.draw(area)
    }
}

/// The object-safe face of a figure, as the registry holds it.
pub trait FigureDef: Sync {
    fn id(&self) -> &'static str;
    fn needs(&self) -> &'static [&'static str];
    /// Draws it from the tables in `out` into `dir`; returns the files written.
    fn render(&self, out: &Path, dir: &Path) -> Result<Vec<PathBuf>>;
}

/// The registry entry of figure `F`.
pub struct Entry<F>(PhantomData<fn() -> F>);

impl<F> Entry<F> {
    pub const fn new() -> Self {
        Entry(PhantomData)
    }
}

impl<F> Default for Entry<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Figure> FigureDef for Entry<F> {
    fn id(&self) -> &'static str {
        F::ID
    }
    fn needs(&self) -> &'static [&'static str] {
        F::NEEDS
    }
    fn render(&self, out: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
        let t = StudyTables::new(out);
        let d = F::select(&t)?;
        if d.is_empty() {
            return Err(CovfError::data(
                out,
                format!(
                    "figure {}: its tables ({}) have no rows to draw",
                    F::ID,
                    F::NEEDS.join(", ")
                ),
            ));
        }
        style::render(dir, &format!("fig{}", F::ID), F::size(&d), &|a| F::draw(a, &d), &|a| {
            F::draw(a, &d)
        })
    }
}

/// Every figure, in order.
pub static FIGURES: &[&dyn FigureDef] = &[
    &Entry::<fig1::Fig1a>::new(),
    &Entry::<fig1::Fig1b>::new(),
    &Entry::<fig2::Fig2a>::new(),
    &Entry::<fig2::Fig2aOwn>::new(),
    &Entry::<fig2::Fig2b>::new(),
    &Entry::<fig2::Fig2aSteps>::new(),
    &Entry::<fig2::Fig2bSteps>::new(),
    &Entry::<fig3::Fig3>::new(),
    &Entry::<fig4::Fig4>::new(),
    &Entry::<fig5::Fig5>::new(),
    &Entry::<figmonitor::FigMonitor>::new(),
];

/// Every figure id, in order.
pub fn ids() -> Vec<&'static str> {
    FIGURES.iter().map(|f| f.id()).collect()
}

/// The figure an id names (`2a`, `fig2a` and `Fig. 2a` all name the same figure).
pub fn lookup(s: &str) -> Result<&'static dyn FigureDef> {
    let t = s.trim().to_ascii_lowercase().replace(['.', ' '], "");
    let t = t.strip_prefix("fig").unwrap_or(&t).to_string();
    FIGURES
        .iter()
        .copied()
        .find(|f| f.id() == t)
        .ok_or_else(|| CovfError::spec("--fig", format!("'{s}': figures are {}", ids().join(", "))))
}

/// Whether every table figure `f` needs exists in `out`.
pub fn available(f: &dyn FigureDef, out: &Path) -> bool {
    let t = StudyTables::new(out);
    f.needs().iter().all(|n| t.has(n))
}

/// Draws the figure `id` names from the tables in `out` into `dir`; returns the files written.
pub fn render(id: &str, out: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    lookup(id)?.render(out, dir)
}
