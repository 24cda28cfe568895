//! Mixed precision: the compute dtype of training passes (`--dtype`) and f16's dynamic loss scaling.
//!
//! Master weights, the optimizer, batch-norm statistics and the loss stay f32 whatever the compute dtype:
//! the model casts its weights and activations at the boundaries (`PreActResNet::with_compute_dtype`). f16
//! has 5 exponent bits, so weight gradients of a mean loss underflow to zero; the loss is multiplied by a
//! scale before backpropagation and the gradients divided by it after, and a step whose gradients
//! overflowed is skipped and the scale halved (PyTorch's `GradScaler` policy and defaults). bf16 has f32's
//! exponent range and needs no scaling.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use crate::error::{CovfError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            other => Err(CovfError::spec(
                "dtype",
                format!("unknown dtype '{other}': expected f32, bf16 or f16"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The dtype convolutions, matrix products and activations run in.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }

    /// candle's CPU backend has no bf16 matrix product (its f16 one works, slowly): refuse bf16 there
    /// before anything is written rather than fail at the first convolution.
    pub fn check_device(self, dev: &candle_core::Device) -> Result<()> {
        if self == Precision::Bf16 && dev.is_cpu() {
            return Err(CovfError::Device(
                "--dtype bf16 needs a CUDA device (candle's CPU backend has no bf16 matrix product); on the CPU use \
                 f32 (fastest there) or f16"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Dynamic loss scale: ×`growth` after `interval` consecutive finite steps, ×`backoff` (and the step
/// skipped) on a non-finite gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    scale: f64,
    growth: f64,
    backoff: f64,
    interval: usize,
    good_steps: usize,
    skipped: usize,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new(65536.0, 2.0, 0.5, 2000)
    }
}

impl LossScaler {
    pub fn new(scale: f64, growth: f64, backoff: f64, interval: usize) -> Self {
        LossScaler {
            scale,
            growth,
            backoff,
            interval: interval.max(1),
            good_steps: 0,
            skipped: 0,
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Steps skipped so far because their gradients were not finite.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Records one step's outcome and adapts the scale; returns whether the step should be applied.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps == self.interval {
                self.scale *= self.growth;
                self.good_steps = 0;
            }
        } else {
            // Never below 1: a scale under 1 would only push small gradients further into underflow.
            self.scale = (self.scale * self.backoff).max(1.0);
            self.good_steps = 0;
            self.skipped += 1;
        }
        finite
    }
}

/// The gradients of one backward pass of a (possibly scaled) loss; `get` returns them unscaled.
pub struct Grads {
    store: GradStore,
    inv_scale: f64,
    /// Whether the optimizer applied this step (false when the gradients overflowed).
    pub applied: bool,
}

impl Grads {
    pub fn new(store: GradStore, scale: f64) -> Self {
        Grads {
            store,
            inv_scale: 1.0 / scale,
            applied: true,
        }
    }

    /// The gradient of the loss itself (the scale divided out) w.r.t. `t`, if `t` took part.
    pub fn get(&self, t: &Tensor) -> Result<Option<Tensor>> {
        match self.store.get(t) {
            None => Ok(None),
            Some(g) if self.inv_scale == 1.0 => Ok(Some(g.clone())),
            Some(g) => Ok(Some((g * self.inv_scale)?)),
        }
    }
}

/// Whether every gradient of `params` that exists is finite (one reduction and one read per tensor).
pub fn all_finite(grads: &Grads, params: &[&Tensor]) -> Result<bool> {
    for p in params {
        if let Some(g) = grads.store.get(p) {
            let s = g.to_dtype(DType::F32)?.abs()?.max_all()?.to_scalar::<f32>()?;
            if !s.is_finite() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn precision_names_round_trip_and_map_to_dtypes() {
        for p in [Precision::F32, Precision::Bf16, Precision::F16] {
            assert_eq!(Precision::parse(p.name()).unwrap(), p);
        }
        assert_eq!(Precision::parse("BF16").unwrap().dtype(), DType::BF16);
        assert_eq!(Precision::parse("half").unwrap().dtype(), DType::F16);
        assert!(Precision::parse("f64").is_err());
        assert!(Precision::F16.needs_loss_scaling());
        assert!(!Precision::Bf16.needs_loss_scaling());
        assert!(Precision::Bf16.check_device(&candle_core::Device::Cpu).is_err());
        assert!(Precision::F16.check_device(&candle_core::Device::Cpu).is_ok());
    }

    #[test]
    fn scale_grows_after_the_interval_and_backs_off_on_overflow() {
        let mut s = LossScaler::new(8.0, 2.0, 0.5, 3);
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale(), 8.0);
        assert!(s.update(true));
        assert_eq!(s.scale(), 16.0);
        // An overflow halves the scale, skips the step and restarts the count.
        assert!(s.update(true) && s.update(true));
        assert!(!s.update(false));
        assert_eq!((s.scale(), s.skipped()), (8.0, 1));
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale(), 8.0);
        assert!(s.update(true));
        assert_eq!(s.scale(), 16.0);
        let mut low = LossScaler::new(1.0, 2.0, 0.5, 10);
        low.update(false);
        assert_eq!(low.scale(), 1.0);
    }

    #[test]
    fn grads_of_a_scaled_loss_come_back_unscaled_and_overflow_is_seen() {
        let w = Var::new(&[1f32, -2.0], &Device::Cpu).unwrap();
        // loss = 3·w0 + w1², scaled by 1024: d/dw = (3, 2·w1) = (3, -4).
        let loss = ((w.as_tensor().narrow(0, 0, 1).unwrap() * 3.0)
            .unwrap()
            .sum_all()
            .unwrap()
            + w.as_tensor().narrow(0, 1, 1).unwrap().sqr().unwrap().sum_all().unwrap())
        .unwrap();
        let g = Grads::new((loss * 1024.0).unwrap().backward().unwrap(), 1024.0);
        let v: Vec<f32> = g.get(w.as_tensor()).unwrap().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![3.0, -4.0]);
        assert!(all_finite(&g, &[w.as_tensor()]).unwrap());
        let big = (w.as_tensor() * 1e30).unwrap().sqr().unwrap().sum_all().unwrap();
        let g = Grads::new(big.backward().unwrap(), 1.0);
        assert!(!all_finite(&g, &[w.as_tensor()]).unwrap());
    }
}
