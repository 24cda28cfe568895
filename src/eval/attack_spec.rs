//! Which attacks `covf eval` runs: names as users type them, parsed into specs that build the attacks.

use std::fmt;

use crate::attacks::autoattack::Stage;
use crate::attacks::{Attack, AutoAttack, CwInf, Fgsm, Noise, Pgd};
use crate::error::{CovfError, Result};

/// One evaluation column.
#[derive(Debug, Clone, PartialEq)]
pub enum AttackSpec {
    Clean,
    Fgsm,
    /// PGD-N with `restarts` (the paper's PGD-20: 20 steps of ε/4 from a uniform start, 1 restart).
    Pgd {
        steps: usize,
        restarts: usize,
    },
    /// CW∞: 30 steps of ε/4 on the margin loss.
    Cw,
    /// Gaussian noise of standard deviation σ (not bounded by ε).
    Gaussian {
        sigma: f32,
    },
    RandomSign,
    RandomUniform,
    /// AutoAttack: `standard`, `rand`, or a custom list of stages.
    AutoAttack {
        version: String,
        stages: Vec<Stage>,
    },
}

impl fmt::Display for AttackSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttackSpec::Clean => write!(f, "clean"),
            AttackSpec::Fgsm => write!(f, "fgsm"),
            AttackSpec::Pgd { steps, restarts: 1 } => write!(f, "pgd{steps}"),
            AttackSpec::Pgd { steps, restarts } => write!(f, "pgd{steps}x{restarts}"),
            AttackSpec::Cw => write!(f, "cw"),
            AttackSpec::Gaussian { .. } => write!(f, "gaussian"),
            AttackSpec::RandomSign => write!(f, "random-sign"),
            AttackSpec::RandomUniform => write!(f, "random-uniform"),
            AttackSpec::AutoAttack { version, stages } if version == "custom" => {
                let s: Vec<&str> = stages.iter().map(|s| s.name()).collect();
                write!(f, "aa-custom:{}", s.join("+"))
            }
            AttackSpec::AutoAttack { version, .. } if version == "standard" => write!(f, "aa"),
            AttackSpec::AutoAttack { version, .. } => write!(f, "aa-{version}"),
        }
    }
}

const KNOWN: &str = "clean, fgsm, pgdN or pgdNxR (e.g. pgd20, pgd50x5), cw, gaussian, random-sign, \
random-uniform, aa (standard AutoAttack), aa-rand, aa-custom:STAGE+STAGE (stages apgd-ce, apgd-dlr, apgd-t, fab-t, square)";

impl AttackSpec {
    /// Parses one name; `sigma` is the Gaussian noise's standard deviation.
    pub fn parse(s: &str, sigma: f32) -> Result<AttackSpec> {
        let bad = || CovfError::spec("attack", format!("unknown attack {s:?}; expected one of {KNOWN}"));
        Ok(match s {
            "clean" => AttackSpec::Clean,
            "fgsm" => AttackSpec::Fgsm,
            "cw" => AttackSpec::Cw,
            "gaussian" => AttackSpec::Gaussian { sigma },
            "random-sign" => AttackSpec::RandomSign,
            "random-uniform" => AttackSpec::RandomUniform,
            "aa" | "aa-standard" => AttackSpec::AutoAttack {
                version: "standard".into(),
                stages: AutoAttack::standard(0.0).stages,
            },
            "aa-rand" => AttackSpec::AutoAttack {
                version: "rand".into(),
                stages: AutoAttack::rand(0.0).stages,
            },
            _ => {
                if let Some(list) = s.strip_prefix("aa-custom:") {
                    let stages = list.split('+').map(Stage::parse).collect::<Result<Vec<_>>>()?;
                    if stages.is_empty() {
                        return Err(bad());
                    }
                    return Ok(AttackSpec::AutoAttack {
                        version: "custom".into(),
                        stages,
                    });
                }
                let rest = s.strip_prefix("pgd").ok_or_else(bad)?;
                let (steps, restarts) = match rest.split_once('x') {
                    Some((a, b)) => (
                        a.parse::<usize>().map_err(|_| bad())?,
                        b.parse::<usize>().map_err(|_| bad())?,
                    ),
                    None => (rest.parse::<usize>().map_err(|_| bad())?, 1),
                };
                if steps == 0 || restarts == 0 {
                    return Err(CovfError::spec(
                        "attack",
                        format!("{s:?}: steps and restarts must be at least 1"),
                    ));
                }
                AttackSpec::Pgd { steps, restarts }
            }
        })
    }

    /// A comma-separated list, in order, without duplicates.
    pub fn parse_list(s: &str, sigma: f32) -> Result<Vec<AttackSpec>> {
        let mut out: Vec<AttackSpec> = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let a = AttackSpec::parse(name, sigma)?;
            if !out.contains(&a) {
                out.push(a);
            }
        }
        if out.is_empty() {
            return Err(CovfError::spec("attacks", "the list is empty"));
        }
        Ok(out)
    }

    /// The attack at budget `eps` (None for clean accuracy).
    pub fn build(&self, eps: f32) -> Option<Box<dyn Attack>> {
        match self {
            AttackSpec::Clean => None,
            AttackSpec::Fgsm => Some(Box::new(Fgsm::new(eps))),
            AttackSpec::Pgd { steps, restarts } => Some(Box::new(Pgd {
                restarts: *restarts,
                ..Pgd::new(eps, *steps)
            })),
            AttackSpec::Cw => Some(Box::new(CwInf::new(eps))),
            AttackSpec::Gaussian { sigma } => Some(Box::new(Noise::Gaussian { sigma: *sigma })),
            AttackSpec::RandomSign => Some(Box::new(Noise::Sign { eps })),
            AttackSpec::RandomUniform => Some(Box::new(Noise::Uniform { eps })),
            AttackSpec::AutoAttack { .. } => Some(Box::new(self.autoattack(eps)?)),
        }
    }

    /// The AutoAttack configuration, for AutoAttack specs.
    pub fn autoattack(&self, eps: f32) -> Option<AutoAttack> {
        match self {
            AttackSpec::AutoAttack { version, stages } => Some(match version.as_str() {
                "standard" => AutoAttack::standard(eps),
                "rand" => AutoAttack::rand(eps),
                _ => AutoAttack::custom(eps, stages.clone()),
            }),
            _ => None,
        }
    }

    /// Whether the attack uses gradients (the masking checks compare these with the others).
    pub fn is_white_box(&self) -> bool {
        matches!(
            self,
            AttackSpec::Fgsm | AttackSpec::Pgd { .. } | AttackSpec::Cw | AttackSpec::AutoAttack { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_rejected() {
        let list = AttackSpec::parse_list(
            "clean,pgd20,pgd50x5,cw,gaussian,aa,aa-rand,aa-custom:apgd-ce+square,pgd20",
            0.1,
        )
        .unwrap();
        let names: Vec<String> = list.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            names,
            [
                "clean",
                "pgd20",
                "pgd50x5",
                "cw",
                "gaussian",
                "aa",
                "aa-rand",
                "aa-custom:apgd-ce+square"
            ]
        );
        for bad in ["pgd", "pgd0", "pgdx3", "aa-custom:", "aa-custom:apgd", "autoattack", ""] {
            assert!(AttackSpec::parse_list(bad, 0.1).is_err(), "{bad}");
        }
    }
}
