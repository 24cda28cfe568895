//! `grad-align`: gradient alignment (Andriushchenko & Flammarion 2020, GradAlign): per test-probe image,
//! cos(∇x L(x), ∇x L(x + η)) with η ~ U(−ε, ε) (kept in the image box), averaged over the images with
//! non-zero gradients. Near 1 while the loss is locally linear; it drops as CO sets in.

use super::{mean_cosine, Healthy, Metric, Point, Signal};
use crate::attacks::{input_grad, uniform_start};
use crate::error::Result;
use crate::models::Mode;

pub struct GradAlign;

const METRICS: &[Metric] = &[Metric {
    name: "grad_align",
    about: "mean cos(∇x L(x), ∇x L(x + η)), η ~ U(−ε, ε), over the test probe",
    healthy: Healthy::High,
}];

impl Signal for GradAlign {
    fn name(&self) -> &'static str {
        "grad-align"
    }
    fn about(&self) -> &'static str {
        "gradient alignment cos(∇x L(x), ∇x L(x + η)) on the test probe"
    }
    fn metrics(&self) -> &'static [Metric] {
        METRICS
    }
    fn measure(&self, p: &Point) -> Result<Vec<f64>> {
        let (x, y) = (&p.probes.test.x, &p.probes.test.y);
        let eta = uniform_start(x, p.cfg().eps, &mut p.rng("monitor-align"))?;
        let (g_eta, _) = input_grad(p.model, x, &eta, y, Mode::EVAL)?;
        Ok(vec![mean_cosine(&p.fgsm()?.grad, &g_eta)?])
    }
}
