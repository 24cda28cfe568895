//! ε: a perturbation budget in pixel units, kept with the text the user wrote.

use serde::{Deserialize, Serialize};

use crate::error::{CovfError, Result};

/// A perturbation budget in pixel units, kept with the text the user wrote (`8/255`, `0.3`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eps {
    pub value: f32,
    pub text: String,
}

impl Eps {
    /// Parses `8/255` or `0.3`; the value must be in (0, 1] (pixels live in [0, 1]).
    pub fn parse(s: &str) -> Result<Eps> {
        let s = s.trim();
        let bad = |m: &str| CovfError::spec("epsilon", format!("'{s}': {m}; write it as 8/255 or 0.3"));
        let value = match s.split_once('/') {
            Some((a, b)) => {
                let a: f64 = a.trim().parse().map_err(|_| bad("numerator is not a number"))?;
                let b: f64 = b.trim().parse().map_err(|_| bad("denominator is not a number"))?;
                if b == 0.0 {
                    return Err(bad("division by zero"));
                }
                a / b
            }
            None => s.parse::<f64>().map_err(|_| bad("not a number"))?,
        };
        if !(value > 0.0 && value <= 1.0) {
            return Err(bad("must be in (0, 1] in pixel units"));
        }
        Ok(Eps {
            value: value as f32,
            text: s.to_string(),
        })
    }

    /// For file names: `8/255` -> `8-255`.
    pub fn slug(&self) -> String {
        self.text.replace('/', "-")
    }

    /// The same fraction of a different budget (a step given at ε = 8/255 scaled to this ε).
    pub fn scaled(&self, at_8_255: f32) -> f32 {
        at_8_255 * self.value / (8.0 / 255.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eps_parsing() {
        assert!((Eps::parse("8/255").unwrap().value - 8.0 / 255.0).abs() < 1e-9);
        assert_eq!(Eps::parse("0.3").unwrap().value, 0.3);
        assert_eq!(Eps::parse("8/255").unwrap().slug(), "8-255");
        for bad in ["0", "-0.1", "1.5", "8/0", "abc", "8/x", "nan", "inf"] {
            assert!(Eps::parse(bad).is_err(), "{bad}");
        }
        assert!((Eps::parse("16/255").unwrap().scaled(2.0 / 255.0) - 4.0 / 255.0).abs() < 1e-7);
    }
}
