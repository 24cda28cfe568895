//! `wong`: Wong et al.'s early-stopping probe (fast_adversarial): PGD accuracy on training images, batch
//! norm in eval mode, with the run's probe steps (PGD-5) and evaluation step size. fast_adversarial takes the
//! epoch's first batch; the monitor takes fixed training images (the first of the analyses' training
//! images, un-augmented) so that points compare with one another.

use super::point::mean;
use super::{Healthy, Metric, Point, Signal};
use crate::attacks::{correct_mask, Attack, AttackCtx, Pgd};
use crate::error::Result;
use crate::models::Mode;

pub struct Wong;

const METRICS: &[Metric] = &[Metric {
    name: "wong_acc",
    about: "PGD accuracy on the fixed training images (Wong et al.'s probe)",
    healthy: Healthy::High,
}];

impl Signal for Wong {
    fn name(&self) -> &'static str {
        "wong"
    }
    fn about(&self) -> &'static str {
        "Wong et al.'s probe: PGD-5 accuracy on fixed training images"
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn measure(&self, p: &Point) -> Result<Vec<f64>> {
        let c = p.cfg();
        let mut pgd = Pgd::new(c.eps, c.wong_steps);
        pgd.alpha = c.pgd_alpha;
        let (x, y) = (&p.probes.train.x, &p.probes.train.y);
        let mut rng = p.rng("monitor-wong");
        let d = pgd
            .perturb(
                p.model,
                x,
                y,
                &mut AttackCtx {
                    mode: Mode::EVAL,
                    rng: &mut rng,
                },
            )?
            .delta;
        let logits = p.model.logits(&(x + d)?, Mode::EVAL)?;
        Ok(vec![mean(&correct_mask(&logits, y)?.to_vec1()?)])
    }
}
