//! `gap`: the strength gap of APART (Figure 2b) on the test probe, L(δ_PGD) − L(δ_A): mean cross-entropy under
//! the run's evaluation PGD minus under the method's own perturbation f_A as it stands (APART's learned α1;
//! ω = 0 on test images, as in the analyses). It jumps when f_A deteriorates.

use super::{Healthy, Metric, Point, Signal};
use crate::error::Result;

pub struct Gap;

const METRICS: &[Metric] = &[Metric {
    name: "gap",
    about: "L(δ_PGD) − L(δ_own) on the test probe (nats)",
    healthy: Healthy::Low,
}];

impl Signal for Gap {
    fn name(&self) -> &'static str {
        "gap"
    }
    fn about(&self) -> &'static str {
        "strength gap L(δ_PGD) − L(δ_own) of the method's own perturbation on the test probe"
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn measure(&self, p: &Point) -> Result<Vec<f64>> {
        Ok(vec![p.pgd()?.mean_loss() - p.own()?.mean_loss()])
    }
}
