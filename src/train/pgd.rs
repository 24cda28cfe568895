//! PGD-N adversarial training (Madry et al. 2018): the multi-step reference that does not overfit catastrophically.

use serde::{Deserialize, Serialize};

use super::method::{alpha_flag, counted, positive_alpha, quarter_eps, Defaults, Flag, Flags, Meta, Method, STEPS};
use super::{perturb_then_descend, MethodEnv, StepCtx, StepStats, TrainMethod};
use crate::attacks::{Generator, Pgd as PgdAttack};
use crate::data::Batch;
use crate::error::{CovfError, Result};
use crate::models::PreActResNet;

/// `--method pgd`.
pub struct Pgd;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgdConfig {
    pub steps: usize,
    pub alpha: f32,
    pub restarts: usize,
}

impl Method for Pgd {
    type Config = PgdConfig;
    const NAME: &'static str = "pgd";
    const HELP: &'static str = "PGD-N (Madry et al. 2018): uniform start, N signed steps α, projected";
    const DISPLAY: &'static str = "PGD";
    const COLOUR: Option<usize> = Some(1);
    const FLAGS: &'static [Flag] = &[
        STEPS,
        alpha_flag("ε/4"),
        Flag {
            name: "restarts",
            help: "PGD restarts per batch",
            value: Some("R"),
            default: "1",
        },
    ];

    fn config(f: &Flags, d: &Defaults) -> Result<PgdConfig> {
        Ok(PgdConfig {
            steps: f.parse("steps")?.unwrap_or(10),
            alpha: f.pixels("alpha")?.unwrap_or(quarter_eps(d)),
            restarts: f.parse("restarts")?.unwrap_or(1),
        })
    }

    fn label(c: &PgdConfig) -> String {
        format!("pgd{}", c.steps)
    }

    fn display(label: &str) -> Option<String> {
        counted(label, "pgd").map(|k| format!("PGD-{k}"))
    }

    fn flags_for_label(label: &str) -> Option<Flags> {
        counted(label, "pgd").map(|k| Flags::default().with("steps", k.to_string()))
    }

    fn alpha(c: &PgdConfig) -> Option<f32> {
        Some(c.alpha)
    }

    fn validate(c: &PgdConfig) -> Result<()> {
        positive_alpha(Self::NAME, c.alpha)?;
        if c.steps == 0 || c.restarts == 0 {
            return Err(CovfError::spec(
                "pgd",
                format!("steps {} and restarts {} must be at least 1", c.steps, c.restarts),
            ));
        }
        Ok(())
    }

    fn build(c: &PgdConfig, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Ok(Box::new(PgdTraining::new(env.eps, c.alpha, c.steps, c.restarts)))
    }

    /// PGD-N, uniform start, step α.
    fn generator(c: &PgdConfig, eps: f32, _: &Meta) -> Result<Generator> {
        Ok(Generator::Pgd {
            eps,
            alpha: c.alpha,
            steps: c.steps,
            random_start: true,
        })
    }
}

pub struct PgdTraining {
    attack: PgdAttack,
}

impl PgdTraining {
    pub fn new(eps: f32, alpha: f32, steps: usize, restarts: usize) -> Self {
        PgdTraining {
            attack: PgdAttack {
                eps,
                alpha,
                steps,
                restarts,
                random_start: true,
            },
        }
    }
}

impl TrainMethod for PgdTraining {
    fn alpha(&self) -> f32 {
        self.attack.alpha
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        perturb_then_descend(&self.attack, model, batch, ctx)
    }
}
