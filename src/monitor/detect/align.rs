//! `grad-align`: gradient alignment falls at least t (default 0.2) below its best so far: the loss is no
//! longer locally linear in the ε-ball.

use super::{drop_below_best, series, Detector};
use crate::monitor::MonitorRow;

pub struct AlignDrop;

impl Detector for AlignDrop {
    fn name(&self) -> &'static str {
        "grad-align"
    }
    fn rule(&self) -> &'static str {
        "grad_align at least {t} below its best so far"
    }
    fn default_threshold(&self) -> f64 {
        0.2
    }
    fn metric(&self) -> &'static str {
        "grad_align"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        drop_below_best(&series(rows, "grad_align"), t)
    }
}
