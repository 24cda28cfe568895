//! Fused CPU batch norm + ReLU (training: batch statistics; eval: per-channel affine), forward and backward.
//!
//! Composed from candle ops, batch norm costs about ten full passes over the activations (strided
//! reductions over N, H, W among them) and was the largest cost of our training step after convolution.
//! Every BatchNorm in a pre-activation ResNet is followed by a ReLU, so both are fused into one op.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::conv_direct::f32_slice as slice;
use super::kernels;

/// Per-channel (mean, biased variance) of an (N, C, H, W) slice.
fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut s2) = (0f64, 0f64);
            for b in 0..n {
                let (a, a2) = kernels::sum_and_squares(&x[(b * c + ch) * hw..(b * c + ch + 1) * hw]);
                s += f64::from(a);
                s2 += f64::from(a2);
            }
            let m = (n * hw) as f64;
            let mean = s / m;
            (mean, (s2 / m - mean * mean).max(0.0))
        })
        .collect()
}

fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        [n, c, h, w] => Ok((*n, *c, h * w)),
        d => candle_core::bail!("batch norm expects (N, C, H, W), got {d:?}"),
    }
}

/// Borrows a contiguous f32 CPU tensor's data.
pub(crate) fn cpu_f32<'a>(st: &'a Storage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match st {
        Storage::Cpu(s) => slice(s, l, what),
        _ => candle_core::bail!("{what}: expected a CPU tensor"),
    }
}

/// (N, C, H·W) of an activation: what the slice kernels below need to know of its shape.
pub(crate) type Dims = (usize, usize, usize);

/// Training-mode forward on slices: relu(γ·(x − μ_B)/sqrt(σ²_B + eps) + β) and the per-channel batch
/// (mean, biased variance), which the backward and the running-statistics update reuse.
pub(crate) fn train_forward(x: &[f32], g: &[f32], b: &[f32], dims: Dims, eps: f64) -> (Vec<f32>, Vec<(f64, f64)>) {
    let (n, c, hw) = dims;
    let stats = channel_stats(x, n, c, hw);
    let coef: Vec<(f32, f32)> = stats
        .iter()
        .enumerate()
        .map(|(ch, &(m, v))| {
            let sc = f64::from(g[ch]) / (v + eps).sqrt();
            (sc as f32, (f64::from(b[ch]) - m * sc) as f32)
        })
        .collect();
    // SAFETY: affine_relu writes all `hw` floats of each chunk.
    let out = unsafe {
        kernels::par_filled(x.len(), hw, |i, o| {
            let (sc, sh) = coef[i % c];
            kernels::affine_relu(o, &x[i * hw..(i + 1) * hw], sc, sh);
        })
    };
    (out, stats)
}

/// Training-mode backward on slices, from the forward's input `x`, output `y` and statistics:
/// (dx, dγ, dβ).
pub(crate) fn train_backward(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    g: &[f32],
    stats: &[(f64, f64)],
    dims: Dims,
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, c, hw) = dims;
    let m = (n * hw) as f64;
    // Per channel, with d = dy·[y > 0]: dβ = Σd, dγ = Σd·x̂ = istd·(Σd·x − μ·Σd), and
    // dx = γ·istd/m·(m·d − Σd − x̂·dγ), which is A·d + B·x + C with per-channel A, B, C.
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sd, mut sdx) = (0f64, 0f64);
            for b in 0..n {
                let o = (b * c + ch) * hw;
                // y > 0 exactly where the ReLU passed, so dy masked by it is d; the two sums are
                // Σd and Σd·x (x rebuilt as needed from the third stream).
                let (a, a2) = kernels::masked_sums(&y[o..o + hw], &dy[o..o + hw], &x[o..o + hw]);
                sd += f64::from(a);
                sdx += f64::from(a2);
            }
            let (mean, var) = stats[ch];
            let istd = 1.0 / (var + eps).sqrt();
            (sd, istd * (sdx - mean * sd))
        })
        .collect();
    let coef: Vec<(f32, f32, f32)> = (0..c)
        .map(|ch| {
            let (mean, var) = stats[ch];
            let istd = 1.0 / (var + eps).sqrt();
            let (sd, sdxh) = sums[ch];
            let k = f64::from(g[ch]) * istd / m;
            let bb = -k * sdxh * istd;
            ((k * m) as f32, bb as f32, (-k * sd - bb * mean) as f32)
        })
        .collect();
    // SAFETY: masked_affine writes all `hw` floats of each chunk.
    let dx = unsafe {
        kernels::par_filled(x.len(), hw, |p, d| {
            let o = p * hw;
            kernels::masked_affine(d, &y[o..o + hw], &dy[o..o + hw], &x[o..o + hw], coef[p % c]);
        })
    };
    let dg = sums.iter().map(|s| s.1 as f32).collect();
    let db = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dg, db)
}

/// relu(x·scale + shift) per channel on slices (batch norm in eval mode, folded).
pub(crate) fn affine_forward(x: &[f32], sc: &[f32], sh: &[f32], dims: Dims) -> Vec<f32> {
    let (_, c, hw) = dims;
    // SAFETY: affine_relu writes all `hw` floats of each chunk.
    unsafe {
        kernels::par_filled(x.len(), hw, |i, o| {
            kernels::affine_relu(o, &x[i * hw..(i + 1) * hw], sc[i % c], sh[i % c]);
        })
    }
}

/// The input gradient of `affine_forward`, dy·[y > 0]·scale, and with `sums` the per-plane partial sums
/// (Σd·x, Σd) its scale and shift gradients are folded from.
pub(crate) fn affine_backward(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    sc: &[f32],
    dims: Dims,
    sums: bool,
) -> (Vec<f32>, Vec<(f32, f32)>) {
    let (_, c, hw) = dims;
    let planes = x.len() / hw.max(1);
    let mut partial = vec![(0f32, 0f32); if sums { planes } else { 0 }];
    // Per plane, while it is in cache: dx = dy·[y > 0]·scale, then (optionally) the partial sums.
    // SAFETY: masked_scale writes all `hw` floats of each chunk.
    let dx = unsafe {
        kernels::par_filled(x.len(), hw, |p, d| {
            let o = p * hw;
            kernels::masked_scale(d, &y[o..o + hw], &dy[o..o + hw], sc[p % c]);
        })
    };
    if sums {
        partial.par_iter_mut().enumerate().for_each(|(p, s)| {
            let o = p * hw;
            let (sh, ss) = kernels::masked_sums(&y[o..o + hw], &dy[o..o + hw], &x[o..o + hw]);
            *s = (ss, sh);
        });
    }
    (dx, partial)
}

/// Batch statistics of one forward, shared with its backward and with the running-statistics update.
type StatsCell = Arc<OnceLock<Vec<(f64, f64)>>>;

/// relu(γ·(x − μ_B)/sqrt(σ²_B + eps) + β) with batch statistics.
struct BnReluTrain {
    eps: f64,
    stats: StatsCell,
}

impl CustomOp3 for BnReluTrain {
    fn name(&self) -> &'static str {
        "covf-bn-relu-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "bn")?;
        let g = slice(s2, l2, "bn weight")?;
        let b = slice(s3, l3, "bn bias")?;
        let (out, stats) = train_forward(x, g, b, dims(l1)?, self.eps);
        // An op object runs forward once; a second forward through the same object cannot happen.
        let _ = self.stats.set(stats);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let gv = g.to_vec1::<f32>()?;
        let grad = grad.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ys, yl) = res.storage_and_layout();
        let (ds, dl) = grad.storage_and_layout();
        let xv = cpu_f32(&xs, xl, "bn backward input")?;
        let yv = cpu_f32(&ys, yl, "bn backward output")?;
        let dyv = cpu_f32(&ds, dl, "bn backward gradient")?;
        let stats = match self.stats.get() {
            Some(s) => s.clone(),
            None => channel_stats(xv, n, c, h * w),
        };
        let (dx, dg, db) = train_backward(xv, yv, dyv, &gv, &stats, (n, c, h * w), self.eps);
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, c, h, w), dev)?),
            Some(Tensor::from_vec(dg, c, dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ))
    }
}

/// relu(x·scale + shift) per channel (batch norm in eval mode, folded).
struct AffineRelu;

impl CustomOp3 for AffineRelu {
    fn name(&self) -> &'static str {
        "covf-affine-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "affine")?;
        let sc = slice(s2, l2, "affine scale")?;
        let sh = slice(s3, l3, "affine shift")?;
        let out = affine_forward(x, sc, sh, dims(l1)?);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let sc = scale.to_vec1::<f32>()?;
        let grad = grad.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ys, yl) = res.storage_and_layout();
        let (ds, dl) = grad.storage_and_layout();
        let xv = cpu_f32(&xs, xl, "affine backward input")?;
        let yv = cpu_f32(&ys, yl, "affine backward output")?;
        let dyv = cpu_f32(&ds, dl, "affine backward gradient")?;
        // Scale and shift carry gradients only when they depend on tracked weights.
        let sums = scale.track_op() || shift.track_op();
        let (dx, partial) = affine_backward(xv, yv, dyv, &sc, (n, c, h * w), sums);
        let dev = x.device();
        let dx = Some(Tensor::from_vec(dx, (n, c, h, w), dev)?);
        if !sums {
            return Ok((dx, None, None));
        }
        let mut dscale = vec![0f32; c];
        let mut dshift = vec![0f32; c];
        for (p, (ss, sh)) in partial.iter().enumerate() {
            dscale[p % c] += ss;
            dshift[p % c] += sh;
        }
        Ok((
            dx,
            Some(Tensor::from_vec(dscale, c, dev)?),
            Some(Tensor::from_vec(dshift, c, dev)?),
        ))
    }
}

/// The fused training-mode op and its per-channel batch (mean, biased variance), for the running update.
pub fn bn_relu_train(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<(Tensor, Vec<(f64, f64)>)> {
    let stats: StatsCell = Arc::new(OnceLock::new());
    let out = x.contiguous()?.apply_op3(
        weight,
        bias,
        BnReluTrain {
            eps,
            stats: stats.clone(),
        },
    )?;
    match stats.get() {
        Some(s) => Ok((out, s.clone())),
        None => candle_core::bail!("batch norm: the forward did not record its statistics"),
    }
}

pub fn affine_relu(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&scale.contiguous()?, &shift.contiguous()?, AffineRelu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::conv_direct::testing::max_diff;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    fn reference(x: &Tensor, g: &Tensor, b: &Tensor) -> Tensor {
        let c = x.dim(1).unwrap();
        let m = (x.elem_count() / c) as f64;
        let mean = (x.sum_keepdim((0, 2, 3)).unwrap() / m).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = (xc.sqr().unwrap().sum_keepdim((0, 2, 3)).unwrap() / m).unwrap();
        let xh = xc.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap();
        xh.broadcast_mul(&g.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap()
    }

    #[test]
    fn fused_train_bn_relu_matches_composed_ops() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(8);
        let x = Var::from_tensor(&rng.uniform_tensor(&[4, 3, 5, 5], -2.0, 3.0, &dev).unwrap()).unwrap();
        let g = Var::from_tensor(&rng.uniform_tensor(&[3], 0.5, 1.5, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&rng.uniform_tensor(&[3], -0.5, 0.5, &dev).unwrap()).unwrap();
        let (ours, st) = bn_relu_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        assert_eq!(st.len(), 3);
        let refr = reference(x.as_tensor(), g.as_tensor(), b.as_tensor());
        assert!(max_diff(&ours, &refr) < 1e-5);
        let r = rng.uniform_tensor(&[4, 3, 5, 5], -1.0, 1.0, &dev).unwrap();
        let ga = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (refr * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &g, &b] {
            let d = max_diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
            assert!(d < 1e-4, "gradient differs by {d}");
        }
        // The statistics handed to the running-statistics update: per-channel mean and biased variance.
        let xv = x.as_tensor();
        let m_ref = (xv.sum((0, 2, 3)).unwrap() / 100.0).unwrap().to_vec1::<f32>().unwrap();
        let xc = xv
            .broadcast_sub(
                &Tensor::new(m_ref.as_slice(), &dev)
                    .unwrap()
                    .reshape((1, 3, 1, 1))
                    .unwrap(),
            )
            .unwrap();
        let v_ref = (xc.sqr().unwrap().sum((0, 2, 3)).unwrap() / 100.0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for ch in 0..3 {
            assert!((st[ch].0 as f32 - m_ref[ch]).abs() < 1e-5 && (st[ch].1 as f32 - v_ref[ch]).abs() < 1e-4);
        }
    }

    #[test]
    fn fused_affine_relu_matches_composed_ops() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(9);
        let x = Var::from_tensor(&rng.uniform_tensor(&[2, 3, 4, 4], -2.0, 2.0, &dev).unwrap()).unwrap();
        let s = Var::from_tensor(&rng.uniform_tensor(&[3], 0.5, 1.5, &dev).unwrap()).unwrap();
        let t = Var::from_tensor(&rng.uniform_tensor(&[3], -0.5, 0.5, &dev).unwrap()).unwrap();
        let ours = affine_relu(x.as_tensor(), s.as_tensor(), t.as_tensor()).unwrap();
        let refr = x
            .as_tensor()
            .broadcast_mul(&s.reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&t.reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        assert!(max_diff(&ours, &refr) < 1e-6);
        let r = rng.uniform_tensor(&[2, 3, 4, 4], -1.0, 1.0, &dev).unwrap();
        let ga = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (refr * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &s, &t] {
            assert!(max_diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap()) < 1e-5);
        }
    }
}
