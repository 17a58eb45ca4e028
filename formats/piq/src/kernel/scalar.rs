//! Portable reference kernels.

use crate::layout::{unpack_codes, PiqSpec, BLOCK};
use gguftool_quant::activation::Q8Activations;
use half::f16;

/// The block's decode step (alpha * pi / k) from its first two bytes.
#[inline(always)]
pub fn block_step(spec: &PiqSpec, b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32() * spec.pi_over_k()
}

/// Decodes whole blocks.
pub fn dequantize(spec: &PiqSpec, src: &[u8], dst: &mut [f32]) {
    for (b, out) in src
        .chunks_exact(spec.type_size())
        .zip(dst.chunks_exact_mut(BLOCK))
    {
        let step = block_step(spec, b);
        let codes = unpack_codes(spec, &b[2..]);
        for (o, &c) in out.iter_mut().zip(&codes) {
            *o = step * spec.level(c);
        }
    }
}

/// Dot product with f32 activations.
pub fn dot(spec: &PiqSpec, src: &[u8], x: &[f32]) -> f32 {
    let mut total = 0f32;
    for (b, xb) in src
        .chunks_exact(spec.type_size())
        .zip(x.chunks_exact(BLOCK))
    {
        let codes = unpack_codes(spec, &b[2..]);
        let s: f32 = codes.iter().zip(xb).map(|(&c, &v)| spec.level(c) * v).sum();
        total += block_step(spec, b) * s;
    }
    total
}

/// One block's contribution to the 8-bit dot product.
#[inline(always)]
pub fn dot_q8_block(spec: &PiqSpec, b: &[u8], q: &[i8], d: f32, sum: i32) -> f32 {
    let codes = unpack_codes(spec, &b[2..]);
    let cq: i32 = codes
        .iter()
        .zip(q)
        .map(|(&c, &v)| c as i32 * v as i32)
        .sum();
    block_step(spec, b) * d * (cq as f32 - spec.offset * sum as f32)
}

/// Dot product with 8-bit activations: integer sums per block, then
/// `step * d_x * (sum(code * q) - offset * sum(q))`.
pub fn dot_q8(spec: &PiqSpec, src: &[u8], x: &Q8Activations) -> f32 {
    src.chunks_exact(spec.type_size())
        .enumerate()
        .map(|(i, b)| {
            dot_q8_block(
                spec,
                b,
                &x.qs()[i * BLOCK..(i + 1) * BLOCK],
                x.scales()[i],
                x.sums()[i],
            )
        })
        .sum()
}
