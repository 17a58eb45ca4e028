//! K-quants (256-element super-blocks): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and
//! IQ4_XS, decoded with gguf-py 0.19's arithmetic order.

use crate::half_bits::read_f16;
use crate::legacy::IQ4NL_LEVELS;

/// Elements per super-block.
pub const QK_K: usize = 256;

// The value of one element, in the decoders' f32 operation order (also
// what the block grid, `crate::grid`, reports for a code).

/// Q2_K element with code `q` in a group whose scale byte is `sc` (scale in
/// the low nibble, min in the high one).
#[inline(always)]
pub(crate) fn q2_k_value(d: f32, dmin: f32, sc: u8, q: u8) -> f32 {
    let dl = d * (sc & 0x0f) as f32;
    let ml = dmin * (sc >> 4) as f32;
    dl * q as f32 - ml
}

/// Q3_K element with signed level `q` (`-4..4`) in a group of sub-scale
/// `s` (`-32..32`).
#[inline(always)]
pub(crate) fn q3_k_value(d: f32, s: i8, q: i8) -> f32 {
    (d * s as f32) * q as f32
}

/// Q4_K or Q5_K element with code `q` in a group with 6-bit scale `sc` and
/// min `mn`.
#[inline(always)]
pub(crate) fn k4_value(d: f32, dmin: f32, sc: u8, mn: u8, q: u8) -> f32 {
    (d * sc as f32) * q as f32 - dmin * mn as f32
}

/// Q6_K element with signed level `q` (`-32..32`) in a group of scale `s`.
#[inline(always)]
pub(crate) fn q6_k_value(d: f32, s: i8, q: i8) -> f32 {
    (d * s as f32) * q as f32
}

/// Decodes a Q2_K block (84 bytes: scales[16], qs[64], d, dmin).
pub fn dequant_q2_k(b: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (read_f16(&b[80..]), read_f16(&b[82..]));
    for (i, o) in out.iter_mut().enumerate() {
        let (half, shift, j) = (i / 128, (i % 128) / 32, i % 32);
        let q = (qs[half * 32 + j] >> (2 * shift)) & 3;
        *o = q2_k_value(d, dmin, scales[i / 16], q);
    }
}

/// Decodes a Q3_K block (110 bytes: hmask[32], qs[64], scales[12], d).
pub fn dequant_q3_k(b: &[u8], out: &mut [f32]) {
    let (hmask, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
    let d = read_f16(&b[108..]);
    let mut scales = [0i8; 16];
    for (i, s) in scales.iter_mut().enumerate() {
        let low = if i < 8 { sc[i] & 0x0f } else { sc[i - 8] >> 4 };
        let high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = (low | (high << 4)) as i8 - 32;
    }
    for (i, o) in out.iter_mut().enumerate() {
        let (half, shift, j) = (i / 128, (i % 128) / 32, i % 32);
        let low = ((qs[half * 32 + j] >> (2 * shift)) & 3) as i8;
        let hbit = ((hmask[j] >> (i / 32)) & 1) ^ 1;
        let q = low - ((hbit << 2) as i8);
        *o = q3_k_value(d, scales[i / 16], q);
    }
}

/// Unpacks the 6-bit scales and mins shared by Q4_K and Q5_K.
pub(crate) fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3f;
        mn[j] = s[4 + j] & 0x3f;
        sc[4 + j] = (s[8 + j] & 0x0f) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Decodes a Q4_K block (144 bytes: d, dmin, scales[12], qs[128]).
pub fn dequant_q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (read_f16(b), read_f16(&b[2..]));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let qs = &b[16..144];
    for (i, o) in out.iter_mut().enumerate() {
        let (chunk, shift, j) = (i / 64, (i % 64) / 32, i % 32);
        let q = (qs[chunk * 32 + j] >> (4 * shift)) & 0x0f;
        let sub = i / 32;
        *o = k4_value(d, dmin, sc[sub], mn[sub], q);
    }
}

/// Decodes a Q5_K block (176 bytes: d, dmin, scales[12], qh[32], qs[128]).
pub fn dequant_q5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (read_f16(b), read_f16(&b[2..]));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (i, o) in out.iter_mut().enumerate() {
        let (chunk, shift, j) = (i / 64, (i % 64) / 32, i % 32);
        let low = (qs[chunk * 32 + j] >> (4 * shift)) & 0x0f;
        let high = (qh[j] >> (i / 32)) & 1;
        let sub = i / 32;
        *o = k4_value(d, dmin, sc[sub], mn[sub], low | (high << 4));
    }
}

/// Decodes a Q6_K block (210 bytes: ql[128], qh[64], scales[16], d).
pub fn dequant_q6_k(b: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = read_f16(&b[208..]);
    for (i, o) in out.iter_mut().enumerate() {
        let (half, r) = (i / 128, i % 128);
        let low = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
        let high = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
        let q = (low | (high << 4)) as i8 - 32;
        *o = q6_k_value(d, scales[i / 16] as i8, q);
    }
}

/// Decodes an IQ4_XS block (136 bytes: d, scales_h, scales_l[4], qs[128]).
pub fn dequant_iq4_xs(b: &[u8], out: &mut [f32]) {
    let d = read_f16(b);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for (ib, chunk) in out.chunks_exact_mut(32).enumerate() {
        let low = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
        let high = ((scales_h >> (2 * ib)) & 3) as u8;
        let dl = d * ((low | (high << 4)) as i8 - 32) as f32;
        for (k, o) in chunk.iter_mut().enumerate() {
            let q = (qs[ib * 16 + k % 16] >> (4 * (k / 16))) & 0x0f;
            *o = dl * IQ4NL_LEVELS[q as usize] as f32;
        }
    }
}
