//! Element-wise CPU loops of the fused ops, compiled a second time for AVX2+FMA and picked at run time.
//!
//! The release build targets baseline x86-64 (SSE2) so the binary runs anywhere; these loops are the
//! ones where 128-bit vectors were measured to cost (batch-norm statistics and backward). Each is
//! written once; `multiversion!` adds an AVX2 copy used when the CPU has it. Neither copy reorders
//! arithmetic (Rust never fuses or reassociates float ops on its own), so both give bit-identical
//! results and runs stay reproducible across CPUs.

/// Lanes of independent partial sums: one f32 accumulator is a serial chain of dependent adds;
/// 16 lanes fill two AVX2 registers and let the additions overlap.
const LANES: usize = 16;

/// `v` where `y > 0`, else +0.0: a bit mask rather than a branch, so that loops of it vectorize
/// (LLVM turned the `if` into per-element jumps).
#[inline(always)]
fn pass_if_positive(y: f32, v: f32) -> f32 {
    let mask = if y > 0.0 { u32::MAX } else { 0 };
    f32::from_bits(v.to_bits() & mask)
}

/// Defines `fn $name` that runs an AVX2+FMA build of `$body` on CPUs that have it, the baseline build elsewhere.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn generic($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($a: $t),*) $(-> $r)? {
                    generic($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { avx2($($a),*) };
                }
            }
            generic($($a),*)
        }
    };
}

/// (Σ x, Σ x²), summed in `LANES` lanes then folded.
pub fn sum_and_squares(x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX.
        return unsafe { x86::lane_sums(x, x, x, false) };
    }
    lane_sums(x, x, x, false)
}

/// (Σ d, Σ d·x) with d = dy where y > 0 and 0 elsewhere (the gradient through a ReLU whose output is y).
pub fn masked_sums(y: &[f32], dy: &[f32], x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX.
        return unsafe { x86::lane_sums(y, dy, x, true) };
    }
    lane_sums(y, dy, x, true)
}

/// The portable reference of the two sums: per lane l, a[l] += d, b[l] += d·x with d = v masked by
/// y > 0 when `masked` (v = dy), else d = v = x. LLVM keeps these lanes scalar (measured: spilled
/// arrays and branches), hence the explicit x86 version below, which does the same operations in the
/// same order and so gives the same bits.
fn lane_sums(y: &[f32], v: &[f32], x: &[f32], masked: bool) -> (f32, f32) {
    let n = y.len().min(v.len()).min(x.len());
    let full = n - n % LANES;
    let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
    for i in (0..full).step_by(LANES) {
        for l in 0..LANES {
            let d = if masked {
                pass_if_positive(y[i + l], v[i + l])
            } else {
                v[i + l]
            };
            a[l] += d;
            b[l] += d * x[i + l];
        }
    }
    fold(a, b, y, v, x, full..n, masked)
}

/// Lane totals in lane order, then the tail element by element.
fn fold(
    a: [f32; LANES],
    b: [f32; LANES],
    y: &[f32],
    v: &[f32],
    x: &[f32],
    tail: std::ops::Range<usize>,
    masked: bool,
) -> (f32, f32) {
    let (mut sa, mut sb) = (a.iter().sum::<f32>(), b.iter().sum::<f32>());
    for i in tail {
        let d = if masked { pass_if_positive(y[i], v[i]) } else { v[i] };
        sa += d;
        sb += d * x[i];
    }
    (sa, sb)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{fold, LANES};
    use std::arch::x86_64::*;

    /// `super::lane_sums` with the 16 lanes held in two 8-wide registers per sum.
    #[target_feature(enable = "avx")]
    pub(super) fn lane_sums(y: &[f32], v: &[f32], x: &[f32], masked: bool) -> (f32, f32) {
        let n = y.len().min(v.len()).min(x.len());
        let full = n - n % LANES;
        let zero = _mm256_setzero_ps();
        let (mut a0, mut a1, mut b0, mut b1) = (zero, zero, zero, zero);
        let mut i = 0;
        while i < full {
            // SAFETY: i + 16 <= full <= n, the length of all three slices.
            unsafe {
                let (mut d0, mut d1) = (
                    _mm256_loadu_ps(v.as_ptr().add(i)),
                    _mm256_loadu_ps(v.as_ptr().add(i + 8)),
                );
                if masked {
                    let m0 = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_loadu_ps(y.as_ptr().add(i)), zero);
                    let m1 = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_loadu_ps(y.as_ptr().add(i + 8)), zero);
                    d0 = _mm256_and_ps(d0, m0);
                    d1 = _mm256_and_ps(d1, m1);
                }
                let (x0, x1) = (
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    _mm256_loadu_ps(x.as_ptr().add(i + 8)),
                );
                a0 = _mm256_add_ps(a0, d0);
                a1 = _mm256_add_ps(a1, d1);
                b0 = _mm256_add_ps(b0, _mm256_mul_ps(d0, x0));
                b1 = _mm256_add_ps(b1, _mm256_mul_ps(d1, x1));
            }
            i += LANES;
        }
        let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
        // SAFETY: each array holds 16 floats, two stores of 8.
        unsafe {
            _mm256_storeu_ps(a.as_mut_ptr(), a0);
            _mm256_storeu_ps(a.as_mut_ptr().add(8), a1);
            _mm256_storeu_ps(b.as_mut_ptr(), b0);
            _mm256_storeu_ps(b.as_mut_ptr().add(8), b1);
        }
        fold(a, b, y, v, x, full..n, masked)
    }
}

use std::mem::MaybeUninit;

/// A `len`-float vector filled in parallel chunks of `chunk` floats by `fill(chunk_index, chunk)`,
/// without zeroing it first: zeroing every conv and batch-norm output cost ~10% of an inference pass
/// (memset in perf), and each of those kernels overwrites its whole output anyway.
///
/// # Safety
/// `fill` must write every element of the chunk it is given.
pub(crate) unsafe fn par_filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: the caller's `fill` initialised every chunk, and the chunks cover 0..len.
    unsafe { out.set_len(len) };
    out
}

multiversion! {
    /// out = max(x·a + b, 0), written into fresh (uninitialised) memory: every element of `out` up
    /// to `x.len()` is written, so callers can skip zeroing output buffers.
    pub fn affine_relu(out: &mut [MaybeUninit<f32>], x: &[f32], a: f32, b: f32) {
        for (o, &v) in out.iter_mut().zip(x) {
            o.write((v * a + b).max(0.0));
        }
    }
}

multiversion! {
    /// out = a·d + b·x + c with d = dy where y > 0, else 0 (the batch-norm + ReLU input gradient),
    /// written into fresh memory like `affine_relu`.
    pub fn masked_affine(out: &mut [MaybeUninit<f32>], y: &[f32], dy: &[f32], x: &[f32], abc: (f32, f32, f32)) {
        let (a, b, c) = abc;
        for (((o, &y), &dy), &x) in out.iter_mut().zip(y).zip(dy).zip(x) {
            o.write(a * pass_if_positive(y, dy) + b * x + c);
        }
    }
}

multiversion! {
    /// out = a·d with d = dy where y > 0, else 0 (the gradient through a folded batch norm + ReLU).
    pub fn masked_scale(out: &mut [MaybeUninit<f32>], y: &[f32], dy: &[f32], a: f32) {
        for ((o, &y), &dy) in out.iter_mut().zip(y).zip(dy) {
            o.write(a * pass_if_positive(y, dy));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_lane_sums_equal_the_portable_ones_bit_for_bit() {
        let x: Vec<f32> = (0..203).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let y: Vec<f32> = x.iter().map(|v| (v - 1.0).max(0.0)).collect();
        let dy: Vec<f32> = (0..203).map(|i| (i as f32).sin()).collect();
        assert_eq!(masked_sums(&y, &dy, &x), lane_sums(&y, &dy, &x, true));
        assert_eq!(sum_and_squares(&x), lane_sums(&x, &x, &x, false));
    }

    #[test]
    fn lane_sums_match_plain_sums() {
        // 37 = two full chunks of 16 plus a remainder of 5.
        let x: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.25).collect();
        let (s, s2) = sum_and_squares(&x);
        assert!((s - x.iter().sum::<f32>()).abs() < 1e-4);
        assert!((s2 - x.iter().map(|v| v * v).sum::<f32>()).abs() < 1e-3);
        let y: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
        let dy: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let (d, dx) = masked_sums(&y, &dy, &x);
        let want_d: f32 = (0..37).filter(|&i| y[i] > 0.0).map(|i| dy[i]).sum();
        let want_dx: f32 = (0..37).filter(|&i| y[i] > 0.0).map(|i| dy[i] * x[i]).sum();
        assert!((d - want_d).abs() < 1e-4 && (dx - want_dx).abs() < 1e-3, "{d} {dx}");
        let mut out = vec![MaybeUninit::uninit(); 37];
        masked_affine(&mut out, &y, &dy, &x, (2.0, 0.5, -1.0));
        // SAFETY: masked_affine wrote all 37.
        let out: Vec<f32> = out.iter().map(|o| unsafe { o.assume_init() }).collect();
        for i in 0..37 {
            let d = if y[i] > 0.0 { dy[i] } else { 0.0 };
            assert_eq!(out[i], 2.0 * d + 0.5 * x[i] - 1.0);
        }
    }
}
