//! SGD with momentum and (L2) weight decay, PyTorch's semantics: `d = g + wd·w; b = μ·b + d; w -= lr·b`.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::scaler::{all_finite, Grads, LossScaler};
use crate::error::{CovfError, Result};

#[derive(Debug, Clone)]
pub struct Sgd {
    params: Vec<(String, Var)>,
    pub momentum: f64,
    pub weight_decay: f64,
    bufs: BTreeMap<String, Tensor>,
    /// f16 training only: the loss is scaled before backpropagation (see scaler.rs).
    scaler: Option<LossScaler>,
    /// (base momentum, peak learning rate): momentum cycles inversely to the rate (see `momentum_at`).
    cycle: Option<(f64, f64)>,
}

impl Sgd {
    /// `params` are the trainable tensors (buffers such as BN running statistics excluded).
    pub fn new(params: Vec<(String, Var)>, momentum: f64, weight_decay: f64) -> Self {
        Sgd {
            params,
            momentum,
            weight_decay,
            bufs: BTreeMap::new(),
            scaler: None,
            cycle: None,
        }
    }

    /// Cycles the momentum with a triangular 0 → `lr_max` → 0 rate as PyTorch's `CyclicLR` does with
    /// `cycle_momentum=True`: at rate lr it is `momentum − (momentum − base)·lr/lr_max`, so `momentum` at
    /// the ends and `base` at the peak.
    pub fn with_momentum_cycle(mut self, base: f64, lr_max: f64) -> Self {
        self.cycle = Some((base, lr_max));
        self
    }

    /// The momentum a step at learning rate `lr` uses.
    pub fn momentum_at(&self, lr: f64) -> f64 {
        match self.cycle {
            Some((base, lr_max)) if lr_max > 0.0 => {
                let frac = (lr / lr_max).clamp(0.0, 1.0);
                self.momentum - (self.momentum - base) * frac
            }
            _ => self.momentum,
        }
    }

    /// Scales losses dynamically from now on (f16 training).
    pub fn with_loss_scaling(mut self, scaler: LossScaler) -> Self {
        self.scaler = Some(scaler);
        self
    }

    /// What the loss is multiplied by before backpropagation (1 without loss scaling).
    pub fn loss_scale(&self) -> f64 {
        self.scaler.as_ref().map_or(1.0, LossScaler::scale)
    }

    /// Steps skipped because their scaled gradients overflowed.
    pub fn skipped_steps(&self) -> usize {
        self.scaler.as_ref().map_or(0, LossScaler::skipped)
    }

    /// One update from the gradients of a loss scaled by `loss_scale()`. With loss scaling, a step whose
    /// gradients are not all finite is skipped (`grads.applied` becomes false) and the scale backs off.
    pub fn step_grads(&mut self, grads: &mut Grads, lr: f64) -> Result<()> {
        if let Some(scaler) = &mut self.scaler {
            let params: Vec<&Tensor> = self.params.iter().map(|(_, v)| v.as_tensor()).collect();
            let finite = all_finite(grads, &params)?;
            if !scaler.update(finite) {
                grads.applied = false;
                return Ok(());
            }
        }
        self.apply(|t| grads.get(t), lr)
    }

    /// One update at learning rate `lr`. A parameter with no gradient (unused this step) is left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.apply(|t| Ok(grads.get(t).cloned()), lr)
    }

    fn apply(&mut self, grad_of: impl Fn(&Tensor) -> Result<Option<Tensor>>, lr: f64) -> Result<()> {
        let momentum = self.momentum_at(lr);
        for (name, var) in &self.params {
            let Some(g) = grad_of(var.as_tensor())? else { continue };
            let w = var.as_tensor();
            let d = if self.weight_decay != 0.0 {
                (g + (w * self.weight_decay)?)?
            } else {
                g
            };
            let b = match self.bufs.get(name) {
                Some(b) if momentum != 0.0 => ((b * momentum)? + d)?,
                _ => d,
            };
            var.set(&(w - (&b * lr)?)?)?;
            if momentum != 0.0 {
                self.bufs.insert(name.clone(), b.detach());
            }
        }
        Ok(())
    }

    /// Momentum buffers by parameter name (saved with the run for an exact resume).
    pub fn state(&self) -> &BTreeMap<String, Tensor> {
        &self.bufs
    }

    pub fn load_state(&mut self, state: HashMap<String, Tensor>) -> Result<()> {
        let mut bufs = BTreeMap::new();
        for (name, t) in state {
            let Some((_, var)) = self.params.iter().find(|(n, _)| *n == name) else {
                return Err(CovfError::checkpoint(
                    "optimizer state",
                    format!("momentum for unknown parameter {name}"),
                ));
            };
            if var.dims() != t.dims() {
                return Err(CovfError::checkpoint(
                    "optimizer state",
                    format!(
                        "momentum for {name} has shape {:?}, parameter {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
            bufs.insert(name, t.to_device(var.device())?);
        }
        self.bufs = bufs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_hand_computed_pytorch_steps() {
        // w0 = 1, loss = 3w (g = 3), lr 0.1, momentum 0.9, wd 0.01.
        // step 1: d = 3 + 0.01 = 3.01, b = 3.01, w = 1 - 0.301 = 0.699
        // step 2: d = 3 + 0.00699 = 3.00699, b = 0.9·3.01 + 3.00699 = 5.71599, w = 0.699 - 0.571599 = 0.127401
        let w = Var::new(&[1f32], &Device::Cpu).unwrap();
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], 0.9, 0.01);
        for _ in 0..2 {
            let loss = (w.as_tensor() * 3.0).unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        }
        let v = w.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((v - 0.127401).abs() < 1e-6, "{v}");
        let b = opt.state()["w"].to_vec1::<f32>().unwrap()[0];
        assert!((b - 5.71599).abs() < 1e-5, "{b}");
    }

    #[test]
    fn plain_sgd_without_momentum() {
        let w = Var::new(&[2f32, -1.0], &Device::Cpu).unwrap();
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], 0.0, 0.0);
        // loss = sum(w^2): g = 2w, w' = w - 0.25·2w = 0.5w
        let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap(), 0.25).unwrap();
        assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, -0.5]);
        assert!(opt.state().is_empty());
    }

    #[test]
    fn cycled_momentum_follows_the_rate_as_pytorch_cyclic_lr() {
        // base 0.8, max 0.9, peak rate 0.2: at lr 0.1 (half way up) the momentum is 0.85.
        let w = Var::new(&[1f32], &Device::Cpu).unwrap();
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], 0.9, 0.0).with_momentum_cycle(0.8, 0.2);
        for (lr, want) in [(0.0, 0.9), (0.2, 0.8), (0.1, 0.85), (0.3, 0.8)] {
            assert!(
                (opt.momentum_at(lr) - want).abs() < 1e-12,
                "lr {lr}: {}",
                opt.momentum_at(lr)
            );
        }
        // loss = 3w (g = 3): step 1 at lr 0.1: b = 3, w = 1 − 0.3 = 0.7; step 2 at lr 0.2 (μ = 0.8):
        // b = 0.8·3 + 3 = 5.4, w = 0.7 − 1.08 = −0.38.
        for lr in [0.1, 0.2] {
            let loss = (w.as_tensor() * 3.0).unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), lr).unwrap();
        }
        let v = w.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((v + 0.38).abs() < 1e-6, "{v}");
    }
}
