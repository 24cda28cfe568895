//! The monitor figure: every signal of the in-training monitor on a shared training-step axis, one panel
//! per metric (the losses and the random baseline left out), with the epoch boundaries and each run's CO
//! step marked — which signal moves first, and which moves with CO.

use super::data::{monitor_rows, step_chart, StudyTables};
use super::fig5::Panels;
use super::Figure;
use crate::error::Result;
use crate::monitor::SIGNALS;

/// Panels per row.
const COLUMNS: usize = 3;

pub struct FigMonitor;

impl Figure for FigMonitor {
    type Data = Panels;
    const ID: &'static str = "monitor";
    const NEEDS: &'static [&'static str] = &["monitor"];

    fn select(t: &StudyTables) -> Result<Panels> {
        let rows = monitor_rows(t)?;
        let charts = SIGNALS
            .iter()
            .flat_map(|s| s.metrics().iter())
            .filter(|m| !m.name.ends_with("_loss") && m.name != "transfer_random")
            .filter(|m| rows.iter().any(|r| r.metric == m.name))
            .map(|m| {
                // Accuracies and shares in percent; losses, cosines and E_lin as they are.
                let percent = m.name.ends_with("_acc") || m.name == "aaer";
                step_chart(
                    &rows,
                    m.name,
                    if percent { 100.0 } else { 1.0 },
                    m.about,
                    if percent { "%" } else { m.name },
                )
            })
            .collect();
        Ok(Panels {
            charts,
            columns: COLUMNS,
        })
    }
}
