//! f_A: the perturbation generator of a training method, applied to a checkpoint of its run (the paper's
//! f_A(θ_A^(i), x, y)), as an `Attack` so the analyses can run it on the test images.
//!
//! Each method's own attack with its run's parameters; where the training generator keeps per-example
//! state that unseen test images do not have, the state starts where training starts it:
//! - `fgsm`, `gradalign`: FGSM, zero start, step α. `free`: FGSM with step ε (a fresh example's carried δ is 0).
//! - `fgsm-rs`: uniform start, step α. `pgd`: PGD-N, uniform start, step α. `atta`: PGD-K from δ = 0
//!   (its store starts at 0.001·N(0, 1)).
//! - `sfgsm`: the FGSM-RS step cut at the first of the c checkpoints that is misclassified, 0 where the
//!   random-start point is already misclassified (as in training).
//! - `nfgsm`: noise U(−kε, kε), one step α, then projected onto the ε-ball so that every generator is
//!   compared within the same budget (training itself does not project).
//! - `apart`, `apart-simple`: clamp(α_ω·ω + α1·sign(∇x L(x + α_ω·ω)), ±ε) with the checkpoint's learned
//!   α1; ω is learned per *training* example, so on test images ω = 0 and the generator is a signed step of
//!   α1. On the analyses' training images (`--images train`) ω is the run's own at that epoch, kept beside
//!   the checkpoint (`epoch-NNN.train-images.safetensors`). The block perturbations δi live inside the
//!   network and cannot be transferred.
//! - `clean`: no generator (δ = 0). A model covf did not train (`external`) has none to offer.
//!
//! BN runs in eval mode, as for every attack in `covf eval`.

use std::collections::HashMap;

use candle_core::Tensor;

use super::{AnalysisCtx, EpochRef, Images};
use crate::attacks::{input_grad, project, sign_step, uniform_start, Attack, AttackCtx, Perturbation};
use crate::error::{CovfError, Result};
use crate::models::Classifier;
use crate::run::checkpoint::{self, Checkpoint};
use crate::run::{MethodSpec, TrainSpec};
use crate::train::apart::OMEGA;
use crate::train::sfgsm::cut_at_first_misclassified;

#[derive(Debug, Clone)]
pub enum Generator {
    Zero,
    /// One signed step of α from δ0 ~ U(−start·ε, start·ε) (start = 0: from zero), projected to ε.
    Step {
        eps: f32,
        alpha: f32,
        start: f32,
    },
    /// N signed steps of α, projected every step, from a uniform start or from zero.
    Pgd {
        eps: f32,
        alpha: f32,
        steps: usize,
        random_start: bool,
    },
    /// FGSM-RS, then the first misclassified point among (k/c)·δ.
    Sfgsm {
        eps: f32,
        alpha: f32,
        checkpoints: usize,
    },
    /// APART's generator with its learned initialisation: clamp(s + α·sign(∇x L(x + clamp(s, ±ε))), ±ε)
    /// with s = α_ω·ω_x, one row of `init` per image of the set attacked (training images only).
    LearnedInit {
        eps: f32,
        alpha: f32,
        /// α_ω, for the description.
        alpha_init: f32,
        /// α_ω·ω, (N, C, H, W) for the N images of the set, in order.
        init: Tensor,
    },
}

impl Generator {
    /// The generator of `spec`'s method at the checkpoint `ck` (APART reads its learned α1 there).
    pub fn for_run(spec: &TrainSpec, ck: &Checkpoint) -> Result<Generator> {
        let eps = spec.eps.value;
        Ok(match &spec.method {
            MethodSpec::Clean => Generator::Zero,
            MethodSpec::Fgsm { alpha } => Generator::Step {
                eps,
                alpha: *alpha,
                start: 0.0,
            },
            MethodSpec::GradAlign { .. } | MethodSpec::Free { .. } => Generator::Step {
                eps,
                alpha: eps,
                start: 0.0,
            },
            MethodSpec::FgsmRs { alpha } => Generator::Step {
                eps,
                alpha: *alpha,
                start: 1.0,
            },
            MethodSpec::Nfgsm { alpha, noise } => Generator::Step {
                eps,
                alpha: *alpha,
                start: *noise,
            },
            MethodSpec::Pgd { steps, alpha, .. } => Generator::Pgd {
                eps,
                alpha: *alpha,
                steps: *steps,
                random_start: true,
            },
            MethodSpec::Atta { steps, alpha, .. } => Generator::Pgd {
                eps,
                alpha: *alpha,
                steps: *steps,
                random_start: false,
            },
            MethodSpec::Sfgsm { alpha, checkpoints } => Generator::Sfgsm {
                eps,
                alpha: *alpha,
                checkpoints: *checkpoints,
            },
            MethodSpec::Apart(_) | MethodSpec::ApartSimple(_) => Generator::Step {
                eps,
                alpha: learned_input_step(ck)?,
                start: 0.0,
            },
            MethodSpec::External { label } => {
                return Err(CovfError::spec(
                    "generator",
                    format!(
                        "{} ({label}) was not trained by covf, so its training perturbation is unknown; analyses \
                         that need it (own-generator transfer, gap) do not apply to it",
                        spec.name
                    ),
                ))
            }
        })
    }

    /// A short description for tables, e.g. `step(a=0.15,start=0)`.
    pub fn describe(&self) -> String {
        match self {
            Generator::Zero => "zero".into(),
            Generator::Step { alpha, start, .. } => format!("step(a={alpha},start={start})"),
            Generator::Pgd {
                alpha,
                steps,
                random_start,
                ..
            } => format!("pgd{steps}(a={alpha},rs={random_start})"),
            Generator::Sfgsm { alpha, checkpoints, .. } => format!("sfgsm(a={alpha},c={checkpoints})"),
            Generator::LearnedInit { alpha, alpha_init, .. } => {
                format!("learned-init(a={alpha},a_init={alpha_init})")
            }
        }
    }
}

/// α1 ("input") from the `step_sizes` JSON an APART checkpoint carries in its metadata.
pub fn learned_input_step(ck: &Checkpoint) -> Result<f32> {
    learned_step(ck, "input")
}

/// One learned step size (`input`, `init`, `block<i>`) from an APART checkpoint's metadata.
fn learned_step(ck: &Checkpoint, layer: &str) -> Result<f32> {
    let missing = |m: &str| CovfError::spec("APART checkpoint", format!("step_sizes metadata: {m}"));
    let text = ck.get("step_sizes").ok_or_else(|| missing("absent"))?;
    let v: serde_json::Value = serde_json::from_str(text)?;
    v.as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s.get("layer").and_then(|l| l.as_str()) == Some(layer))
        })
        .and_then(|s| s.get("value"))
        .and_then(serde_json::Value::as_f64)
        .map(|a| a as f32)
        .ok_or_else(|| missing(&format!("no '{layer}' step size")))
}

/// f_A as the analyses run it on `ctx`'s images: `Generator::for_run`, except that on the training images
/// an APART run's generator starts from its learned ω at that epoch, read from the file kept beside the
/// checkpoint.
pub fn own_generator(ctx: &AnalysisCtx, a: &EpochRef, ck: &Checkpoint) -> Result<Generator> {
    let learned_init = match &a.spec.method {
        MethodSpec::Apart(cfg) => cfg.learned_init,
        MethodSpec::ApartSimple(_) => true,
        _ => false,
    };
    if ctx.images != Images::Train || !learned_init {
        return Generator::for_run(&a.spec, ck);
    }
    let path = checkpoint::train_images_path(&a.path());
    if !path.is_file() {
        return Err(CovfError::run(
            &a.run.name,
            format!(
                "has no {} beside epoch {}'s checkpoint: APART's ω on the training images was not kept (a run \
                 trained before covf kept it, or a checkpoint copied without it); retrain it, or use --images test",
                path.display(),
                a.epoch
            ),
        ));
    }
    let (t, _) = checkpoint::load_tensors(&path, &ctx.device)?;
    let field = |k: &str| {
        t.get(k)
            .ok_or_else(|| CovfError::checkpoint(&path, format!("no '{k}' tensor")))
    };
    let ids: Vec<i64> = field(crate::run::sets::IMAGE_IDS)?.to_vec1()?;
    let omega = field(OMEGA)?;
    let row: HashMap<usize, usize> = ids.iter().enumerate().map(|(r, &id)| (id as usize, r)).collect();
    let ds = ctx.image_set(&a.spec)?;
    let rows = ds
        .index
        .iter()
        .map(|id| row.get(id).map(|&r| r as u32))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| {
            CovfError::run(
                &a.run.name,
                format!(
                    "keeps ω for the first {} of the analyses' training images, {} asked for: use --n {} or less, \
                     or --images test",
                    ids.len(),
                    ds.len(),
                    ids.len()
                ),
            )
        })?;
    let rows = Tensor::new(rows.as_slice(), &ctx.device)?;
    let alpha_init = learned_step(ck, "init")?;
    Ok(Generator::LearnedInit {
        eps: a.spec.eps.value,
        alpha: learned_input_step(ck)?,
        alpha_init,
        init: (omega.index_select(&rows, 0)? * f64::from(alpha_init))?,
    })
}

impl Attack for Generator {
    fn name(&self) -> String {
        self.describe()
    }

    fn perturb(&self, model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        self.perturb_rows(model, x, y, 0..x.dim(0)?, ctx)
    }

    fn perturb_rows(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        rows: std::ops::Range<usize>,
        ctx: &mut AttackCtx,
    ) -> Result<Perturbation> {
        let delta = match *self {
            Generator::Zero => x.zeros_like()?,
            Generator::Step { eps, alpha, start } => {
                let d0 = if start > 0.0 {
                    let k = start * eps;
                    let u = ctx.rng.uniform_tensor(x.dims(), -k, k, x.device())?;
                    ((x + u)?.clamp(0f32, 1f32)? - x)?
                } else {
                    x.zeros_like()?
                };
                let (g, _) = input_grad(model, x, &d0, y, ctx.mode)?;
                project(&(d0 + (g.sign()? * f64::from(alpha))?)?, x, eps)?
            }
            Generator::Pgd {
                eps,
                alpha,
                steps,
                random_start,
            } => {
                let mut d = if random_start {
                    uniform_start(x, eps, ctx.rng)?
                } else {
                    x.zeros_like()?
                };
                for _ in 0..steps {
                    d = sign_step(model, x, &d, y, alpha, eps, ctx.mode)?.0;
                }
                d
            }
            Generator::Sfgsm {
                eps,
                alpha,
                checkpoints,
            } => {
                let start = uniform_start(x, eps, ctx.rng)?;
                let (d, start_logits) = sign_step(model, x, &start, y, alpha, eps, ctx.mode)?;
                cut_at_first_misclassified(model, x, &d, y, &start_logits, checkpoints)?
            }
            Generator::LearnedInit {
                eps, alpha, ref init, ..
            } => {
                if rows.end > init.dim(0)? || rows.len() != x.dim(0)? {
                    return Err(CovfError::spec(
                        "learned initialisation",
                        format!(
                            "rows {rows:?} of a batch of {} do not fit the {} images it was read for",
                            x.dim(0)?,
                            init.dim(0)?
                        ),
                    ));
                }
                let s = init.narrow(0, rows.start, rows.len())?;
                let d0 = project(&s, x, eps)?;
                let (g, _) = input_grad(model, x, &d0, y, ctx.mode)?;
                project(&(s + (g.sign()? * f64::from(alpha))?)?, x, eps)?
            }
        };
        Ok(Perturbation {
            delta: delta.detach(),
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
    use std::collections::{BTreeMap, HashMap};

    fn run(g: &Generator, x: &Tensor, y: &Tensor, seed: u64) -> Vec<f32> {
        let model = TwoClassLinear {
            w: Tensor::new(&[3.0f32, -1.0, 2.0, 0.5], &Device::Cpu).unwrap(),
            b: 0.0,
        };
        let mut rng = Rng::new(seed);
        g.perturb(
            &model,
            x,
            y,
            &mut AttackCtx {
                mode: Mode::EVAL,
                rng: &mut rng,
            },
        )
        .unwrap()
        .delta
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
    }

    #[test]
    fn every_generator_stays_in_the_ball_and_the_box_and_moves_along_sign_w() {
        let dev = Device::Cpu;
        // Class 0: the loss rises along +sign(w) = (+, −, +, +). The second image sits on the box edges.
        let x = Tensor::new(&[[0.5f32, 0.5, 0.5, 0.5], [1.0, 0.0, 0.95, 0.5]], &dev).unwrap();
        let y = Tensor::new(&[0u32, 0], &dev).unwrap();
        let sign = [1.0f32, -1.0, 1.0, 1.0];
        let eps = 0.1;
        let gens = [
            Generator::Zero,
            Generator::Step {
                eps,
                alpha: eps,
                start: 0.0,
            },
            Generator::Step {
                eps,
                alpha: 1.25 * eps,
                start: 1.0,
            },
            Generator::Step {
                eps,
                alpha: eps,
                start: 2.0,
            },
            Generator::Pgd {
                eps,
                alpha: eps / 4.0,
                steps: 10,
                random_start: true,
            },
            Generator::Pgd {
                eps,
                alpha: eps / 4.0,
                steps: 10,
                random_start: false,
            },
            Generator::Sfgsm {
                eps,
                alpha: 1.25 * eps,
                checkpoints: 3,
            },
        ];
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        for g in &gens {
            let d = run(g, &x, &y, 3);
            for (i, (&di, &xi)) in d.iter().zip(&xs).enumerate() {
                assert!(di.abs() <= eps + 1e-6, "{g:?}: |δ| = {di}");
                assert!((0.0..=1.0).contains(&(xi + di)), "{g:?}: x + δ = {}", xi + di);
                // Zero start and enough total step: every free coordinate ends at the corner ε·sign(w).
                let free = i < 4;
                if free && matches!(g, Generator::Step { start, .. } if *start == 0.0) {
                    assert!((di - eps * sign[i]).abs() < 1e-6, "{g:?}: {d:?}");
                }
                if free && matches!(g, Generator::Pgd { .. }) {
                    assert!((di - eps * sign[i]).abs() < 1e-6, "{g:?}: {d:?}");
                }
            }
            if matches!(g, Generator::Zero) {
                assert!(d.iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    fn sfgsm_cuts_the_step_where_the_label_first_flips() {
        let dev = Device::Cpu;
        // w·x + b at x = 0.5: 0.5·4.5 − 2.3 = −0.05 (class 0). Any step along sign(w) gains
        // ~Σ|w_i|·|δ_i|; with ε = 0.1 the full step gains ~0.65, a third of it ~0.2 > 0.05: the first
        // checkpoint (k = 1 of c = 3) already flips the label, so δ is scaled by 1/3.
        let model = TwoClassLinear {
            w: Tensor::new(&[3.0f32, -1.0, 2.0, 0.5], &dev).unwrap(),
            b: -2.3,
        };
        let x = Tensor::full(0.5f32, (1, 4), &dev).unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        let g = Generator::Sfgsm {
            eps: 0.1,
            alpha: 0.125,
            checkpoints: 3,
        };
        let mut rng = Rng::new(1);
        let mut ctx = AttackCtx {
            mode: Mode::EVAL,
            rng: &mut rng,
        };
        let d = g.perturb(&model, &x, &y, &mut ctx).unwrap().delta;
        let mut rng = Rng::new(1);
        let full = Generator::Step {
            eps: 0.1,
            alpha: 0.125,
            start: 1.0,
        }
        .perturb(
            &model,
            &x,
            &y,
            &mut AttackCtx {
                mode: Mode::EVAL,
                rng: &mut rng,
            },
        )
        .unwrap()
        .delta;
        let (d, full): (Vec<f32>, Vec<f32>) = (
            d.flatten_all().unwrap().to_vec1().unwrap(),
            full.flatten_all().unwrap().to_vec1().unwrap(),
        );
        for (a, b) in d.iter().zip(&full) {
            assert!((a - b / 3.0).abs() < 1e-6, "{d:?} vs {full:?}");
        }
    }

    #[test]
    fn the_learned_initialisation_starts_each_image_from_its_own_row() {
        let dev = Device::Cpu;
        let model = TwoClassLinear {
            w: Tensor::new(&[3.0f32, -1.0, 2.0, 0.5], &dev).unwrap(),
            b: 0.0,
        };
        let x = Tensor::full(0.5f32, (1, 4), &dev).unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        // Row 1: δ = clamp(s + 0.08·sign(w), ±0.1) with sign(w) = (+, −, +, +):
        // (0.05 + 0.08, 0.05 − 0.08, −0.3 + 0.08, 0 + 0.08) → (0.1, −0.03, −0.1, 0.08).
        let g = Generator::LearnedInit {
            eps: 0.1,
            alpha: 0.08,
            alpha_init: 0.5,
            init: Tensor::new(&[[0.0f32, 0.0, 0.0, 0.0], [0.05, 0.05, -0.3, 0.0]], &dev).unwrap(),
        };
        let mut rng = Rng::new(0);
        let mut ctx = AttackCtx {
            mode: Mode::EVAL,
            rng: &mut rng,
        };
        let d: Vec<f32> = g
            .perturb_rows(&model, &x, &y, 1..2, &mut ctx)
            .unwrap()
            .delta
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in d.iter().zip([0.1f32, -0.03, -0.1, 0.08]) {
            assert!((a - b).abs() < 1e-6, "{d:?}");
        }
        // Row 0 (ω = 0): a plain signed step of α.
        let d0 = run(&g, &x, &y, 0);
        for (a, b) in d0.iter().zip([0.08f32, -0.08, 0.08, 0.08]) {
            assert!((a - b).abs() < 1e-6, "{d0:?}");
        }
        assert!(g.perturb_rows(&model, &x, &y, 2..3, &mut ctx).is_err());
        assert_eq!(g.describe(), "learned-init(a=0.08,a_init=0.5)");
    }

    #[test]
    fn apart_reads_its_learned_input_step_from_the_checkpoint() {
        let mut meta = BTreeMap::new();
        meta.insert(
            "step_sizes".to_string(),
            r#"[{"layer":"input","value":0.078},{"layer":"init","value":0.07},{"layer":"block1","value":0.01}]"#
                .to_string(),
        );
        let ck = Checkpoint {
            tensors: HashMap::new(),
            meta,
        };
        assert!((learned_input_step(&ck).unwrap() - 0.078).abs() < 1e-7);
        let empty = Checkpoint {
            tensors: HashMap::new(),
            meta: BTreeMap::new(),
        };
        assert!(learned_input_step(&empty).is_err());
    }
}
