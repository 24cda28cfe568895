//! Learning-rate schedules over fractional epochs: triangular cyclic 0 → max → 0, constant, piecewise.

use serde::{Deserialize, Serialize};

use crate::error::{CovfError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LrSchedule {
    /// Linear 0 → `max` at `peak`·epochs, then linear → 0 at the end (Wong et al., the APART paper).
    Cyclic {
        max: f64,
        peak: f64,
        epochs: usize,
    },
    Constant {
        lr: f64,
    },
    /// `lr` until the first milestone (a fraction of the run), then multiplied by `gamma` at each milestone.
    Piecewise {
        lr: f64,
        milestones: Vec<f64>,
        gamma: f64,
        epochs: usize,
    },
}

impl LrSchedule {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(CovfError::spec("learning-rate schedule", m));
        match self {
            LrSchedule::Cyclic { max, peak, epochs } => {
                if !(*max > 0.0 && max.is_finite()) {
                    return bad(format!("lr max {max} must be positive"));
                }
                if !(*peak > 0.0 && *peak < 1.0) {
                    return bad(format!("peak {peak} must be in (0, 1)"));
                }
                if *epochs == 0 {
                    return bad("0 epochs".into());
                }
            }
            LrSchedule::Constant { lr } => {
                if !(*lr > 0.0 && lr.is_finite()) {
                    return bad(format!("lr {lr} must be positive"));
                }
            }
            LrSchedule::Piecewise {
                lr, milestones, gamma, ..
            } => {
                if !(*lr > 0.0 && lr.is_finite() && *gamma > 0.0) {
                    return bad(format!("lr {lr} and gamma {gamma} must be positive"));
                }
                if milestones.iter().any(|m| !(0.0..=1.0).contains(m)) || milestones.windows(2).any(|w| w[0] >= w[1]) {
                    return bad(format!(
                        "milestones {milestones:?} must be increasing fractions in [0, 1]"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The rate at fractional epoch `t` (epoch e's batch i of n is at t = e + (i + 1)/n, as in fast_adversarial).
    pub fn lr_at(&self, t: f64) -> f64 {
        match self {
            LrSchedule::Cyclic { max, peak, epochs } => {
                let e = *epochs as f64;
                let p = peak * e;
                if t <= 0.0 || t >= e {
                    0.0
                } else if t <= p {
                    max * t / p
                } else {
                    max * (e - t) / (e - p)
                }
            }
            LrSchedule::Constant { lr } => *lr,
            LrSchedule::Piecewise {
                lr,
                milestones,
                gamma,
                epochs,
            } => {
                let frac = t / (*epochs).max(1) as f64;
                let passed = milestones.iter().filter(|&&m| frac >= m).count();
                lr * gamma.powi(passed as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cyclic_by_hand() {
        let s = LrSchedule::Cyclic {
            max: 0.2,
            peak: 0.5,
            epochs: 10,
        };
        assert_eq!(s.lr_at(0.0), 0.0);
        assert!((s.lr_at(2.5) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(5.0) - 0.2).abs() < 1e-12);
        assert!((s.lr_at(7.5) - 0.1).abs() < 1e-12);
        assert_eq!(s.lr_at(10.0), 0.0);
        let s = LrSchedule::Cyclic {
            max: 0.2,
            peak: 0.4,
            epochs: 10,
        };
        assert!((s.lr_at(4.0) - 0.2).abs() < 1e-12);
        assert!((s.lr_at(7.0) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn piecewise_and_constant() {
        let s = LrSchedule::Piecewise {
            lr: 0.1,
            milestones: vec![0.5, 0.75],
            gamma: 0.1,
            epochs: 100,
        };
        assert!((s.lr_at(10.0) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(50.0) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(80.0) - 0.001).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant { lr: 0.05 }.lr_at(3.3), 0.05);
        assert!(LrSchedule::Cyclic {
            max: 0.2,
            peak: 1.5,
            epochs: 3
        }
        .validate()
        .is_err());
        assert!(LrSchedule::Piecewise {
            lr: 0.1,
            milestones: vec![0.7, 0.5],
            gamma: 0.1,
            epochs: 3
        }
        .validate()
        .is_err());
    }
}
