//! `cos`: cos(δ_FGSM, δ_PGD) falls at least t (default 0.2) below its best so far: the single step no
//! longer points where the multi-step attack goes.

use super::{drop_below_best, series, Detector};
use crate::monitor::MonitorRow;

pub struct CosDrop;

impl Detector for CosDrop {
    fn name(&self) -> &'static str {
        "cos"
    }
    fn rule(&self) -> &'static str {
        "cos_fgsm_pgd at least {t} below its best so far"
    }
    fn default_threshold(&self) -> f64 {
        0.2
    }
    fn metric(&self) -> &'static str {
        "cos_fgsm_pgd"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        drop_below_best(&series(rows, "cos_fgsm_pgd"), t)
    }
}
