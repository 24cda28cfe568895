//! APART (Algorithm 1 of "Perturbation Deterioration: The Other Side of Catastrophic Overfitting"):
//! FGSM-cost adversarial training whose perturbation generator is itself trained, by gradient
//! ascent, so that it does not deteriorate into noise.
//!
//! Per minibatch, two forward/backward rounds:
//! 1. δ1 = clamp(α_ω·ω_x, ±ε), ω_x the example's learned initialisation (stored in the padded image
//!    space, aligned through crop and flip). Round 1 (weights detached, batch statistics): gradients
//!    at the input and at every residual block's branch input, with zero block perturbations.
//! 2. δ1 = clamp(α_ω·ω_x + α1·sign(∂L/∂x), ±ε); δi = αi·sign(∂L/∂x_i) on each block's residual
//!    branch (models/preact.rs). Round 2 trains θ by SGD on x + δ1 with the δi in place.
//! 3. First-order (FOMAML-style) gradients of the round-2 loss give ∂L/∂α1 = Σ ∂L/∂x·sign(g_x),
//!    ∂L/∂α_ω = Σ ∂L/∂x·ω (both through the clamps), ∂L/∂αi = Σ ∂L/∂δi·sign(g_i); the dependence of
//!    the signs on ω and α through round 1 is ignored.
//! 4. ω ← clamp(ω + μω·sign(∂L/∂ω), −1, 1) with μω = α1/α_ω; every α takes one momentum-SGD *ascent*
//!    step on L − λ‖α‖² at the cyclic rate μα (the reference code's optimizer: SGD, momentum 0.9,
//!    weight decay 2λ on the negated gradient).
//!
//! Step sizes are kept ≥ 0 (a negative one would turn the generator's ascent into descent). The
//! ablations of Table 6 switch off the block perturbations (`layerwise`) or the learned
//! initialisation (`learned_init`, δ then starts at 0).

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};

use serde::{Deserialize, Serialize};

use super::method::{Defaults, Flag, Flags, Meta, Method};
use super::per_example::PerExampleStore;
use super::{MethodEnv, StepCtx, StepSize, StepStats, TrainMethod};
use crate::attacks::Generator;
use crate::data::Batch;
use crate::error::{CovfError, Result};
use crate::models::{Mode, Need, PreActResNet};
use crate::optim::LrSchedule;
use crate::rng::Rng;

/// `--method apart`.
pub struct Apart;

/// APART's generator settings (Algorithm 1; defaults in `apart_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApartConfig {
    /// Layer-wise perturbations δi at the residual blocks (off: the `--no-layerwise` ablation).
    pub layerwise: bool,
    /// Learned per-example initialisation ω_x (off: the `--no-init` ablation, δ starts at 0).
    pub learned_init: bool,
    /// Initial input step α1 (pixel units).
    pub alpha_init: f32,
    /// Initial α_ω, the scale of the learned initialisation.
    pub init_scale: f32,
    /// Initial αi of the residual blocks.
    pub block_alpha_init: f32,
    /// Peak of the cyclic step-size learning rate μα.
    pub alpha_lr: f64,
    /// L2 penalty λ on the step sizes.
    pub alpha_l2: f64,
    pub alpha_momentum: f64,
    /// Standard deviation of ω's random initialisation.
    pub omega_std: f32,
}

/// APART's step-size rate and L2 penalty on the small grey-scale sets (docs/methods.md).
pub const SMALL_ALPHA_LR: f64 = 1e-6;
pub const SMALL_L2: f64 = 10.0;

/// APART's generator settings: the paper's and its code's on CIFAR; on the small grey-scale sets the step
/// sizes start at ε/2 and learn faster, because the default runs are a few epochs long (the tuning is in
/// docs/methods.md). APART-Simple reads the same flags.
pub fn apart_config(f: &Flags, d: &Defaults) -> Result<ApartConfig> {
    let small = d.small_images();
    let alpha_init = f
        .parse("apart-alpha-init")?
        .unwrap_or(if small { d.eps.value / 2.0 } else { 1e-4 });
    Ok(ApartConfig {
        layerwise: !f.switch("no-layerwise"),
        learned_init: !f.switch("no-init"),
        alpha_init,
        init_scale: f.parse("apart-init-scale")?.unwrap_or(alpha_init),
        block_alpha_init: 0.0,
        alpha_lr: f
            .parse("apart-alpha-lr")?
            .unwrap_or(if small { SMALL_ALPHA_LR } else { 5e-8 }),
        alpha_l2: f.parse("apart-l2")?.unwrap_or(if small { SMALL_L2 } else { 200.0 }),
        alpha_momentum: 0.9,
        omega_std: 0.001,
    })
}

/// The flags of APART's generator, shared with APART-Simple.
pub const GENERATOR_FLAGS: [Flag; 4] = [
    Flag {
        name: "apart-alpha-init",
        help: "APART: initial input step α1 (1e-4 as the APART code on CIFAR, ε/2 on fmnist/mnist)",
        value: Some("A"),
        default: "1e-4 or ε/2",
    },
    Flag {
        name: "apart-init-scale",
        help: "APART: initial scale α_ω of the learned initialisation",
        value: Some("A"),
        default: "as --apart-alpha-init",
    },
    Flag {
        name: "apart-alpha-lr",
        help: "APART: peak of the cyclic step-size rate μα (5e-8 on CIFAR as the paper; docs/methods.md for fmnist)",
        value: Some("MU"),
        default: "5e-8 or 1e-6",
    },
    Flag {
        name: "apart-l2",
        help: "APART: L2 penalty λ on the step sizes (200 on CIFAR as the paper; docs/methods.md for fmnist)",
        value: Some("LAMBDA"),
        default: "200 or 10",
    },
];

/// Step sizes and ω's scale finite and ≥ 0, momentum in [0, 1).
pub fn validate_config(c: &ApartConfig) -> Result<()> {
    let ok = [
        f64::from(c.alpha_init),
        f64::from(c.init_scale),
        f64::from(c.block_alpha_init),
        c.alpha_lr,
        c.alpha_l2,
        f64::from(c.omega_std),
    ]
    .iter()
    .all(|v| v.is_finite() && *v >= 0.0)
        && (0.0..1.0).contains(&c.alpha_momentum);
    if ok {
        Ok(())
    } else {
        Err(CovfError::spec(
            "apart",
            format!("step sizes, μα, λ and ω's scale must be finite and ≥ 0, momentum in [0, 1): {c:?}"),
        ))
    }
}

/// One learned step size (`input`, `init`, `block<i>`) from the `step_sizes` JSON of an APART checkpoint's
/// metadata.
pub fn learned_step(meta: &Meta, layer: &str) -> Result<f32> {
    let missing = |m: &str| CovfError::spec("APART checkpoint", format!("step_sizes metadata: {m}"));
    let text = meta.get("step_sizes").ok_or_else(|| missing("absent"))?;
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

/// APART's generator on images without a learned ω (test images): a signed step of the checkpoint's
/// learned α1 from zero. The block perturbations δi live inside the network and cannot be transferred.
pub fn learned_step_generator(eps: f32, meta: &Meta) -> Result<Generator> {
    Ok(Generator::Step {
        eps,
        alpha: learned_step(meta, "input")?,
        start: 0.0,
    })
}

fn label_of(c: &ApartConfig) -> String {
    match (c.layerwise, c.learned_init) {
        (true, true) => "apart".into(),
        (false, true) => "apart-no-layerwise".into(),
        (true, false) => "apart-no-init".into(),
        (false, false) => "apart-no-layerwise-no-init".into(),
    }
}

impl Method for Apart {
    type Config = ApartConfig;
    const NAME: &'static str = "apart";
    const HELP: &'static str = "APART (Algorithm 1): learned init, layer-wise perturbations, learned step sizes";
    const DISPLAY: &'static str = "APART";
    const COLOUR: Option<usize> = Some(2);
    const FLAGS: &'static [Flag] = &[
        Flag {
            name: "no-layerwise",
            help: "APART ablation: no layer-wise perturbations at the residual blocks",
            value: None,
            default: "",
        },
        Flag {
            name: "no-init",
            help: "APART ablation: no learned per-example initialisation (δ starts at 0)",
            value: None,
            default: "",
        },
        GENERATOR_FLAGS[0],
        GENERATOR_FLAGS[1],
        GENERATOR_FLAGS[2],
        GENERATOR_FLAGS[3],
    ];

    fn config(f: &Flags, d: &Defaults) -> Result<ApartConfig> {
        apart_config(f, d)
    }

    fn label(c: &ApartConfig) -> String {
        label_of(c)
    }

    fn display(label: &str) -> Option<String> {
        match label {
            "apart" => Some("APART".into()),
            "apart-no-layerwise" | "apart-no-init" | "apart-no-layerwise-no-init" => Some(label.into()),
            _ => None,
        }
    }

    fn flags_for_label(label: &str) -> Option<Flags> {
        let f = Flags::default();
        match label {
            "apart" => Some(f),
            "apart-no-layerwise" => Some(f.with("no-layerwise", "true")),
            "apart-no-init" => Some(f.with("no-init", "true")),
            "apart-no-layerwise-no-init" => Some(f.with("no-layerwise", "true").with("no-init", "true")),
            _ => None,
        }
    }

    fn alpha(c: &ApartConfig) -> Option<f32> {
        Some(c.alpha_init)
    }

    fn validate(c: &ApartConfig) -> Result<()> {
        validate_config(c)
    }

    fn build(c: &ApartConfig, env: &MethodEnv) -> Result<Box<dyn TrainMethod>> {
        Ok(Box::new(ApartTraining::new(env, c.clone())?))
    }

    fn generator(_: &ApartConfig, eps: f32, meta: &Meta) -> Result<Generator> {
        learned_step_generator(eps, meta)
    }

    fn learned_init(c: &ApartConfig) -> bool {
        c.learned_init
    }
}

/// One momentum-SGD ascent step on L − λ‖α‖² for a scalar step size (the reference's update:
/// d = −g + 2λα; b = μ·b + d; α −= lr·b), then α kept ≥ 0. Returns (α, b).
pub fn ascent_step(alpha: f64, buf: f64, grad: f64, lr: f64, l2: f64, momentum: f64) -> (f64, f64) {
    let d = -grad + 2.0 * l2 * alpha;
    let b = momentum * buf + d;
    ((alpha - lr * b).max(0.0), b)
}

/// The key of ω in the per-example state kept for the analyses' training images.
pub const OMEGA: &str = "omega";

/// Index of α_ω and of block i's αi in the step-size vector (α1 is at 0).
const INIT: usize = 1;
const FIRST_BLOCK: usize = 2;

pub struct ApartTraining {
    cfg: ApartConfig,
    eps: f32,
    /// ω_x per training example (None in the no-init ablation).
    omega: Option<PerExampleStore>,
    /// [α1, α_ω, α_block1, …]; the block entries appear at the first step, when the model is known.
    alphas: Vec<f64>,
    bufs: Vec<f64>,
    alpha_schedule: LrSchedule,
}

impl ApartTraining {
    pub fn new(env: &MethodEnv, cfg: ApartConfig) -> Result<Self> {
        let omega = if cfg.learned_init {
            let mut rng = Rng::derive(env.seed, "apart-omega", 0);
            let std = cfg.omega_std;
            Some(PerExampleStore::new(env.n_train, env.shape, env.pad, || {
                (std * rng.normal()).clamp(-1.0, 1.0)
            }))
        } else {
            None
        };
        let init_scale = if cfg.learned_init { cfg.init_scale } else { 0.0 };
        Ok(ApartTraining {
            alphas: vec![f64::from(cfg.alpha_init), f64::from(init_scale)],
            bufs: vec![0.0, 0.0],
            alpha_schedule: LrSchedule::Cyclic {
                max: cfg.alpha_lr,
                peak: 0.5,
                epochs: env.epochs,
            },
            eps: env.eps,
            omega,
            cfg,
        })
    }

    fn ensure_blocks(&mut self, n: usize) {
        let want = if self.cfg.layerwise {
            FIRST_BLOCK + n
        } else {
            FIRST_BLOCK
        };
        if self.alphas.len() != want {
            self.alphas.resize(want, f64::from(self.cfg.block_alpha_init));
            self.bufs.resize(want, 0.0);
        }
    }

    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }
}

/// 1 where a clamp to [lo, hi] let the gradient through (lo ≤ v ≤ hi), else 0.
fn pass(v: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    Ok((v.ge(lo)?.to_dtype(DType::F32)? * v.le(hi)?.to_dtype(DType::F32)?)?)
}

fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(f64::from((a * b)?.sum_all()?.to_scalar::<f32>()?))
}

impl TrainMethod for ApartTraining {
    fn alpha(&self) -> f32 {
        self.alphas[0] as f32
    }

    fn step(&mut self, model: &PreActResNet, batch: &Batch, ctx: &mut StepCtx) -> Result<StepStats> {
        let (x, y) = (&batch.x, &batch.y);
        let (n, _, h, w) = x.dims4()?;
        self.ensure_blocks(model.num_blocks());
        let eps = f64::from(self.eps);
        let (a_in, a_init) = (self.alphas[0], self.alphas[INIT]);
        let omega = match &self.omega {
            Some(s) => Some(s.gather(batch, x.device())?),
            None => None,
        };

        // Round 1: gradients at the input and at each block's branch input.
        let start = match &omega {
            Some(o) => (o * a_init)?.clamp(-eps, eps)?,
            None => x.zeros_like()?,
        };
        let x1 = (x + &start)?.clamp(0f32, 1f32)?;
        let zeros: Vec<Option<Tensor>> = if self.cfg.layerwise {
            model
                .block_shapes(n, h, w)
                .iter()
                .map(|s| Tensor::zeros(s.as_slice(), DType::F32, x.device()).map(Some))
                .collect::<candle_core::Result<_>>()?
        } else {
            Vec::new()
        };
        let need = Need {
            input: true,
            params: false,
            deltas: true,
        };
        let t1 = model.detached().trace_perturbed(&x1, &zeros, ctx.attack_mode, need)?;
        let loss1 = candle_nn::loss::cross_entropy(&t1.logits, y)?;
        let g1 = t1.backward(&loss1)?;
        let sign_or_zero = |g: Option<&Tensor>, like: &Tensor| -> Result<Tensor> {
            Ok(match g {
                Some(g) => g.sign()?,
                None => like.zeros_like()?,
            })
        };
        let sx = sign_or_zero(g1.input.as_ref(), &x1)?;
        let sb: Vec<Tensor> = zeros
            .iter()
            .flatten()
            .zip(&g1.deltas)
            .map(|(z, g)| sign_or_zero(g.as_ref(), z))
            .collect::<Result<_>>()?;

        // Round 2: the trained perturbations; θ takes its SGD step.
        let raw = match &omega {
            Some(o) => ((o * a_init)? + (&sx * a_in)?)?,
            None => (&sx * a_in)?,
        };
        let d1 = raw.clamp(-eps, eps)?;
        let xd = (x + &d1)?;
        let mask = (pass(&raw, -eps, eps)? * pass(&xd, 0.0, 1.0)?)?;
        let deltas2: Vec<Option<Tensor>> = sb
            .iter()
            .enumerate()
            .map(|(i, s)| (s * self.alphas[FIRST_BLOCK + i]).map(Some))
            .collect::<candle_core::Result<_>>()?;
        let need = Need {
            input: true,
            params: true,
            deltas: true,
        };
        let t2 = model.trace_perturbed(&xd.clamp(0f32, 1f32)?, &deltas2, Mode::TRAIN, need)?;
        let logits = t2.logits.clone();
        let loss = candle_nn::loss::cross_entropy(&logits, y)?;
        let up = ctx.update_traced(t2, &loss)?;
        let stats = StepStats::adv_only(&logits.detach(), y)?;
        if !up.grads.applied {
            // f16 overflow: the model skipped this step, and so does the generator.
            return Ok(stats);
        }

        // First-order gradients of the round-2 loss w.r.t. the generator's parameters.
        let gx = match &up.input {
            Some(g) => (g * &mask)?,
            None => x.zeros_like()?,
        };
        let mut galpha = vec![0f64; self.alphas.len()];
        galpha[0] = dot(&gx, &sx)?;
        if let Some(o) = &omega {
            galpha[INIT] = dot(&gx, o)?;
            // ω ascends along sign(∂L/∂ω) = sign(α_ω·∂L/∂x) at rate α1/α_ω.
            let mu = a_in / a_init.max(1e-12);
            let o_new = (o + (gx.sign()? * mu)?)?.clamp(-1f32, 1f32)?;
            if let Some(store) = &mut self.omega {
                store.scatter(batch, &o_new)?;
            }
        }
        for (i, s) in sb.iter().enumerate() {
            if let Some(Some(g)) = up.deltas.get(i) {
                galpha[FIRST_BLOCK + i] = dot(g, s)?;
            }
        }
        let lr = self.alpha_schedule.lr_at(ctx.t.1);
        for (k, g) in galpha.iter().enumerate() {
            if k == INIT && self.omega.is_none() {
                continue;
            }
            let (a, b) = ascent_step(
                self.alphas[k],
                self.bufs[k],
                *g,
                lr,
                self.cfg.alpha_l2,
                self.cfg.alpha_momentum,
            );
            self.alphas[k] = a;
            self.bufs[k] = b;
        }
        Ok(stats)
    }

    fn example_state(&self, positions: &[usize]) -> Result<BTreeMap<String, Tensor>> {
        let mut m = BTreeMap::new();
        if let Some(o) = &self.omega {
            m.insert(OMEGA.into(), o.view(positions, &candle_core::Device::Cpu)?);
        }
        Ok(m)
    }

    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let dev = candle_core::Device::Cpu;
        let mut m = BTreeMap::new();
        m.insert("apart.alphas".into(), Tensor::new(self.alphas.as_slice(), &dev)?);
        m.insert("apart.alpha_momentum".into(), Tensor::new(self.bufs.as_slice(), &dev)?);
        if let Some(o) = &self.omega {
            m.insert("apart.omega".into(), o.to_tensor(&dev)?);
        }
        Ok(m)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let vec = |k: &str| -> Result<Option<Vec<f64>>> {
            match state.get(k) {
                Some(t) => Ok(Some(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)),
                None => Ok(None),
            }
        };
        if let (Some(a), Some(b)) = (vec("apart.alphas")?, vec("apart.alpha_momentum")?) {
            if a.len() != b.len() || a.len() < FIRST_BLOCK {
                return Err(CovfError::checkpoint(
                    "resume state",
                    format!("APART step sizes: {} values, {} momentum entries", a.len(), b.len()),
                ));
            }
            self.alphas = a;
            self.bufs = b;
        }
        if let (Some(store), Some(t)) = (&mut self.omega, state.get("apart.omega")) {
            store.load(t, "apart.omega")?;
        }
        Ok(())
    }

    fn step_sizes(&self) -> Vec<StepSize> {
        self.alphas
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != INIT || self.omega.is_some())
            .map(|(k, &value)| StepSize {
                layer: match k {
                    0 => "input".into(),
                    INIT => "init".into(),
                    b => format!("block{}", b - FIRST_BLOCK + 1),
                },
                value,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascent_moves_with_the_gradient_against_the_l2_pull() {
        // α = 0.1, g = 5, λ = 10, lr 0.01, momentum 0.9, no history:
        // d = −5 + 2·10·0.1 = −3; b = −3; α = 0.1 + 0.03 = 0.13.
        let (a, b) = ascent_step(0.1, 0.0, 5.0, 0.01, 10.0, 0.9);
        assert!((a - 0.13).abs() < 1e-12 && (b + 3.0).abs() < 1e-12, "{a} {b}");
        // Next step with g = 1: d = −1 + 20·0.13 = 1.6; b = 0.9·(−3) + 1.6 = −1.1; α = 0.13 + 0.011.
        let (a2, b2) = ascent_step(a, b, 1.0, 0.01, 10.0, 0.9);
        assert!((a2 - 0.141).abs() < 1e-12 && (b2 + 1.1).abs() < 1e-12, "{a2} {b2}");
        // No gradient: the L2 pull alone shrinks α (0.1 − 0.01·2·10·0.1); it never goes below 0.
        let (a3, _) = ascent_step(0.1, 0.0, 0.0, 0.01, 10.0, 0.0);
        assert!((a3 - 0.08).abs() < 1e-12, "{a3}");
        assert_eq!(ascent_step(0.001, 0.0, -100.0, 1.0, 0.0, 0.0).0, 0.0);
    }

    #[test]
    fn the_generator_reads_the_learned_input_step_from_checkpoint_metadata() {
        let mut meta = Meta::new();
        meta.insert(
            "step_sizes".to_string(),
            r#"[{"layer":"input","value":0.078},{"layer":"init","value":0.07},{"layer":"block1","value":0.01}]"#
                .to_string(),
        );
        assert!((learned_step(&meta, "input").unwrap() - 0.078).abs() < 1e-7);
        assert!((learned_step(&meta, "init").unwrap() - 0.07).abs() < 1e-7);
        assert!(learned_step(&meta, "block2").is_err());
        match learned_step_generator(0.1, &meta).unwrap() {
            Generator::Step { eps, alpha, start } => assert_eq!((eps, alpha, start), (0.1, 0.078, 0.0)),
            g => panic!("{g:?}"),
        }
        assert!(learned_step_generator(0.1, &Meta::new()).is_err());
    }
}
