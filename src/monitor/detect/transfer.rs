//! `transfer`: f_FGSM's transfer strength is back at the random level — the reference's accuracy within t
//! (default 0.02, the CO verdict's `--random-margin`) of its accuracy under random signs, or above it, after
//! an earlier point at least 0.1 below it (`--strong-margin`): a perturbation never clearly stronger than
//! noise has nothing to lose.

use super::{points, Detector};
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
        let random = points(rows, "transfer_random");
        let mut strong = false;
        for q in points(rows, "transfer_acc") {
            let Some(r) = random.iter().find(|r| r.step == q.step) else {
                continue;
            };
            if strong && q.v >= r.v - t {
                return Some(q.step);
            }
            strong |= q.v <= r.v - STRONG;
        }
        None
    }
}
