//! Pre-activation ResNets (PreActResNet and WideResNet share the block): the model every method trains.
//!
//! Block (He et al. 2016, identity mappings): `o = relu(bn1(x)); s = shortcut(o) or x;
//! o = o + δ_i; out = conv2(relu(bn2(conv1(o)))) + s`. The optional δ_i enters the residual
//! branch only (APART, Algorithm 1; the shortcut keeps x), at the point the APART reference code uses.

use candle_core::{DType, Tensor};

use super::layers::{global_avg_pool, BatchNorm, Conv2d, Linear, Mode};
use super::params::ParamStore;
use super::tape::{self, Need, Traced};
use super::{ArchSpec, Naming};
use crate::error::{CovfError, Result};
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub(super) struct Block {
    pub(super) bn1: BatchNorm,
    pub(super) conv1: Conv2d,
    pub(super) bn2: BatchNorm,
    pub(super) conv2: Conv2d,
    pub(super) shortcut: Option<Conv2d>,
}

impl Block {
    fn forward(&self, x: &Tensor, delta: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let o = self.bn1.forward_relu(x, mode)?;
        let s = match &self.shortcut {
            Some(c) => c.forward(&o)?,
            None => x.clone(),
        };
        let o = match delta {
            Some(d) if d.dtype() != o.dtype() => (&o + d.to_dtype(o.dtype())?)?,
            Some(d) => (o + d)?,
            None => o,
        };
        let o = self.conv1.forward(&o)?;
        let o = self.conv2.forward(&self.bn2.forward_relu(&o, mode)?)?;
        Ok((o + s)?)
    }

    fn detached(&self) -> Self {
        Block {
            bn1: self.bn1.detached(),
            conv1: self.conv1.detached(),
            bn2: self.bn2.detached(),
            conv2: self.conv2.detached(),
            shortcut: self.shortcut.as_ref().map(Conv2d::detached),
        }
    }
}

/// A pre-activation residual network with input normalization inside (attacks work in pixel space).
#[derive(Debug, Clone)]
pub struct PreActResNet {
    spec: ArchSpec,
    pub(super) mean: Tensor,
    pub(super) inv_std: Tensor,
    pub(super) stem: Conv2d,
    pub(super) blocks: Vec<Block>,
    /// (channels, stride) at each block's branch input, for building perturbation shapes.
    block_io: Vec<(usize, usize)>,
    pub(super) bn: BatchNorm,
    pub(super) head: Linear,
    /// Compute dtype of convolutions and activations (f32, or bf16/f16 for mixed precision); weights,
    /// batch-norm statistics and logits stay f32.
    compute: DType,
}

impl PreActResNet {
    pub fn new(spec: &ArchSpec, ps: &mut ParamStore, rng: &mut Rng) -> Result<Self> {
        let dev = ps.device().clone();
        let c = spec.in_channels;
        if spec.mean.len() != c || spec.std.len() != c {
            return Err(CovfError::spec(
                "model",
                format!("normalization has {} channels, input has {c}", spec.mean.len()),
            ));
        }
        let mean = Tensor::from_vec(spec.mean.clone(), (1, c, 1, 1), &dev)?;
        let inv: Vec<f32> = spec.std.iter().map(|s| 1.0 / s).collect();
        let inv_std = Tensor::from_vec(inv, (1, c, 1, 1), &dev)?;
        let n = &spec.naming;
        let stem = Conv2d::new(ps, n.stem, (c, spec.stem_width, 3), 1, 1, rng)?;
        let mut blocks = Vec::new();
        let mut block_io = Vec::new();
        let mut cin = spec.stem_width;
        for (s, ((&w, &d), &stride0)) in spec.widths.iter().zip(&spec.depths).zip(&spec.strides).enumerate() {
            for i in 0..d {
                let stride = if i == 0 { stride0 } else { 1 };
                let p = n.block_prefix(s, i);
                let bn1 = BatchNorm::new(ps, &format!("{p}.bn1"), cin, rng)?;
                let conv1 = Conv2d::new(ps, &format!("{p}.conv1"), (cin, w, 3), stride, 1, rng)?;
                let bn2 = BatchNorm::new(ps, &format!("{p}.bn2"), w, rng)?;
                let conv2 = Conv2d::new(ps, &format!("{p}.conv2"), (w, w, 3), 1, 1, rng)?;
                let shortcut = if stride != 1 || cin != w {
                    Some(Conv2d::new(
                        ps,
                        &format!("{p}.{}", n.shortcut),
                        (cin, w, 1),
                        stride,
                        0,
                        rng,
                    )?)
                } else {
                    None
                };
                blocks.push(Block {
                    bn1,
                    conv1,
                    bn2,
                    conv2,
                    shortcut,
                });
                block_io.push((cin, stride));
                cin = w;
            }
        }
        let bn = BatchNorm::new(ps, n.final_bn, cin, rng)?;
        let head = Linear::new(ps, n.head, cin, spec.num_classes, rng)?;
        Ok(PreActResNet {
            spec: spec.clone(),
            mean,
            inv_std,
            stem,
            blocks,
            block_io,
            bn,
            head,
            compute: DType::F32,
        })
    }

    /// The same model (shared weights) computing in `dtype`: inputs are cast after normalisation, logits
    /// come back as f32, gradients reach the f32 weights through the casts.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute = dtype;
        self
    }

    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Shapes of each block's branch input (where δ_i is added) for a batch of `n` inputs of `h`x`w`.
    pub fn block_shapes(&self, n: usize, h: usize, w: usize) -> Vec<[usize; 4]> {
        let (mut h, mut w) = (h, w);
        self.block_io
            .iter()
            .map(|&(c, stride)| {
                let shape = [n, c, h, w];
                if stride > 1 {
                    h = (h + 2 - 3) / stride + 1;
                    w = (w + 2 - 3) / stride + 1;
                }
                shape
            })
            .collect()
    }

    fn check_deltas(&self, deltas: &[Option<Tensor>]) -> Result<()> {
        if !deltas.is_empty() && deltas.len() != self.blocks.len() {
            return Err(CovfError::spec(
                "block perturbations",
                format!("{} given, the model has {} blocks", deltas.len(), self.blocks.len()),
            ));
        }
        Ok(())
    }

    /// `forward_perturbed`, recorded for one backward that computes only what `need` asks for: covf's
    /// own backward (models/tape.rs) on CPU in f32, candle's graph elsewhere.
    pub fn trace_perturbed(&self, x: &Tensor, deltas: &[Option<Tensor>], mode: Mode, need: Need) -> Result<Traced> {
        self.check_deltas(deltas)?;
        if tape::applies(self, x, deltas, mode, need) {
            tape::record(self, x, deltas, mode, need)
        } else {
            tape::graph_trace(x, deltas, need, |x, d| self.forward_perturbed(x, d, mode))
        }
    }

    /// Logits for pixel-space `x`, with optional per-block perturbations (`deltas[i]` for block i).
    pub fn forward_perturbed(&self, x: &Tensor, deltas: &[Option<Tensor>], mode: Mode) -> Result<Tensor> {
        self.check_deltas(deltas)?;
        let x = x.broadcast_sub(&self.mean)?.broadcast_mul(&self.inv_std)?;
        let x = if x.dtype() == self.compute {
            x
        } else {
            x.to_dtype(self.compute)?
        };
        let mut o = self.stem.forward(&x)?;
        for (i, b) in self.blocks.iter().enumerate() {
            o = b.forward(&o, deltas.get(i).and_then(Option::as_ref), mode)?;
        }
        let o = self.bn.forward_relu(&o, mode)?;
        let logits = self.head.forward(&global_avg_pool(&o)?)?;
        if logits.dtype() == DType::F32 {
            Ok(logits)
        } else {
            Ok(logits.to_dtype(DType::F32)?)
        }
    }

    /// A view sharing storage whose weights are not tracked by autograd: attack passes then
    /// only pay for gradients that flow to the input. Optimizer updates stay visible (in-place `Var::set`).
    pub fn detached(&self) -> Self {
        PreActResNet {
            spec: self.spec.clone(),
            mean: self.mean.clone(),
            inv_std: self.inv_std.clone(),
            stem: self.stem.detached(),
            blocks: self.blocks.iter().map(Block::detached).collect(),
            block_io: self.block_io.clone(),
            bn: self.bn.detached(),
            head: self.head.detached(),
            compute: self.compute,
        }
    }
}

impl Naming {
    fn block_prefix(&self, stage: usize, index: usize) -> String {
        match self.kind {
            super::NamingKind::PreAct => format!("layer{}.{index}", stage + 1),
            super::NamingKind::Wrn => format!("block{}.layer.{index}", stage + 1),
        }
    }
}
