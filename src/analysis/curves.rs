//! `covf analyze curves`: per run and epoch, training accuracy (on the training perturbations, and clean
//! where the method saw the clean input) and test accuracy clean, under PGD-10 and under PGD-20 — the
//! curves of Figures 1b and 5a–b. The training-time numbers come from the run's metrics; PGD-20 is
//! computed on each checkpoint (uniform start, step ε/4) by the scoring service, which `tradeoff` shares.

use serde::{Deserialize, Serialize};

use super::registry::{pct, Analysis, Job, Outcome};
use super::{pgd_scores, tidy, AnalysisCtx, EpochRef};
use crate::error::Result;
use crate::run::checkpoint::RunDir;
use crate::run::metrics::{col_f64, col_u64, read_parquet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveRow {
    pub run: String,
    pub method: String,
    pub epoch: u64,
    /// `train_acc_adv`, `train_acc_clean`, `test_acc_clean`, `test_acc_pgd10`, `test_acc_pgd20`.
    pub metric: String,
    pub value: f64,
    /// Images behind the value: the test subset, or for the train metrics the training subset (null when
    /// the run used the whole training set).
    pub n: Option<u64>,
}

/// Test accuracy of one checkpoint under PGD-`steps` at its training ε, and the images behind it.
pub fn pgd_accuracy(ctx: &AnalysisCtx, a: &EpochRef, steps: usize) -> Result<(f64, u64)> {
    let s = pgd_scores(ctx, a, a.spec.eps.value, steps)?;
    Ok((s.accuracy(), s.correct.len() as u64))
}

/// The training-time rows of a run, from its `metrics.parquet`.
pub fn from_metrics(run: &RunDir) -> Result<Vec<CurveRow>> {
    let path = run.path.join("metrics.parquet");
    let df = read_parquet(&path)?;
    let spec = run.read_spec()?;
    let method = spec.method.label();
    let n_train = spec.train_subset.map(|n| n as u64);
    let epochs = col_u64(&df, "epoch", &path)?;
    let test_n = col_u64(&df, "test_n", &path)?;
    let pgd_steps = col_u64(&df, "pgd_steps", &path)?;
    let mut rows = Vec::new();
    for (name, metric) in [
        ("train_acc_adv", "train_acc_adv"),
        ("train_acc_clean", "train_acc_clean"),
        ("test_acc_clean", "test_acc_clean"),
        ("test_acc_pgd", "test_acc_pgd"),
    ] {
        let v = col_f64(&df, name, &path)?;
        for i in 0..df.height() {
            if v[i].is_nan() {
                continue;
            }
            let (metric, n) = match metric {
                "test_acc_pgd" => (format!("test_acc_pgd{}", pgd_steps[i]), Some(test_n[i])),
                m if m.starts_with("test") => (m.to_string(), Some(test_n[i])),
                m => (m.to_string(), n_train),
            };
            rows.push(CurveRow {
                run: run.name.clone(),
                method: method.clone(),
                epoch: epochs[i],
                metric,
                value: v[i],
                n,
            });
        }
    }
    Ok(rows)
}

/// Metrics rows plus test PGD-20 accuracy for every given checkpoint of each run.
pub fn run(ctx: &AnalysisCtx, runs: &[(RunDir, Vec<EpochRef>)]) -> Result<Vec<CurveRow>> {
    let mut rows = Vec::new();
    for (run, checkpoints) in runs {
        rows.extend(from_metrics(run)?);
        for a in checkpoints {
            let (acc, n) = pgd_accuracy(ctx, a, 20)?;
            rows.push(CurveRow {
                run: run.name.clone(),
                method: a.spec.method.label(),
                epoch: a.epoch as u64,
                metric: "test_acc_pgd20".into(),
                value: acc,
                n: Some(n),
            });
        }
    }
    rows.sort_by(|a, b| (&a.run, a.epoch, &a.metric).cmp(&(&b.run, b.epoch, &b.metric)));
    Ok(rows)
}

/// `covf analyze curves`; `curves = [runs]` in a study.
pub struct Curves;

impl Analysis for Curves {
    fn name(&self) -> &'static str {
        "curves"
    }
    fn about(&self) -> &'static str {
        "Training accuracy and test clean / PGD-10 / PGD-20 accuracy per epoch (Figures 1b, 5a-b)"
    }
    fn example(&self) -> &'static str {
        "covf analyze curves --runs fgsm-fmnist-preact-tiny-eps0.15-s0 pgd10-fmnist-preact-tiny-eps0.15-s0"
    }
    fn run(&self, job: &Job) -> Result<Outcome> {
        let rows = run(job.ctx, &job.per_run())?;
        tidy::write(&job.ctx.out, "curves", &rows)?;
        let mut lines = vec![format!(
            "{:<44} {:>5} {:<16} {:>7}",
            "run", "epoch", "metric", "value %"
        )];
        lines.extend(
            rows.iter()
                .map(|x| format!("{:<44} {:>5} {:<16} {:>7}", x.run, x.epoch, x.metric, pct(x.value))),
        );
        Ok(Outcome {
            tables: vec!["curves".into()],
            lines,
            ..Outcome::default()
        })
    }
}
