//! `transfer`: f_FGSM's transfer strength is back at the random level — the reference's accuracy within t
//! (default 0.02, the CO verdict's `--random-margin`) of its accuracy under random signs, or above it, after
//! an earlier point at least 0.1 below it (`--strong-margin`): a perturbation never clearly stronger than
//! noise has nothing to lose.

use super::{series, Detector};
use crate::monitor::MonitorRow;

pub struct TransferRandom;

/// How far below random an earlier point must have been.
const STRONG: f64 = 0.1;

impl Detector for TransferRandom {
    fn name(&self) -> &'static str {
        "transfer"
    }
    fn rule(&self) -> &'static str {
        "transfer_acc within {t} of transfer_random after a point 0.1 below it"
    }
    fn default_threshold(&self) -> f64 {
        0.02
    }
    fn metric(&self) -> &'static str {
        "transfer_acc"
    }
    fn fire(&self, rows: &[MonitorRow], t: f64) -> Option<u64> {
        let random = series(rows, "transfer_random");
        let mut strong = false;
        for (step, acc) in series(rows, "transfer_acc") {
            let Some(&(_, r)) = random.iter().find(|(s, _)| *s == step) else {
                continue;
            };
            if acc.is_nan() || r.is_nan() {
                continue;
            }
            if strong && acc >= r - t {
                return Some(step);
            }
            strong |= acc <= r - STRONG;
        }
        None
    }
}
