//! Adversarial training methods: the `TrainMethod` step and the `Method` declaration, one file per method,
//! and the registry that makes each one known to the rest of covf. The loop that runs them is `crate::fit`.

pub mod apart;
pub mod apart_simple;
pub mod atta;
pub mod clean;
pub mod elle;
pub mod external;
pub mod fgsm;
pub mod fgsm_rs;
pub mod free;
pub mod gradalign;
pub mod method;
pub mod nfgsm;
pub mod per_example;
pub mod pgd;
pub mod sfgsm;

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub use method::{Defaults, Flag, Flags, Method, MethodDef, MethodSpec, Registered};

use crate::attacks::{correct, per_sample_ce, Attack, AttackCtx};
use crate::data::Batch;
use crate::error::{CovfError, Result};
use crate::models::{Mode, Need, PreActResNet, Traced};
use crate::optim::{Grads, LrSchedule, Sgd};
use crate::rng::Rng;

/// Every method covf knows, in the order `covf train --help` lists them. A new method is its file and
/// one line here.
pub static METHODS: &[&dyn MethodDef] = &[
    &Registered::<clean::Clean>::new(),
    &Registered::<fgsm::Fgsm>::new(),
    &Registered::<fgsm_rs::FgsmRs>::new(),
    &Registered::<pgd::Pgd>::new(),
    &Registered::<free::Free>::new(),
    &Registered::<atta::Atta>::new(),
    &Registered::<sfgsm::Sfgsm>::new(),
    &Registered::<apart_simple::ApartSimple>::new(),
    &Registered::<apart::Apart>::new(),
    &Registered::<gradalign::GradAlign>::new(),
    &Registered::<nfgsm::Nfgsm>::new(),
    &Registered::<elle::Elle>::new(),
    &Registered::<external::External>::new(),
];

/// Batch norm while a training method generates its perturbation (the update pass always uses batch
/// statistics and updates the running ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackBn {
    /// Batch statistics, running statistics left alone: what the evaluated model sees does not depend on
    /// the number of attack steps (covf before the fidelity issue, and runs whose run.json predates it).
    Batch,
    /// PyTorch's train mode: batch statistics, and every attack forward also updates the running
    /// statistics (fast_adversarial, APART, GradAlign, N-FGSM, S+FGSM's FGSM-RS step).
    Train,
    /// Running statistics (ATTA's `model.eval()` in its attack).
    Eval,
}

impl AttackBn {
    pub fn parse(s: &str) -> Result<AttackBn> {
        match s {
            "batch" => Ok(AttackBn::Batch),
            "train" => Ok(AttackBn::Train),
            "eval" => Ok(AttackBn::Eval),
            _ => Err(CovfError::spec(
                "attack batch norm",
                format!("'{s}': use train, batch or eval"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AttackBn::Batch => "batch",
            AttackBn::Train => "train",
            AttackBn::Eval => "eval",
        }
    }

    /// The batch-norm mode of the attack's forward passes.
    pub fn mode(self) -> Mode {
        match self {
            AttackBn::Batch => Mode::ATTACK,
            AttackBn::Train => Mode::TRAIN,
            AttackBn::Eval => Mode::EVAL,
        }
    }

    /// Runs written before the choice existed attacked with batch statistics.
    pub fn legacy() -> AttackBn {
        AttackBn::Batch
    }
}

/// What a method may use in one step; the fit loop owns the schedule and hands over the current rate.
pub struct StepCtx<'a> {
    pub opt: &'a mut Sgd,
    /// The rate at the end of this step's stretch of the schedule (what a one-update method uses).
    pub lr: f64,
    pub rng: &'a mut Rng,
    /// Batch norm of the forward passes that generate the training perturbation (`--attack-bn`).
    pub attack_mode: Mode,
    pub schedule: &'a LrSchedule,
    /// The stretch of the schedule this step covers, in fractional epochs: [t.0, t.1]. Methods that
    /// update several times per minibatch (Free) spread their updates over it.
    pub t: (f64, f64),
}

impl StepCtx<'_> {
    /// Backpropagates `loss` and takes one optimizer step; the gradients are returned for methods
    /// that also update their own state (perturbation parameters). With f16 loss scaling the step may
    /// be skipped (`applied` false); methods then leave their own state alone too.
    pub fn update(&mut self, loss: &Tensor) -> Result<Grads> {
        let scale = self.opt.loss_scale();
        let store = if scale == 1.0 {
            loss.backward()?
        } else {
            (loss * scale)?.backward()?
        };
        let lr = self.lr;
        self.step(store, scale, lr)
    }

    /// As `update`, for a loss computed from a traced forward (its backward may be covf's own); the
    /// input's and the block perturbations' gradients come back too, when the trace asked for them.
    pub fn update_traced(&mut self, t: Traced, loss: &Tensor) -> Result<Update> {
        let lr = self.lr;
        self.update_traced_at(t, loss, lr)
    }

    /// As `update_traced`, at an explicit learning rate.
    pub fn update_traced_at(&mut self, t: Traced, loss: &Tensor, lr: f64) -> Result<Update> {
        let scale = self.opt.loss_scale();
        let b = if scale == 1.0 {
            t.backward(loss)?
        } else {
            t.backward(&(loss * scale)?)?
        };
        let unscale = |g: Option<Tensor>| -> Result<Option<Tensor>> {
            match g {
                Some(g) if scale != 1.0 => Ok(Some((g * (1.0 / scale))?)),
                g => Ok(g),
            }
        };
        let input = unscale(b.input)?;
        let deltas = b.deltas.into_iter().map(unscale).collect::<Result<_>>()?;
        let grads = self.step(b.store, scale, lr)?;
        Ok(Update { grads, input, deltas })
    }

    fn step(&mut self, store: GradStore, scale: f64, lr: f64) -> Result<Grads> {
        let mut grads = Grads::new(store, scale);
        self.opt.step_grads(&mut grads, lr)?;
        Ok(grads)
    }
}

/// One optimizer step's gradients: the parameters' (as the optimizer used them) and, when the traced
/// forward asked for them, the input's and the block perturbations' (loss scale divided out).
pub struct Update {
    pub grads: Grads,
    pub input: Option<Tensor>,
    pub deltas: Vec<Option<Tensor>>,
}

/// What methods with per-example or learned state need to know about the run when they are built.
#[derive(Debug, Clone)]
pub struct MethodEnv {
    pub eps: f32,
    /// Training-set size (per-example state is indexed by dataset position).
    pub n_train: usize,
    /// (C, H, W) of one input.
    pub shape: (usize, usize, usize),
    /// Zero padding of the random crop: per-example state lives in the padded image space.
    pub pad: usize,
    pub seed: u64,
    /// Epochs of the run (schedules of the method's own parameters span them).
    pub epochs: usize,
}

/// One learned step size, as recorded in checkpoint metadata and `step-sizes.csv`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepSize {
    /// `input` (α1), `init` (α_ω) or `block<i>` (αi of residual block i, 1-based).
    pub layer: String,
    pub value: f64,
}

/// Sums over one step's examples; the fit loop aggregates them into epoch metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    pub n: usize,
    pub loss_adv_sum: f64,
    pub correct_adv: usize,
    /// Examples whose clean logits the step saw for free (methods that start from δ = 0); methods
    /// that never look at the clean input report 0 rather than pay an extra forward pass.
    pub n_clean: usize,
    pub loss_clean_sum: f64,
    pub correct_clean: usize,
}

impl StepStats {
    pub fn add(&mut self, o: &StepStats) {
        self.n += o.n;
        self.n_clean += o.n_clean;
        self.loss_adv_sum += o.loss_adv_sum;
        self.correct_adv += o.correct_adv;
        self.loss_clean_sum += o.loss_clean_sum;
        self.correct_clean += o.correct_clean;
    }

    pub fn from_logits(clean: &Tensor, adv: &Tensor, y: &Tensor) -> Result<StepStats> {
        Ok(StepStats {
            n_clean: y.dim(0)?,
            loss_clean_sum: f64::from(per_sample_ce(clean, y)?.sum_all()?.to_scalar::<f32>()?),
            correct_clean: correct(clean, y)?,
            ..StepStats::adv_only(adv, y)?
        })
    }

    /// Statistics of the training inputs only (no clean logits).
    pub fn adv_only(adv: &Tensor, y: &Tensor) -> Result<StepStats> {
        Ok(StepStats {
            n: y.dim(0)?,
            loss_adv_sum: f64::from(per_sample_ce(adv, y)?.sum_all()?.to_scalar::<f32>()?),
            correct_adv: correct(adv, y)?,
            ..StepStats::default()
        })
    }
}

/// A training method: given the model and a batch, update the model once (or more) and report.
pub trait TrainMethod {
    /// The input step size α (pixel units), recorded in checkpoint metadata.
    fn alpha(&self) -> f32;
    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats>;

    /// Called before each epoch's first step (0-based epoch), e.g. for periodic resets.
    fn begin_epoch(&mut self, _epoch: usize) -> Result<()> {
        Ok(())
    }

    /// State that must survive a resume (learned initialisations, carried perturbations, step sizes
    /// and their momentum), saved with the run's resume state after every epoch.
    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(BTreeMap::new())
    }

    /// Restores what `state` saved; keys are the ones `state` wrote.
    fn load_state(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }

    /// Per-example state of the training examples at `positions` as their un-augmented images see it
    /// (APART's ω), kept beside each epoch checkpoint for the analyses' training images
    /// (`--images train`); empty for methods without per-example state the generator uses.
    fn example_state(&self, _positions: &[usize]) -> Result<BTreeMap<String, Tensor>> {
        Ok(BTreeMap::new())
    }

    /// Learned step sizes, if the method has any (APART).
    fn step_sizes(&self) -> Vec<StepSize> {
        Vec::new()
    }
}

/// The step shared by methods that train on one generated perturbation per batch (fast_adversarial's
/// loop): attack a weight-detached view (batch norm as `--attack-bn` says), then one SGD step on x + δ.
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
            mode: ctx.attack_mode,
            rng: ctx.rng,
        },
    )?;
    descend(model, batch, &p.delta, p.clean_logits.as_ref(), ctx)
}

/// The training half of a step: one SGD step on the cross-entropy at x + δ (batch statistics updated),
/// with the step's statistics (clean ones only when the caller already has the clean logits).
pub fn descend(
    model: &PreActResNet,
    batch: &Batch,
    delta: &Tensor,
    clean_logits: Option<&Tensor>,
    ctx: &mut StepCtx,
) -> Result<StepStats> {
    let t = model.trace_perturbed(&(&batch.x + delta)?, &[], Mode::TRAIN, Need::PARAMS)?;
    let logits = t.logits.clone();
    let loss = candle_nn::loss::cross_entropy(&logits, &batch.y)?;
    ctx.update_traced(t, &loss)?;
    match clean_logits {
        Some(clean) => StepStats::from_logits(&clean.detach(), &logits.detach(), &batch.y),
        None => StepStats::adv_only(&logits.detach(), &batch.y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{AugParams, DatasetKind};
    use crate::models::{self, ArchSpec, Classifier};
    use apart::ApartConfig;
    use candle_core::{DType, Device};

    fn apart_cfg(layerwise: bool, learned_init: bool) -> ApartConfig {
        ApartConfig {
            layerwise,
            learned_init,
            alpha_init: 0.05,
            init_scale: 0.05,
            block_alpha_init: 0.01,
            alpha_lr: 1e-4,
            alpha_l2: 1.0,
            alpha_momentum: 0.9,
            omega_std: 0.001,
        }
    }

    fn fgsm_spec() -> MethodSpec {
        MethodSpec::new::<fgsm::Fgsm>(fgsm::FgsmConfig { alpha: 0.1 })
    }

    fn pgd3_spec() -> MethodSpec {
        MethodSpec::new::<pgd::Pgd>(pgd::PgdConfig {
            steps: 3,
            alpha: 0.04,
            restarts: 1,
        })
    }

    fn all_methods() -> Vec<MethodSpec> {
        let gradalign = |through_clean| {
            MethodSpec::new::<gradalign::GradAlign>(gradalign::GradAlignConfig {
                lambda: 0.5,
                fd_radius: 0.01,
                through_clean,
            })
        };
        vec![
            MethodSpec::new::<clean::Clean>(clean::CleanConfig {}),
            fgsm_spec(),
            MethodSpec::new::<fgsm_rs::FgsmRs>(fgsm_rs::FgsmRsConfig { alpha: 0.125 }),
            pgd3_spec(),
            MethodSpec::new::<free::Free>(free::FreeConfig { replays: 3 }),
            MethodSpec::new::<atta::Atta>(atta::AttaConfig {
                steps: 2,
                alpha: 0.04,
                reset: 10,
            }),
            MethodSpec::new::<sfgsm::Sfgsm>(sfgsm::SfgsmConfig {
                alpha: 0.125,
                checkpoints: 3,
            }),
            MethodSpec::new::<apart::Apart>(apart_cfg(true, true)),
            MethodSpec::new::<apart::Apart>(apart_cfg(false, true)),
            MethodSpec::new::<apart::Apart>(apart_cfg(true, false)),
            MethodSpec::new::<apart_simple::ApartSimple>(apart_cfg(true, true)),
            gradalign(false),
            gradalign(true),
            MethodSpec::new::<nfgsm::Nfgsm>(nfgsm::NfgsmConfig { alpha: 0.1, noise: 2.0 }),
        ]
    }

    struct Setup {
        model: PreActResNet,
        store: models::ParamStore,
        batch: Batch,
        env: MethodEnv,
    }

    fn setup(n: usize) -> Setup {
        let dev = Device::Cpu;
        let spec = ArchSpec::new(models::Arch::PreActTiny, DatasetKind::FashionMnist);
        let (model, store) = models::build(&spec, &dev, 0).unwrap();
        let mut rng = Rng::new(11);
        let x = rng.uniform_tensor(&[n, 1, 28, 28], 0.0, 1.0, &dev).unwrap();
        let y = Tensor::from_vec((0..n as u32).map(|i| i % 10).collect::<Vec<_>>(), n, &dev).unwrap();
        let batch = Batch {
            x,
            y,
            positions: (0..n).collect(),
            aug: vec![AugParams::default(); n],
        };
        let env = MethodEnv {
            eps: 0.1,
            n_train: n,
            shape: (1, 28, 28),
            pad: 0,
            seed: 0,
            epochs: 1,
        };
        Setup {
            model,
            store,
            batch,
            env,
        }
    }

    fn clean_loss(s: &Setup) -> f32 {
        let l = s.model.logits(&s.batch.x, Mode::ATTACK).unwrap();
        candle_nn::loss::cross_entropy(&l, &s.batch.y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn steps(s: &Setup, method: &mut dyn TrainMethod, opt: &mut Sgd, k: usize) -> Vec<StepStats> {
        steps_in(s, method, opt, k, Mode::TRAIN)
    }

    fn steps_in(s: &Setup, method: &mut dyn TrainMethod, opt: &mut Sgd, k: usize, attack_mode: Mode) -> Vec<StepStats> {
        let schedule = LrSchedule::Constant { lr: 0.05 };
        let mut rng = Rng::new(3);
        (0..k)
            .map(|i| {
                method
                    .step(
                        &s.model,
                        &s.batch,
                        &mut StepCtx {
                            opt,
                            lr: 0.05,
                            rng: &mut rng,
                            attack_mode,
                            schedule: &schedule,
                            t: (i as f64 * 0.1, (i + 1) as f64 * 0.1),
                        },
                    )
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn every_method_lowers_the_loss_on_its_batch() {
        for spec in all_methods() {
            let s = setup(32);
            let mut opt = Sgd::new(s.store.trainable(), 0.9, 0.0);
            let mut m = spec.build(&s.env).unwrap();
            let before = clean_loss(&s);
            let stats = steps(&s, m.as_mut(), &mut opt, 4);
            let after = clean_loss(&s);
            assert!(
                after < before - 0.05,
                "{}: clean loss {before} -> {after}",
                spec.label()
            );
            let first = stats[0];
            assert_eq!(first.n, 32, "{}", spec.label());
            assert!(
                first.loss_adv_sum.is_finite() && first.loss_adv_sum > 0.0,
                "{}",
                spec.label()
            );
            assert!(first.n_clean == 0 || first.n_clean == 32, "{}", spec.label());
        }
    }

    #[test]
    fn mixed_precision_matches_f32_logits_and_trains_f32_master_weights() {
        use crate::optim::{LossScaler, Precision};
        // bf16 has no CPU matrix product in candle (refused on the CPU; GPU only): f16 is what runs here.
        for p in [Precision::F16] {
            let s = setup(32);
            let reference: Vec<f32> = s
                .model
                .logits(&s.batch.x, Mode::EVAL)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let half = s.model.clone().with_compute_dtype(p.dtype());
            let logits = half.logits(&s.batch.x, Mode::EVAL).unwrap();
            assert_eq!(logits.dtype(), DType::F32, "{}", p.name());
            // bf16 keeps 8 significant bits, f16 11: logits of size ~1 agree to a few 1e-2 / 1e-3.
            let tol = if p == Precision::Bf16 { 0.1 } else { 0.02 };
            let worst = logits
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < tol && worst > 0.0, "{}: max |Δlogit| {worst}", p.name());

            for spec in [fgsm_spec(), MethodSpec::new::<apart::Apart>(apart_cfg(true, true))] {
                let s = setup(32);
                let half = Setup {
                    model: s.model.clone().with_compute_dtype(p.dtype()),
                    ..setup(32)
                };
                let mut opt = Sgd::new(s.store.trainable(), 0.9, 0.0);
                if p.needs_loss_scaling() {
                    opt = opt.with_loss_scaling(LossScaler::default());
                }
                let mut m = spec.build(&s.env).unwrap();
                let before = clean_loss(&s);
                steps(&half, m.as_mut(), &mut opt, 4);
                let after = clean_loss(&s);
                assert!(
                    after < before - 0.05,
                    "{} {}: {before} -> {after}",
                    p.name(),
                    spec.label()
                );
                assert_eq!(opt.skipped_steps(), 0);
                assert_eq!(opt.loss_scale(), if p.needs_loss_scaling() { 65536.0 } else { 1.0 });
                assert!(s.store.trainable().iter().all(|(_, v)| v.dtype() == DType::F32));
            }
        }
    }

    #[test]
    fn the_attack_bn_mode_decides_which_forwards_update_the_running_statistics() {
        // Each TRAIN-mode forward bumps the counters once. FGSM: one attack forward, one update forward;
        // PGD-3: three attack forwards. Train mode (PyTorch's) counts them all, batch and eval mode only the
        // update pass; eval mode also reads the running statistics, so its δ differs from batch mode's.
        let counter = |s: &Setup| {
            let c = s.store.get("layer1.0.bn1.num_batches_tracked").unwrap();
            c.as_tensor().to_scalar::<i64>().unwrap()
        };
        for (spec, attack_forwards) in [(fgsm_spec(), 1), (pgd3_spec(), 3)] {
            let mut losses = Vec::new();
            for (bn, per_step) in [
                (AttackBn::Train, 1 + attack_forwards),
                (AttackBn::Batch, 1),
                (AttackBn::Eval, 1),
            ] {
                let s = setup(16);
                let mut opt = Sgd::new(s.store.trainable(), 0.9, 0.0);
                let mut m = spec.build(&s.env).unwrap();
                let st = steps_in(&s, m.as_mut(), &mut opt, 2, bn.mode());
                assert_eq!(counter(&s), 2 * per_step, "{} {}", spec.label(), bn.name());
                losses.push(st[0].loss_adv_sum);
            }
            // Train and batch mode attack with the same (batch) statistics: the same first step.
            assert_eq!(losses[0], losses[1], "{}", spec.label());
            assert_ne!(losses[1], losses[2], "{}", spec.label());
        }
    }

    #[test]
    fn free_takes_one_update_per_replay() {
        // Every replay is one TRAIN-mode forward, which bumps the batch-norm counters by one.
        let s = setup(16);
        let counter = || {
            let c = s.store.get("layer1.0.bn1.num_batches_tracked").unwrap();
            c.as_tensor().to_scalar::<i64>().unwrap()
        };
        let mut opt = Sgd::new(s.store.trainable(), 0.9, 0.0);
        let mut m = free::FreeTraining::new(0.1, 5);
        let w0 = s.store.get("conv1.weight").unwrap().as_tensor().copy().unwrap();
        steps(&s, &mut m, &mut opt, 2);
        assert_eq!(counter(), 10);
        let w1 = s.store.get("conv1.weight").unwrap().as_tensor().copy().unwrap();
        let moved = w1.ne(&w0).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap();
        assert!(moved.to_scalar::<f32>().unwrap() > 0.0);
        // δ is carried: within ε and kept between minibatches (and saved for a resume).
        let st = m.state().unwrap();
        let d = &st["free.delta"];
        assert_eq!(d.dims(), &[16, 1, 28, 28]);
        let dmax = d.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(dmax > 0.0 && dmax <= 0.1 + 1e-6, "{dmax}");
    }

    #[test]
    fn apart_keeps_omega_in_the_box_moves_its_step_sizes_and_resumes() {
        let s = setup(16);
        let mut opt = Sgd::new(s.store.trainable(), 0.9, 0.0);
        let mut m = apart::ApartTraining::new(&s.env, apart_cfg(true, true)).unwrap();
        let a0 = m.alphas().to_vec();
        steps(&s, &mut m, &mut opt, 3);
        let a1 = m.alphas().to_vec();
        assert_eq!(a1.len(), 2 + 3, "input, init and three blocks");
        assert!(a0.iter().zip(&a1).any(|(a, b)| a != b), "{a0:?} -> {a1:?}");
        assert!(a1.iter().all(|a| a.is_finite() && *a >= 0.0), "{a1:?}");
        let st = m.state().unwrap();
        let omega: Vec<f32> = st["apart.omega"].flatten_all().unwrap().to_vec1().unwrap();
        assert!(omega.iter().all(|v| (-1.0..=1.0).contains(v)));
        // ω moved off its tiny random start by whole sign steps of α1/α_ω ≈ 1.
        assert!(omega.iter().filter(|v| v.abs() > 0.5).count() > omega.len() / 2);
        let layers: Vec<String> = m.step_sizes().into_iter().map(|s| s.layer).collect();
        assert_eq!(layers, ["input", "init", "block1", "block2", "block3"]);
        let mut fresh = apart::ApartTraining::new(&s.env, apart_cfg(true, true)).unwrap();
        fresh.load_state(&st.into_iter().collect()).unwrap();
        assert_eq!(fresh.alphas(), m.alphas());
        assert_eq!(
            fresh.state().unwrap()["apart.omega"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            omega
        );
    }

    #[test]
    fn atta_continues_and_resets_its_stored_perturbations() {
        let s = setup(8);
        let mut opt = Sgd::new(s.store.trainable(), 0.9, 0.0);
        let mut m = atta::AttaTraining::new(&s.env, 1, 0.03, 2).unwrap();
        let stored = |m: &atta::AttaTraining| -> f32 {
            m.state().unwrap()["atta.delta"]
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(stored(&m) < 0.01);
        steps(&s, &mut m, &mut opt, 2);
        // Two visits of one step of 0.03 each accumulate past a single step.
        let after = stored(&m);
        assert!(after > 0.05 && after <= 0.1 + 1e-6, "{after}");
        m.begin_epoch(1).unwrap();
        assert!((stored(&m) - after).abs() < 1e-9, "no reset at epoch 1");
        m.begin_epoch(2).unwrap();
        assert!(stored(&m) < 0.01, "reset every 2 epochs");
    }
}
