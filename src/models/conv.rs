//! CPU convolution as im2col + one large GEMM, with a GEMM-based backward.
//!
//! candle 0.11's CPU conv2d backward computes the input gradient with a direct (non-GEMM)
//! conv_transpose2d and the weight gradient with a conv whose kernel is the whole output map;
//! together they dominated our training step. Here conv = reshape(im2col(x) · Wᵀ): the matmul's own
//! backward gives both gradients as GEMMs, and im2col's backward is col2im (a scatter-add).
//! Rows of the column matrix are output pixels (n, oy, ox); columns are (c, ky, kx), PyTorch's weight order.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Geometry {
    fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.k) / self.stride + 1,
            (self.w + 2 * self.pad - self.k) / self.stride + 1,
        )
    }

    fn row_len(&self) -> usize {
        self.c * self.k * self.k
    }
}

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: only f32 is supported on CPU, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// (N, C, H, W) -> (N·Ho·Wo, C·k·k).
struct Im2Col(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "covf-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = f32_slice(s, l, "im2col")?;
        let n = l.dims()[0];
        let (ho, wo) = g.out_hw();
        let rl = g.row_len();
        let mut out = vec![0f32; n * ho * wo * rl];
        out.par_chunks_mut(ho * wo * rl).enumerate().for_each(|(b, dst)| {
            let src = &x[b * g.c * g.h * g.w..(b + 1) * g.c * g.h * g.w];
            for oy in 0..ho {
                for ox in 0..wo {
                    let row = &mut dst[(oy * wo + ox) * rl..(oy * wo + ox + 1) * rl];
                    let mut j = 0;
                    for c in 0..g.c {
                        let plane = &src[c * g.h * g.w..(c + 1) * g.h * g.w];
                        for ky in 0..g.k {
                            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                            for kx in 0..g.k {
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy >= 0 && (iy as usize) < g.h && ix >= 0 && (ix as usize) < g.w {
                                    row[j] = plane[iy as usize * g.w + ix as usize];
                                }
                                j += 1;
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n * ho * wo, rl))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let n = arg.dim(0)?;
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0, n))?))
    }
}

/// The adjoint of im2col: (N·Ho·Wo, C·k·k) -> (N, C, H, W), overlapping windows summed.
struct Col2Im(Geometry, usize);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "covf-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, n) = (self.0, self.1);
        let cols = f32_slice(s, l, "col2im")?;
        let (ho, wo) = g.out_hw();
        let rl = g.row_len();
        let img = g.c * g.h * g.w;
        let mut out = vec![0f32; n * img];
        out.par_chunks_mut(img).enumerate().for_each(|(b, dst)| {
            let src = &cols[b * ho * wo * rl..(b + 1) * ho * wo * rl];
            for oy in 0..ho {
                for ox in 0..wo {
                    let row = &src[(oy * wo + ox) * rl..(oy * wo + ox + 1) * rl];
                    let mut j = 0;
                    for c in 0..g.c {
                        for ky in 0..g.k {
                            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                            for kx in 0..g.k {
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy >= 0 && (iy as usize) < g.h && ix >= 0 && (ix as usize) < g.w {
                                    dst[c * g.h * g.w + iy as usize * g.w + ix as usize] += row[j];
                                }
                                j += 1;
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, g.c, g.h, g.w))))
    }
}

/// 2-D convolution (no bias, dilation 1, groups 1) of (N, C, H, W) by (Cout, C, k, k).
pub fn conv2d_im2col(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (cout, _, k, _) = w.dims4()?;
    let g = Geometry {
        c,
        h,
        w: wd,
        k,
        stride,
        pad,
    };
    let (ho, wo) = g.out_hw();
    let cols = x.contiguous()?.apply_op1(Im2Col(g))?;
    let out = cols.matmul(&w.reshape((cout, g.row_len()))?.t()?)?;
    out.reshape((n, ho * wo, cout))?
        .transpose(1, 2)?
        .reshape((n, cout, ho, wo))
}

/// Test helpers shared by the CPU kernels' tests: compare against candle's stock ops.
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

    #[test]
    fn matches_candle_conv2d_forward_and_gradients() {
        testing::check_conv_against_candle(
            conv2d_im2col,
            5,
            &[
                (3, 3, 8, 9, 3, 1, 1),
                (3, 4, 6, 10, 3, 2, 1),
                (3, 5, 7, 8, 1, 2, 0),
                (3, 2, 3, 7, 3, 1, 0),
            ],
        );
    }
}
