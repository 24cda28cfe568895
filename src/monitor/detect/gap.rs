//! `gap`: the strength gap L(δ_PGD) − L(δ_own) rises at least t nats (default 1.0, the CO verdict's
//! `--gap-jump`) above its lowest value so far: the method's own perturbation has deteriorated. Read from
//! `WARMUP` on: the gap of the untrained model is near 0 and grows as the model learns, CO or not.

use super::{points, rise_above_low, Detector, WARMUP};
use crate::monitor::MonitorRow;

pub struct GapJump;

impl Detector for GapJump {
    fn name(&self) -> &'static str {
        "gap"
    }
    fn rule(&self) -> &'static str {
        "gap at least {t} nats above its lowest so far (from half an epoch on)"
    }
    fn default_threshold(&self) -> f64 {
        1.0
    }
    fn metric(&self) -> &'static str {
        "gap"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        rise_above_low(&points(rows, "gap"), t, WARMUP)
    }
}
