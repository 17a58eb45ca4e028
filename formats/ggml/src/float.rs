//! Plain float types: F32, F16, BF16 (one element per "block") and F64.

use crate::half_bits::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};

/// Decodes one F32 element.
pub fn dequant_f32(b: &[u8], out: &mut [f32]) {
    out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

/// Encodes one F32 element.
pub fn quant_f32(x: &[f32], b: &mut [u8]) {
    b.copy_from_slice(&x[0].to_le_bytes());
}

/// Decodes one F16 element.
pub fn dequant_f16(b: &[u8], out: &mut [f32]) {
    out[0] = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
}

/// Encodes one F16 element.
pub fn quant_f16(x: &[f32], b: &mut [u8]) {
    b.copy_from_slice(&f32_to_f16(x[0]).to_le_bytes());
}

/// Decodes one BF16 element.
pub fn dequant_bf16(b: &[u8], out: &mut [f32]) {
    out[0] = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
}

/// Encodes one BF16 element.
pub fn quant_bf16(x: &[f32], b: &mut [u8]) {
    b.copy_from_slice(&f32_to_bf16(x[0]).to_le_bytes());
}

/// Decodes one F64 element (rounded to the nearest f32).
pub fn dequant_f64(b: &[u8], out: &mut [f32]) {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    out[0] = f64::from_le_bytes(a) as f32;
}
