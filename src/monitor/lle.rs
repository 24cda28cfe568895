//! `lle`: ELLE's local-linearity error (Abad Rocamora et al. 2024) on the test probe, batch norm in eval
//! mode: E_lin = mean_i (ℓ(x_c) − (1 − α)·ℓ(x_a) − α·ℓ(x_b))², x_a, x_b = x + ε·U(−1, 1), α ~ U(0, 1),
//! x_c their mix — the same points and formula as `--method elle` (`train::elle::linearity_gaps`). It is 0
//! for a loss linear in x and spikes when CO makes the loss surface curved.

use super::{Healthy, Metric, Point, Signal};
use crate::error::Result;
use crate::models::Mode;
use crate::train::elle::linearity_gaps;

pub struct Lle;

const METRICS: &[Metric] = &[Metric {
    name: "lle",
    about: "ELLE's local-linearity error E_lin on the test probe",
    healthy: Healthy::Low,
}];

impl Signal for Lle {
    fn name(&self) -> &'static str {
        "lle"
    }
    fn about(&self) -> &'static str {
        "ELLE's local-linearity error on the test probe"
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn measure(&self, p: &Point) -> Result<Vec<f64>> {
        let (x, y) = (&p.probes.test.x, &p.probes.test.y);
        let gaps = linearity_gaps(p.model, x, y, p.cfg().eps, &mut p.rng("monitor-lle"), Mode::EVAL)?;
        Ok(vec![f64::from(gaps.sqr()?.mean_all()?.to_scalar::<f32>()?)])
    }
}
