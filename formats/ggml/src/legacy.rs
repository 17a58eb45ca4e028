//! The 32-element legacy types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, plus the
//! non-linear IQ4_NL and MXFP4 that share their nibble layout.
//!
//! Arithmetic follows gguf-py 0.19 operation by operation (f32 throughout)
//! so results are bit-identical.

use crate::half_bits::{f32_to_f16, read_f16};

/// Elements per block.
pub const QK: usize = 32;

/// Low nibbles hold elements 0..16, high nibbles 16..32.
#[inline]
fn nibble(qs: &[u8], i: usize) -> u8 {
    if i < 16 {
        qs[i] & 0x0f
    } else {
        qs[i - 16] >> 4
    }
}

// The value of one element, in the decoders' f32 operation order (also
// what the block grid, `crate::grid`, reports for a code).

/// Q4_0 (`offset` 8) or Q5_0 (`offset` 16) element with code `q`.
#[inline(always)]
pub(crate) fn symmetric_value(d: f32, q: u8, offset: i8) -> f32 {
    d * (q as i8 - offset) as f32
}

/// Q4_1 or Q5_1 element with code `q`.
#[inline(always)]
pub(crate) fn affine_value(d: f32, m: f32, q: u8) -> f32 {
    d * q as f32 + m
}

/// Q8_0 element with code `q` (an i8 as stored).
#[inline(always)]
pub(crate) fn q8_0_value(d: f32, q: u8) -> f32 {
    q as i8 as f32 * d
}

/// IQ4_NL element with code `q` (`0..16`).
#[inline(always)]
pub(crate) fn iq4_nl_value(d: f32, q: u8) -> f32 {
    d * IQ4NL_LEVELS[q as usize & 0x0f] as f32
}

/// Decodes a Q4_0 block (18 bytes).
pub fn dequant_q4_0(b: &[u8], out: &mut [f32]) {
    let d = read_f16(b);
    for (i, o) in out.iter_mut().enumerate() {
        *o = symmetric_value(d, nibble(&b[2..], i), 8);
    }
}

/// Decodes a Q4_1 block (20 bytes).
pub fn dequant_q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (read_f16(b), read_f16(&b[2..]));
    for (i, o) in out.iter_mut().enumerate() {
        *o = affine_value(d, m, nibble(&b[4..], i));
    }
}

#[inline]
fn q5(qh: u32, qs: &[u8], i: usize) -> u8 {
    nibble(qs, i) | ((((qh >> i) & 1) as u8) << 4)
}

/// Decodes a Q5_0 block (22 bytes).
pub fn dequant_q5_0(b: &[u8], out: &mut [f32]) {
    let d = read_f16(b);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (i, o) in out.iter_mut().enumerate() {
        *o = symmetric_value(d, q5(qh, &b[6..], i), 16);
    }
}

/// Decodes a Q5_1 block (24 bytes).
pub fn dequant_q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (read_f16(b), read_f16(&b[2..]));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (i, o) in out.iter_mut().enumerate() {
        *o = affine_value(d, m, q5(qh, &b[8..], i));
    }
}

/// Decodes a Q8_0 block (34 bytes).
pub fn dequant_q8_0(b: &[u8], out: &mut [f32]) {
    let d = read_f16(b);
    for (o, &q) in out.iter_mut().zip(&b[2..]) {
        *o = q8_0_value(d, q);
    }
}

/// IQ4_NL's non-linear levels.
pub const IQ4NL_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Decodes an IQ4_NL block (18 bytes).
pub fn dequant_iq4_nl(b: &[u8], out: &mut [f32]) {
    let d = read_f16(b);
    for (i, o) in out.iter_mut().enumerate() {
        *o = iq4_nl_value(d, nibble(&b[2..], i));
    }
}

/// E2M1 values, doubled (the ggml convention shared by MXFP4 and NVFP4).
pub const E2M1_DOUBLED: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// E8M0 exponent to f32, halved (ggml's `ggml_e8m0_to_fp32_half`).
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e as u32) - 1) << 23
    };
    f32::from_bits(bits)
}

/// Decodes an MXFP4 block (17 bytes).
pub fn dequant_mxfp4(b: &[u8], out: &mut [f32]) {
    let d = e8m0_to_f32_half(b[0]);
    for (i, o) in out.iter_mut().enumerate() {
        *o = d * E2M1_DOUBLED[nibble(&b[1..], i) as usize] as f32;
    }
}

/// Q8_0's scale before f16 rounding (ggml's reference: absmax / 127);
/// shared by the encoder and the block grid.
pub(crate) fn q8_0_scale(x: &[f32]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    amax / 127.0
}

/// Encodes a Q8_0 block like ggml's reference quantizer.
pub fn quant_q8_0(x: &[f32], b: &mut [u8]) {
    let d = q8_0_scale(x);
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for (q, &v) in b[2..].iter_mut().zip(x) {
        *q = ((v * id).round() as i8) as u8;
    }
}

/// Encodes a Q4_0 block like ggml's reference quantizer.
pub fn quant_q4_0(x: &[f32], b: &mut [u8]) {
    // Signed value of largest magnitude (first one on ties).
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    let q = |v: f32| ((v * id + 8.5f32).trunc() as u8).min(15);
    for j in 0..QK / 2 {
        b[2 + j] = q(x[j]) | (q(x[j + QK / 2]) << 4);
    }
}

/// Decodes a Q1_0 block (18 bytes: d, 128 sign bits): bit set is +d, clear is -d.
pub fn dequant_q1_0(b: &[u8], out: &mut [f32]) {
    let d = read_f16(b);
    for (j, o) in out.iter_mut().enumerate() {
        *o = if (b[2 + j / 8] >> (j % 8)) & 1 == 1 {
            d
        } else {
            -d
        };
    }
}

/// Decodes a Q2_0 block (18 bytes: d, 64 two-bit codes): code c is (c - 1) * d.
pub fn dequant_q2_0(b: &[u8], out: &mut [f32]) {
    let d = read_f16(b);
    for (j, o) in out.iter_mut().enumerate() {
        let q = (b[2 + j / 4] >> ((j % 4) * 2)) & 3;
        *o = (q as i32 - 1) as f32 * d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q1_0_and_q2_0_follow_llama_cpp_reference() {
        let mut b = [0u8; 18];
        b[..2].copy_from_slice(&0x3800u16.to_le_bytes()); // 0.5
        b[2] = 0b1000_0001;
        let mut out = [0f32; 128];
        dequant_q1_0(&b, &mut out);
        assert_eq!(
            &out[..9],
            &[0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5, 0.5, -0.5]
        );
        b[2] = 0b11_10_01_00;
        let mut out = [0f32; 64];
        dequant_q2_0(&b, &mut out);
        assert_eq!(&out[..5], &[-0.5, 0.0, 0.5, 1.0, -0.5]);
    }
}
