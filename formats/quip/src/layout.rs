//! Q2+QuIP block layouts (see docs/FORMATS.md), generic over the bits of
//! the sub-scales `SB` (6 for `q2_quip`, 4 for `q2_quip_lite`).
//!
//! A block holds 64 rotated weights in four sub-blocks of 16:
//! `d` (f16, >= 0), four `SB`-bit sub-scales packed little-endian into
//! `SB / 2` bytes (scale `k` in bits `SB*k..SB*k+SB-1`), then 16 bytes of
//! 2-bit codes (byte `i`, bits `2k..2k+1` hold element `16k + i`, so
//! sub-block `k` is one shift away). Element `j` decodes to
//! `d * sc[j / 16] * (code_j - 1.5)`: the symmetric levels -1.5, -0.5, 0.5,
//! 1.5 suit the near-Gaussian rotated weights. 21 bytes per 64 weights
//! (2.625 bpw) with 6-bit scales, 20 (2.5 bpw) with 4-bit ones.

/// Weights per block.
pub const BLOCK: usize = 64;
/// Weights per sub-block (one scale each).
pub const SUB: usize = 16;
/// Sub-blocks per block.
pub const SUBS: usize = BLOCK / SUB;

/// Bytes per block with `SB`-bit sub-scales.
pub const fn type_size<const SB: u32>() -> usize {
    codes_offset::<SB>() + 16
}

/// Offset of the codes.
pub const fn codes_offset<const SB: u32>() -> usize {
    2 + (SB as usize * SUBS) / 8
}

/// Largest sub-scale.
pub const fn max_scale<const SB: u32>() -> u8 {
    ((1u32 << SB) - 1) as u8
}
/// The level of code 0 (levels are `code - 1.5`).
pub const LEVEL_OFFSET: f32 = 1.5;

/// The block's super-scale `d`.
#[inline]
pub fn d(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// The packed sub-scale bits as one integer.
#[inline(always)]
pub fn scale_bits<const SB: u32>(b: &[u8]) -> u32 {
    if SB == 6 {
        u32::from_le_bytes([b[2], b[3], b[4], 0])
    } else {
        u32::from(u16::from_le_bytes([b[2], b[3]]))
    }
}

/// The four sub-scales.
#[inline]
pub fn sub_scales<const SB: u32>(b: &[u8]) -> [u8; SUBS] {
    let v = scale_bits::<SB>(b);
    let m = u32::from(max_scale::<SB>());
    [0, 1, 2, 3].map(|k| (v >> (SB * k) & m) as u8)
}

/// Code of element `j` (0..64).
#[inline]
pub fn code<const SB: u32>(b: &[u8], j: usize) -> u8 {
    b[codes_offset::<SB>() + j % SUB] >> (2 * (j / SUB)) & 3
}

/// Writes a block from its super-scale bits, sub-scales and codes.
pub fn pack<const SB: u32>(d_bits: u16, scales: &[u8; SUBS], codes: &[u8; BLOCK], out: &mut [u8]) {
    out[..2].copy_from_slice(&d_bits.to_le_bytes());
    let m = u32::from(max_scale::<SB>());
    let v = scales
        .iter()
        .enumerate()
        .fold(0u32, |v, (k, &s)| v | (u32::from(s) & m) << (SB * k as u32));
    let off = codes_offset::<SB>();
    out[2..off].copy_from_slice(&v.to_le_bytes()[..off - 2]);
    for i in 0..SUB {
        out[off + i] = (0..SUBS).fold(0u8, |acc, k| acc | (codes[k * SUB + i] & 3) << (2 * k));
    }
}
