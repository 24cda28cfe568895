//! CPU convolution one image at a time: 3×3 convs with padding 1 (stride 1 or 2) by the direct kernels of
//! `conv3x3`, the others by im2col into a cache-sized scratch and one GEMM straight into NCHW.
//!
//! candle 0.11's CPU conv backward (a direct conv_transpose and a whole-map conv) dominated our step, and a
//! whole-batch im2col builds a column matrix of N·Ho·Wo rows (57 MB for a 16-channel 28×28 layer at batch
//! 128) that is written once, read back from memory and transposed to NCHW. Per image, the columns
//! (C·k·k × Ho·Wo, at most a few MB) stay in cache, the GEMM writes the (Cout × Ho·Wo) output block of that
//! image in place, and images run in parallel, each with a single-threaded GEMM (no barrier between tiny
//! GEMMs); this beat the whole-batch path at every PreActResNet18 layer too, down to 4×4 maps.
//! Backward: the input gradient of a stride-1 "same" conv is the same conv of dY by the flipped kernel;
//! other geometries use col2im(Wᵀ · dY_b). The weight gradient is Σ_b dY_b · cols_bᵀ, summed over a fixed
//! number of batch chunks in a fixed order so the result does not depend on the thread count.
//! Gradients a pass does not need (weights detached during attacks) are not computed.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;

use super::conv3x3;

/// Borrows a contiguous f32 CPU storage's data (the kernels take slices).
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: only f32 is supported on CPU, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Fixed number of partial sums of the weight gradient (determinism across thread counts).
const WGRAD_CHUNKS: usize = 4;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    pub(crate) fn new(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[n, c, h, w], &[cout, cw, k, k2]) = (x, wt) else {
            candle_core::bail!("conv2d: expected 4-D input and weight, got {x:?} and {wt:?}")
        };
        if cw != c || k != k2 || stride == 0 || h + 2 * pad < k || w + 2 * pad < k {
            candle_core::bail!("conv2d: input {x:?}, weight {wt:?}, stride {stride}, padding {pad} do not fit")
        }
        Ok(Geom {
            n,
            c,
            h,
            w,
            cout,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (w + 2 * pad - k) / stride + 1,
        })
    }

    /// (N, Cout, Ho, Wo) of the output.
    pub(crate) fn out_dims(&self) -> [usize; 4] {
        [self.n, self.cout, self.ho, self.wo]
    }

    /// (N, C, H, W) of the input.
    pub(crate) fn in_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    fn p(&self) -> usize {
        self.ho * self.wo
    }

    fn r(&self) -> usize {
        self.c * self.k * self.k
    }

    fn img(&self) -> usize {
        self.c * self.h * self.w
    }

    /// A 1×1, stride-1, unpadded conv: the image itself is the column matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Output columns `[lo, hi)` whose input column `ox·s + kx − pad` lies inside the image.
    fn valid_ox(&self, kx: usize) -> (usize, usize) {
        let (s, pad) = (self.stride, self.pad);
        let lo = if pad > kx { (pad - kx).div_ceil(s) } else { 0 };
        let hi = if self.w + pad > kx {
            ((self.w - 1 + pad - kx) / s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(self.wo), hi.max(lo.min(self.wo)))
    }
}

/// (C, H, W) image -> (C·k·k, Ho·Wo) columns, row r = (c, ky, kx).
fn im2col(g: &Geom, x: &[f32], cols: &mut [f32]) {
    if g.stride == 1 && g.wo == g.w {
        im2col_same(g, x, cols);
        return;
    }
    let p = g.p();
    for c in 0..g.c {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let r = (c * g.k + ky) * g.k + kx;
                let row = &mut cols[r * p..(r + 1) * p];
                let (lo, hi) = g.valid_ox(kx);
                for oy in 0..g.ho {
                    let seg = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy as usize >= g.h {
                        seg.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    seg[..lo].fill(0.0);
                    seg[hi..].fill(0.0);
                    if g.stride == 1 {
                        let a = lo + kx - g.pad;
                        seg[lo..hi].copy_from_slice(&src[a..a + (hi - lo)]);
                    } else {
                        for (ox, v) in seg[lo..hi].iter_mut().enumerate() {
                            *v = src[(lo + ox) * g.stride + kx - g.pad];
                        }
                    }
                }
            }
        }
    }
}

/// `im2col` for stride 1 with the output as wide as the input: each column row is the whole input
/// plane shifted by (ky − pad)·W + (kx − pad), so it is one long copy plus zeroed borders, not Ho
/// copies of W floats each (per-row copies were ~15% of the FGSM step, mostly call overhead).
fn im2col_same(g: &Geom, x: &[f32], cols: &mut [f32]) {
    let (p, hw) = (g.p(), g.h * g.w);
    for c in 0..g.c {
        let plane = &x[c * hw..(c + 1) * hw];
        for ky in 0..g.k {
            // Output rows whose input row oy + ky − pad lies inside the image.
            let oy_lo = g.pad.saturating_sub(ky).min(g.ho);
            let oy_hi = (g.h + g.pad).saturating_sub(ky).min(g.ho).max(oy_lo);
            for kx in 0..g.k {
                let r = (c * g.k + ky) * g.k + kx;
                let row = &mut cols[r * p..(r + 1) * p];
                let shift = (ky * g.w + kx) as isize - (g.pad * g.w + g.pad) as isize;
                // Positions inside the valid rows whose shifted source is inside the plane.
                let start = (oy_lo * g.wo).max((-shift).max(0) as usize);
                let end = (oy_hi * g.wo).min((hw as isize - shift).max(0) as usize).max(start);
                row[..start].fill(0.0);
                let src = (start as isize + shift) as usize;
                row[start..end].copy_from_slice(&plane[src..src + (end - start)]);
                row[end..].fill(0.0);
                // Columns whose input column ox + kx − pad falls off the left or right edge wrapped
                // into the neighbouring row in the long copy: zero them.
                let (lo, hi) = g.valid_ox(kx);
                if lo > 0 || hi < g.wo {
                    for oy in oy_lo..oy_hi {
                        let seg = &mut row[oy * g.wo..(oy + 1) * g.wo];
                        seg[..lo].fill(0.0);
                        seg[hi..].fill(0.0);
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col`: adds each column entry back to its input pixel (`x` must start zeroed).
fn col2im(g: &Geom, cols: &[f32], x: &mut [f32]) {
    let p = g.p();
    for c in 0..g.c {
        let plane = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let r = (c * g.k + ky) * g.k + kx;
                let row = &cols[r * p..(r + 1) * p];
                let (lo, hi) = g.valid_ox(kx);
                for oy in 0..g.ho {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy as usize >= g.h {
                        continue;
                    }
                    let seg = &row[oy * g.wo + lo..oy * g.wo + hi];
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if g.stride == 1 {
                        let a = lo + kx - g.pad;
                        for (d, v) in dst[a..a + seg.len()].iter_mut().zip(seg) {
                            *d += v;
                        }
                    } else {
                        for (ox, v) in seg.iter().enumerate() {
                            dst[(lo + ox) * g.stride + kx - g.pad] += v;
                        }
                    }
                }
            }
        }
    }
}

/// A row-major matrix operand: data plus row and column strides.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn rows(data: &'a [f32], cols: usize) -> Self {
        Mat { data, rs: cols, cs: 1 }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    fn transposed(data: &'a [f32], cols: usize) -> Self {
        Mat { data, rs: 1, cs: cols }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst (m×n, row-major, contiguous) = [dst +] a (m×k) · b (k×n)`, single-threaded.
fn gemm(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, a: Mat, b: Mat) {
    assert!(
        dst.len() >= m * n && a.fits(m, k) && b.fits(k, n),
        "gemm operands out of bounds"
    );
    // SAFETY: the assert above keeps every element the strides reach inside its slice; dst is
    // borrowed mutably and does not alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// `dst (m×n) = a · b` into memory that need not be initialised: the GEMM is told not to read `dst`
/// and writes each of its m·n elements.
fn gemm_into(m: usize, n: usize, k: usize, dst: &mut [MaybeUninit<f32>], a: Mat, b: Mat) {
    assert!(
        dst.len() >= m * n && a.fits(m, k) && b.fits(k, n),
        "gemm operands out of bounds"
    );
    if k == 0 {
        dst[..m * n].fill(MaybeUninit::new(0.0));
        return;
    }
    // SAFETY: as in `gemm`; with read_dst = false the kernel only stores to dst (MaybeUninit<f32> has
    // f32's layout).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

thread_local! {
    /// Per-thread column buffer, reused across images and ops: allocating and zeroing a fresh one per
    /// op showed up as memset and page faults (7–12% of samples in perf). Every user overwrites the
    /// part it reads (im2col writes all of it; GEMMs with `accumulate = false` ignore old contents).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer of at least `len` floats (a fresh one if it is in use).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// The dimensions for `conv3x3` when `g` is a 3×3, padding-1 conv of stride 1 or 2.
fn direct_3x3(g: &Geom) -> Option<conv3x3::Dims> {
    (g.k == 3 && g.stride <= 2 && g.pad == 1 && conv3x3::enabled()).then_some(conv3x3::Dims {
        c: g.c,
        h: g.h,
        w: g.w,
        cout: g.cout,
        stride: g.stride,
    })
}

/// The forward kernel: per image, the direct 3×3 kernel where it applies, else columns then one GEMM
/// into that image's output block.
pub(crate) fn forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    if let Some(d) = direct_3x3(g) {
        let wt = conv3x3::pack_weights(d, w);
        let fill = |b: usize, o: &mut [MaybeUninit<f32>]| {
            with_scratch(d.scratch(), |s| {
                conv3x3::image(d, &x[b * g.img()..(b + 1) * g.img()], &wt, o, s)
            })
        };
        // SAFETY: conv3x3::image writes all cout·p floats of each image's block.
        return unsafe { super::kernels::par_filled(g.n * g.cout * g.p(), g.cout * g.p(), fill) };
    }
    let (p, r) = (g.p(), g.r());
    let fill = |b: usize, o: &mut [MaybeUninit<f32>]| {
        let xb = &x[b * g.img()..(b + 1) * g.img()];
        if g.pointwise() {
            gemm_into(g.cout, p, r, o, Mat::rows(w, r), Mat::rows(xb, p));
        } else {
            with_scratch(r * p, |cols| {
                im2col(g, xb, cols);
                gemm_into(g.cout, p, r, o, Mat::rows(w, r), Mat::rows(cols, p));
            })
        }
    };
    // SAFETY: gemm_into writes all cout·p floats of each image's block.
    unsafe { super::kernels::par_filled(g.n * g.cout * p, g.cout * p, fill) }
}

/// y = conv(x, w): (N, C, H, W) × (Cout, C, k, k) -> (N, Cout, Ho, Wo).
pub(crate) struct ConvFwd {
    pub stride: usize,
    pub pad: usize,
}

impl CustomOp2 for ConvFwd {
    fn name(&self) -> &'static str {
        "covf-conv2d"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(xl.dims(), wl.dims(), self.stride, self.pad)?;
        let (x, w) = (f32_slice(xs, xl, "conv2d input")?, f32_slice(ws, wl, "conv2d weight")?);
        let out = forward(&g, x, w);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(
                w,
                &ConvBwdData {
                    stride: self.stride,
                    pad: self.pad,
                    in_hw: (x.dim(2)?, x.dim(3)?),
                },
            )?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(
                &dy,
                &ConvBwdWeight {
                    stride: self.stride,
                    pad: self.pad,
                    k: w.dim(2)?,
                },
            )?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// dX from (dY, w): per image, dcols = Wᵀ · dY_b, then col2im.
struct ConvBwdData {
    stride: usize,
    pad: usize,
    in_hw: (usize, usize),
}

impl CustomOp2 for ConvBwdData {
    fn name(&self) -> &'static str {
        "covf-conv2d-bwd-data"
    }

    fn cpu_fwd(&self, ds: &CpuStorage, dl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dims, wd) = (dl.dims(), wl.dims());
        let x_dims = [dims[0], wd[1], self.in_hw.0, self.in_hw.1];
        let g = Geom::new(&x_dims, wd, self.stride, self.pad)?;
        if dims != [g.n, g.cout, g.ho, g.wo] {
            candle_core::bail!("conv2d backward: gradient {dims:?} does not match the output of {x_dims:?}")
        }
        let (dy, w) = (f32_slice(ds, dl, "conv2d grad")?, f32_slice(ws, wl, "conv2d weight")?);
        Ok((CpuStorage::F32(backward_data(&g, dy, w)), Shape::from(x_dims.to_vec())))
    }
}

/// dX of the conv `g` from dY and the weight.
pub(crate) fn backward_data(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if g.stride == 1 && 2 * g.pad + 1 == g.k && g.k > 1 {
        // A stride-1 "same" conv's input gradient is the same conv of dY by the flipped,
        // channel-swapped kernel: one GEMM with K = Cout·k·k per image, instead of a K = Cout
        // GEMM and a scatter-add (col2im) over k·k shifted copies.
        let gt = Geom {
            c: g.cout,
            h: g.ho,
            w: g.wo,
            cout: g.c,
            ho: g.h,
            wo: g.w,
            ..*g
        };
        return forward(&gt, dy, &flipped_kernel(g, w));
    }
    let (p, r) = (g.p(), g.r());
    let mut dx = vec![0f32; g.n * g.img()];
    let wt = Mat::transposed(w, r);
    if g.pointwise() {
        dx.par_chunks_mut(g.img()).enumerate().for_each(|(b, dxb)| {
            let dyb = &dy[b * g.cout * p..(b + 1) * g.cout * p];
            gemm(r, p, g.cout, dxb, false, wt, Mat::rows(dyb, p));
        });
    } else {
        dx.par_chunks_mut(g.img()).enumerate().for_each(|(b, dxb)| {
            with_scratch(r * p, |dcols| {
                let dyb = &dy[b * g.cout * p..(b + 1) * g.cout * p];
                gemm(r, p, g.cout, dcols, false, wt, Mat::rows(dyb, p));
                col2im(g, dcols, dxb);
            })
        });
    }
    dx
}

/// (Cout, C, k, k) -> (C, Cout, k, k) with both spatial axes reversed: the kernel of the adjoint conv.
fn flipped_kernel(g: &Geom, w: &[f32]) -> Vec<f32> {
    let kk = g.k * g.k;
    let mut out = vec![0f32; w.len()];
    for co in 0..g.cout {
        for ci in 0..g.c {
            let src = &w[(co * g.c + ci) * kk..(co * g.c + ci + 1) * kk];
            let dst = &mut out[(ci * g.cout + co) * kk..(ci * g.cout + co + 1) * kk];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    out
}

/// dW from (x, dY): Σ_b dY_b · cols_bᵀ.
struct ConvBwdWeight {
    stride: usize,
    pad: usize,
    k: usize,
}

impl CustomOp2 for ConvBwdWeight {
    fn name(&self) -> &'static str {
        "covf-conv2d-bwd-weight"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ds: &CpuStorage, dl: &Layout) -> Result<(CpuStorage, Shape)> {
        let xd = xl.dims();
        let (dd, k) = (dl.dims(), self.k);
        if xd.len() != 4 || dd.len() != 4 {
            candle_core::bail!("conv2d weight gradient: expected 4-D input and gradient, got {xd:?}, {dd:?}")
        }
        let wd = [dd[1], xd[1], k, k];
        let g = Geom::new(xd, &wd, self.stride, self.pad)?;
        if dd != [g.n, g.cout, g.ho, g.wo] {
            candle_core::bail!("conv2d weight gradient: gradient {dd:?} does not match the output of {xd:?}")
        }
        let (x, dy) = (f32_slice(xs, xl, "conv2d input")?, f32_slice(ds, dl, "conv2d grad")?);
        Ok((CpuStorage::F32(backward_weight(&g, x, dy)), Shape::from(wd.to_vec())))
    }
}

/// dW of the conv `g` from its input and dY: Σ_b dY_b · cols_bᵀ, over `WGRAD_CHUNKS` fixed batch chunks
/// summed in order.
pub(crate) fn backward_weight(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (p, r) = (g.p(), g.r());
    let chunks = WGRAD_CHUNKS.min(g.n).max(1);
    let per = g.n.div_ceil(chunks);
    // The weight-gradient kernel takes output channels in pairs.
    let direct = direct_3x3(g).filter(|d| d.cout % 2 == 0);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|t| {
            let (b0, b1) = ((t * per).min(g.n), ((t + 1) * per).min(g.n));
            if let Some(d) = direct {
                let (xs, dys) = (&x[b0 * g.img()..b1 * g.img()], &dy[b0 * g.cout * p..b1 * g.cout * p]);
                let nb = b1 - b0;
                return with_scratch(conv3x3::weight_grad_scratch(d, nb), |s| {
                    conv3x3::weight_grad(d, xs, dys, nb, s)
                });
            }
            let mut dw = vec![0f32; g.cout * r];
            let mut cols = if g.pointwise() { Vec::new() } else { vec![0f32; r * p] };
            for b in b0..b1 {
                let dyb = &dy[b * g.cout * p..(b + 1) * g.cout * p];
                let xb = &x[b * g.img()..(b + 1) * g.img()];
                let colst = if g.pointwise() {
                    Mat::transposed(xb, p)
                } else {
                    im2col(g, xb, &mut cols);
                    Mat::transposed(&cols, p)
                };
                gemm(g.cout, r, p, &mut dw, true, Mat::rows(dyb, p), colst);
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; g.cout * r];
    for part in &partials {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += v;
        }
    }
    dw
}

/// 2-D convolution (no bias, dilation 1, groups 1) of (N, C, H, W) by (Cout, C, k, k), per image.
pub fn conv2d_per_image(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, ConvFwd { stride, pad })
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::rng::Rng;
    use candle_core::{Device, Result, Tensor, Var};

    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// `conv` against candle's conv2d, forward and both gradients, for each (n, c, cout, h, k, stride, pad).
    pub fn check_conv_against_candle(
        conv: fn(&Tensor, &Tensor, usize, usize) -> Result<Tensor>,
        seed: u64,
        cases: &[(usize, usize, usize, usize, usize, usize, usize)],
    ) {
        let dev = Device::Cpu;
        let mut rng = Rng::new(seed);
        for &(n, c, cout, h, k, stride, pad) in cases {
            let case = format!("n{n} c{c} cout{cout} h{h} k{k} s{stride} p{pad}");
            let x = Var::from_tensor(&rng.uniform_tensor(&[n, c, h, h], -1.0, 1.0, &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&rng.uniform_tensor(&[cout, c, k, k], -1.0, 1.0, &dev).unwrap()).unwrap();
            let ours = conv(x.as_tensor(), w.as_tensor(), stride, pad).unwrap();
            let stock = x.as_tensor().conv2d(w.as_tensor(), pad, stride, 1, 1).unwrap();
            assert_eq!(ours.dims(), stock.dims(), "{case}");
            assert!(max_diff(&ours, &stock) < 1e-4, "forward {case}");
            // A random linear functional of the output, so every output element carries a distinct weight.
            let r = rng.uniform_tensor(stock.dims(), -1.0, 1.0, &dev).unwrap();
            let ga = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (stock * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w] {
                let (a, b) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
                assert!(max_diff(a, b) < 1e-3, "gradient {case}: {}", max_diff(a, b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_conv2d_forward_and_gradients() {
        testing::check_conv_against_candle(
            conv2d_per_image,
            11,
            &[
                (3, 3, 8, 9, 3, 1, 1),
                (2, 4, 6, 10, 3, 2, 1),
                (5, 5, 7, 8, 1, 2, 0),
                (2, 5, 7, 8, 1, 1, 0),
                (1, 2, 3, 7, 3, 1, 0),
                (6, 1, 4, 5, 3, 2, 1),
                (2, 3, 2, 4, 3, 1, 2),
                // "Same" stride-1 convs take the shifted-plane im2col and the flipped-kernel dX.
                (2, 3, 4, 6, 5, 1, 2),
                (3, 2, 3, 2, 3, 1, 1),
                (2, 16, 8, 28, 3, 1, 1),
                // The direct 3×3 kernels on all three passes, over uneven weight-gradient chunks.
                (5, 8, 16, 7, 3, 1, 1),
            ],
        );
    }

    #[test]
    fn detached_weights_get_no_gradient_and_input_still_does() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(2);
        let x = Var::from_tensor(&rng.uniform_tensor(&[2, 3, 6, 6], 0.0, 1.0, &dev).unwrap()).unwrap();
        let w = rng.uniform_tensor(&[4, 3, 3, 3], -1.0, 1.0, &dev).unwrap();
        let y = conv2d_per_image(x.as_tensor(), &w, 1, 1).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&w).is_none());
        assert_eq!(g.get(x.as_tensor()).unwrap().dims(), &[2, 3, 6, 6]);
    }

    #[test]
    fn weight_gradient_is_the_same_for_any_thread_count() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(4);
        let x = rng.uniform_tensor(&[9, 3, 8, 8], 0.0, 1.0, &dev).unwrap();
        let dy = rng.uniform_tensor(&[9, 5, 8, 8], -1.0, 1.0, &dev).unwrap();
        let op = ConvBwdWeight {
            stride: 1,
            pad: 1,
            k: 3,
        };
        let dw = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| x.apply_op2_no_bwd(&dy, &op).unwrap())
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(dw(1), dw(3));
    }

    #[test]
    fn valid_columns_cover_exactly_the_in_image_taps() {
        for &(w, k, s, pad) in &[(7, 3, 1, 1), (8, 3, 2, 1), (5, 1, 2, 0), (4, 3, 1, 2)] {
            let g = Geom::new(&[1, 1, w, w], &[1, 1, k, k], s, pad).unwrap();
            for kx in 0..k {
                let (lo, hi) = g.valid_ox(kx);
                for ox in 0..g.wo {
                    let ix = (ox * s + kx) as isize - pad as isize;
                    let inside = ix >= 0 && (ix as usize) < w;
                    assert_eq!(inside, (lo..hi).contains(&ox), "w{w} k{k} s{s} p{pad} kx{kx} ox{ox}");
                }
            }
        }
    }
}
