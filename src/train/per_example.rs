//! Per-example state kept across epochs (ATTA's perturbations, APART's ω), stored in the padded
//! image space and aligned with each batch through the same crop and flip as its images.
//!
//! An example's batch view at output pixel (y, x) is stored pixel (y + dy, x' + dx) of the padded
//! plane, x' = w − 1 − x when the example was mirrored (data/augment.rs). Writing back inverts the
//! same map, so gather → scatter round-trips exactly; stored pixels outside the crop keep their values.

use candle_core::{Device, Tensor};

use crate::data::{AugParams, Batch};
use crate::error::{CovfError, Result};

#[derive(Debug, Clone)]
pub struct PerExampleStore {
    data: Vec<f32>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    pad: usize,
}

impl PerExampleStore {
    /// `n` examples of shape (c, h, w), padded by `pad` on each side, every value drawn from `init`.
    pub fn new(n: usize, shape: (usize, usize, usize), pad: usize, init: impl FnMut() -> f32) -> Self {
        let (c, h, w) = shape;
        let len = n * c * (h + 2 * pad) * (w + 2 * pad);
        let mut s = PerExampleStore {
            data: Vec::new(),
            n,
            c,
            h,
            w,
            pad,
        };
        s.data = std::iter::repeat_with(init).take(len).collect();
        s
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Redraws every value (ATTA's periodic reset).
    pub fn reset(&mut self, init: impl FnMut() -> f32) {
        let len = self.data.len();
        self.data = std::iter::repeat_with(init).take(len).collect();
    }

    fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.pad, self.w + 2 * self.pad)
    }

    /// Stored index of batch pixel (ch, y, x) for example `pos` under `aug`.
    fn map(&self, pos: usize, aug: &AugParams) -> impl Fn(usize, usize, usize) -> usize {
        let (hp, wp) = self.padded();
        let (c, w) = (self.c, self.w);
        let (dy, dx, flip) = (aug.dy, aug.dx, aug.flip);
        move |ch, y, x| {
            let xs = if flip { w - 1 - x } else { x };
            ((pos * c + ch) * hp + y + dy) * wp + xs + dx
        }
    }

    fn check(&self, positions: &[usize], aug: &[AugParams]) -> Result<()> {
        let (hp, wp) = self.padded();
        for (&p, a) in positions.iter().zip(aug) {
            if p >= self.n || a.dy + self.h > hp || a.dx + self.w > wp {
                return Err(CovfError::spec(
                    "per-example state",
                    format!(
                        "example {p} with crop offset ({}, {}) does not fit a store of {} examples of {}×{}×{} padded by {}",
                        a.dy, a.dx, self.n, self.c, self.h, self.w, self.pad
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The batch's view of the stored state: (B, C, H, W).
    pub fn gather(&self, batch: &Batch, dev: &Device) -> Result<Tensor> {
        self.gather_at(&batch.positions, &batch.aug, dev)
    }

    /// The examples' state as their un-augmented images see it (the centre of the padded plane, not
    /// mirrored): (N, C, H, W), for the analyses' training images.
    pub fn view(&self, positions: &[usize], dev: &Device) -> Result<Tensor> {
        let centre = AugParams {
            dy: self.pad,
            dx: self.pad,
            flip: false,
        };
        self.gather_at(positions, &vec![centre; positions.len()], dev)
    }

    fn gather_at(&self, positions: &[usize], aug: &[AugParams], dev: &Device) -> Result<Tensor> {
        self.check(positions, aug)?;
        let (c, h, w) = (self.c, self.h, self.w);
        let mut out = vec![0f32; positions.len() * c * h * w];
        for (k, (&p, a)) in positions.iter().zip(aug).enumerate() {
            let at = self.map(p, a);
            let o = &mut out[k * c * h * w..(k + 1) * c * h * w];
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        o[(ch * h + y) * w + x] = self.data[at(ch, y, x)];
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, (positions.len(), c, h, w), dev)?)
    }

    /// Writes the batch's (B, C, H, W) values back to where `gather` read them.
    pub fn scatter(&mut self, batch: &Batch, t: &Tensor) -> Result<()> {
        self.check(&batch.positions, &batch.aug)?;
        let (c, h, w) = (self.c, self.h, self.w);
        if t.dims() != [batch.len(), c, h, w] {
            return Err(CovfError::spec(
                "per-example state",
                format!(
                    "update of shape {:?} for a batch of {} of {c}×{h}×{w}",
                    t.dims(),
                    batch.len()
                ),
            ));
        }
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        for (k, (&p, a)) in batch.positions.iter().zip(&batch.aug).enumerate() {
            let at = self.map(p, a);
            let src = &v[k * c * h * w..(k + 1) * c * h * w];
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        self.data[at(ch, y, x)] = src[(ch * h + y) * w + x];
                    }
                }
            }
        }
        Ok(())
    }

    /// The whole store as one (N, C, H + 2·pad, W + 2·pad) tensor, for the resume state.
    pub fn to_tensor(&self, dev: &Device) -> Result<Tensor> {
        let (hp, wp) = self.padded();
        Ok(Tensor::from_slice(&self.data, (self.n, self.c, hp, wp), dev)?)
    }

    /// Restores a store saved by `to_tensor`; the shape must match this run's.
    pub fn load(&mut self, t: &Tensor, what: &str) -> Result<()> {
        let (hp, wp) = self.padded();
        if t.dims() != [self.n, self.c, hp, wp] {
            return Err(CovfError::checkpoint(
                "resume state",
                format!(
                    "{what} has shape {:?}, this run needs {:?}",
                    t.dims(),
                    [self.n, self.c, hp, wp]
                ),
            ));
        }
        self.data = t.flatten_all()?.to_vec1()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(positions: Vec<usize>, aug: Vec<AugParams>, shape: (usize, usize, usize)) -> Batch {
        let dev = Device::Cpu;
        let n = positions.len();
        Batch {
            x: Tensor::zeros((n, shape.0, shape.1, shape.2), candle_core::DType::F32, &dev).unwrap(),
            y: Tensor::zeros(n, candle_core::DType::U32, &dev).unwrap(),
            positions,
            aug,
        }
    }

    #[test]
    fn view_reads_the_unaugmented_centre_by_hand() {
        // Two 1×2×2 examples padded by 1: example k's 4×4 plane holds 16k..16k+16 row-major; the centre
        // (rows 1-2, columns 1-2) of example 1 is 16 + {5, 6, 9, 10}.
        let mut i = 0.0;
        let s = PerExampleStore::new(2, (1, 2, 2), 1, || {
            i += 1.0;
            i - 1.0
        });
        let v: Vec<f32> = s
            .view(&[1, 0], &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v, vec![21.0, 22.0, 25.0, 26.0, 5.0, 6.0, 9.0, 10.0]);
        assert!(s.view(&[2], &Device::Cpu).is_err());
    }

    #[test]
    fn gather_follows_crop_and_flip_by_hand() {
        // One 1×2×2 example padded by 1: stored 4×4 plane holds 0..16 row-major.
        let mut i = 0.0;
        let s = PerExampleStore::new(1, (1, 2, 2), 1, || {
            i += 1.0;
            i - 1.0
        });
        let b = batch(
            vec![0],
            vec![AugParams {
                dy: 1,
                dx: 2,
                flip: false,
            }],
            (1, 2, 2),
        );
        let v: Vec<f32> = s
            .gather(&b, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Rows 1..3, columns 2..4 of [[0..4],[4..8],[8..12],[12..16]].
        assert_eq!(v, vec![6.0, 7.0, 10.0, 11.0]);
        let b = batch(
            vec![0],
            vec![AugParams {
                dy: 0,
                dx: 0,
                flip: true,
            }],
            (1, 2, 2),
        );
        let v: Vec<f32> = s
            .gather(&b, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v, vec![1.0, 0.0, 5.0, 4.0]);
    }

    #[test]
    fn store_crop_flip_invert_round_trips_exactly() {
        let shape = (3, 5, 4);
        let mut r = crate::rng::Rng::new(1);
        let mut s = PerExampleStore::new(6, shape, 2, || r.normal());
        let before = s.clone();
        let mut r2 = crate::rng::Rng::new(2);
        let aug = crate::data::Augment { pad: 2, flip: true };
        let b = batch(vec![4, 1, 5], (0..3).map(|_| aug.draw(&mut r2)).collect(), shape);
        let g = s.gather(&b, &Device::Cpu).unwrap();
        s.scatter(&b, &g).unwrap();
        assert_eq!(s.data, before.data);
        // A modified view lands in the crop window only, and reads back identically.
        let g2 = (&g + 1.0).unwrap();
        s.scatter(&b, &g2).unwrap();
        let back: Vec<f32> = s
            .gather(&b, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(back, g2.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let changed = s.data.iter().zip(&before.data).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 3 * 3 * 5 * 4);
        // Saving and loading keeps every value; a wrong shape is refused.
        let t = s.to_tensor(&Device::Cpu).unwrap();
        let mut s2 = PerExampleStore::new(6, shape, 2, || 0.0);
        s2.load(&t, "omega").unwrap();
        assert_eq!(s2.data, s.data);
        let mut s3 = PerExampleStore::new(5, shape, 2, || 0.0);
        assert!(s3.load(&t, "omega").is_err());
        let far = batch(vec![6], vec![AugParams::default()], shape);
        assert!(s.gather(&far, &Device::Cpu).is_err());
    }
}
