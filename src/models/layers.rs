//! The layers covf models are built from: conv (no bias), batch norm with explicit mode, linear.

use candle_core::{DType, Tensor, Var, D};

use super::params::{Init, ParamStore};
use crate::error::Result;
use crate::rng::Rng;

/// Whether batch norm uses batch statistics and, if so, whether it updates its running statistics.
///
/// Attack passes during training use batch statistics like the update pass (as fast_adversarial's
/// model in train mode does) but do not update the running statistics, so that the number of
/// attack steps does not change the statistics the evaluated model ends up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train { update_stats: bool },
    Eval,
}

impl Mode {
    pub const TRAIN: Mode = Mode::Train { update_stats: true };
    pub const ATTACK: Mode = Mode::Train { update_stats: false };
    pub const EVAL: Mode = Mode::Eval;
}

#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Tensor,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// A k×k convolution `cin -> cout` (`shape` = (cin, cout, k)), no bias, as in PreAct ResNets.
    pub fn new(
        ps: &mut ParamStore,
        name: &str,
        shape: (usize, usize, usize),
        stride: usize,
        padding: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        let (cin, cout, k) = shape;
        let w = ps.create(
            &format!("{name}.weight"),
            &[cout, cin, k, k],
            Init::FanInUniform { fan_in: cin * k * k },
            rng,
        )?;
        Ok(Conv2d {
            weight: w.as_tensor().clone(),
            stride,
            padding,
        })
    }

    /// In mixed precision `x` is bf16/f16 and the f32 weight is cast to it (the cast is differentiable, so
    /// the gradient reaches the f32 master weight).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() != self.weight.dtype() {
            return Ok(x.conv2d(&self.weight.to_dtype(x.dtype())?, self.padding, self.stride, 1, 1)?);
        }
        if x.device().is_cpu() {
            Ok(super::conv_direct::conv2d_per_image(
                x,
                &self.weight,
                self.stride,
                self.padding,
            )?)
        } else {
            Ok(x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?)
        }
    }

    pub fn detached(&self) -> Self {
        Conv2d {
            weight: self.weight.detach(),
            ..*self
        }
    }
}

#[derive(Debug, Clone)]
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Var,
    pub running_var: Var,
    pub num_batches_tracked: Var,
    pub eps: f64,
    pub momentum: f64,
}

impl BatchNorm {
    pub fn new(ps: &mut ParamStore, name: &str, c: usize, rng: &mut Rng) -> Result<Self> {
        let weight = ps.create(&format!("{name}.weight"), &[c], Init::Const(1.0), rng)?;
        let bias = ps.create(&format!("{name}.bias"), &[c], Init::Const(0.0), rng)?;
        let running_mean = ps.create(&format!("{name}.running_mean"), &[c], Init::Const(0.0), rng)?;
        let running_var = ps.create(&format!("{name}.running_var"), &[c], Init::Const(1.0), rng)?;
        let num_batches_tracked = ps.create_counter(&format!("{name}.num_batches_tracked"))?;
        Ok(BatchNorm {
            weight: weight.as_tensor().clone(),
            bias: bias.as_tensor().clone(),
            running_mean,
            running_var,
            num_batches_tracked,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// Batch norm always runs in f32 (as under PyTorch's autocast): half-precision batch statistics lose
    /// too much. A bf16/f16 input is widened and the output narrowed back.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if x.dtype() != DType::F32 {
            return Ok(self.forward(&x.to_dtype(DType::F32)?, mode)?.to_dtype(x.dtype())?);
        }
        let c = x.dim(1)?;
        let bshape = (1, c, 1, 1);
        match mode {
            Mode::Eval => {
                let (scale, shift) = self.folded()?;
                Ok(x.broadcast_mul(&scale.reshape(bshape)?)?
                    .broadcast_add(&shift.reshape(bshape)?)?)
            }
            Mode::Train { update_stats } => {
                let (n, _, h, w) = x.dims4()?;
                let m = (n * h * w) as f64;
                let mean = (x.sum_keepdim((0, 2, 3))? / m)?;
                let centered = x.broadcast_sub(&mean)?;
                let var = (centered.sqr()?.sum_keepdim((0, 2, 3))? / m)?;
                let scale = (self.weight.reshape(bshape)? / (var.clone() + self.eps)?.sqrt()?)?;
                let out = centered
                    .broadcast_mul(&scale)?
                    .broadcast_add(&self.bias.reshape(bshape)?)?;
                if update_stats {
                    self.update_running(&mean.detach().flatten_all()?, &var.detach().flatten_all()?, m)?;
                }
                Ok(out)
            }
        }
    }

    /// PyTorch's update: momentum 0.1, the unbiased batch variance.
    fn update_running(&self, mean: &Tensor, biased_var: &Tensor, m: f64) -> Result<()> {
        let mom = self.momentum;
        let unbiased = (biased_var * (m / (m - 1.0).max(1.0)))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - mom))? + (mean * mom)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - mom))? + (unbiased * mom)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        let t = (self.num_batches_tracked.as_tensor().to_dtype(DType::F64)? + 1.0)?.to_dtype(DType::I64)?;
        self.num_batches_tracked.set(&t)?;
        Ok(())
    }

    /// relu(bn(x)): one fused op on CPU (see bn.rs), composed candle ops elsewhere.
    pub fn forward_relu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if x.dtype() != DType::F32 {
            return Ok(self.forward_relu(&x.to_dtype(DType::F32)?, mode)?.to_dtype(x.dtype())?);
        }
        if !x.device().is_cpu() {
            return Ok(self.forward(x, mode)?.relu()?);
        }
        match mode {
            Mode::Eval => {
                let (scale, shift) = self.folded()?;
                Ok(super::bn::affine_relu(x, &scale, &shift)?)
            }
            Mode::Train { update_stats } => {
                let (out, stats) = super::bn::bn_relu_train(x, &self.weight, &self.bias, self.eps)?;
                if update_stats {
                    let (n, _, h, w) = x.dims4()?;
                    self.record_batch(&stats, n * h * w)?;
                }
                Ok(out)
            }
        }
    }

    /// Eval mode folded into a per-channel (scale, shift).
    pub(crate) fn folded(&self) -> Result<(Tensor, Tensor)> {
        let scale = (self.weight.as_ref() / (self.running_var.as_tensor() + self.eps)?.sqrt()?)?;
        let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    /// The running-statistics update from one batch's per-channel (mean, biased variance) over `m` values.
    pub(crate) fn record_batch(&self, stats: &[(f64, f64)], m: usize) -> Result<()> {
        let dev = self.running_mean.device();
        let mean = Tensor::from_vec(stats.iter().map(|s| s.0 as f32).collect::<Vec<_>>(), stats.len(), dev)?;
        let var = Tensor::from_vec(stats.iter().map(|s| s.1 as f32).collect::<Vec<_>>(), stats.len(), dev)?;
        self.update_running(&mean, &var, m as f64)
    }

    pub fn detached(&self) -> Self {
        BatchNorm {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(ps: &mut ParamStore, name: &str, fin: usize, fout: usize, rng: &mut Rng) -> Result<Self> {
        let w = ps.create(
            &format!("{name}.weight"),
            &[fout, fin],
            Init::FanInUniform { fan_in: fin },
            rng,
        )?;
        let b = ps.create(
            &format!("{name}.bias"),
            &[fout],
            Init::FanInUniform { fan_in: fin },
            rng,
        )?;
        Ok(Linear {
            weight: w.as_tensor().clone(),
            bias: b.as_tensor().clone(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dt = x.dtype();
        Ok(x.matmul(&self.weight.to_dtype(dt)?.t()?)?
            .broadcast_add(&self.bias.to_dtype(dt)?)?)
    }

    pub fn detached(&self) -> Self {
        Linear {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
        }
    }
}

/// Mean over the spatial dimensions: (N, C, H, W) -> (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(2)?.mean(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn batch_norm_train_normalises_and_tracks_like_pytorch() {
        let dev = Device::Cpu;
        let mut ps = ParamStore::new(&dev);
        let mut rng = Rng::new(0);
        let bn = BatchNorm::new(&mut ps, "bn", 1, &mut rng).unwrap();
        // Values 1..=4 in one channel: mean 2.5, biased var 1.25, unbiased var 5/3.
        let x = Tensor::new(&[1f32, 2., 3., 4.], &dev)
            .unwrap()
            .reshape((4, 1, 1, 1))
            .unwrap();
        let y: Vec<f32> = bn
            .forward(&x, Mode::TRAIN)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let s = (1.25f32 + 1e-5).sqrt();
        for (a, b) in y.iter().zip([-1.5f32 / s, -0.5 / s, 0.5 / s, 1.5 / s]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let rm: Vec<f32> = bn.running_mean.as_tensor().to_vec1().unwrap();
        let rv: Vec<f32> = bn.running_var.as_tensor().to_vec1().unwrap();
        assert!((rm[0] - 0.25).abs() < 1e-6);
        assert!((rv[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6);
        assert_eq!(bn.num_batches_tracked.as_tensor().to_scalar::<i64>().unwrap(), 1);
        // An attack pass leaves the statistics alone; eval uses them.
        bn.forward(&x, Mode::ATTACK).unwrap();
        assert_eq!(bn.num_batches_tracked.as_tensor().to_scalar::<i64>().unwrap(), 1);
        let e: Vec<f32> = bn
            .forward(&x, Mode::EVAL)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((e[0] - (1.0 - 0.25) / (rv[0] + 1e-5).sqrt()).abs() < 1e-5);
    }
}
