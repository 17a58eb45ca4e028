//! llama.cpp's ternary types TQ1_0 (base-3 packing, 1.6875 bpw) and TQ2_0
//! (2-bit packing, 2.0625 bpw), encoded and decoded like gguf-py 0.19.

use crate::half_bits::{f32_to_f16, read_f16};

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// The scale of a TQ1_0/TQ2_0 block before f16 rounding (absmax, as
/// gguf-py does); shared by the encoders and the block grid.
pub(crate) fn ternary_scale(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// The value of a ternary element `t` (`-1..=1`), in the decoders' order.
#[inline(always)]
pub(crate) fn ternary_value(d: f32, t: i8) -> f32 {
    d * t as f32
}

/// Ternary digits {0,1,2} (value + 1) with absmax scale, as gguf-py does.
fn ternarize(x: &[f32]) -> (f32, [u8; 256]) {
    let d = ternary_scale(x);
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut q = [0u8; 256];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = ((v * id).round() as i8 + 1) as u8;
    }
    (d, q)
}

/// Packs groups of `digits` trits spaced `stride` apart into bytes, most
/// significant first, scaled to a byte as ggml does.
fn pack_trits(q: &[u8], stride: usize, digits: usize, out: &mut [u8]) {
    for (j, o) in out.iter_mut().enumerate() {
        let mut v: u16 = 0;
        for k in 0..digits {
            v += q[k * stride + j] as u16 * POW3[4 - k] as u16;
        }
        *o = (v * 256).div_ceil(243) as u8;
    }
}

/// Writes a TQ1_0 block from its digits (`0..3`, value + 1) and the f16
/// bits of its scale.
pub(crate) fn pack_tq1_0(q: &[u8], d: u16, b: &mut [u8]) {
    pack_trits(&q[..160], 32, 5, &mut b[..32]);
    pack_trits(&q[160..240], 16, 5, &mut b[32..48]);
    // The last 16 trits: 4 per byte, weights 81, 27, 9, 3.
    pack_trits(&q[240..], 4, 4, &mut b[48..52]);
    b[52..54].copy_from_slice(&d.to_le_bytes());
}

/// Encodes a TQ1_0 block (54 bytes: qs[48], qh[4], d).
pub fn quant_tq1_0(x: &[f32], b: &mut [u8]) {
    let (d, q) = ternarize(x);
    pack_tq1_0(&q, f32_to_f16(d), b);
}

#[inline]
fn trit(byte: u8, k: usize) -> i8 {
    ((byte.wrapping_mul(POW3[k]) as u16 * 3) >> 8) as i8 - 1
}

/// Decodes a TQ1_0 block.
pub fn dequant_tq1_0(b: &[u8], out: &mut [f32]) {
    let d = read_f16(&b[52..]);
    for (i, o) in out.iter_mut().enumerate() {
        let t = if i < 160 {
            trit(b[i % 32], i / 32)
        } else if i < 240 {
            trit(b[32 + (i - 160) % 16], (i - 160) / 16)
        } else {
            trit(b[48 + (i - 240) % 4], (i - 240) / 4)
        };
        *o = ternary_value(d, t);
    }
}

/// Writes a TQ2_0 block from its digits (`0..3`, value + 1) and the f16
/// bits of its scale.
pub(crate) fn pack_tq2_0(q: &[u8], d: u16, b: &mut [u8]) {
    for half in 0..2 {
        for j in 0..32 {
            let base = half * 128 + j;
            b[half * 32 + j] =
                q[base] | (q[base + 32] << 2) | (q[base + 64] << 4) | (q[base + 96] << 6);
        }
    }
    b[64..66].copy_from_slice(&d.to_le_bytes());
}

/// Encodes a TQ2_0 block (66 bytes: qs[64], d).
pub fn quant_tq2_0(x: &[f32], b: &mut [u8]) {
    let (d, q) = ternarize(x);
    pack_tq2_0(&q, f32_to_f16(d), b);
}

/// Decodes a TQ2_0 block.
pub fn dequant_tq2_0(b: &[u8], out: &mut [f32]) {
    let d = read_f16(&b[64..]);
    for (i, o) in out.iter_mut().enumerate() {
        let (half, shift, j) = (i / 128, (i % 128) / 32, i % 32);
        let q = ((b[half * 32 + j] >> (2 * shift)) & 3) as i8 - 1;
        *o = ternary_value(d, q);
    }
}
