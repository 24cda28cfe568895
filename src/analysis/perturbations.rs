//! `covf analyze perturbations`: the perturbations δ = f_A(θ_A^(i), x, y) themselves, pixel by pixel, for a
//! few test images and chosen epochs of a run (Figure 1a's data). Before CO the FGSM perturbation has the
//! shape of the garment; at and after the CO epoch it looks like noise. One tidy row per pixel, so any
//! plotting tool can redraw the images.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::generator::own_generator;
use super::registry::{value, Analysis, Flag, Flags, Job, Outcome};
use super::{cache, tidy, AnalysisCtx, EpochRef};
use crate::attacks::{Attack, AttackCtx};
use crate::error::{CovfError, Result};
use crate::models::{Classifier, Mode};
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PixelRow {
    pub run: String,
    pub method: String,
    pub dataset: String,
    pub epoch: u64,
    /// Position of the image in the seeded test subset.
    pub example: u64,
    pub label: u64,
    /// The checkpoint's prediction on the clean and on the perturbed image.
    pub pred_clean: u64,
    pub pred_adv: u64,
    pub eps: f64,
    pub channel: u64,
    pub row: u64,
    pub col: u64,
    /// Clean pixel in [0, 1].
    pub x: f64,
    /// Perturbation in [−ε, ε].
    pub delta: f64,
}

/// Flattens an `[n, c, h, w]` batch and its perturbation into pixel rows (examples numbered from 0).
pub fn pixel_rows(
    a: &EpochRef,
    x: &Tensor,
    delta: &Tensor,
    y: &[u32],
    pred: (&[u32], &[u32]),
) -> Result<Vec<PixelRow>> {
    let dims = x.dims4()?;
    if delta.dims() != x.dims() {
        return Err(CovfError::spec(
            "perturbation",
            format!("shape {:?} does not match the images' {:?}", delta.dims(), x.dims()),
        ));
    }
    let (n, c, h, w) = dims;
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let ds: Vec<f32> = delta.flatten_all()?.to_vec1()?;
    let mut rows = Vec::with_capacity(xs.len());
    for (i, &label) in y.iter().enumerate().take(n) {
        for ch in 0..c {
            for r in 0..h {
                for q in 0..w {
                    let k = ((i * c + ch) * h + r) * w + q;
                    rows.push(PixelRow {
                        run: a.run.name.clone(),
                        method: a.spec.method.label(),
                        dataset: a.spec.dataset.name().to_string(),
                        epoch: a.epoch as u64,
                        example: i as u64,
                        label: u64::from(label),
                        pred_clean: u64::from(pred.0[i]),
                        pred_adv: u64::from(pred.1[i]),
                        eps: f64::from(a.spec.eps.value),
                        channel: ch as u64,
                        row: r as u64,
                        col: q as u64,
                        x: f64::from(xs[k]),
                        delta: f64::from(ds[k]),
                    });
                }
            }
        }
    }
    Ok(rows)
}

/// The run's own perturbations of the first `examples` test images at checkpoint `a` (cached).
pub fn one(ctx: &AnalysisCtx, a: &EpochRef, examples: usize) -> Result<Vec<PixelRow>> {
    if examples == 0 {
        return Err(CovfError::spec("--examples", "must be at least 1"));
    }
    let key = cache::key(&[&a.cache_id()?, &format!("examples={examples}"), &ctx.key_parts()]);
    ctx.cache("perturbations").get_or(&key, || {
        let ds = ctx.image_set(&a.spec)?;
        let k = examples.min(ds.len());
        let positions: Vec<usize> = (0..k).collect();
        let b = ds.batch(&positions, None, &ctx.device)?;
        let (model, ck) = a.load(&ctx.device)?;
        let generator = own_generator(ctx, a, &ck)?;
        let mut rng = Rng::derive(ctx.seed, "perturbations", a.epoch as u64);
        let p = generator.perturb(
            &model,
            &b.x,
            &b.y,
            &mut AttackCtx {
                mode: Mode::EVAL,
                rng: &mut rng,
            },
        )?;
        let predict =
            |x: &Tensor| -> Result<Vec<u32>> { Ok(model.logits(x, Mode::EVAL)?.argmax(1)?.to_vec1::<u32>()?) };
        let clean = predict(&b.x)?;
        let adv = predict(&(&b.x + &p.delta)?)?;
        let y: Vec<u32> = b.y.to_vec1()?;
        pixel_rows(a, &b.x, &p.delta, &y, (&clean, &adv))
    })
}

/// Every given checkpoint.
pub fn run(ctx: &AnalysisCtx, checkpoints: &[EpochRef], examples: usize) -> Result<Vec<PixelRow>> {
    let mut rows = Vec::new();
    for a in checkpoints {
        rows.extend(one(ctx, a, examples)?);
    }
    Ok(rows)
}

const EXAMPLES: Flag = Flag {
    name: "examples",
    help: "Test images to keep (the first of the seeded test subset)",
    value: Some("N"),
    default: "4",
};

fn examples(flags: &Flags) -> Result<usize> {
    let n: usize = value(flags, &EXAMPLES)?;
    if n == 0 {
        return Err(CovfError::spec("--examples", "must be at least 1"));
    }
    Ok(n)
}

/// `covf analyze perturbations`; `perturbations = { run = "fgsm", epochs = [1, 2], examples = 2 }` in a study.
pub struct Perturbations;

impl Analysis for Perturbations {
    fn name(&self) -> &'static str {
        "perturbations"
    }
    fn about(&self) -> &'static str {
        "The run's own perturbations δ of a few test images at chosen epochs, pixel by pixel (Figure 1a)"
    }
    fn example(&self) -> &'static str {
        "covf analyze perturbations --runs fgsm-fmnist-preact-tiny-eps0.15-s0 --epochs 1,2,3 --examples 4"
    }
    fn flags(&self) -> &'static [Flag] {
        &[EXAMPLES]
    }
    fn check(&self, flags: &Flags, _: &crate::run::TrainSettings) -> Result<()> {
        examples(flags).map(|_| ())
    }
    fn run(&self, job: &Job) -> Result<Outcome> {
        let rows = run(job.ctx, &job.checkpoints, examples(&job.flags)?)?;
        tidy::write(&job.ctx.out, "perturbations", &rows)?;
        let mut seen = std::collections::BTreeSet::new();
        let lines = rows
            .iter()
            .filter(|x| seen.insert((x.run.clone(), x.epoch, x.example)))
            .map(|x| {
                format!(
                    "{:<44} epoch {:>3} example {:>2}: class {} → {} under its own δ",
                    x.run, x.epoch, x.example, x.label, x.pred_adv
                )
            })
            .collect();
        Ok(Outcome {
            tables: vec!["perturbations".into()],
            lines,
            ..Outcome::default()
        })
    }
}
