//! APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss, the second stage of AutoAttack. L∞, ε.
//! Defaults as in fra31/auto-attack's standard version: 9 target classes (the 2nd- to 10th-largest clean
//! logits of each example), 1 restart per target, 100 iterations each; only examples still robust are
//! attacked, and any misclassification (not only the target) counts as success.

use candle_core::Tensor;

use super::apgd::{single_run, RunParams};
use super::loss::AttackLoss;
use super::robust::{index_tensor, perturb_robust};
use super::{Attack, AttackCtx, Perturbation};
use crate::error::Result;
use crate::models::Classifier;

#[derive(Debug, Clone, Copy)]
pub struct ApgdT {
    pub eps: f32,
    pub n_iter: usize,
    pub n_targets: usize,
    pub restarts: usize,
    pub rho: f32,
}

impl ApgdT {
    /// AutoAttack's standard APGD-T.
    pub fn new(eps: f32) -> Self {
        ApgdT {
            eps,
            n_iter: 100,
            n_targets: 9,
            restarts: 1,
            rho: 0.75,
        }
    }
}

/// Per example, the class of the `rank`-th largest logit (rank 1 = the largest).
pub(crate) fn ranked_class(logits: &Tensor, rank: usize) -> Result<Tensor> {
    let order = logits.arg_sort_last_dim(false)?;
    Ok(order.narrow(1, rank - 1, 1)?.squeeze(1)?.contiguous()?)
}

/// The `rank`-th largest clean logit's class for the examples `idx` (targets beyond the number of other
/// classes do not exist: callers stop at K − 1).
pub(crate) fn targets(clean: &Tensor, idx: &[usize], rank: usize) -> Result<Tensor> {
    ranked_class(&clean.index_select(&index_tensor(idx, clean.device())?, 0)?, rank)
}

impl Attack for ApgdT {
    fn name(&self) -> String {
        "apgd-t".into()
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        let (mode, restarts) = (ctx.mode, self.restarts.max(1));
        let rounds = |k: usize| self.n_targets.min(k.saturating_sub(1)) * restarts;
        perturb_robust(model, x, y, mode, rounds, |round, xs, ys, idx, clean| {
            let loss = AttackLoss::DlrTargeted(targets(clean, idx, 2 + round / restarts)?);
            let p = RunParams {
                eps: self.eps,
                n_iter: self.n_iter,
                rho: self.rho,
                eot: 1,
            };
            single_run(model, xs, ys, &loss, p, mode, ctx.rng)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn targets_are_the_ranked_other_classes() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[0.1f32, 3.0, 2.0, -1.0], [5.0, 1.0, 4.0, 2.0]], &dev).unwrap();
        let t2: Vec<u32> = ranked_class(&z, 2).unwrap().to_vec1().unwrap();
        let t3: Vec<u32> = ranked_class(&z, 3).unwrap().to_vec1().unwrap();
        assert_eq!(t2, vec![2, 2]);
        assert_eq!(t3, vec![0, 3]);
    }
}
