//! The ternary differentiable quantizer: one learnable scale per block of
//! 64 on the grid {-1, 0, 1} (BitNet b1.58's fake quantization).

use crate::encode::{absmean, mse_optimal, ScaleRule};
use crate::layout::{pack, BLOCK, TYPE_SIZE};
use crate::Ternary;
use gguftool_quant::format::{DifferentiableQuantizer, Ste};
use gguftool_quant::ste::Grid;
use half::f16;

/// Levels -1, 0, 1.
pub const GRID: Grid = Grid {
    n_codes: 3,
    offset: 1.0,
};

impl DifferentiableQuantizer for Ternary {
    fn group_size(&self) -> usize {
        BLOCK
    }

    fn init_scales(&self, w: &[f32], importance: Option<&[f32]>, scales: &mut [f32]) {
        let ones = [1f32; BLOCK];
        for (i, (x, s)) in w.chunks_exact(BLOCK).zip(scales.iter_mut()).enumerate() {
            *s = match self.rule {
                ScaleRule::AbsMean => absmean(x),
                ScaleRule::Mse => {
                    let imp = importance.map_or(&ones[..], |m| &m[i * BLOCK..(i + 1) * BLOCK]);
                    mse_optimal(x, imp).0
                }
            };
        }
    }

    fn forward(&self, w: &[f32], scales: &[f32], out: &mut [f32]) {
        GRID.forward_groups(BLOCK, 1.0, w, scales, out)
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
        GRID.backward_groups(BLOCK, 1.0, w, scales, grad_out, ste, grad_w, grad_scales)
    }

    fn export(&self, w: &[f32], scales: &[f32], dst: &mut [u8]) {
        for ((x, out), &s) in w
            .chunks_exact(BLOCK)
            .zip(dst.chunks_exact_mut(TYPE_SIZE))
            .zip(scales)
        {
            let d = f16::from_f32(s.max(0.0));
            let df = d.to_f32();
            let t: [i8; BLOCK] = std::array::from_fn(|j| {
                if df > 0.0 && df.is_finite() {
                    GRID.level(x[j] / df) as i8
                } else {
                    0
                }
            });
            pack(if df.is_finite() { d } else { f16::ZERO }, &t, out);
        }
    }

    /// Each block's f16 scale `d` (the step of the levels -1, 0, 1).
    fn stored_scales(&self, src: &[u8], scales: &mut [f32]) -> bool {
        for (b, s) in src.chunks_exact(TYPE_SIZE).zip(scales) {
            *s = crate::layout::d(b);
        }
        true
    }
}
