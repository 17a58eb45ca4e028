//! Ternary's two-phase encoder ([`BlockGrid`]): the f16 scale by the
//! variant's rule, then each digit as the nearest of `{-d, 0, d}`.

use crate::encode::{absmean, mse_optimal, ScaleRule};
use crate::layout::{pack, BLOCK};
use crate::Ternary;
use gguftool_quant::format::BlockGrid;
use half::f16;

impl BlockGrid for Ternary {
    fn params_per_block(&self) -> usize {
        1
    }

    fn fit(&self, x: &[f32], imp: &[f32], params: &mut [f32]) {
        let d = match self.rule() {
            ScaleRule::AbsMean => absmean(x),
            ScaleRule::Mse => mse_optimal(x, imp).0,
        };
        let d = f16::from_f32(d).to_f32();
        params[0] = if d.is_finite() { d } else { 0.0 };
    }

    fn round(&self, params: &[f32], _j: usize, v: f32) -> (u8, f32) {
        let d = params[0];
        // Nearest of -d, 0, d: the digit whose level is within d / 2.
        let t: i8 = if d > 0.0 && v.abs() > 0.5 * d {
            if v < 0.0 {
                -1
            } else {
                1
            }
        } else {
            0
        };
        ((t + 1) as u8, d * t as f32)
    }

    fn pack(&self, params: &[f32], codes: &[u8], dst: &mut [u8]) {
        let trits: [i8; BLOCK] = std::array::from_fn(|j| codes[j] as i8 - 1);
        pack(f16::from_f32(params[0]), &trits, dst);
    }
}
