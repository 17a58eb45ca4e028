//! Q2+QuIP block layout (see docs/FORMATS.md).
//!
//! A block holds 64 rotated weights in four sub-blocks of 16:
//! `d` (f16, >= 0), four 6-bit sub-scales packed little-endian into 3 bytes
//! (scale `k` in bits `6k..6k+5`), then 16 bytes of 2-bit codes (byte `i`,
//! bits `2k..2k+1` hold element `16k + i`, so sub-block `k` is one shift
//! away). Element `j` decodes to `d * sc[j / 16] * (code_j - 1.5)`:
//! the symmetric levels -1.5, -0.5, 0.5, 1.5 suit the near-Gaussian
//! rotated weights. 21 bytes per 64 weights = 2.625 bits per weight.

/// Weights per block.
pub const BLOCK: usize = 64;
/// Weights per sub-block (one 6-bit scale each).
pub const SUB: usize = 16;
/// Sub-blocks per block.
pub const SUBS: usize = BLOCK / SUB;
/// Bytes per block.
pub const TYPE_SIZE: usize = 2 + 3 + 16;
/// Offset of the codes.
pub const CODES: usize = 5;
/// Largest sub-scale.
pub const MAX_SCALE: u8 = 63;
/// The level of code 0 (levels are `code - 1.5`).
pub const LEVEL_OFFSET: f32 = 1.5;

/// The block's super-scale `d`.
#[inline]
pub fn d(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// The four 6-bit sub-scales.
#[inline]
pub fn sub_scales(b: &[u8]) -> [u8; SUBS] {
    let v = u32::from_le_bytes([b[2], b[3], b[4], 0]);
    [0, 1, 2, 3].map(|k| (v >> (6 * k) & 63) as u8)
}

/// Code of element `j` (0..64).
#[inline]
pub fn code(b: &[u8], j: usize) -> u8 {
    b[CODES + j % SUB] >> (2 * (j / SUB)) & 3
}

/// Writes a block from its super-scale bits, sub-scales and codes.
pub fn pack(d_bits: u16, scales: &[u8; SUBS], codes: &[u8; BLOCK], out: &mut [u8]) {
    out[..2].copy_from_slice(&d_bits.to_le_bytes());
    let v = scales
        .iter()
        .enumerate()
        .fold(0u32, |v, (k, &s)| v | u32::from(s & 63) << (6 * k));
    out[2..5].copy_from_slice(&v.to_le_bytes()[..3]);
    for i in 0..SUB {
        out[CODES + i] = (0..SUBS).fold(0u8, |acc, k| acc | (codes[k * SUB + i] & 3) << (2 * k));
    }
}
