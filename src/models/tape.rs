//! Backward passes that compute only what the caller needs: covf's own for the PreAct trunk on CPU, candle's graph elsewhere.
//!
//! candle's `backward` adds every node's gradient into a freshly zeroed buffer (zeros, then an add) on the
//! calling thread: in the default FGSM run that serial work was ≈ 21% of the wall time, with one core idle
//! (docs/bench.md). The PreAct trunk is a fixed graph, so its backward is written out here: the forward
//! keeps what each layer's backward reads, every gradient is produced once by the parallel kernels, and
//! only the two junctions of a residual block add two gradients. The head (global pool, linear) and the
//! loss stay on candle's autograd, so any loss of the logits works: the trunk's output is a leaf `Var`
//! whose gradient starts the tape. Each step does the same float operations as candle's graph through the
//! same kernels, so results are bit-identical (a test compares both).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rayon::prelude::*;

use super::bn::{self, Dims};
use super::conv_direct::{self, Geom};
use super::layers::{global_avg_pool, BatchNorm, Conv2d, Mode};
use super::preact::PreActResNet;
use crate::error::{CovfError, Result};

/// Which gradients a backward must produce. Parameter gradients land in the `GradStore` under the
/// model's parameter tensors (what the optimizer reads); the input's and the block perturbations' are
/// returned in `Backward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub input: bool,
    pub params: bool,
    pub deltas: bool,
}

impl Need {
    /// An attack pass: the gradient w.r.t. the input only.
    pub const INPUT: Need = Need {
        input: true,
        params: false,
        deltas: false,
    };
    /// A training update: the parameters' gradients only.
    pub const PARAMS: Need = Need {
        input: false,
        params: true,
        deltas: false,
    };
}

/// A forward pass ready for one backward: its logits, and how its gradients will be computed.
pub struct Traced {
    pub logits: Tensor,
    how: How,
}

enum How {
    Graph {
        input: Option<Var>,
        deltas: Vec<Option<Var>>,
    },
    Tape {
        tape: Box<Tape>,
        out: Var,
    },
}

/// The gradients of one backward.
pub struct Backward {
    /// Parameter gradients (and any other tracked tensor's), keyed as candle keys them.
    pub store: GradStore,
    /// d loss / d input, when asked for and the loss depends on the input.
    pub input: Option<Tensor>,
    /// d loss / d δ_i per block perturbation given, when asked for.
    pub deltas: Vec<Option<Tensor>>,
}

/// The candle-graph trace of any forward `f(x, deltas)`: inputs (and perturbations) become leaf
/// variables when their gradients are needed.
pub fn graph_trace(
    x: &Tensor,
    deltas: &[Option<Tensor>],
    need: Need,
    f: impl FnOnce(&Tensor, &[Option<Tensor>]) -> Result<Tensor>,
) -> Result<Traced> {
    let input = if need.input { Some(Var::from_tensor(x)?) } else { None };
    let dvars: Vec<Option<Var>> = deltas
        .iter()
        .map(|d| match d {
            Some(d) if need.deltas => Var::from_tensor(d).map(Some),
            _ => Ok(None),
        })
        .collect::<candle_core::Result<_>>()?;
    let ds: Vec<Option<Tensor>> = deltas
        .iter()
        .zip(&dvars)
        .map(|(d, v)| v.as_ref().map(|v| v.as_tensor().clone()).or_else(|| d.clone()))
        .collect();
    let logits = f(input.as_ref().map_or(x, Var::as_tensor), &ds)?;
    Ok(Traced {
        logits,
        how: How::Graph { input, deltas: dvars },
    })
}

impl Traced {
    /// Backpropagates `loss`, a scalar computed from `self.logits`.
    pub fn backward(self, loss: &Tensor) -> Result<Backward> {
        let mut store = loss.backward()?;
        match self.how {
            How::Graph { input, deltas } => {
                let grad = |v: &Option<Var>| v.as_ref().and_then(|v| store.get(v.as_tensor()).cloned());
                let input = grad(&input);
                let deltas = deltas.iter().map(grad).collect();
                Ok(Backward { store, input, deltas })
            }
            How::Tape { tape, out } => match store.remove(out.as_tensor()) {
                Some(dout) => {
                    let (input, deltas) = tape.backward(out.as_tensor(), &dout, &mut store)?;
                    Ok(Backward { store, input, deltas })
                }
                None => {
                    let deltas = vec![None; tape.blocks.len()];
                    Ok(Backward {
                        store,
                        input: None,
                        deltas,
                    })
                }
            },
        }
    }
}

/// Whether covf's backward covers this pass: CPU, f32 throughout, and no parameter gradients through
/// eval-mode batch norm (its folded scale would need the running statistics' chain rule).
pub(super) fn applies(model: &PreActResNet, x: &Tensor, deltas: &[Option<Tensor>], mode: Mode, need: Need) -> bool {
    x.device().is_cpu()
        && model.compute_dtype() == DType::F32
        && x.dtype() == DType::F32
        && deltas
            .iter()
            .flatten()
            .all(|d| d.dtype() == DType::F32 && d.device().is_cpu())
        && !(need.params && mode == Mode::Eval)
}

/// What a batch norm's backward reads besides its input and output.
enum BnState {
    Train { stats: Vec<(f64, f64)>, gamma: Vec<f32> },
    Eval { scale: Vec<f32> },
}

struct BlockRec {
    /// The block's input (bn1's input; the identity shortcut).
    x: Vec<f32>,
    x_dims: [usize; 4],
    bn1: BnState,
    /// relu(bn1(x)): the shortcut conv's input.
    a: Vec<f32>,
    /// a + δ when the block is perturbed: conv1's input.
    a_delta: Option<Vec<f32>>,
    shortcut: Option<Geom>,
    conv1: Geom,
    /// conv1's output, bn2's input.
    c: Vec<f32>,
    bn2: BnState,
    /// relu(bn2(c)): conv2's input.
    d: Vec<f32>,
    conv2: Geom,
}

/// The recorded forward of the trunk: normalised input → stem → blocks → final batch norm + ReLU.
struct Tape {
    model: PreActResNet,
    need: Need,
    /// The normalised input (the stem's input).
    xn: Vec<f32>,
    stem: Geom,
    blocks: Vec<BlockRec>,
    /// The last block's output (the final batch norm's input).
    last: Vec<f32>,
    last_dims: [usize; 4],
    bn: BnState,
}

/// Runs `f` on the data of a contiguous f32 CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    Ok(f(bn::cpu_f32(&st, l, "tape")?))
}

fn owned(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn bn_dims(d: [usize; 4]) -> Dims {
    (d[0], d[1], d[2] * d[3])
}

/// `a += b`, in parallel chunks.
fn add_assign(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(1 << 14).zip(b.par_chunks(1 << 14)).for_each(|(a, b)| {
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
    });
}

fn conv_forward(conv: &Conv2d, x: &[f32], dims: [usize; 4]) -> Result<(Geom, Vec<f32>)> {
    let g = Geom::new(&dims, conv.weight.dims(), conv.stride, conv.padding)?;
    let y = with_f32(&conv.weight, |w| conv_direct::forward(&g, x, w))?;
    Ok((g, y))
}

fn bn_forward(bn: &BatchNorm, x: &[f32], dims: [usize; 4], mode: Mode) -> Result<(BnState, Vec<f32>)> {
    let d = bn_dims(dims);
    match mode {
        Mode::Eval => {
            let (scale, shift) = bn.folded()?;
            let (scale, shift) = (owned(&scale)?, owned(&shift)?);
            let y = bn::affine_forward(x, &scale, &shift, d);
            Ok((BnState::Eval { scale }, y))
        }
        Mode::Train { update_stats } => {
            let (gamma, beta) = (owned(&bn.weight)?, owned(&bn.bias)?);
            let (y, stats) = bn::train_forward(x, &gamma, &beta, d, bn.eps);
            if update_stats {
                bn.record_batch(&stats, d.0 * d.2)?;
            }
            Ok((BnState::Train { stats, gamma }, y))
        }
    }
}

/// Records the trunk's forward and returns its trace; the head runs on candle's graph.
pub(super) fn record(
    model: &PreActResNet,
    x: &Tensor,
    deltas: &[Option<Tensor>],
    mode: Mode,
    need: Need,
) -> Result<Traced> {
    let dev = Device::Cpu;
    let xn = x.broadcast_sub(&model.mean)?.broadcast_mul(&model.inv_std)?;
    let dims: [usize; 4] = xn.dims4()?.into();
    let xn = owned(&xn)?;
    let (stem, mut o) = conv_forward(&model.stem, &xn, dims)?;
    let mut dims = stem.out_dims();
    let mut blocks = Vec::with_capacity(model.blocks.len());
    for (i, b) in model.blocks.iter().enumerate() {
        let (bn1, a) = bn_forward(&b.bn1, &o, dims, mode)?;
        let shortcut = match &b.shortcut {
            Some(sc) => Some(conv_forward(sc, &a, dims)?),
            None => None,
        };
        let a_delta = match deltas.get(i).and_then(Option::as_ref) {
            Some(d) => {
                // candle's graph refuses a mismatched shape in `a + δ`; the slice add would not.
                if d.dims() != dims {
                    return Err(CovfError::spec(
                        "block perturbations",
                        format!("block {i}'s perturbation is {:?}, its activation {dims:?}", d.dims()),
                    ));
                }
                let mut ad = a.clone();
                with_f32(&d.contiguous()?, |d| add_assign(&mut ad, d))?;
                Some(ad)
            }
            None => None,
        };
        let (conv1, c) = conv_forward(&b.conv1, a_delta.as_ref().unwrap_or(&a), dims)?;
        let (bn2, d) = bn_forward(&b.bn2, &c, conv1.out_dims(), mode)?;
        let (conv2, mut out) = conv_forward(&b.conv2, &d, conv1.out_dims())?;
        let shortcut = match shortcut {
            Some((g, s)) => {
                add_assign(&mut out, &s);
                Some(g)
            }
            None => {
                add_assign(&mut out, &o);
                None
            }
        };
        blocks.push(BlockRec {
            x: std::mem::replace(&mut o, out),
            x_dims: dims,
            bn1,
            a,
            a_delta,
            shortcut,
            conv1,
            c,
            bn2,
            d,
            conv2,
        });
        dims = conv2.out_dims();
    }
    let (bn, f) = bn_forward(&model.bn, &o, dims, mode)?;
    let out = Var::from_vec(f, dims.to_vec(), &dev)?;
    let logits = model.head.forward(&global_avg_pool(out.as_tensor())?)?;
    let tape = Tape {
        model: model.clone(),
        need,
        xn,
        stem,
        blocks,
        last: o,
        last_dims: dims,
        bn,
    };
    Ok(Traced {
        logits,
        how: How::Tape {
            tape: Box::new(tape),
            out,
        },
    })
}

impl Tape {
    /// A batch norm + ReLU's input gradient from its input `x`, output `y` and output gradient `dy`;
    /// its parameters' gradients go to `store` when the pass needs them.
    fn bn_backward(
        &self,
        bn: &BatchNorm,
        st: &BnState,
        io: (&[f32], &[f32]),
        dy: &[f32],
        dims: [usize; 4],
        store: &mut GradStore,
    ) -> Result<Vec<f32>> {
        let (x, y) = io;
        let d = bn_dims(dims);
        match st {
            BnState::Train { stats, gamma } => {
                let (dx, dg, db) = bn::train_backward(x, y, dy, gamma, stats, d, bn.eps);
                if self.need.params {
                    store.insert(&bn.weight, Tensor::from_vec(dg, d.1, &Device::Cpu)?);
                    store.insert(&bn.bias, Tensor::from_vec(db, d.1, &Device::Cpu)?);
                }
                Ok(dx)
            }
            BnState::Eval { scale } => Ok(bn::affine_backward(x, y, dy, scale, d, false).0),
        }
    }

    /// A conv's input gradient from its output gradient; its weight's gradient goes to `store` when the
    /// pass needs it.
    fn conv_backward(
        &self,
        conv: &Conv2d,
        g: &Geom,
        x: &[f32],
        dy: &[f32],
        input: bool,
        store: &mut GradStore,
    ) -> Result<Option<Vec<f32>>> {
        if self.need.params {
            let dw = conv_direct::backward_weight(g, x, dy);
            store.insert(&conv.weight, Tensor::from_vec(dw, conv.weight.dims(), &Device::Cpu)?);
        }
        if !input {
            return Ok(None);
        }
        Ok(Some(with_f32(&conv.weight, |w| conv_direct::backward_data(g, dy, w))?))
    }

    /// From d loss / d out (the trunk's output `out`): parameter gradients into `store`, and the input's
    /// and the perturbations' gradients as asked for.
    fn backward(
        self,
        out: &Tensor,
        dout: &Tensor,
        store: &mut GradStore,
    ) -> Result<(Option<Tensor>, Vec<Option<Tensor>>)> {
        let m = &self.model;
        let dout = owned(dout)?;
        let mut dx = with_f32(out, |f| {
            self.bn_backward(&m.bn, &self.bn, (&self.last, f), &dout, self.last_dims, store)
        })??;
        let mut deltas = vec![None; self.blocks.len()];
        for (i, (b, r)) in m.blocks.iter().zip(&self.blocks).enumerate().rev() {
            // out = conv2(d) + shortcut: dx is both branches' output gradient.
            let dd = self
                .conv_backward(&b.conv2, &r.conv2, &r.d, &dx, true, store)?
                .unwrap_or_default();
            let dc = self.bn_backward(&b.bn2, &r.bn2, (&r.c, &r.d), &dd, r.conv1.out_dims(), store)?;
            let conv1_in = r.a_delta.as_ref().unwrap_or(&r.a);
            let mut da = self
                .conv_backward(&b.conv1, &r.conv1, conv1_in, &dc, true, store)?
                .unwrap_or_default();
            if self.need.deltas && r.a_delta.is_some() {
                deltas[i] = Some(Tensor::from_vec(da.clone(), r.conv1.in_dims().to_vec(), &Device::Cpu)?);
            }
            if let (Some(sc), Some(g)) = (&b.shortcut, &r.shortcut) {
                let ds = self.conv_backward(sc, g, &r.a, &dx, true, store)?.unwrap_or_default();
                add_assign(&mut da, &ds);
            }
            let mut dxb = self.bn_backward(&b.bn1, &r.bn1, (&r.x, &r.a), &da, r.x_dims, store)?;
            if b.shortcut.is_none() {
                add_assign(&mut dxb, &dx);
            }
            dx = dxb;
        }
        let dxn = self.conv_backward(&m.stem, &self.stem, &self.xn, &dx, self.need.input, store)?;
        let input = match dxn {
            // x_n = (x − mean)·inv_std, so dx = dx_n·inv_std.
            Some(d) => {
                Some(Tensor::from_vec(d, self.stem.in_dims().to_vec(), &Device::Cpu)?.broadcast_mul(&m.inv_std)?)
            }
            None => None,
        };
        Ok((input, deltas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DatasetKind;
    use crate::models::{build, Arch, ArchSpec, ParamStore};
    use crate::rng::Rng;

    /// Three blocks: two with identity shortcuts, one with a strided 1×1 shortcut conv; 1×10×10 inputs.
    fn model(seed: u64) -> (PreActResNet, ParamStore) {
        let mut spec = ArchSpec::new(Arch::PreActTiny, DatasetKind::FashionMnist);
        spec.stem_width = 4;
        spec.widths = vec![4, 8];
        spec.depths = vec![2, 1];
        spec.strides = vec![1, 2];
        spec.image_size = 10;
        build(&spec, &Device::Cpu, seed).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|f| f.to_bits()).collect()
    }

    struct Case {
        x: Tensor,
        y: Tensor,
        deltas: Vec<Option<Tensor>>,
    }

    fn case(m: &PreActResNet, with_deltas: bool) -> Case {
        let mut rng = Rng::new(5);
        let dev = Device::Cpu;
        let x = rng.uniform_tensor(&[5, 1, 10, 10], 0.0, 1.0, &dev).unwrap();
        let y = Tensor::new(&[0u32, 3, 9, 1, 3], &dev).unwrap();
        let deltas = if with_deltas {
            m.block_shapes(5, 10, 10)
                .iter()
                .enumerate()
                .map(|(i, s)| (i != 1).then(|| rng.uniform_tensor(s, -0.1, 0.1, &dev).unwrap()))
                .collect()
        } else {
            Vec::new()
        };
        Case { x, y, deltas }
    }

    /// The same loss backpropagated through covf's tape and through candle's graph.
    fn both(m: &PreActResNet, c: &Case, mode: Mode, need: Need) -> (Tensor, Backward, Tensor, Backward) {
        let run = |t: Traced| {
            let logits = t.logits.detach();
            let loss = candle_nn::loss::cross_entropy(&t.logits, &c.y).unwrap();
            (logits, t.backward(&loss).unwrap())
        };
        assert!(applies(m, &c.x, &c.deltas, mode, need));
        let (lt, bt) = run(m.trace_perturbed(&c.x, &c.deltas, mode, need).unwrap());
        let graph = graph_trace(&c.x, &c.deltas, need, |x, d| m.forward_perturbed(x, d, mode)).unwrap();
        let (lg, bg) = run(graph);
        (lt, bt, lg, bg)
    }

    #[test]
    fn input_gradients_equal_candles_bit_for_bit() {
        let (m, _) = model(1);
        let frozen = m.detached();
        let c = case(&m, false);
        for mode in [Mode::ATTACK, Mode::EVAL] {
            let (lt, bt, lg, bg) = both(&frozen, &c, mode, Need::INPUT);
            assert_eq!(bits(&lt), bits(&lg), "{mode:?}: logits");
            let (gt, gg) = (bt.input.unwrap(), bg.input.unwrap());
            assert_eq!(gt.dims(), [5, 1, 10, 10]);
            assert_eq!(bits(&gt), bits(&gg), "{mode:?}: input gradient");
            assert!(gt.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
            // A detached model's weights get no gradient either way.
            assert!(bt.store.get(&frozen.stem.weight).is_none());
        }
    }

    #[test]
    fn parameter_and_perturbation_gradients_equal_candles_bit_for_bit() {
        let (m, ps) = model(2);
        let c = case(&m, true);
        let need = Need {
            input: true,
            params: true,
            deltas: true,
        };
        let (lt, bt, lg, bg) = both(&m, &c, Mode::ATTACK, need);
        assert_eq!(bits(&lt), bits(&lg));
        assert_eq!(bits(bt.input.as_ref().unwrap()), bits(bg.input.as_ref().unwrap()));
        let trainable = ps.trainable();
        assert_eq!(
            trainable.len(),
            1 + 3 * 6 + 1 + 2 + 2,
            "stem, 3 blocks × (2 convs, 2 bn × 2), shortcut, bn, head"
        );
        for (name, v) in &trainable {
            let (gt, gg) = (bt.store.get(v.as_tensor()), bg.store.get(v.as_tensor()));
            assert!(gt.is_some() && gg.is_some(), "{name}: a gradient is missing");
            assert_eq!(bits(gt.unwrap()), bits(gg.unwrap()), "{name}");
        }
        assert_eq!(bt.deltas.len(), 3);
        assert!(
            bt.deltas[1].is_none() && bg.deltas[1].is_none(),
            "block 1 has no perturbation"
        );
        for i in [0, 2] {
            let (dt, dg) = (bt.deltas[i].as_ref().unwrap(), bg.deltas[i].as_ref().unwrap());
            assert_eq!(dt.dims(), c.deltas[i].as_ref().unwrap().dims());
            assert_eq!(bits(dt), bits(dg), "delta {i}");
        }
    }

    #[test]
    fn a_training_pass_updates_running_statistics_as_candles_does() {
        let (a, psa) = model(3);
        let (b, psb) = model(3);
        let c = case(&a, false);
        let loss = |t: Traced| {
            let l = candle_nn::loss::cross_entropy(&t.logits, &c.y).unwrap();
            t.backward(&l).unwrap()
        };
        let ga = loss(a.trace_perturbed(&c.x, &[], Mode::TRAIN, Need::PARAMS).unwrap());
        let gb = loss(graph_trace(&c.x, &[], Need::PARAMS, |x, d| b.forward_perturbed(x, d, Mode::TRAIN)).unwrap());
        assert!(ga.input.is_none() && gb.input.is_none());
        let (sa, sb) = (psa.snapshot(), psb.snapshot());
        for (name, t) in &sa {
            if name.ends_with("num_batches_tracked") {
                assert_eq!(t.to_scalar::<i64>().unwrap(), 1, "{name}");
                continue;
            }
            assert_eq!(bits(t), bits(&sb[name]), "{name}");
        }
        assert!(sa.keys().any(|k| k.ends_with("running_var")));
    }
}
