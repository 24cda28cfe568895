//! One monitor point: the frozen model, the probes, and the perturbations several signals share (PGD-10's,
//! FGSM's with the clean input gradient, the method's own), each computed at most once per point from its
//! own random stream.

use std::cell::OnceCell;

use candle_core::Tensor;

use crate::attacks::{correct_mask, input_grad, per_sample_ce, project, Attack, AttackCtx, Generator, Pgd};
use crate::data::Batch;
use crate::error::Result;
use crate::models::{Classifier, Mode};
use crate::rng::Rng;

/// The attacks' settings, from the run's spec.
#[derive(Debug, Clone, Copy)]
pub struct ProbeCfg {
    pub eps: f32,
    /// PGD of the probe: the run's evaluation PGD (steps and step size).
    pub pgd_steps: usize,
    pub pgd_alpha: f32,
    /// Wong et al.'s probe: PGD with this many steps on training images.
    pub wong_steps: usize,
    pub seed: u64,
}

/// The reference model of the transfer signal, with its accuracy under random signs of ε on the probe
/// (measured once: it does not change during the run).
pub struct Reference {
    pub model: Box<dyn Classifier>,
    pub label: String,
    pub random_acc: f64,
}

impl Reference {
    /// Loads nothing: wraps a loaded model and measures its random baseline on `probe`.
    pub fn new(model: Box<dyn Classifier>, label: String, probe: &Batch, cfg: &ProbeCfg) -> Result<Reference> {
        let mut rng = Rng::derive(cfg.seed, "monitor-random", 0);
        let signs = rng
            .uniform_tensor(probe.x.dims(), -1.0, 1.0, probe.x.device())?
            .sign()?;
        let delta = project(&(signs * f64::from(cfg.eps))?, &probe.x, cfg.eps)?;
        let logits = model.logits(&(&probe.x + delta)?, Mode::EVAL)?;
        let random_acc = mean(&correct_mask(&logits, &probe.y)?.to_vec1()?);
        Ok(Reference {
            model,
            label,
            random_acc,
        })
    }
}

/// What every point of a run probes: fixed test images, fixed training images, the reference.
pub struct Probes {
    /// The first `probe` of the run's evaluation images, un-augmented.
    pub test: Batch,
    /// The first `probe` of the analyses' training images, un-augmented (Wong's probe).
    pub train: Batch,
    pub reference: Option<Reference>,
    pub cfg: ProbeCfg,
}

/// A perturbation of the probe images and what the frozen model makes of it.
pub struct Attacked {
    pub delta: Tensor,
    /// Per-example cross-entropy at x + δ.
    pub loss: Vec<f32>,
    /// Per-example 0/1 correctness at x + δ.
    pub correct: Vec<f32>,
}

impl Attacked {
    pub fn acc(&self) -> f64 {
        mean(&self.correct)
    }
    pub fn mean_loss(&self) -> f64 {
        mean(&self.loss)
    }
}

/// FGSM from zero on the probe: the clean input gradient it steps along, and its perturbation.
pub struct FgsmProbe {
    /// ∇x of the summed cross-entropy at the clean probe images.
    pub grad: Tensor,
    pub attacked: Attacked,
}

/// One monitor point.
pub struct Point<'a> {
    pub model: &'a dyn Classifier,
    pub probes: &'a Probes,
    /// The training batch of the step just taken (none at step 0).
    pub batch: Option<&'a Batch>,
    /// The method's perturbation generator as it stands.
    pub generator: &'a Generator,
    pub step: u64,
    pgd: OnceCell<Attacked>,
    fgsm: OnceCell<FgsmProbe>,
    own: OnceCell<Attacked>,
}

impl<'a> Point<'a> {
    pub fn new(
        model: &'a dyn Classifier,
        probes: &'a Probes,
        batch: Option<&'a Batch>,
        generator: &'a Generator,
        step: u64,
    ) -> Point<'a> {
        Point {
            model,
            probes,
            batch,
            generator,
            step,
            pgd: OnceCell::new(),
            fgsm: OnceCell::new(),
            own: OnceCell::new(),
        }
    }

    pub fn cfg(&self) -> &ProbeCfg {
        &self.probes.cfg
    }

    /// The stream of one use at this point: the same draws whichever other signals run.
    pub fn rng(&self, purpose: &str) -> Rng {
        Rng::derive(self.probes.cfg.seed, purpose, self.step)
    }

    /// The frozen model's scores on x + δ (batch norm in eval mode).
    pub fn score(&self, x: &Tensor, y: &Tensor, delta: Tensor) -> Result<Attacked> {
        let logits = self.model.logits(&(x + &delta)?, Mode::EVAL)?;
        Ok(Attacked {
            loss: per_sample_ce(&logits, y)?.to_vec1()?,
            correct: correct_mask(&logits, y)?.to_vec1()?,
            delta,
        })
    }

    /// PGD (the run's evaluation PGD: random start, its steps and step size) on the test probe.
    pub fn pgd(&self) -> Result<&Attacked> {
        if let Some(a) = self.pgd.get() {
            return Ok(a);
        }
        let c = self.cfg();
        let mut pgd = Pgd::new(c.eps, c.pgd_steps);
        pgd.alpha = c.pgd_alpha;
        let a = self.attack(&pgd, "monitor-pgd")?;
        Ok(self.pgd.get_or_init(|| a))
    }

    /// FGSM (zero start, one signed step of ε) on the test probe, with the clean gradient.
    pub fn fgsm(&self) -> Result<&FgsmProbe> {
        if let Some(f) = self.fgsm.get() {
            return Ok(f);
        }
        let (x, y) = (&self.probes.test.x, &self.probes.test.y);
        let eps = self.cfg().eps;
        let (grad, _) = input_grad(self.model, x, &x.zeros_like()?, y, Mode::EVAL)?;
        let delta = project(&(grad.sign()? * f64::from(eps))?, x, eps)?;
        let f = FgsmProbe {
            attacked: self.score(x, y, delta)?,
            grad,
        };
        Ok(self.fgsm.get_or_init(|| f))
    }

    /// The method's own perturbation of the test probe (FGSM's when the method's generator is FGSM).
    pub fn own(&self) -> Result<&Attacked> {
        if is_fgsm(self.generator, self.cfg().eps) {
            return Ok(&self.fgsm()?.attacked);
        }
        if let Some(a) = self.own.get() {
            return Ok(a);
        }
        let a = self.attack(self.generator, "monitor-own")?;
        Ok(self.own.get_or_init(|| a))
    }

    fn attack(&self, attack: &dyn Attack, stream: &str) -> Result<Attacked> {
        let (x, y) = (&self.probes.test.x, &self.probes.test.y);
        let mut rng = self.rng(stream);
        let p = attack.perturb(
            self.model,
            x,
            y,
            &mut AttackCtx {
                mode: Mode::EVAL,
                rng: &mut rng,
            },
        )?;
        self.score(x, y, p.delta.detach())
    }
}

/// Whether `g` is plain FGSM at `eps` (zero start, one signed step of ε).
fn is_fgsm(g: &Generator, eps: f32) -> bool {
    matches!(*g, Generator::Step { eps: e, alpha, start } if e == eps && alpha == eps && start == 0.0)
}

/// Mean of a slice in f64 (NaN when empty).
pub fn mean(v: &[f32]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().map(|&a| f64::from(a)).sum::<f64>() / v.len() as f64
}
