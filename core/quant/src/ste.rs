//! Straight-through estimators for a uniform grid with levels
//! `code - offset`, `code` in `0..n_codes`, and step `s`.

use crate::format::Ste;

/// A uniform grid of levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Number of codes.
    pub n_codes: u32,
    /// level = code - offset.
    pub offset: f32,
}

impl Grid {
    /// Lowest level.
    pub fn lo(&self) -> f32 {
        -self.offset
    }

    /// Highest level.
    pub fn hi(&self) -> f32 {
        (self.n_codes - 1) as f32 - self.offset
    }

    /// Largest level magnitude (LSQ's Qp).
    pub fn reach(&self) -> f32 {
        self.lo().abs().max(self.hi().abs())
    }

    /// Nearest level to `v` (a weight divided by the step), clamped.
    #[inline]
    pub fn level(&self, v: f32) -> f32 {
        let max = (self.n_codes - 1) as f32;
        (v + self.offset + 0.5).floor().clamp(0.0, max) - self.offset
    }

    /// Fake-quantized value of `w` with step `s`.
    #[inline]
    pub fn fake_quant(&self, w: f32, s: f32) -> f32 {
        if s == 0.0 {
            return 0.0;
        }
        s * self.level(w / s)
    }

    /// True when `v` rounds inside the grid rather than being clamped.
    #[inline]
    fn inside(&self, v: f32) -> bool {
        v >= self.lo() - 0.5 && v <= self.hi() + 0.5
    }

    /// STE gradients for one weight: `(dL/dw, dL/ds)` given `g = dL/dq`.
    /// The step gradient is unscaled (LSQ's 1/sqrt(N*Qp) is the caller's).
    pub fn backward(&self, w: f32, s: f32, g: f32, ste: Ste) -> (f32, f32) {
        if s == 0.0 {
            return (g, 0.0);
        }
        let v = w / s;
        let l = self.level(v);
        let inside = self.inside(v);
        let lsq_scale = if inside { g * (l - v) } else { g * l };
        match ste {
            Ste::Standard => (g, 0.0),
            Ste::Clipped { clip } => {
                let pass = v.abs() <= clip * (self.reach() + 0.5);
                (if pass { g } else { 0.0 }, 0.0)
            }
            Ste::LearnedStepSize => (if inside { g } else { 0.0 }, lsq_scale),
            Ste::Ewgs { lambda } => {
                let gw = if inside {
                    g * (1.0 + lambda * g.signum() * (v - l))
                } else {
                    0.0
                };
                (gw, lsq_scale)
            }
        }
    }
}

impl Grid {
    /// Fake-quantizes groups of `group` weights: group `i` with step
    /// `scales[i] * unit` (`unit` converts a stored scale to a step, e.g.
    /// PiQ's `pi / k`; 1 when the scale is the step).
    pub fn forward_groups(
        &self,
        group: usize,
        unit: f32,
        w: &[f32],
        scales: &[f32],
        out: &mut [f32],
    ) {
        for ((x, o), &a) in w
            .chunks_exact(group)
            .zip(out.chunks_exact_mut(group))
            .zip(scales)
        {
            let s = a * unit;
            for (v, ov) in x.iter().zip(o.iter_mut()) {
                *ov = self.fake_quant(*v, s);
            }
        }
    }

    /// STE backward of [`Grid::forward_groups`]: weight gradients, and for
    /// each group the gradient with respect to its stored scale (through
    /// `unit`), scaled by LSQ's `1 / sqrt(group * reach)`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_groups(
        &self,
        group: usize,
        unit: f32,
        w: &[f32],
        scales: &[f32],
        grad_out: &[f32],
        ste: Ste,
        grad_w: &mut [f32],
        grad_scales: &mut [f32],
    ) {
        let lsq_scale = 1.0 / ((group as f32) * self.reach()).sqrt();
        for (i, &a) in scales.iter().enumerate() {
            let s = a * unit;
            let mut gs = 0f32;
            for j in i * group..(i + 1) * group {
                let (gw, gsj) = self.backward(w[j], s, grad_out[j], ste);
                grad_w[j] = gw;
                gs += gsj;
            }
            grad_scales[i] = gs * unit * lsq_scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G2: Grid = Grid {
        n_codes: 4,
        offset: 1.5,
    };

    #[test]
    fn levels_are_nearest_and_clamped() {
        assert_eq!(G2.level(0.2), 0.5);
        assert_eq!(G2.level(-0.2), -0.5);
        assert_eq!(G2.level(1.1), 1.5);
        assert_eq!(G2.level(9.0), 1.5);
        assert_eq!(G2.level(-9.0), -1.5);
        assert_eq!(G2.reach(), 1.5);
    }

    fn fd_step(w: f32, s: f32) -> f32 {
        let h = 1e-3 * s;
        (G2.fake_quant(w, s + h) - G2.fake_quant(w, s - h)) / (2.0 * h)
    }

    #[test]
    fn lsq_gradients_match_finite_differences() {
        let s = 0.37f32;
        // Clamped region: the true derivative is l wrt s and 0 wrt w; LSQ is exact.
        for w in [1.0f32, -2.0, 5.0] {
            let (gw, gs) = G2.backward(w, s, 1.0, Ste::LearnedStepSize);
            assert_eq!(gw, 0.0);
            assert!(
                (gs - fd_step(w, s)).abs() < 1e-3,
                "w={w}: {gs} vs {}",
                fd_step(w, s)
            );
        }
        // Inside: rounding is locally constant, so the true derivative is l;
        // LSQ adds the straight-through term -v by design.
        for w in [0.05f32, -0.3, 0.41] {
            let (gw, gs) = G2.backward(w, s, 1.0, Ste::LearnedStepSize);
            assert_eq!(gw, 1.0);
            assert!((gs + w / s - fd_step(w, s)).abs() < 1e-3, "w={w}");
        }
    }

    #[test]
    fn clipped_and_ewgs_behave() {
        let s = 1.0;
        assert_eq!(G2.backward(1.0, s, 2.0, Ste::Clipped { clip: 1.0 }).0, 2.0);
        assert_eq!(G2.backward(3.0, s, 2.0, Ste::Clipped { clip: 1.0 }).0, 0.0);
        assert_eq!(G2.backward(3.0, s, 2.0, Ste::Standard), (2.0, 0.0));
        // EWGS scales up the gradient where the residual agrees with its sign.
        let (gw, _) = G2.backward(0.9, s, 1.0, Ste::Ewgs { lambda: 0.5 });
        assert!((gw - (1.0 + 0.5 * (0.9 - 0.5))).abs() < 1e-6);
        let (gw, _) = G2.backward(0.9, s, -1.0, Ste::Ewgs { lambda: 0.5 });
        assert!((gw + (1.0 - 0.5 * 0.4)).abs() < 1e-6);
    }
}
