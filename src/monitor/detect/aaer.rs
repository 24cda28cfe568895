//! `aaer`: the share of abnormal adversarial examples rises at least t (default 0.1) above its lowest so
//! far.

use super::{rise_above_low, series, Detector};
use crate::monitor::MonitorRow;

pub struct AaerRise;

impl Detector for AaerRise {
    fn name(&self) -> &'static str {
        "aaer"
    }
    fn rule(&self) -> &'static str {
        "aaer at least {t} above its lowest so far"
    }
    fn default_threshold(&self) -> f64 {
        0.1
    }
    fn metric(&self) -> &'static str {
        "aaer"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        rise_above_low(&series(rows, "aaer"), t)
    }
}
