//! `covf analyze gap`: the strength gap G_B,i(A) = L(θ_A^(i); x + f_B) − L(θ_A^(i); x + f_A) (Eq. 2,
//! Figures 2b and 5c): how much weaker method A's own perturbation is than a stronger attack B (PGD-10 or
//! PGD-20, uniform start, step ε/4) on the same checkpoint. Small while A's perturbation is strong; it
//! explodes when the perturbation deteriorates. Per-example gaps give the spread.
//!
//! The sign: the paper's text prints Eq. 2 as L(δ_A) − L(δ_B) but describes G as larger for a weaker A,
//! small early and exploding at CO; with B the stronger attack only L(δ_B) − L(δ_A) behaves so (on the
//! default FGSM run the printed order gives −0.35 → −2.50 at CO), so covf uses that order.

use serde::{Deserialize, Serialize};

use super::generator::own_generator;
use super::tidy::{Cell, Kind, TidyRow};
use super::{cache, mean, per_sample, perturbed_batches, quantile, std_dev, AnalysisCtx, EpochRef};
use crate::attacks::Pgd;
use crate::error::Result;
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GapRow {
    pub run: String,
    pub method: String,
    pub epoch: u64,
    pub generator: String,
    /// The stronger attack B, `pgd10` or `pgd20`.
    pub attack_b: String,
    pub eps: f64,
    /// `test` or `train` (`--images`).
    pub images: String,
    pub n: u64,
    /// L(δ_A): mean cross-entropy of θ_A^(i) at x + f_A.
    pub loss_a: f64,
    /// L(δ_B).
    pub loss_b: f64,
    /// G_B,i(A) = loss_b − loss_a (larger: A's own perturbation is weaker than B).
    pub gap: f64,
    /// Spread of the per-example gaps ℓ_B − ℓ_A.
    pub gap_std: f64,
    pub gap_p10: f64,
    pub gap_p50: f64,
    pub gap_p90: f64,
    /// Accuracy of θ_A^(i) under f_A and under B.
    pub acc_a: f64,
    pub acc_b: f64,
}

impl TidyRow for GapRow {
    fn schema() -> &'static [(&'static str, Kind)] {
        &[
            ("run", Kind::Str),
            ("method", Kind::Str),
            ("epoch", Kind::U64),
            ("generator", Kind::Str),
            ("attack_b", Kind::Str),
            ("eps", Kind::F64),
            ("images", Kind::Str),
            ("n", Kind::U64),
            ("loss_a", Kind::F64),
            ("loss_b", Kind::F64),
            ("gap", Kind::F64),
            ("gap_std", Kind::F64),
            ("gap_p10", Kind::F64),
            ("gap_p50", Kind::F64),
            ("gap_p90", Kind::F64),
            ("acc_a", Kind::F64),
            ("acc_b", Kind::F64),
        ]
    }

    fn cells(&self) -> Vec<Cell> {
        vec![
            Cell::Str(self.run.clone()),
            Cell::Str(self.method.clone()),
            Cell::U64(Some(self.epoch)),
            Cell::Str(self.generator.clone()),
            Cell::Str(self.attack_b.clone()),
            Cell::F64(self.eps),
            Cell::Str(self.images.clone()),
            Cell::U64(Some(self.n)),
            Cell::F64(self.loss_a),
            Cell::F64(self.loss_b),
            Cell::F64(self.gap),
            Cell::F64(self.gap_std),
            Cell::F64(self.gap_p10),
            Cell::F64(self.gap_p50),
            Cell::F64(self.gap_p90),
            Cell::F64(self.acc_a),
            Cell::F64(self.acc_b),
        ]
    }
}

/// The per-example gaps summarised; `la`, `lb` are per-example losses under A and B.
pub fn summarize(la: &[f32], lb: &[f32]) -> (f64, f64, [f64; 3]) {
    let per: Vec<f64> = la.iter().zip(lb).map(|(a, b)| f64::from(*b) - f64::from(*a)).collect();
    let g = mean(lb) - mean(la);
    (
        g,
        std_dev(&per),
        [quantile(&per, 0.1), quantile(&per, 0.5), quantile(&per, 0.9)],
    )
}

/// G_B,i(A) for one checkpoint with B = PGD-`b_steps` (cached).
pub fn one(ctx: &AnalysisCtx, a: &EpochRef, b_steps: usize) -> Result<GapRow> {
    let key = cache::key(&[&a.cache_id()?, &format!("pgd{b_steps}"), &ctx.key_parts()]);
    ctx.cache("gap").get_or(&key, || {
        let ds = ctx.image_set(&a.spec)?;
        let (model, ck) = a.load(&ctx.device)?;
        let eps = a.spec.eps.value;
        let generator = own_generator(ctx, a, &ck)?;
        let nb = ds.len().div_ceil(ctx.batch_size.max(1));
        let pb = ctx.progress(2 * nb, format!("gap {} vs pgd{b_steps}", a.label()));
        let mut rng = Rng::derive(ctx.seed, "gap/a", a.epoch as u64);
        let xa = perturbed_batches(&model, &generator, &ds, ctx, &mut rng, &pb)?;
        let mut rng = Rng::derive(ctx.seed, "gap/b", a.epoch as u64);
        let xb = perturbed_batches(&model, &Pgd::new(eps, b_steps), &ds, ctx, &mut rng, &pb)?;
        pb.finish_and_clear();
        let (mut la, mut lb, mut ca, mut cb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((x1, y), (x2, _)) in xa.iter().zip(&xb) {
            let (c, l) = per_sample(&model, x1, y)?;
            ca.extend(c);
            la.extend(l);
            let (c, l) = per_sample(&model, x2, y)?;
            cb.extend(c);
            lb.extend(l);
        }
        let (gap, gap_std, [p10, p50, p90]) = summarize(&la, &lb);
        Ok(GapRow {
            run: a.run.name.clone(),
            method: a.spec.method.label(),
            epoch: a.epoch as u64,
            generator: generator.describe(),
            attack_b: format!("pgd{b_steps}"),
            eps: f64::from(eps),
            images: ctx.images.name().into(),
            n: ds.len() as u64,
            loss_a: mean(&la),
            loss_b: mean(&lb),
            gap,
            gap_std,
            gap_p10: p10,
            gap_p50: p50,
            gap_p90: p90,
            acc_a: mean(&ca),
            acc_b: mean(&cb),
        })
    })
}

pub fn run(ctx: &AnalysisCtx, checkpoints: &[EpochRef], b_steps: usize) -> Result<Vec<GapRow>> {
    checkpoints.iter().map(|a| one(ctx, a, b_steps)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_is_the_difference_of_mean_losses_with_its_spread() {
        // A weaker than B: its losses are lower.
        let la = [1.0f32, 1.0, 1.0, 1.0];
        let lb = [1.0f32, 2.0, 3.0, 6.0];
        let (g, s, [p10, p50, p90]) = summarize(&la, &lb);
        // Per-example gaps 0, 1, 2, 5: mean 2, variance (4 + 1 + 0 + 9)/4 = 3.5.
        assert!((g - 2.0).abs() < 1e-12);
        assert!((s - 3.5f64.sqrt()).abs() < 1e-12);
        assert!((p50 - 1.5).abs() < 1e-12);
        assert!((p10 - 0.3).abs() < 1e-12 && (p90 - 4.1).abs() < 1e-12, "{p10} {p90}");
    }
}
