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
use super::registry::{pct, Analysis, Flag, Flags, Job, Outcome};
use super::{first, mean, quantile, std_dev, tidy, AnalysisCtx, EpochRef};
use crate::attacks::{Attack, Pgd};
use crate::error::{CovfError, Result};
use crate::eval::{Request, Scores};
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

/// G_B,i(A) for one checkpoint with B = PGD-`b_steps` (both perturbations scored by the scoring service).
pub fn one(ctx: &AnalysisCtx, a: &EpochRef, b_steps: usize) -> Result<GapRow> {
    let ds = ctx.image_set(&a.spec)?;
    let (model, ck) = a.load(&ctx.device)?;
    let eps = a.spec.eps.value;
    let generator = own_generator(ctx, a, &ck)?;
    let pgd = Pgd::new(eps, b_steps);
    let scorer = ctx.scorer();
    let scores = |attack: &dyn Attack, id: String, stream: &str| -> Result<Scores> {
        let key = ctx.score_key(a, id, stream, a.epoch, vec![], &a.spec)?;
        let mut rng = Rng::derive(ctx.seed, stream, a.epoch as u64);
        let mut req = Request {
            source: &model,
            attack: Some(attack),
            images: &ds,
            rng: &mut rng,
            label: format!("gap {} {}", a.label(), attack.name()),
        };
        first(scorer.per_example(&key, &mut req, &[])?)
    };
    let sa = scores(&generator, generator.describe(), "gap/a")?;
    let sb = scores(&pgd, format!("{pgd:?}"), "gap/b")?;
    let (gap, gap_std, [p10, p50, p90]) = summarize(&sa.loss, &sb.loss);
    Ok(GapRow {
        run: a.run.name.clone(),
        method: a.spec.method.label(),
        epoch: a.epoch as u64,
        generator: generator.describe(),
        attack_b: format!("pgd{b_steps}"),
        eps: f64::from(eps),
        images: ctx.images.name().into(),
        n: ds.len() as u64,
        loss_a: sa.mean_loss(),
        loss_b: sb.mean_loss(),
        gap,
        gap_std,
        gap_p10: p10,
        gap_p50: p50,
        gap_p90: p90,
        acc_a: sa.accuracy(),
        acc_b: sb.accuracy(),
    })
}

pub fn run(ctx: &AnalysisCtx, checkpoints: &[EpochRef], b_steps: usize) -> Result<Vec<GapRow>> {
    checkpoints.iter().map(|a| one(ctx, a, b_steps)).collect()
}

/// The steps N of a `pgdN` attack named by `flag`.
pub fn pgd_steps(s: &str, flag: &str) -> Result<usize> {
    s.trim()
        .to_ascii_lowercase()
        .strip_prefix("pgd")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| CovfError::spec(flag, format!("'{s}': expected pgdN, e.g. pgd10 or pgd20")))
}

const REF: Flag = Flag {
    name: "ref",
    help: "The stronger attack B of the gap: pgd10 or pgd20 (any pgdN)",
    value: Some("pgdN"),
    default: "pgd10",
};

fn steps_of(flags: &Flags) -> Result<usize> {
    pgd_steps(flags.get(REF.name).unwrap_or(REF.default), "--ref")
}

/// `covf analyze gap --ref pgdN`; `gap-pgdN = [runs]` in a study. Its table is `gap-pgdN`.
pub struct Gap;

impl Analysis for Gap {
    fn name(&self) -> &'static str {
        "gap"
    }
    fn about(&self) -> &'static str {
        "Strength gap G_B,i(A) = L(δ_B) − L(δ_A) per epoch (Figures 2b, 5c)"
    }
    fn example(&self) -> &'static str {
        "covf analyze gap --ref pgd20 --runs RUN_A RUN_B"
    }
    fn flags(&self) -> &'static [Flag] {
        &[REF]
    }
    fn study_key(&self, key: &str) -> Option<Flags> {
        match key.strip_prefix("gap-") {
            Some(b) if pgd_steps(b, "").is_ok() => Some(Flags::default().with(REF.name, b)),
            _ => (key == "gap").then(Flags::default),
        }
    }
    fn tables(&self, flags: &Flags) -> Result<Vec<String>> {
        Ok(vec![format!("gap-pgd{}", steps_of(flags)?)])
    }
    fn check(&self, flags: &Flags, _: &crate::run::TrainSettings) -> Result<()> {
        steps_of(flags).map(|_| ())
    }
    fn run(&self, job: &Job) -> Result<Outcome> {
        let steps = steps_of(&job.flags)?;
        let rows = run(job.ctx, &job.checkpoints, steps)?;
        let name = format!("gap-pgd{steps}");
        tidy::write(&job.ctx.out, &name, &rows)?;
        let mut lines = vec![
            format!("strength gap to PGD-{steps} (nats; larger = weaker own perturbation)"),
            format!(
                "{:<44} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "run", "epoch", "gap", "p10", "p90", "acc A", "acc B"
            ),
        ];
        lines.extend(rows.iter().map(|x| {
            format!(
                "{:<44} {:>5} {:>8.3} {:>8.3} {:>8.3} {:>8} {:>8}",
                x.run,
                x.epoch,
                x.gap,
                x.gap_p10,
                x.gap_p90,
                pct(x.acc_a),
                pct(x.acc_b)
            )
        }));
        Ok(Outcome {
            tables: vec![name],
            lines,
            ..Outcome::default()
        })
    }
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

    #[test]
    fn study_keys_name_the_stronger_attack() {
        assert_eq!(Gap.study_key("gap-pgd20"), Some(Flags::default().with("ref", "pgd20")));
        assert_eq!(Gap.study_key("gap"), Some(Flags::default()));
        assert_eq!(Gap.study_key("gap-fgsm"), None);
        assert_eq!(Gap.tables(&Flags::default()).unwrap(), ["gap-pgd10"]);
        assert!(pgd_steps("pgd0", "--ref").is_err() && pgd_steps("PGD7", "--ref").unwrap() == 7);
    }
}
