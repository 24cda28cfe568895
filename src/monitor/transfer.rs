//! `transfer`: transfer strength of f_FGSM on the reference model (`--monitor-ref RUN[@EPOCH]`): the
//! reference's accuracy on the test probe perturbed by FGSM on the model being trained, beside its accuracy
//! under random signs of ε (measured once per run). Lower is stronger; APART's claim is that at the CO step
//! it rises to the random level.

use super::point::mean;
use super::{Healthy, Metric, Point, Signal};
use crate::attacks::correct_mask;
use crate::error::{CovfError, Result};
use crate::models::Mode;

pub struct Transfer;

const METRICS: &[Metric] = &[
    Metric {
        name: "transfer_acc",
        about: "the reference's accuracy on the test probe + f_FGSM of the model being trained",
        healthy: Healthy::Low,
    },
    Metric {
        name: "transfer_random",
        about: "the reference's accuracy on the test probe + random signs of ε",
        healthy: Healthy::High,
    },
];

impl Signal for Transfer {
    fn name(&self) -> &'static str {
        "transfer"
    }
    fn about(&self) -> &'static str {
        "transfer strength of FGSM perturbations on the reference model, with its random-sign baseline"
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn needs_reference(&self) -> bool {
        true
    }
    fn measure(&self, p: &Point) -> Result<Vec<f64>> {
        let r = p
            .probes
            .reference
            .as_ref()
            .ok_or_else(|| CovfError::spec("transfer", "needs a reference model: --monitor-ref RUN[@EPOCH]"))?;
        let (x, y) = (&p.probes.test.x, &p.probes.test.y);
        let logits = r.model.logits(&(x + &p.fgsm()?.attacked.delta)?, Mode::EVAL)?;
        Ok(vec![mean(&correct_mask(&logits, y)?.to_vec1()?), r.random_acc])
    }
}
