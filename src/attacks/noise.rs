//! Random perturbations, the baselines of the tables and of transfer strength: Gaussian noise
//! x + N(0, σ²) (σ = 0.1 in the paper, not bounded by ε), and L∞ random noise of radius ε, either random
//! signs (±ε per pixel, a corner of the ball) or uniform in [−ε, ε]. All are clipped to the [0, 1] box.

use candle_core::Tensor;

use super::{project, Attack, AttackCtx, Perturbation};
use crate::error::Result;
use crate::models::Classifier;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Noise {
    /// N(0, σ²) per pixel.
    Gaussian { sigma: f32 },
    /// ±ε per pixel with equal probability.
    Sign { eps: f32 },
    /// U(−ε, ε) per pixel.
    Uniform { eps: f32 },
}

impl Attack for Noise {
    fn name(&self) -> String {
        match self {
            Noise::Gaussian { .. } => "gaussian".into(),
            Noise::Sign { .. } => "random-sign".into(),
            Noise::Uniform { .. } => "random-uniform".into(),
        }
    }

    fn perturb(&self, _model: &dyn Classifier, x: &Tensor, _y: &Tensor, ctx: &mut AttackCtx) -> Result<Perturbation> {
        let (dev, dims) = (x.device(), x.dims());
        let delta = match *self {
            Noise::Gaussian { sigma } => {
                let n = ctx.rng.normal_tensor(dims, sigma, dev)?;
                ((x + n)?.clamp(0f32, 1f32)? - x)?
            }
            Noise::Sign { eps } => {
                let u = ctx.rng.uniform_tensor(dims, -1.0, 1.0, dev)?;
                project(
                    &(u.ge(0f32)?.to_dtype(x.dtype())? * f64::from(2.0 * eps))?.affine(1.0, -f64::from(eps))?,
                    x,
                    eps,
                )?
            }
            Noise::Uniform { eps } => {
                let u = ctx.rng.uniform_tensor(dims, -eps, eps, dev)?;
                project(&u, x, eps)?
            }
        };
        Ok(Perturbation {
            delta,
            clean_logits: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::linear::TwoClassLinear;
    use crate::models::Mode;
    use crate::rng::Rng;
    use candle_core::Device;

    #[test]
    fn noise_stays_in_the_box_and_has_its_law() {
        let dev = Device::Cpu;
        let model = TwoClassLinear {
            w: Tensor::zeros(4096, candle_core::DType::F32, &dev).unwrap(),
            b: 0.0,
        };
        let x = Tensor::full(0.5f32, (1, 1, 64, 64), &dev).unwrap();
        let y = Tensor::new(&[0u32], &dev).unwrap();
        let mut rng = Rng::new(9);
        let mut run = |n: Noise| -> Vec<f32> {
            let p = n
                .perturb(
                    &model,
                    &x,
                    &y,
                    &mut AttackCtx {
                        mode: Mode::EVAL,
                        rng: &mut rng,
                    },
                )
                .unwrap();
            p.delta.flatten_all().unwrap().to_vec1().unwrap()
        };
        let s = run(Noise::Sign { eps: 0.1 });
        assert!(s.iter().all(|v| (v.abs() - 0.1).abs() < 1e-6));
        let pos = s.iter().filter(|v| **v > 0.0).count() as f32 / s.len() as f32;
        assert!((pos - 0.5).abs() < 0.05, "{pos}");
        let u = run(Noise::Uniform { eps: 0.1 });
        assert!(u.iter().all(|v| v.abs() <= 0.1));
        let mean_abs = u.iter().map(|v| v.abs()).sum::<f32>() / u.len() as f32;
        assert!((mean_abs - 0.05).abs() < 0.005, "{mean_abs}");
        let g = run(Noise::Gaussian { sigma: 0.1 });
        let var = g.iter().map(|v| v * v).sum::<f32>() / g.len() as f32;
        // Clipping at 0.5 ± 0.5 is 5σ away: the variance is σ² up to sampling error.
        assert!((var - 0.01).abs() < 0.001, "{var}");
    }
}
