//! `covf analyze steps`: APART's learned step sizes per epoch and layer (α1 at the input, α_ω of the
//! learned initialisation, αi per residual block): Figure 3's data, gathered from the runs' step-size
//! tables. Runs whose method learns no step sizes contribute nothing.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::run::checkpoint::RunDir;
use crate::run::metrics::read_step_sizes;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub run: String,
    pub method: String,
    pub epoch: u64,
    /// `input` (α1), `init` (α_ω) or `block<i>`.
    pub layer: String,
    pub alpha: f64,
}

pub fn run(runs: &[RunDir]) -> Result<Vec<StepRow>> {
    let mut rows = Vec::new();
    for r in runs {
        rows.extend(read_step_sizes(&r.path)?.into_iter().map(|s| StepRow {
            run: s.run,
            method: s.method,
            epoch: s.epoch as u64,
            layer: s.layer,
            alpha: s.alpha,
        }));
    }
    Ok(rows)
}
