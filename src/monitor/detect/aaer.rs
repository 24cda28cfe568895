//! `aaer`: the share of abnormal adversarial examples rises at least t (default 0.1) above its lowest so
//! far, read from `WARMUP` on (it starts near 0 on the untrained model).

use super::{points, rise_above_low, Detector, WARMUP};
use crate::monitor::MonitorRow;

pub struct AaerRise;

impl Detector for AaerRise {
    fn name(&self) -> &'static str {
        "aaer"
    }
    fn rule(&self) -> &'static str {
        "aaer at least {t} above its lowest so far (from half an epoch on)"
    }
    fn default_threshold(&self) -> f64 {
        0.1
    }
    fn metric(&self) -> &'static str {
        "aaer"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        rise_above_low(&points(rows, "aaer"), t, WARMUP)
    }
}
