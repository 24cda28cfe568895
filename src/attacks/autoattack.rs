//! AutoAttack (Croce & Hein 2020), L∞, ε: a cascade of attacks, each run only on the points still robust
//! after the previous ones, a point's adversarial example being the first that fools it. Versions as in
//! fra31/auto-attack: `standard` = APGD-CE → APGD-T (9 targets) → FAB-T (9 targets) → Square (5,000
//! queries); `rand` = APGD-CE → APGD-DLR, each with gradients averaged over 20 draws (for randomized
//! models); `custom` = any subset in any order. Accuracy is reported after every stage, over all points.
//!
//! The cascade works on explicit per-example robust flags so that an interrupted evaluation can resume
//! from the flags saved after the last finished (stage, batch).

use candle_core::Tensor;

use super::robust::{attack_robust_subset, clean_correct, recheck};
use super::{Apgd, ApgdT, Attack, AttackCtx, AttackLoss, FabT, Perturbation, Square};
use crate::error::{CovfError, Result};
use crate::models::Classifier;

/// One stage of the cascade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    ApgdCe,
    ApgdDlr,
    ApgdT,
    FabT,
    Square,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::ApgdCe, Stage::ApgdDlr, Stage::ApgdT, Stage::FabT, Stage::Square];

    pub fn name(self) -> &'static str {
        match self {
            Stage::ApgdCe => "apgd-ce",
            Stage::ApgdDlr => "apgd-dlr",
            Stage::ApgdT => "apgd-t",
            Stage::FabT => "fab-t",
            Stage::Square => "square",
        }
    }

    pub fn parse(s: &str) -> Result<Stage> {
        Stage::ALL.into_iter().find(|st| st.name() == s).ok_or_else(|| {
            CovfError::spec(
                "AutoAttack stage",
                format!("unknown stage {s:?}; expected one of apgd-ce, apgd-dlr, apgd-t, fab-t, square"),
            )
        })
    }
}

/// Where a batch stands in the cascade: per-example robust flags and the perturbations found so far.
#[derive(Debug, Clone)]
pub struct CascadeState {
    pub robust: Vec<bool>,
    pub delta: Tensor,
}

/// The cascade's stages and their settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoAttack {
    pub eps: f32,
    pub stages: Vec<Stage>,
    /// Gradients averaged per APGD step (20 in `rand`, 1 otherwise).
    pub eot: usize,
    /// Square's query budget (5,000 in `standard`).
    pub square_queries: usize,
    /// The version's name, for reports: `standard`, `rand` or `custom`.
    pub version: String,
}

impl AutoAttack {
    pub fn standard(eps: f32) -> Self {
        AutoAttack {
            eps,
            stages: vec![Stage::ApgdCe, Stage::ApgdT, Stage::FabT, Stage::Square],
            eot: 1,
            square_queries: 5000,
            version: "standard".into(),
        }
    }

    pub fn rand(eps: f32) -> Self {
        AutoAttack {
            eps,
            stages: vec![Stage::ApgdCe, Stage::ApgdDlr],
            eot: 20,
            square_queries: 5000,
            version: "rand".into(),
        }
    }

    pub fn custom(eps: f32, stages: Vec<Stage>) -> Self {
        AutoAttack {
            eps,
            stages,
            eot: 1,
            square_queries: 5000,
            version: "custom".into(),
        }
    }

    /// The attack of one stage with this version's settings.
    pub fn stage_attack(&self, stage: Stage) -> Box<dyn Attack> {
        match stage {
            Stage::ApgdCe => Box::new(Apgd {
                eot: self.eot,
                ..Apgd::ce(self.eps)
            }),
            Stage::ApgdDlr => Box::new(Apgd {
                eot: self.eot,
                loss: AttackLoss::Dlr,
                ..Apgd::ce(self.eps)
            }),
            Stage::ApgdT => Box::new(ApgdT::new(self.eps)),
            Stage::FabT => Box::new(FabT::new(self.eps)),
            Stage::Square => Box::new(Square {
                n_queries: self.square_queries,
                ..Square::new(self.eps)
            }),
        }
    }

    /// Runs `stage` on the examples of one batch still robust in `state`, then re-checks each result with
    /// the model (as the reference driver does), clears the flags of those fooled and stores their δ.
    /// Returns how many examples this stage fooled.
    pub fn run_stage(
        &self,
        stage: Stage,
        model: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        state: &mut CascadeState,
        ctx: &mut AttackCtx,
    ) -> Result<usize> {
        let before = state.robust.iter().filter(|&&r| r).count();
        let attack = self.stage_attack(stage);
        attack_robust_subset(x, y, &mut state.robust, &mut state.delta, |xs, ys, _| {
            let d = attack.perturb(model, xs, ys, ctx)?.delta;
            recheck(model, ys, (xs + &d)?, ctx.mode)
        })?;
        let n = before - state.robust.iter().filter(|&&r| r).count();
        Ok(n)
    }
}

impl Attack for AutoAttack {
    fn name(&self) -> String {
        format!("aa-{}", self.version)
    }

    /// The whole cascade on one batch: δ is the first successful stage's perturbation, 0 where none was.
    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        let mut state = CascadeState {
            robust: clean_correct(model, x, y, ctx.mode)?.0,
            delta: x.zeros_like()?,
        };
        for &stage in &self.stages {
            self.run_stage(stage, model, x, y, &mut state, ctx)?;
        }
        Ok(Perturbation {
            delta: state.delta,
            clean_logits: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::linear::TwoClassLinear;
    use crate::models::Mode;
    use crate::rng::Rng;
    use candle_core::Device;

    #[test]
    fn versions_and_stage_names() {
        let s = AutoAttack::standard(0.1);
        assert_eq!(s.stages, vec![Stage::ApgdCe, Stage::ApgdT, Stage::FabT, Stage::Square]);
        assert_eq!(AutoAttack::rand(0.1).eot, 20);
        for st in Stage::ALL {
            assert_eq!(Stage::parse(st.name()).unwrap(), st);
        }
        assert!(Stage::parse("apgd").is_err());
    }

    #[test]
    fn cascade_only_attacks_robust_points_and_keeps_first_success() {
        let dev = Device::Cpu;
        let model = TwoClassLinear {
            w: Tensor::new(&[1.0f32, -2.0, 0.5, 4.0], &dev).unwrap(),
            b: -1.0,
        };
        // Row 0 is 0.45 from the boundary in w·x (fooled by ε = 0.1, gain 0.75); row 1 is 2.05 away and the box caps the gain at 0.75 (robust);
        // row 2 is misclassified already (y = 1 but class 0 predicted) and must not be attacked.
        let x = Tensor::new(
            &[[0.5f32, 0.5, 0.5, 0.2], [0.5, 0.9, 0.5, 0.0], [0.5, 0.5, 0.5, 0.2]],
            &dev,
        )
        .unwrap()
        .reshape((3, 1, 2, 2))
        .unwrap();
        let y = Tensor::new(&[0u32, 0, 1], &dev).unwrap();
        let aa = AutoAttack::custom(0.1, vec![Stage::ApgdCe, Stage::Square]);
        let mut st = CascadeState {
            robust: vec![true, true, false],
            delta: x.zeros_like().unwrap(),
        };
        let mut rng = Rng::new(1);
        let mut ctx = AttackCtx {
            mode: Mode::EVAL,
            rng: &mut rng,
        };
        let n = aa.run_stage(Stage::ApgdCe, &model, &x, &y, &mut st, &mut ctx).unwrap();
        assert_eq!((n, st.robust.clone()), (1, vec![false, true, false]));
        let after_first = st.delta.clone();
        let n = aa.run_stage(Stage::Square, &model, &x, &y, &mut st, &mut ctx).unwrap();
        assert_eq!((n, st.robust.clone()), (0, vec![false, true, false]));
        // Stage 2 changed nothing: row 0 keeps stage 1's δ, rows 1 and 2 have none.
        let d: Vec<Vec<f32>> = st.delta.flatten_from(1).unwrap().to_vec2().unwrap();
        assert_eq!(d, after_first.flatten_from(1).unwrap().to_vec2::<f32>().unwrap());
        assert!(d[1].iter().chain(&d[2]).all(|v| *v == 0.0));
        assert!(d[0].iter().all(|v| v.abs() <= 0.1 + 1e-6) && d[0].iter().any(|v| *v != 0.0));
    }
}
