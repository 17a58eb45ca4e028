//! PiQ's two-phase encoder ([`BlockGrid`]): the block's alpha (stored as
//! f16) first, then each code on its own. Packing the codes `round` picks
//! gives exactly the blocks [`crate::encode::encode`] writes.

use crate::encode;
use crate::layout::{pack_codes, BLOCK};
use crate::Piq;
use gguftool_quant::format::BlockGrid;
use half::f16;

impl Piq {
    /// The step of a block whose stored alpha is `alpha`.
    fn step_of(&self, alpha: f32) -> f32 {
        alpha * self.spec.pi_over_k()
    }
}

impl BlockGrid for Piq {
    fn params_per_block(&self) -> usize {
        1
    }

    fn fit(&self, x: &[f32], imp: &[f32], params: &mut [f32]) {
        let step = encode::best_step_for(&self.spec, x, imp);
        params[0] = f16::from_f32(step / self.spec.pi_over_k()).to_f32();
    }

    fn round(&self, params: &[f32], _j: usize, v: f32) -> (u8, f32) {
        // As the encoder: a zero or non-finite step codes everything as 0.
        let step = self.step_of(params[0]);
        let inv = if step == 0.0 || !step.is_finite() {
            0.0
        } else {
            1.0 / step
        };
        let code = encode::nearest_code(&self.spec, v * inv);
        (code, step * self.spec.level(code))
    }

    fn pack(&self, params: &[f32], codes: &[u8], dst: &mut [u8]) {
        let alpha = f16::from_f32(params[0]);
        let codes: &[u8; BLOCK] = codes.try_into().expect("a block of codes");
        dst[..2].copy_from_slice(&alpha.to_bits().to_le_bytes());
        pack_codes(&self.spec, codes, &mut dst[2..]);
    }
}
