//! Direct 3×3, padding-1 convolution (stride 1 or 2) per image: no column matrix, no GEMM packing.
//!
//! Nearly all of the PreAct nets' convolutions, and the input gradients of the stride-1 ones (a flipped 3×3
//! conv), have this shape. Through im2col + GEMM each tap's shifted copy of the input is written (im2col),
//! packed again by the GEMM, and the GEMM's short inner dimension (C·9) keeps it far from the FMA peak;
//! profiles showed the copies at ≈ 25% of an FGSM step. Here each input channel is copied once into a
//! zero-bordered (H+2)×(W+2) plane (at stride 2 into its four row/column-parity sub-images); the output at
//! flat position p = y·pitch + x is then Σ_{c, tap} w[co, c, tap] · xp[c][p + offset(tap)], a 1-D
//! correlation with nine fixed offsets, so consecutive outputs are one unaligned vector load per tap. The
//! columns past the output width are computed and dropped. A tile is 8 output channels × 32 positions;
//! the weight gradient reads the same layout.
//!
//! Every output is summed in one order on every CPU: channels outer, taps inner, each a fused multiply-add
//! into one f32 accumulator (the weight gradient: 16 lanes over images and positions, then a fixed fold).
//! The AVX-512 and AVX2+FMA kernels hold different numbers of outputs per register but do exactly that per
//! output, and the portable one uses `f32::mul_add`, so all three give the same bits and runs stay
//! reproducible across CPUs. The order differs from the GEMM path's (`COVF_CONV=gemm` selects it, for A/B
//! comparisons): results agree to f32 rounding.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Output channels per tile (the last tile of a layer whose channels are not a multiple takes them one by one).
const CB: usize = 8;
/// Output positions per tile.
const PB: usize = 32;
const TAPS: usize = 9;

/// Whether the direct kernels are on: unless `COVF_CONV=gemm` (read once per process).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("COVF_CONV").map(|v| v != "gemm").unwrap_or(true))
}

/// The kernel this CPU runs; all give identical results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// Input and output dimensions of one image's convolution (stride 1 or 2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub stride: usize,
}

impl Dims {
    /// Output height and width.
    pub(crate) fn out_hw(&self) -> (usize, usize) {
        ((self.h - 1) / self.stride + 1, (self.w - 1) / self.stride + 1)
    }

    /// Rows and row pitch of one input phase: the zero-bordered (H+2)×(W+2) image itself at stride 1;
    /// at stride 2 each of its four (row parity, column parity) sub-images, so that a tap's reads are
    /// again consecutive. The pitch is one more than the output width, so a row's last tap stays in it.
    fn phase(&self) -> (usize, usize) {
        match self.stride {
            1 => (self.h + 2, self.w + 2),
            _ => (self.h.div_ceil(2) + 1, self.w.div_ceil(2) + 1),
        }
    }

    /// Floats of one channel's phases (1 or 4 of them).
    fn plane(&self) -> usize {
        let (rows, pitch) = self.phase();
        self.stride * self.stride * rows * pitch
    }

    /// Offsets of the nine taps (ky, kx) from an output position, within a channel's phases.
    fn offsets(&self) -> [usize; TAPS] {
        let (rows, pitch) = self.phase();
        let s = self.stride;
        std::array::from_fn(|t| {
            let (ky, kx) = (t / 3, t % 3);
            let phase = (ky % s) * s + kx % s;
            phase * rows * pitch + (ky / s) * pitch + kx / s
        })
    }

    /// Output positions in the padded layout (output rows of the phase pitch), and that rounded up to
    /// whole tiles.
    fn positions(&self) -> (usize, usize) {
        let lo = self.out_hw().0 * self.phase().1;
        (lo, lo.div_ceil(PB) * PB)
    }

    /// Floats of the padded input: enough for the last channel's furthest tap from the last tile.
    fn input_len(&self) -> usize {
        let far = self.offsets().into_iter().max().unwrap_or(0);
        ((self.c - 1) * self.plane() + far + self.positions().1).max(self.c * self.plane())
    }

    /// Floats of scratch `image` needs: the padded input.
    pub(crate) fn scratch(&self) -> usize {
        self.input_len()
    }

    /// Writes (C, H, W) `x` into zero-bordered phases `xp` (`input_len` floats).
    fn pad_input(&self, x: &[f32], xp: &mut [f32]) {
        let (rows, pitch) = self.phase();
        let (plane, s) = (self.plane(), self.stride);
        xp.fill(0.0);
        for ci in 0..self.c {
            for y in 0..self.h {
                let src = &x[(ci * self.h + y) * self.w..][..self.w];
                if s == 1 {
                    let dst = ci * plane + (y + 1) * pitch + 1;
                    xp[dst..dst + self.w].copy_from_slice(src);
                    continue;
                }
                // Padded (y + 1, x + 1) is phase ((y + 1) % 2, (x + 1) % 2), row (y + 1) / 2, column (x + 1) / 2.
                let (py, row) = ((y + 1) % 2, y.div_ceil(2));
                for (xx, v) in src.iter().enumerate() {
                    let phase = py * 2 + (xx + 1) % 2;
                    xp[ci * plane + phase * rows * pitch + row * pitch + xx.div_ceil(2)] = *v;
                }
            }
        }
    }
}

/// (Cout, C, 3, 3) -> blocks of 8 output channels (the last one narrower when Cout is not a multiple),
/// each laid out [C][tap][block width]: the weights one tap multiplies are adjacent.
pub(crate) fn pack_weights(d: Dims, w: &[f32]) -> Vec<f32> {
    assert!(w.len() == d.cout * d.c * TAPS, "conv3x3: weight shape");
    let mut out = vec![0f32; w.len()];
    for co in 0..d.cout {
        let (j0, j) = (co - co % CB, co % CB);
        let jw = CB.min(d.cout - j0);
        for ci in 0..d.c {
            for t in 0..TAPS {
                out[j0 * d.c * TAPS + (ci * TAPS + t) * jw + j] = w[(co * d.c + ci) * TAPS + t];
            }
        }
    }
    out
}

/// One image: `x` (C, H, W), packed weights, `out` (Cout, Ho, Wo); `scratch` of at least `d.scratch()` floats.
pub(crate) fn image(d: Dims, x: &[f32], wt: &[f32], out: &mut [MaybeUninit<f32>], scratch: &mut [f32]) {
    image_with(isa(), d, x, wt, out, scratch)
}

fn image_with(isa: Isa, d: Dims, x: &[f32], wt: &[f32], out: &mut [MaybeUninit<f32>], scratch: &mut [f32]) {
    let (ho, wo) = d.out_hw();
    let (plane, lo_pad, hw) = (d.plane(), d.positions().1, ho * wo);
    assert!(
        x.len() >= d.c * d.h * d.w
            && wt.len() >= d.cout * d.c * TAPS
            && out.len() >= d.cout * hw
            && scratch.len() >= d.scratch(),
        "conv3x3: operands out of bounds"
    );
    let xp = &mut scratch[..d.input_len()];
    d.pad_input(x, xp);
    let offs = d.offsets();
    let out = out.as_mut_ptr().cast::<f32>();
    for p0 in (0..lo_pad).step_by(PB) {
        for j0 in (0..d.cout).step_by(CB) {
            let width = CB.min(d.cout - j0);
            // SAFETY: the largest input read is (c−1)·plane + (furthest tap) + p0 + 31 < input_len
            // (p0 + 32 ≤ lo_pad); the block's weights are c·9·width floats from j0·c·9; stores go to
            // in-image positions of channels j0..j0+width only. Features are as detected.
            unsafe {
                let t = Tile {
                    x: xp.as_ptr().add(p0),
                    plane,
                    c: d.c,
                    offs: &offs,
                    w: wt.as_ptr().add(j0 * d.c * TAPS),
                    jw: width,
                    out: out.add(j0 * hw),
                    q0: p0,
                    d,
                };
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 if width == CB => x86::tile_avx512::<CB>(&t),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => (0..width).for_each(|j| x86::tile_avx512::<1>(&t.channel(j))),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 if width == CB => [0, 4].iter().for_each(|&j| x86::tile_avx2::<4>(&t.channel(j))),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => (0..width).for_each(|j| x86::tile_avx2::<1>(&t.channel(j))),
                    _ => tile_portable(&t, width),
                }
            }
        }
    }
}

/// One tile's operands: from padded position `q0` (`x` points there in channel 0's plane), output
/// channels from `w` (the first of them; a tap's weights `jw` apart) and `out` (that channel's plane).
#[derive(Clone, Copy)]
struct Tile<'a> {
    x: *const f32,
    plane: usize,
    c: usize,
    offs: &'a [usize; TAPS],
    w: *const f32,
    jw: usize,
    out: *mut f32,
    q0: usize,
    d: Dims,
}

impl Tile<'_> {
    /// The same tile starting `j` output channels further.
    ///
    /// # Safety
    /// `j` must be inside the tile's block.
    unsafe fn channel(&self, j: usize) -> Self {
        // SAFETY: the caller keeps j inside the block, whose weights and planes these stay within.
        unsafe {
            Tile {
                w: self.w.add(j),
                out: self.out.add(j * self.hw()),
                ..*self
            }
        }
    }

    /// Outputs per channel.
    fn hw(&self) -> usize {
        let (ho, wo) = self.d.out_hw();
        ho * wo
    }

    /// The in-image runs among padded positions `q .. q + n`: (first lane, lanes, output index).
    fn runs(&self, q: usize, n: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let ((h, w), wp) = (self.d.out_hw(), self.d.phase().1);
        let rows = q / wp..((q + n).div_ceil(wp)).min(h);
        rows.filter_map(move |y| {
            let (start, end) = ((y * wp).max(q), (y * wp + w).min(q + n));
            (start < end).then(|| (start - q, end - start, y * w + start - y * wp))
        })
    }

    /// Writes `vals` (the tile's outputs at positions q .. q + vals.len() of output channel `j`) to
    /// the image positions among them.
    ///
    /// # Safety
    /// `j` must be inside the tile's block.
    unsafe fn scatter(&self, j: usize, q: usize, vals: &[f32]) {
        let plane = self.out.wrapping_add(j * self.hw());
        for (lane, n, at) in self.runs(q, vals.len()) {
            // SAFETY: `runs` yields only positions inside the H×W plane of channel j.
            unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr().add(lane), plane.add(at), n) };
        }
    }
}

/// The tile in plain Rust, one output at a time in the kernels' order.
///
/// # Safety
/// As `image_with` guarantees for the tile.
unsafe fn tile_portable(t: &Tile, width: usize) {
    for j in 0..width {
        let mut vals = [0f32; PB];
        for (q, v) in vals.iter_mut().enumerate() {
            let mut acc = 0f32;
            for ci in 0..t.c {
                for (k, off) in t.offs.iter().enumerate() {
                    // SAFETY: in bounds as documented on `image_with`.
                    let (a, w) = unsafe { (*t.x.add(ci * t.plane + off + q), *t.w.add((ci * TAPS + k) * t.jw + j)) };
                    acc = a.mul_add(w, acc);
                }
            }
            *v = acc;
        }
        // SAFETY: j < width.
        unsafe { t.scatter(j, t.q0, &vals) };
    }
}

/// Lanes of the weight gradient's partial sums (one zmm register).
const LANES: usize = 16;

/// Floats of scratch `weight_grad` needs for `nb` images: their padded inputs and padded output gradients.
pub(crate) fn weight_grad_scratch(d: Dims, nb: usize) -> usize {
    nb * (d.input_len() + d.cout * d.positions().1)
}

/// dW (Cout, C, 3, 3) = Σ over the `nb` images of x (nb, C, H, W) and dy (nb, Cout, Ho, Wo). Each weight's
/// sum runs in 16 lanes over (image, block of 16 padded positions) in order, one FMA each, and the lanes
/// fold in a fixed tree: the same bits on every kernel and thread count.
pub(crate) fn weight_grad(d: Dims, x: &[f32], dy: &[f32], nb: usize, scratch: &mut [f32]) -> Vec<f32> {
    weight_grad_with(isa(), d, x, dy, nb, scratch)
}

fn weight_grad_with(isa: Isa, d: Dims, x: &[f32], dy: &[f32], nb: usize, scratch: &mut [f32]) -> Vec<f32> {
    let (wp, plane, in_len) = (d.phase().1, d.plane(), d.input_len());
    let ((ho, wo), lo_pad) = (d.out_hw(), d.positions().1);
    let (img_in, img_out, out_len) = (d.c * d.h * d.w, d.cout * ho * wo, d.cout * lo_pad);
    assert!(
        d.cout.is_multiple_of(2)
            && x.len() >= nb * img_in
            && dy.len() >= nb * img_out
            && scratch.len() >= weight_grad_scratch(d, nb),
        "conv3x3 weight gradient: operands out of bounds"
    );
    let mut dw = vec![0f32; d.cout * d.c * TAPS];
    if nb == 0 {
        return dw;
    }
    let (xps, dyp) = scratch.split_at_mut(nb * in_len);
    let dyp = &mut dyp[..nb * out_len];
    // Zero in the dropped columns and past the last position, so those products add nothing.
    dyp.fill(0.0);
    for b in 0..nb {
        d.pad_input(&x[b * img_in..][..img_in], &mut xps[b * in_len..][..in_len]);
        for co in 0..d.cout {
            for y in 0..ho {
                let src = &dy[b * img_out + (co * ho + y) * wo..][..wo];
                dyp[b * out_len + co * lo_pad + y * wp..][..wo].copy_from_slice(src);
            }
        }
    }
    let offs = d.offsets();
    let mut lanes = [0f32; 2 * TAPS * LANES];
    for ci in 0..d.c {
        for co0 in (0..d.cout).step_by(2) {
            let a = WgradArgs {
                x: xps[ci * plane..].as_ptr(),
                x_stride: in_len,
                dy: dyp[co0 * lo_pad..].as_ptr(),
                dy_stride: out_len,
                lo_pad,
                nb,
            };
            // SAFETY: image b's reads reach b·in_len + ci·plane + (furthest tap) + lo_pad − 1 < (b+1)·in_len and
            // b·out_len + (co0+1)·lo_pad + lo_pad − 1 < (b+1)·out_len; `lanes` holds 2·9·16 floats.
            unsafe {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => x86::wgrad_avx512(&a, &offs, &mut lanes),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => x86::wgrad_avx2(&a, &offs, &mut lanes),
                    _ => wgrad_portable(&a, &offs, &mut lanes),
                }
            }
            for j in 0..2 {
                for t in 0..TAPS {
                    dw[((co0 + j) * d.c + ci) * TAPS + t] = fold(&mut lanes[(j * TAPS + t) * LANES..][..LANES]);
                }
            }
        }
    }
    dw
}

/// Σ of 16 lanes in a fixed tree (halves added pairwise).
fn fold(l: &mut [f32]) -> f32 {
    let mut s = LANES / 2;
    while s > 0 {
        for i in 0..s {
            l[i] += l[i + s];
        }
        s /= 2;
    }
    l[0]
}

/// Where one (input channel, pair of output channels) of the weight gradient reads: image b's padded
/// input plane at `x + b·x_stride`, its two padded output-gradient planes at `dy + b·dy_stride` and one
/// `lo_pad` further.
struct WgradArgs {
    x: *const f32,
    x_stride: usize,
    dy: *const f32,
    dy_stride: usize,
    lo_pad: usize,
    nb: usize,
}

/// The weight-gradient lanes in plain Rust, in the kernels' order.
///
/// # Safety
/// As `weight_grad_with` guarantees for the pointers.
unsafe fn wgrad_portable(a: &WgradArgs, offs: &[usize; TAPS], lanes: &mut [f32; 2 * TAPS * LANES]) {
    lanes.fill(0.0);
    for b in 0..a.nb {
        for p in (0..a.lo_pad).step_by(LANES) {
            for j in 0..2 {
                for (t, off) in offs.iter().enumerate() {
                    for l in 0..LANES {
                        // SAFETY: in bounds as documented on `weight_grad_with`.
                        let (g, xv) = unsafe {
                            (
                                *a.dy.add(b * a.dy_stride + j * a.lo_pad + p + l),
                                *a.x.add(b * a.x_stride + p + off + l),
                            )
                        };
                        let acc = &mut lanes[(j * TAPS + t) * LANES + l];
                        *acc = g.mul_add(xv, *acc);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, WgradArgs, LANES, TAPS};
    use std::arch::x86_64::*;

    /// J channels × 32 positions in 2·J zmm accumulators (16 for a full block): per (c, tap) two loads,
    /// J broadcasts, 2·J FMAs. In-image outputs go straight to their planes with masked stores.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_avx512<const J: usize>(t: &Tile) {
        let mut acc = [[_mm512_setzero_ps(); 2]; J];
        for ci in 0..t.c {
            // SAFETY (all pointer arithmetic here): in bounds as documented on `image_with`.
            unsafe {
                let base = t.x.add(ci * t.plane);
                let wc = t.w.add(ci * TAPS * t.jw);
                for (k, &off) in t.offs.iter().enumerate() {
                    let a0 = _mm512_loadu_ps(base.add(off));
                    let a1 = _mm512_loadu_ps(base.add(off + 16));
                    for (j, aj) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*wc.add(k * t.jw + j));
                        aj[0] = _mm512_fmadd_ps(a0, wv, aj[0]);
                        aj[1] = _mm512_fmadd_ps(a1, wv, aj[1]);
                    }
                }
            }
        }
        let hw = t.hw();
        for (j, aj) in acc.iter().enumerate() {
            for (half, v) in aj.iter().enumerate() {
                let q = t.q0 + 16 * half;
                for (lane, n, at) in t.runs(q, 16) {
                    // SAFETY: `runs` yields in-image positions of channel j; the shift moves lanes
                    // lane.. to 0.., and the store writes the first n of them.
                    unsafe {
                        let shifted = if lane == 0 {
                            *v
                        } else {
                            _mm512_maskz_compress_ps(!0u16 << lane, *v)
                        };
                        _mm512_mask_storeu_ps(t.out.add(j * hw + at), ((1u32 << n) - 1) as u16, shifted);
                    }
                }
            }
        }
    }

    /// 2 output channels × 9 taps in 18 zmm accumulators: per 16 positions two gradient loads, nine
    /// input loads, eighteen FMAs.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn wgrad_avx512(a: &WgradArgs, offs: &[usize; TAPS], lanes: &mut [f32; 2 * TAPS * LANES]) {
        let mut acc = [[_mm512_setzero_ps(); TAPS]; 2];
        for b in 0..a.nb {
            // SAFETY (all pointer arithmetic here): in bounds as documented on `weight_grad_with`.
            unsafe {
                let (xb, d0) = (a.x.add(b * a.x_stride), a.dy.add(b * a.dy_stride));
                let d1 = d0.add(a.lo_pad);
                for p in (0..a.lo_pad).step_by(LANES) {
                    let (g0, g1) = (_mm512_loadu_ps(d0.add(p)), _mm512_loadu_ps(d1.add(p)));
                    for (t, &off) in offs.iter().enumerate() {
                        let xv = _mm512_loadu_ps(xb.add(p + off));
                        acc[0][t] = _mm512_fmadd_ps(g0, xv, acc[0][t]);
                        acc[1][t] = _mm512_fmadd_ps(g1, xv, acc[1][t]);
                    }
                }
            }
        }
        for (j, aj) in acc.iter().enumerate() {
            for (t, v) in aj.iter().enumerate() {
                // SAFETY: (j·9 + t + 1)·16 ≤ 2·9·16.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr().add((j * TAPS + t) * LANES), *v) };
            }
        }
    }

    /// The weight-gradient lanes with ymm registers: per output channel and half of the 16 lanes, nine
    /// accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn wgrad_avx2(a: &WgradArgs, offs: &[usize; TAPS], lanes: &mut [f32; 2 * TAPS * LANES]) {
        for j in 0..2 {
            for half in [0, 8] {
                let mut acc = [_mm256_setzero_ps(); TAPS];
                for b in 0..a.nb {
                    // SAFETY (all pointer arithmetic here): in bounds as documented on `weight_grad_with`.
                    unsafe {
                        let xb = a.x.add(b * a.x_stride + half);
                        let d = a.dy.add(b * a.dy_stride + j * a.lo_pad + half);
                        for p in (0..a.lo_pad).step_by(LANES) {
                            let g = _mm256_loadu_ps(d.add(p));
                            for (t, &off) in offs.iter().enumerate() {
                                acc[t] = _mm256_fmadd_ps(g, _mm256_loadu_ps(xb.add(p + off)), acc[t]);
                            }
                        }
                    }
                }
                for (t, v) in acc.iter().enumerate() {
                    // SAFETY: (j·9 + t)·16 + 8 + 8 ≤ 2·9·16.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add((j * TAPS + t) * LANES + half), *v) };
                }
            }
        }
    }

    /// J channels × 32 positions with ymm registers, in two halves of 16 positions (2·J accumulators;
    /// a full block runs as two tiles of 4 channels).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2<const J: usize>(t: &Tile) {
        for q0 in [0, 16] {
            let mut acc = [[_mm256_setzero_ps(); 2]; J];
            for ci in 0..t.c {
                // SAFETY (all pointer arithmetic here): in bounds as documented on `image_with`.
                unsafe {
                    let base = t.x.add(ci * t.plane + q0);
                    let wc = t.w.add(ci * TAPS * t.jw);
                    for (k, &off) in t.offs.iter().enumerate() {
                        let a0 = _mm256_loadu_ps(base.add(off));
                        let a1 = _mm256_loadu_ps(base.add(off + 8));
                        for (j, aj) in acc.iter_mut().enumerate() {
                            let wv = _mm256_set1_ps(*wc.add(k * t.jw + j));
                            aj[0] = _mm256_fmadd_ps(a0, wv, aj[0]);
                            aj[1] = _mm256_fmadd_ps(a1, wv, aj[1]);
                        }
                    }
                }
            }
            for (j, aj) in acc.iter().enumerate() {
                let mut vals = [0f32; 16];
                // SAFETY: two stores of 8 into 16 floats; j < J stays inside the block.
                unsafe {
                    _mm256_storeu_ps(vals.as_mut_ptr(), aj[0]);
                    _mm256_storeu_ps(vals.as_mut_ptr().add(8), aj[1]);
                    t.scatter(j, t.q0 + q0, &vals);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Calls `f(co, ci, tap, output index, input index)` for every product of the convolution `d`
    /// (one image), by its definition: output (y, x) meets input (s·y + ky − 1, s·x + kx − 1).
    fn each_product(d: Dims, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        let (ho, wo) = d.out_hw();
        for co in 0..d.cout {
            for ci in 0..d.c {
                for t in 0..9 {
                    for y in 0..ho {
                        for x in 0..wo {
                            let (iy, ix) = ((d.stride * y + t / 3) as isize - 1, (d.stride * x + t % 3) as isize - 1);
                            if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize {
                                continue;
                            }
                            let at_in = (ci * d.h + iy as usize) * d.w + ix as usize;
                            f(co, ci, t, (co * ho + y) * wo + x, at_in);
                        }
                    }
                }
            }
        }
    }

    fn run(d: Dims, x: &[f32], w: &[f32], isa: Isa) -> Vec<f32> {
        let (ho, wo) = d.out_hw();
        let mut out = vec![MaybeUninit::new(f32::NAN); d.cout * ho * wo];
        // Scratch full of NaN: the kernel must not use anything it did not write.
        let mut scratch = vec![f32::NAN; d.scratch()];
        image_with(isa, d, x, &pack_weights(d, w), &mut out, &mut scratch);
        // SAFETY: every element was initialised (NaN at first, then the kernel's).
        out.into_iter().map(|v| unsafe { v.assume_init() }).collect()
    }

    fn uniform(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()
    }

    fn isas() -> Vec<Isa> {
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }

    fn assert_close(got: &[f32], want: &[f64], d: Dims) {
        assert_eq!(got.len(), want.len(), "{d:?}");
        for (i, (g, r)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - r).abs() <= 1e-5 * (1.0 + r.abs()),
                "{d:?} at {i}: {g} vs {r}"
            );
        }
    }

    /// (c, h, w, cout, stride): maps whose padded rows do and do not fill whole tiles, one input channel
    /// (the stem), 1×1 and 1-row images, odd sizes at stride 2, and output channels not a multiple of
    /// 8 (the input gradient of a 1- or 3-channel image).
    const SHAPES: [(usize, usize, usize, usize, usize); 14] = [
        (1, 28, 28, 16, 1),
        (16, 14, 14, 8, 1),
        (3, 7, 7, 16, 1),
        (5, 1, 9, 8, 1),
        (2, 1, 1, 8, 1),
        (4, 5, 3, 24, 1),
        (16, 28, 28, 1, 1),
        (5, 6, 6, 3, 1),
        (4, 5, 3, 12, 1),
        (16, 28, 28, 32, 2),
        (32, 14, 14, 8, 2),
        (3, 7, 9, 8, 2),
        (2, 1, 1, 8, 2),
        (4, 6, 5, 6, 2),
    ];

    #[test]
    fn matches_the_definition_and_every_kernel_gives_the_same_bits() {
        let mut rng = Rng::new(7);
        for (c, h, w, cout, stride) in SHAPES {
            let d = Dims { c, h, w, cout, stride };
            let x = uniform(&mut rng, c * h * w);
            let wv = uniform(&mut rng, cout * c * 9);
            let (ho, wo) = d.out_hw();
            let mut want = vec![0f64; cout * ho * wo];
            each_product(d, |co, ci, t, o, i| {
                want[o] += f64::from(wv[(co * c + ci) * 9 + t]) * f64::from(x[i])
            });
            let portable = run(d, &x, &wv, Isa::Portable);
            assert_close(&portable, &want, d);
            for isa in isas().into_iter().skip(1) {
                let same = run(d, &x, &wv, isa)
                    .iter()
                    .zip(&portable)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{isa:?} differs from the portable kernel on {d:?}");
            }
        }
    }

    #[test]
    fn weight_gradient_matches_the_definition_and_every_kernel_gives_the_same_bits() {
        let mut rng = Rng::new(11);
        for (nb, (c, h, w, cout, stride)) in SHAPES.into_iter().enumerate().filter(|(_, s)| s.3 % 2 == 0) {
            let (d, nb) = (Dims { c, h, w, cout, stride }, 1 + nb % 3);
            let (ho, wo) = d.out_hw();
            let x = uniform(&mut rng, nb * c * h * w);
            let dy = uniform(&mut rng, nb * cout * ho * wo);
            let mut want = vec![0f64; cout * c * 9];
            for b in 0..nb {
                each_product(d, |co, ci, t, o, i| {
                    want[(co * c + ci) * 9 + t] +=
                        f64::from(dy[b * cout * ho * wo + o]) * f64::from(x[b * c * h * w + i])
                });
            }
            let run = |isa| weight_grad_with(isa, d, &x, &dy, nb, &mut vec![f32::NAN; weight_grad_scratch(d, nb)]);
            let portable = run(Isa::Portable);
            assert_close(&portable, &want, d);
            for isa in isas().into_iter().skip(1) {
                let same = run(isa).iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{isa:?} differs from the portable weight gradient on {d:?}");
            }
        }
    }
}
