//! `lle`: the local-linearity error spikes — at least t times (default 5) its lowest value so far. E_lin
//! has no natural scale (it grows with ε² and the loss), so the rule is a ratio, in the spirit of ELLE-A's
//! switch (which compares with the mean and spread of earlier values). Read from `WARMUP` on.

use super::{first_change, points, Detector, WARMUP};
use crate::monitor::MonitorRow;

pub struct LleSpike;

impl Detector for LleSpike {
    fn name(&self) -> &'static str {
        "lle"
    }
    fn rule(&self) -> &'static str {
        "lle at least {t} × its lowest so far (from half an epoch on)"
    }
    fn default_threshold(&self) -> f64 {
        5.0
    }
    fn metric(&self) -> &'static str {
        "lle"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        first_change(&points(rows, "lle"), WARMUP, f64::min, |v, low| {
            low > 0.0 && v >= t * low
        })
    }
}
