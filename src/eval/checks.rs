//! Gradient-masking and sanity checks, after fra31/auto-attack's `checks.py`: a model whose outputs vary
//! between identical passes, outputs that look like probabilities, inputs with exactly zero gradient,
//! a black-box attack beating the white-box ones, and an attack scoring above clean accuracy. Each is a
//! warning recorded next to the results, never an error.

use candle_core::Tensor;

use super::attack_spec::AttackSpec;
use crate::attacks::loss::{loss_grad, AttackLoss};
use crate::error::Result;
use crate::models::{Classifier, Mode};

/// A raised flag: the check's short name and what it saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    pub check: &'static str,
    pub message: String,
}

/// Checks on one batch before attacking: repeated passes agree, logits are not probabilities, and the
/// input gradient of the cross-entropy is not exactly zero.
pub fn model_checks(model: &dyn Classifier, x: &Tensor, y: &Tensor) -> Result<Vec<Flag>> {
    let mut flags = Vec::new();
    let first = model.logits(x, Mode::EVAL)?.detach();
    let norm = |z: &Tensor| -> Result<Tensor> {
        let n = z.sqr()?.sum_keepdim(1)?.sqrt()?;
        Ok(z.broadcast_div(&(n + 1e-10)?)?)
    };
    let base = norm(&first)?;
    let mut worst = 0f32;
    for _ in 0..4 {
        let again = norm(&model.logits(x, Mode::EVAL)?.detach())?;
        let d = (&again - &base)?.sqr()?.sum(1)?.sqrt()?.max(0)?.to_scalar::<f32>()?;
        worst = worst.max(d);
    }
    if worst > 1e-4 {
        flags.push(Flag {
            check: "randomness",
            message: format!(
                "5 identical forward passes differ (normalised logits by up to {worst:.2e}): a randomized model; \
                 use --attacks aa-rand and average over draws"
            ),
        });
    }
    let (zmax, zmin) = (
        first.max_all()?.to_scalar::<f32>()?,
        first.min_all()?.to_scalar::<f32>()?,
    );
    let sums: Vec<f32> = first.sum(1)?.to_vec1()?;
    if zmax < 1.0 + 1e-5 && zmin > -1e-5 && sums.iter().all(|s| (s - 1.0).abs() < 1e-5) {
        flags.push(Flag {
            check: "probabilities",
            message: "the model's outputs look like probabilities (in [0, 1], rows summing to 1): attacks \
                      need logits"
                .into(),
        });
    }
    let g = loss_grad(model, x, y, &AttackLoss::Ce, Mode::EVAL)?.grad;
    let per: Vec<f32> = g.abs()?.flatten_from(1)?.sum(1)?.to_vec1()?;
    let zero = per.iter().filter(|&&v| v == 0.0).count();
    if zero > 0 {
        flags.push(Flag {
            check: "zero-gradient",
            message: format!(
                "{zero} of {} points have an exactly zero input gradient: gradient-based attacks can be \
                 unreliable there (gradient masking)",
                per.len()
            ),
        });
    }
    Ok(flags)
}

/// Checks across the results of one checkpoint: `acc` pairs each attack with its accuracy, and
/// `aa_stages` the AutoAttack stage accuracies in order (name, accuracy) when AutoAttack ran.
pub fn result_checks(acc: &[(AttackSpec, f64)], aa_stages: &[(String, f64)]) -> Vec<Flag> {
    let mut flags = Vec::new();
    let clean = acc.iter().find(|(a, _)| *a == AttackSpec::Clean).map(|(_, v)| *v);
    if let Some(c) = clean {
        for (a, v) in acc {
            if a.is_white_box() && *v > c + 1e-9 {
                flags.push(Flag {
                    check: "above-clean",
                    message: format!(
                        "{a} accuracy {:.2}% is above clean accuracy {:.2}%: the attack does worse than no attack \
                         (gradient masking; for a single-step attack also the signature of catastrophic overfitting)",
                        100.0 * v,
                        100.0 * c
                    ),
                });
            }
        }
    }
    // AutoAttack's own test: the black-box stage should find (almost) nothing the white-box ones missed.
    if let Some(pos) = aa_stages.iter().position(|(s, _)| s == "square") {
        if pos > 0 {
            let before = aa_stages[pos - 1].1;
            let after = aa_stages[pos].1;
            if after < before - 0.002 {
                flags.push(Flag {
                    check: "black-box-beats-white-box",
                    message: format!(
                        "Square lowered AutoAttack's robust accuracy by {:.2} points after the gradient-based \
                         stages: the gradients may be masked; run Square with more queries or an adaptive attack",
                        100.0 * (before - after)
                    ),
                });
            }
        }
    }
    let white = acc
        .iter()
        .filter(|(a, _)| a.is_white_box())
        .map(|(_, v)| *v)
        .fold(f64::INFINITY, f64::min);
    for (a, v) in acc {
        if matches!(a, AttackSpec::RandomSign | AttackSpec::RandomUniform) && *v < white - 0.002 {
            flags.push(Flag {
                check: "black-box-beats-white-box",
                message: format!(
                    "{a} noise ({:.2}%) is stronger than the best gradient attack ({:.2}%): gradient masking",
                    100.0 * v,
                    100.0 * white
                ),
            });
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::linear::TwoClassLinear;
    use candle_core::Device;

    #[test]
    fn flags_zero_gradients_and_black_box_wins() {
        let dev = Device::Cpu;
        let flat = TwoClassLinear {
            w: Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap(),
            b: 2.0,
        };
        let x = Tensor::full(0.5f32, (3, 1, 2, 2), &dev).unwrap();
        let y = Tensor::new(&[1u32, 1, 1], &dev).unwrap();
        let f = model_checks(&flat, &x, &y).unwrap();
        assert_eq!(f.iter().map(|f| f.check).collect::<Vec<_>>(), vec!["zero-gradient"]);
        assert!(f[0].message.starts_with("3 of 3"));
        // Logits (0, 1) in every row look like probabilities.
        let probs = TwoClassLinear {
            w: Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap(),
            b: 1.0,
        };
        assert!(model_checks(&probs, &x, &y)
            .unwrap()
            .iter()
            .any(|f| f.check == "probabilities"));

        let acc = vec![
            (AttackSpec::Clean, 0.8),
            (AttackSpec::Pgd { steps: 20, restarts: 1 }, 0.5),
            (AttackSpec::RandomSign, 0.3),
        ];
        let stages = vec![("apgd-ce".to_string(), 0.5), ("square".to_string(), 0.45)];
        let f = result_checks(&acc, &stages);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().all(|f| f.check == "black-box-beats-white-box"));
        // Consistent results raise nothing.
        let ok = vec![
            (AttackSpec::Clean, 0.8),
            (AttackSpec::Pgd { steps: 20, restarts: 1 }, 0.5),
        ];
        assert!(result_checks(&ok, &[("apgd-ce".into(), 0.5), ("square".into(), 0.499)]).is_empty());
    }
}
