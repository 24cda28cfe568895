//! `cos`: cos(δ_FGSM, δ_PGD) falls at least t (default 0.2) below its best so far: the single step no
//! longer points where the multi-step attack goes. Read from `WARMUP` on: on the nearly linear untrained
//! model the two point much the same way, and they part as it learns.

use super::{drop_below_best, points, Detector, WARMUP};
use crate::monitor::MonitorRow;

pub struct CosDrop;

impl Detector for CosDrop {
    fn name(&self) -> &'static str {
        "cos"
    }
    fn rule(&self) -> &'static str {
        "cos_fgsm_pgd at least {t} below its best so far (from half an epoch on)"
    }
    fn default_threshold(&self) -> f64 {
        0.2
    }
    fn metric(&self) -> &'static str {
        "cos_fgsm_pgd"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        drop_below_best(&points(rows, "cos_fgsm_pgd"), t, WARMUP)
    }
}
