//! Ternary block layout (see docs/FORMATS.md).
//!
//! A block holds 64 weights: the scale `d` (f16), then 16 bytes of 2-bit
//! codes (byte `i`, bits `2k..2k+1` hold element `16k + i`); code `c` in
//! {0, 1, 2} decodes to `d * (c - 1)`. 18 bytes per 64 weights = 2.25 bpw.
//! (llama.cpp's TQ2_0 packs the same codes in blocks of 256 with one scale,
//! 2.0625 bpw, which does not fit rows of 640 or 576.)

/// Weights per block.
pub const BLOCK: usize = 64;
/// Bytes per block.
pub const TYPE_SIZE: usize = 2 + 16;
/// Offset of the codes.
pub const CODES: usize = 2;

/// The block's scale.
#[inline]
pub fn d(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// The ternary digit (-1, 0, 1; code 3 reads as 2) of element `j`.
#[inline]
pub fn trit(b: &[u8], j: usize) -> i8 {
    (b[CODES + j % 16] >> (2 * (j / 16)) & 3) as i8 - 1
}

/// Writes a block from its scale and ternary digits.
pub fn pack(d: half::f16, trits: &[i8; BLOCK], out: &mut [u8]) {
    out[..2].copy_from_slice(&d.to_bits().to_le_bytes());
    for i in 0..16 {
        out[CODES + i] = (0..4).fold(0u8, |acc, k| {
            acc | (((trits[16 * k + i] + 1) as u8) & 3) << (2 * k)
        });
    }
}
