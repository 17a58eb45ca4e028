//! Q2+QuIP's differentiable quantizer, in the rotated basis: its slices are
//! rows already rotated by the format's row transform (the QAT engine
//! rotates before and back-rotates after, `gguftool_qat::candle_op`), and
//! [`DifferentiableQuantizer::export`] writes the blocks the file stores.
//!
//! The learnable parameter is the step of each sub-block of 16 (the
//! decoded value is `step * (code - 1.5)`, `step = d * sc`); forward and
//! backward are the shared uniform-grid STEs ([`Grid`], 4 codes, offset
//! 1.5), as PiQ's. The initial steps are the encoder's (f16 super-scale
//! times 6- or 4-bit sub-scales). Training moves the steps freely; the
//! export stores them as the format does, `d = f16(max step / max_scale)`
//! and `sc = round(step / d)`, then re-chooses each code at the stored
//! step, so a trained step that is not of that form is rounded (the
//! relative rounding is at most `1 / (2 sc)`; exact for steps the file can
//! hold, such as the initial ones).

use crate::encode::block_scales;
use crate::layout::{max_scale, pack, type_size, BLOCK, SUB, SUBS};
use crate::Q2Quip;
use gguftool_quant::format::{DifferentiableQuantizer, Ste};
use gguftool_quant::ste::Grid;

/// The 2-bit grid: levels -1.5, -0.5, 0.5, 1.5.
const GRID: Grid = Grid {
    n_codes: 4,
    offset: 1.5,
};

impl<const SB: u32> DifferentiableQuantizer for Q2Quip<SB> {
    fn group_size(&self) -> usize {
        SUB
    }

    fn init_scales(&self, w: &[f32], importance: Option<&[f32]>, scales: &mut [f32]) {
        let ones = [1f32; BLOCK];
        for (i, (x, s)) in w
            .chunks_exact(BLOCK)
            .zip(scales.chunks_exact_mut(SUBS))
            .enumerate()
        {
            let imp = importance.map_or(&ones[..], |m| &m[i * BLOCK..(i + 1) * BLOCK]);
            s.copy_from_slice(&block_scales::<SB>(x, imp).steps);
        }
    }

    fn forward(&self, w: &[f32], scales: &[f32], out: &mut [f32]) {
        GRID.forward_groups(SUB, 1.0, w, scales, out)
    }

    fn backward(
        &self,
        w: &[f32],
        scales: &[f32],
        grad_out: &[f32],
        ste: Ste,
        grad_w: &mut [f32],
        grad_scales: &mut [f32],
    ) {
        GRID.backward_groups(SUB, 1.0, w, scales, grad_out, ste, grad_w, grad_scales)
    }

    fn export(&self, w: &[f32], scales: &[f32], dst: &mut [u8]) {
        let ts = type_size::<SB>();
        let ms = max_scale::<SB>() as f32;
        for ((x, out), s) in w
            .chunks_exact(BLOCK)
            .zip(dst.chunks_exact_mut(ts))
            .zip(scales.chunks_exact(SUBS))
        {
            // The grid is symmetric: a negative step acts as its magnitude.
            let s: [f32; SUBS] = std::array::from_fn(|k| {
                let v = s[k].abs();
                if v.is_finite() {
                    v
                } else {
                    0.0
                }
            });
            let smax = s.iter().fold(0f32, |m, &v| m.max(v));
            let d = half::f16::from_f32(smax / ms);
            let df = d.to_f32();
            let (d_bits, sc) = if df > 0.0 && df.is_finite() {
                (
                    d.to_bits(),
                    s.map(|v| (v / df).round().clamp(0.0, ms) as u8),
                )
            } else {
                (0, [0u8; SUBS])
            };
            let steps = sc.map(|c| df * c as f32);
            let codes: [u8; BLOCK] = std::array::from_fn(|j| {
                let step = steps[j / SUB];
                if step > 0.0 {
                    (GRID.level(x[j] / step) + GRID.offset) as u8
                } else {
                    0
                }
            });
            pack::<SB>(d_bits, &sc, &codes, out);
        }
    }

    /// Each sub-block's step `d * sc` (f16 super-scale times its sub-scale).
    fn stored_scales(&self, src: &[u8], scales: &mut [f32]) -> bool {
        for (b, s) in src
            .chunks_exact(type_size::<SB>())
            .zip(scales.chunks_exact_mut(SUBS))
        {
            let d = crate::layout::d(b);
            for (s, sc) in s.iter_mut().zip(crate::layout::sub_scales::<SB>(b)) {
                *s = d * f32::from(sc);
            }
        }
        true
    }
}
