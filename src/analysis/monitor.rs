//! `covf analyze monitor`: the in-training monitor's rows of the given runs (`monitor.parquet` in each run
//! directory, docs/monitor.md) gathered into one study table, which the step-resolved figures (`2a-steps`,
//! `2b-steps`, `monitor`) draw. Runs trained without the monitor contribute nothing, and say so.

use super::registry::{Analysis, Job, Outcome};
use super::tidy;
use crate::error::Result;
use crate::monitor::TABLE;
use crate::run::metrics::read_monitor;

/// `covf analyze monitor`; `monitor = [runs]` in a study.
pub struct MonitorTable;

impl Analysis for MonitorTable {
    fn name(&self) -> &'static str {
        "monitor"
    }
    fn about(&self) -> &'static str {
        "The in-training monitor's signals of each run at step resolution (the step-resolved figures' data)"
    }
    fn example(&self) -> &'static str {
        "covf analyze monitor --runs fgsm-fmnist-preact-tiny-eps0.15-s1 --study paper-fmnist"
    }
    fn run(&self, job: &Job) -> Result<Outcome> {
        let mut rows = Vec::new();
        let mut warnings = Vec::new();
        let mut lines = Vec::new();
        for r in &job.runs {
            match read_monitor(&r.path)? {
                Some(m) => {
                    let points = {
                        let mut s: Vec<u64> = m.iter().map(|x| x.step).collect();
                        s.dedup();
                        s.len()
                    };
                    lines.push(format!("{:<44} {points} monitor points", r.name));
                    rows.extend(m);
                }
                None => warnings.push(format!(
                    "{} has no monitor table (trained with the monitor off, or before covf had one)",
                    r.name
                )),
            }
        }
        tidy::write(&job.ctx.out, TABLE, &rows)?;
        Ok(Outcome {
            tables: vec![TABLE.into()],
            lines,
            warnings,
            ..Outcome::default()
        })
    }
}
