//! Scalar reference kernels.

use crate::layout::{code, d, sub_scales, type_size, BLOCK, LEVEL_OFFSET, SUB};
use gguftool_quant::activation::{Q8Activations, Q8_BLOCK};

/// Decodes whole blocks (rotated basis).
pub fn dequantize<const SB: u32>(src: &[u8], dst: &mut [f32]) {
    for (b, out) in src
        .chunks_exact(type_size::<SB>())
        .zip(dst.chunks_exact_mut(BLOCK))
    {
        let (db, sc) = (d(b), sub_scales::<SB>(b));
        for (j, o) in out.iter_mut().enumerate() {
            let s = db * sc[j / SUB] as f32;
            *o = s * (code::<SB>(b, j) as f32 - LEVEL_OFFSET);
        }
    }
}

/// Dot product with f32 activations (in the rotated basis).
pub fn dot<const SB: u32>(src: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in src
        .chunks_exact(type_size::<SB>())
        .zip(x.chunks_exact(BLOCK))
    {
        let (db, sc) = (d(b), sub_scales::<SB>(b));
        for (k, &sck) in sc.iter().enumerate() {
            let s: f32 = (k * SUB..(k + 1) * SUB)
                .map(|j| (code::<SB>(b, j) as f32 - LEVEL_OFFSET) * xb[j])
                .sum();
            acc += db * sck as f32 * s;
        }
    }
    acc
}

/// Dot product with 8-bit activations: per sub-block the exact integer
/// `sum((2 code - 3) q)`, times `d * sc * x_scale / 2`.
pub fn dot_q8<const SB: u32>(src: &[u8], x: &Q8Activations) -> f32 {
    let mut acc = 0f32;
    for (i, b) in src.chunks_exact(type_size::<SB>()).enumerate() {
        let (db, sc) = (d(b), sub_scales::<SB>(b));
        let q = &x.qs()[i * BLOCK..(i + 1) * BLOCK];
        for (k, &sck) in sc.iter().enumerate() {
            let isum: i32 = (k * SUB..(k + 1) * SUB)
                .map(|j| (2 * code::<SB>(b, j) as i32 - 3) * q[j] as i32)
                .sum();
            let xs = x.scales()[(i * BLOCK + k * SUB) / Q8_BLOCK];
            acc += db * sck as f32 * xs * 0.5 * isum as f32;
        }
    }
    acc
}
