//! Adversarial training: the `TrainMethod` trait, one file per method, and the one generic fit loop.

pub mod clean;
pub mod fgsm;
pub mod fgsm_rs;
pub mod fit;
pub mod pgd;
pub mod spec;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

pub use fit::{fit, FitOptions, FitSummary};
pub use spec::{EpochEvalSpec, Eps, MethodSpec, TrainSpec};

use crate::attacks::{correct, per_sample_ce, Attack, AttackCtx};
use crate::data::Batch;
use crate::error::Result;
use crate::models::{Classifier, Mode, PreActResNet};
use crate::optim::Sgd;
use crate::rng::Rng;

/// What a method may use in one step; the fit loop owns the schedule and hands over the current rate.
pub struct StepCtx<'a> {
    pub opt: &'a mut Sgd,
    pub lr: f64,
    pub rng: &'a mut Rng,
}

impl StepCtx<'_> {
    /// Backpropagates `loss` and takes one optimizer step; the gradients are returned for methods
    /// that also update their own state (perturbation parameters).
    pub fn update(&mut self, loss: &Tensor) -> Result<GradStore> {
        let grads = loss.backward()?;
        self.opt.step(&grads, self.lr)?;
        Ok(grads)
    }
}

/// Sums over one step's examples; the fit loop aggregates them into epoch metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    pub n: usize,
    pub loss_adv_sum: f64,
    pub correct_adv: usize,
    pub loss_clean_sum: f64,
    pub correct_clean: usize,
}

impl StepStats {
    pub fn add(&mut self, o: &StepStats) {
        self.n += o.n;
        self.loss_adv_sum += o.loss_adv_sum;
        self.correct_adv += o.correct_adv;
        self.loss_clean_sum += o.loss_clean_sum;
        self.correct_clean += o.correct_clean;
    }

    pub fn from_logits(clean: &Tensor, adv: &Tensor, y: &Tensor) -> Result<StepStats> {
        Ok(StepStats {
            n: y.dim(0)?,
            loss_adv_sum: f64::from(per_sample_ce(adv, y)?.sum_all()?.to_scalar::<f32>()?),
            correct_adv: correct(adv, y)?,
            loss_clean_sum: f64::from(per_sample_ce(clean, y)?.sum_all()?.to_scalar::<f32>()?),
            correct_clean: correct(clean, y)?,
        })
    }
}

/// A training method: given the model and a batch, update the model once (or more) and report.
pub trait TrainMethod {
    fn name(&self) -> String;
    /// The input step size α (pixel units), recorded in checkpoint metadata.
    fn alpha(&self) -> f32;
    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats>;
}

/// The step shared by methods that train on one generated perturbation per batch (fast_adversarial's
/// loop): attack a weight-detached view in batch-statistics mode, then one SGD step on x + δ.
pub fn perturb_then_descend(
    attack: &dyn Attack,
    model: &PreActResNet,
    batch: &Batch,
    ctx: &mut StepCtx,
) -> Result<StepStats> {
    let frozen = model.detached();
    let p = attack.perturb(
        &frozen,
        &batch.x,
        &batch.y,
        &mut AttackCtx {
            mode: Mode::ATTACK,
            rng: ctx.rng,
        },
    )?;
    let clean = match p.clean_logits {
        Some(l) => l,
        None => frozen.logits(&batch.x, Mode::ATTACK)?,
    };
    let logits = model.logits(&(&batch.x + &p.delta)?, Mode::TRAIN)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &batch.y)?;
    ctx.update(&loss)?;
    StepStats::from_logits(&clean.detach(), &logits.detach(), &batch.y)
}

/// The method named by a spec.
pub fn build_method(spec: &MethodSpec, eps: f32) -> Box<dyn TrainMethod> {
    match *spec {
        MethodSpec::Clean => Box::new(clean::CleanTraining),
        MethodSpec::Fgsm { alpha } => Box::new(fgsm::FgsmTraining::new(eps, alpha)),
        MethodSpec::FgsmRs { alpha } => Box::new(fgsm_rs::FgsmRsTraining::new(eps, alpha)),
        MethodSpec::Pgd { steps, alpha, restarts } => Box::new(pgd::PgdTraining::new(eps, alpha, steps, restarts)),
    }
}
