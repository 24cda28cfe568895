//! `covf analyze steps`: APART's learned step sizes per epoch and layer (α1 at the input, α_ω of the
//! learned initialisation, αi per residual block): Figure 3's data, gathered from the runs' step-size
//! tables. Runs whose method learns no step sizes contribute nothing.

use serde::{Deserialize, Serialize};

use super::registry::{Analysis, Job, Outcome};
use super::tidy;
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

/// `covf analyze steps`; `steps = [runs]` in a study.
pub struct Steps;

impl Analysis for Steps {
    fn name(&self) -> &'static str {
        "steps"
    }
    fn about(&self) -> &'static str {
        "APART's learned step sizes per epoch and layer (Figure 3)"
    }
    fn example(&self) -> &'static str {
        "covf analyze steps --runs apart-fmnist-preact-tiny-eps0.15-s0"
    }
    fn run(&self, job: &Job) -> Result<Outcome> {
        let rows = run(&job.runs)?;
        tidy::write(&job.ctx.out, "steps", &rows)?;
        let lines = rows
            .iter()
            .map(|x| format!("{:<44} {:>5} {:<8} {:.5}", x.run, x.epoch, x.layer, x.alpha))
            .collect();
        let warnings = if rows.is_empty() {
            vec!["none of these runs learns step sizes (only apart and apart-simple do)".to_string()]
        } else {
            Vec::new()
        };
        Ok(Outcome {
            tables: vec!["steps".into()],
            lines,
            warnings,
            ..Outcome::default()
        })
    }
}
