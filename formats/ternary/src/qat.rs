//! The ternary differentiable quantizer: one learnable scale per block of
//! 64 on the grid {-1, 0, 1} (BitNet b1.58's fake quantization).

use crate::encode::{absmean, mse_optimal, ScaleRule};
use crate::layout::{pack, BLOCK};
use crate::Ternary;
use gguftool_core::format::{DifferentiableQuantizer, Ste};
use gguftool_core::qat::ste::Grid;
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
        for ((x, o), &s) in w
            .chunks_exact(BLOCK)
            .zip(out.chunks_exact_mut(BLOCK))
            .zip(scales)
        {
            for (v, ov) in x.iter().zip(o.iter_mut()) {
                *ov = GRID.fake_quant(*v, s);
            }
        }
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
        let lsq_scale = 1.0 / ((BLOCK as f32) * GRID.reach()).sqrt();
        for (i, &s) in scales.iter().enumerate() {
            let mut gs = 0f32;
            for j in i * BLOCK..(i + 1) * BLOCK {
                let (gw, gsj) = GRID.backward(w[j], s, grad_out[j], ste);
                grad_w[j] = gw;
                gs += gsj;
            }
            grad_scales[i] = gs * lsq_scale;
        }
    }

    fn export(&self, w: &[f32], scales: &[f32], dst: &mut [u8]) {
        for ((x, out), &s) in w
            .chunks_exact(BLOCK)
            .zip(dst.chunks_exact_mut(self.type_size_bytes()))
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
}
