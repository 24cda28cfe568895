//! Training-time augmentation (zero-padded random crop, horizontal flip) with the per-example
//! parameters kept, so stored per-example state (ATTA, APART's ω) can be aligned through it.

use crate::rng::Rng;

/// Augmentation settings; `Augment::none()` leaves images untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Zero padding on each side before a random crop back to the original size.
    pub pad: usize,
    pub flip: bool,
}

/// What was done to one example: crop offset in the padded image and whether it was mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AugParams {
    pub dy: usize,
    pub dx: usize,
    pub flip: bool,
}

impl Augment {
    pub fn none() -> Self {
        Augment { pad: 0, flip: false }
    }

    pub fn is_none(&self) -> bool {
        self.pad == 0 && !self.flip
    }

    pub fn draw(&self, rng: &mut Rng) -> AugParams {
        let dy = if self.pad > 0 { rng.below(2 * self.pad + 1) } else { 0 };
        let dx = if self.pad > 0 { rng.below(2 * self.pad + 1) } else { 0 };
        let flip = self.flip && rng.below(2) == 1;
        AugParams { dy, dx, flip }
    }
}

/// Writes one CHW u8 image, augmented by `p`, into `out` as f32 in [0, 1].
/// Output pixel (y, x) reads padded pixel (y + dy, x') with x' = x + dx, or mirrored when `flip`.
pub fn apply(src: &[u8], c: usize, h: usize, w: usize, pad: usize, p: AugParams, out: &mut [f32]) {
    for ch in 0..c {
        for y in 0..h {
            let sy = (y + p.dy) as isize - pad as isize;
            for x in 0..w {
                let xs = if p.flip { w - 1 - x } else { x };
                let sx = (xs + p.dx) as isize - pad as isize;
                let v = if sy >= 0 && (sy as usize) < h && sx >= 0 && (sx as usize) < w {
                    f32::from(src[ch * h * w + sy as usize * w + sx as usize]) / 255.0
                } else {
                    0.0
                };
                out[ch * h * w + y * w + x] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_and_flip_by_hand() {
        // 1 channel, 2x2 image [[a b],[c d]] with pad 1.
        let src = [10u8, 20, 30, 40];
        let mut out = [0f32; 4];
        apply(
            &src,
            1,
            2,
            2,
            1,
            AugParams {
                dy: 1,
                dx: 1,
                flip: false,
            },
            &mut out,
        );
        assert_eq!(out, [10.0 / 255.0, 20.0 / 255.0, 30.0 / 255.0, 40.0 / 255.0]);
        apply(
            &src,
            1,
            2,
            2,
            1,
            AugParams {
                dy: 0,
                dx: 0,
                flip: false,
            },
            &mut out,
        );
        assert_eq!(out, [0.0, 0.0, 0.0, 10.0 / 255.0]);
        apply(
            &src,
            1,
            2,
            2,
            0,
            AugParams {
                dy: 0,
                dx: 0,
                flip: true,
            },
            &mut out,
        );
        assert_eq!(out, [20.0 / 255.0, 10.0 / 255.0, 40.0 / 255.0, 30.0 / 255.0]);
    }

    #[test]
    fn draws_stay_in_range() {
        let a = Augment { pad: 4, flip: true };
        let mut r = Rng::new(0);
        let ps: Vec<_> = (0..2000).map(|_| a.draw(&mut r)).collect();
        assert!(ps.iter().all(|p| p.dx <= 8 && p.dy <= 8));
        assert!(ps.iter().any(|p| p.dx == 8) && ps.iter().any(|p| p.dx == 0));
        let flips = ps.iter().filter(|p| p.flip).count();
        assert!((800..1200).contains(&flips));
    }
}
