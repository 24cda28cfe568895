//! `grad-align`: gradient alignment falls at least t (default 0.2) below its best so far: the loss is no
//! longer locally linear in the ε-ball. Read from `WARMUP` on: the untrained model is nearly linear.

use super::{drop_below_best, points, Detector, WARMUP};
use crate::monitor::MonitorRow;

pub struct AlignDrop;

impl Detector for AlignDrop {
    fn name(&self) -> &'static str {
        "grad-align"
    }
    fn rule(&self) -> &'static str {
        "grad_align at least {t} below its best so far (from half an epoch on)"
    }
    fn default_threshold(&self) -> f64 {
        0.2
    }
    fn metric(&self) -> &'static str {
        "grad_align"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        drop_below_best(&points(rows, "grad_align"), t, WARMUP)
    }
}
