//! Scalar reference kernels.

use crate::layout::{d, trit, BLOCK, TYPE_SIZE};
use gguftool_quant::activation::Q8Activations;

/// Decodes whole blocks.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, out) in src.chunks_exact(TYPE_SIZE).zip(dst.chunks_exact_mut(BLOCK)) {
        let db = d(b);
        for (j, o) in out.iter_mut().enumerate() {
            *o = db * trit(b, j) as f32;
        }
    }
}

/// Dot product with f32 activations.
pub fn dot(src: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in src.chunks_exact(TYPE_SIZE).zip(x.chunks_exact(BLOCK)) {
        let s: f32 = xb
            .iter()
            .enumerate()
            .map(|(j, v)| trit(b, j) as f32 * v)
            .sum();
        acc += d(b) * s;
    }
    acc
}

/// Dot product with 8-bit activations: exact integer sums per 32 elements.
pub fn dot_q8(src: &[u8], x: &Q8Activations) -> f32 {
    let mut acc = 0f32;
    for (i, b) in src.chunks_exact(TYPE_SIZE).enumerate() {
        for h in 0..2 {
            let isum: i32 = (32 * h..32 * h + 32)
                .map(|j| trit(b, j) as i32 * x.qs()[i * BLOCK + j] as i32)
                .sum();
            acc += d(b) * x.scales()[2 * i + h] * isum as f32;
        }
    }
    acc
}
