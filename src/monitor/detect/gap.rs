//! `gap`: the strength gap L(δ_PGD) − L(δ_own) rises at least t nats (default 1.0, the CO verdict's
//! `--gap-jump`) above its lowest value so far: the method's own perturbation has deteriorated.

use super::{rise_above_low, series, Detector};
use crate::monitor::MonitorRow;

pub struct GapJump;

impl Detector for GapJump {
    fn name(&self) -> &'static str {
        "gap"
    }
    fn rule(&self) -> &'static str {
        "gap at least {t} nats above its lowest so far"
    }
    fn default_threshold(&self) -> f64 {
        1.0
    }
    fn metric(&self) -> &'static str {
        "gap"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        rise_above_low(&series(rows, "gap"), t)
    }
}
