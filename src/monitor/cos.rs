//! `cos`: cos(δ_FGSM, δ_PGD) per test-probe image, averaged (GradAlign's and Kim et al.'s diagnostic): the
//! single step points where the multi-step attack goes while the loss is locally linear; the cosine falls
//! when it no longer does. Images where either perturbation is zero are left out.

use super::{mean_cosine, Healthy, Metric, Point, Signal};
use crate::error::Result;

pub struct Cos;

const METRICS: &[Metric] = &[Metric {
    name: "cos_fgsm_pgd",
    about: "mean cosine between the FGSM and PGD perturbations of each test-probe image",
    healthy: Healthy::High,
}];

impl Signal for Cos {
    fn name(&self) -> &'static str {
        "cos"
    }
    fn about(&self) -> &'static str {
        "mean cos(δ_FGSM, δ_PGD) over the test probe"
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn measure(&self, p: &Point) -> Result<Vec<f64>> {
        Ok(vec![mean_cosine(&p.fgsm()?.attacked.delta, &p.pgd()?.delta)?])
    }
}
