//! `wong`: Wong et al.'s rule on their probe — PGD accuracy on training images at least t (default 0.2, as
//! fast_adversarial) below its best so far (fast_adversarial compares with the previous epoch; the
//! monitor's points are closer, so the best so far is the steadier reference).

use super::{drop_below_best, points, Detector};
use crate::monitor::MonitorRow;

pub struct WongDrop;

impl Detector for WongDrop {
    fn name(&self) -> &'static str {
        "wong"
    }
    fn rule(&self) -> &'static str {
        "wong_acc at least {t} below its best so far"
    }
    fn default_threshold(&self) -> f64 {
        0.2
    }
    fn metric(&self) -> &'static str {
        "wong_acc"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        drop_below_best(&points(rows, "wong_acc"), t, 0.0)
    }
}
