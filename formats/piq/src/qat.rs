//! PiQ's differentiable quantizer: the learnable parameter of each block is
//! `alpha` (step = alpha * pi / k).

use crate::encode;
use crate::layout::{pack_codes, BLOCK};
use crate::Piq;
use gguftool_quant::format::{DifferentiableQuantizer, Ste};
use gguftool_quant::ste::Grid;
use half::f16;

impl Piq {
    fn grid(&self) -> Grid {
        Grid {
            n_codes: self.spec.n_codes(),
            offset: self.spec.offset,
        }
    }
}

impl DifferentiableQuantizer for Piq {
    fn group_size(&self) -> usize {
        BLOCK
    }

    fn init_scales(&self, w: &[f32], importance: Option<&[f32]>, scales: &mut [f32]) {
        let ones = [1f32; BLOCK];
        for (i, (x, a)) in w.chunks_exact(BLOCK).zip(scales.iter_mut()).enumerate() {
            let imp = importance.map_or(&ones[..], |m| &m[i * BLOCK..(i + 1) * BLOCK]);
            *a = encode::best_step_for(&self.spec, x, imp) / self.spec.pi_over_k();
        }
    }

    fn forward(&self, w: &[f32], scales: &[f32], out: &mut [f32]) {
        self.grid()
            .forward_groups(BLOCK, self.spec.pi_over_k(), w, scales, out)
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
        // Step = alpha * pi / k: the chain rule to alpha goes through pi / k.
        let pik = self.spec.pi_over_k();
        self.grid()
            .backward_groups(BLOCK, pik, w, scales, grad_out, ste, grad_w, grad_scales)
    }

    fn export(&self, w: &[f32], scales: &[f32], dst: &mut [u8]) {
        let ts = self.spec.type_size();
        let g = self.grid();
        for ((x, out), &a) in w
            .chunks_exact(BLOCK)
            .zip(dst.chunks_exact_mut(ts))
            .zip(scales)
        {
            let alpha = f16::from_f32(a);
            let s = alpha.to_f32() * self.spec.pi_over_k();
            let mut codes = [0u8; BLOCK];
            for (c, v) in codes.iter_mut().zip(x) {
                *c = if s == 0.0 {
                    0
                } else {
                    (g.level(v / s) + self.spec.offset) as u8
                };
            }
            out[..2].copy_from_slice(&alpha.to_bits().to_le_bytes());
            pack_codes(&self.spec, &codes, &mut out[2..]);
        }
    }

    /// Each block's f16 `alpha` (its first two bytes).
    fn stored_scales(&self, src: &[u8], scales: &mut [f32]) -> bool {
        for (b, a) in src.chunks_exact(self.spec.type_size()).zip(scales) {
            *a = f16::from_le_bytes([b[0], b[1]]).to_f32();
        }
        true
    }
}
