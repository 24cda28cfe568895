//! `fgsm`: accuracy and mean cross-entropy of the test probe under FGSM (zero start, one signed step of ε),
//! batch norm in eval mode. After catastrophic overfitting FGSM accuracy stays high (often above clean)
//! while PGD accuracy is gone.

use super::{Healthy, Metric, Point, Signal};
use crate::error::Result;

pub struct FgsmSignal;

const METRICS: &[Metric] = &[
    Metric {
        name: "fgsm_acc",
        about: "accuracy of the test probe under FGSM",
        healthy: Healthy::High,
    },
    Metric {
        name: "fgsm_loss",
        about: "mean cross-entropy of the test probe under FGSM (nats)",
        healthy: Healthy::Low,
    },
];

impl Signal for FgsmSignal {
    fn name(&self) -> &'static str {
        "fgsm"
    }
    fn about(&self) -> &'static str {
        "FGSM accuracy and loss on the test probe"
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn measure(&self, p: &Point) -> Result<Vec<f64>> {
        let a = &p.fgsm()?.attacked;
        Ok(vec![a.acc(), a.mean_loss()])
    }
}
