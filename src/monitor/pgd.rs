//! `pgd`: accuracy and mean cross-entropy of the test probe under the run's evaluation PGD (PGD-10 by
//! default: uniform start, steps of its evaluation step size), batch norm in eval mode. Catastrophic
//! overfitting is this accuracy falling to about zero within an epoch.

use super::{Healthy, Metric, Point, Signal};
use crate::error::Result;

pub struct PgdSignal;

const METRICS: &[Metric] = &[
    Metric {
        name: "pgd_acc",
        about: "accuracy of the test probe under PGD",
        healthy: Healthy::High,
    },
    Metric {
        name: "pgd_loss",
        about: "mean cross-entropy of the test probe under PGD (nats)",
        healthy: Healthy::Low,
    },
];

impl Signal for PgdSignal {
    fn name(&self) -> &'static str {
        "pgd"
    }
    fn about(&self) -> &'static str {
        "PGD accuracy and loss on the test probe (the run's evaluation PGD)"
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn measure(&self, p: &Point) -> Result<Vec<f64>> {
        let a = p.pgd()?;
        Ok(vec![a.acc(), a.mean_loss()])
    }
}
