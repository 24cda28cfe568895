//! `pgd`: the probe's PGD accuracy falls at least t (default 0.2) below its best so far — catastrophic
//! overfitting as an online rule sees it (the first swing down). Accuracy starts at chance, so it needs no
//! warm-up; the CO step of the analyses also asks the fall to last (`co_step`).

use super::{drop_below_best, points, Detector};
use crate::monitor::MonitorRow;

pub struct PgdDrop;

impl Detector for PgdDrop {
    fn name(&self) -> &'static str {
        "pgd"
    }
    fn rule(&self) -> &'static str {
        "pgd_acc at least {t} below its best so far"
    }
    fn default_threshold(&self) -> f64 {
        0.2
    }
    fn metric(&self) -> &'static str {
        "pgd_acc"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        drop_below_best(&points(rows, "pgd_acc"), t, 0.0)
    }
}
