//! Portable reference dot kernels. Integer types sum code products exactly
//! in i32 per block and scale once per block in f32, as ggml's generic
//! `ggml_vec_dot_*` do; the AVX2 kernels compute the same integers.

// Element indices are the layout arithmetic (which byte, which shift), as in
// the decoders; iterators would hide it.
#![allow(clippy::needless_range_loop)]

use crate::half_bits::{bf16_to_f32, f16_to_f32, read_f16};
use crate::legacy::IQ4NL_LEVELS;
use gguftool_quant::activation::{Q8Activations, Q8KActivations, Q8K_BLOCK, Q8_BLOCK};

/// Eight independent f32 partial sums (lets the compiler vectorize without
/// reassociating one long chain).
#[inline(always)]
fn dot_lanes(n: usize, w: impl Fn(usize) -> f32, x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += w(i + l) * x[i + l];
        }
    }
    let mut tail = 0f32;
    for i in full..n {
        tail += w(i) * x[i];
    }
    acc.iter().sum::<f32>() + tail
}

/// F32 weights (little-endian bytes) against f32 activations.
pub fn dot_f32(src: &[u8], x: &[f32]) -> f32 {
    let w =
        |i: usize| f32::from_le_bytes([src[4 * i], src[4 * i + 1], src[4 * i + 2], src[4 * i + 3]]);
    dot_lanes(x.len(), w, x)
}

/// F16 weights against f32 activations.
pub fn dot_f16(src: &[u8], x: &[f32]) -> f32 {
    let w = |i: usize| f16_to_f32(u16::from_le_bytes([src[2 * i], src[2 * i + 1]]));
    dot_lanes(x.len(), w, x)
}

/// BF16 weights against f32 activations.
pub fn dot_bf16(src: &[u8], x: &[f32]) -> f32 {
    let w = |i: usize| bf16_to_f32(u16::from_le_bytes([src[2 * i], src[2 * i + 1]]));
    dot_lanes(x.len(), w, x)
}

/// Integer dot of a 32-element nibble block (`qs`: 16 bytes, low nibbles
/// elements 0..16, high nibbles 16..32) with 32 codes; `code(nibble, i)`
/// maps element `i`'s nibble to its integer weight.
#[inline(always)]
fn nibble_dot(qs: &[u8], q: &[i8], code: impl Fn(i32, usize) -> i32) -> i32 {
    let (lo, hi) = (&q[..16], &q[16..32]);
    let mut s = 0i32;
    for j in 0..16 {
        s += code((qs[j] & 0x0f) as i32, j) * lo[j] as i32;
        s += code((qs[j] >> 4) as i32, j + 16) * hi[j] as i32;
    }
    s
}

/// Sums over blocks of 32: `f` gives (weight scale, integer code dot, min)
/// for one block; the result is `sum d_w d_x isum + m_w d_x sum(q_x)`.
#[inline(always)]
fn blocks32(
    src: &[u8],
    type_size: usize,
    x: &Q8Activations,
    f: impl Fn(&[u8], &[i8]) -> (f32, i32, f32),
) -> f32 {
    let mut acc = 0f32;
    for (((b, q), &dx), &sx) in src
        .chunks_exact(type_size)
        .zip(x.qs().chunks_exact(Q8_BLOCK))
        .zip(x.scales())
        .zip(x.sums())
    {
        let (dw, isum, mw) = f(b, q);
        acc += (dw * dx) * isum as f32;
        if mw != 0.0 {
            acc += (mw * dx) * sx as f32;
        }
    }
    acc
}

/// Q4_0 (w = d (q - 8)) against 8-bit activations.
pub fn q4_0(src: &[u8], x: &Q8Activations) -> f32 {
    blocks32(src, 18, x, |b, q| {
        let s = nibble_dot(&b[2..18], q, |c, _| c - 8);
        (read_f16(b), s, 0.0)
    })
}

/// Q4_1 (w = d q + m) against 8-bit activations.
pub fn q4_1(src: &[u8], x: &Q8Activations) -> f32 {
    blocks32(src, 20, x, |b, q| {
        let s = nibble_dot(&b[4..20], q, |c, _| c);
        (read_f16(b), s, read_f16(&b[2..]))
    })
}

/// Q5_0 (w = d (q - 16)) against 8-bit activations.
pub fn q5_0(src: &[u8], x: &Q8Activations) -> f32 {
    blocks32(src, 22, x, |b, q| {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let s = nibble_dot(&b[6..22], q, |c, i| {
            (c | (((qh >> i) & 1) << 4) as i32) - 16
        });
        (read_f16(b), s, 0.0)
    })
}

/// Q5_1 (w = d q + m) against 8-bit activations.
pub fn q5_1(src: &[u8], x: &Q8Activations) -> f32 {
    blocks32(src, 24, x, |b, q| {
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let s = nibble_dot(&b[8..24], q, |c, i| c | (((qh >> i) & 1) << 4) as i32);
        (read_f16(b), s, read_f16(&b[2..]))
    })
}

/// Q8_0 against 8-bit activations.
pub fn q8_0(src: &[u8], x: &Q8Activations) -> f32 {
    blocks32(src, 34, x, |b, q| {
        let s: i32 = b[2..34]
            .iter()
            .zip(q)
            .map(|(&w, &a)| w as i8 as i32 * a as i32)
            .sum();
        (read_f16(b), s, 0.0)
    })
}

/// IQ4_NL (w = d level[q]) against 8-bit activations.
pub fn iq4_nl(src: &[u8], x: &Q8Activations) -> f32 {
    blocks32(src, 18, x, |b, q| {
        let s = nibble_dot(&b[2..18], q, |c, _| IQ4NL_LEVELS[c as usize] as i32);
        (read_f16(b), s, 0.0)
    })
}

/// Sums over super-blocks of 256: `f` gives (d_w, integer dot, dmin_w,
/// integer min term) for one block, given its codes and partial sums; the
/// result is `sum d_x (d_w isum - dmin_w imin)`.
#[inline(always)]
fn blocks256(
    src: &[u8],
    type_size: usize,
    x: &Q8KActivations,
    f: impl Fn(&[u8], &[i8], &[i16]) -> (f32, i32, f32, i32),
) -> f32 {
    let mut acc = 0f32;
    for (((b, q), &dx), bs) in src
        .chunks_exact(type_size)
        .zip(x.qs().chunks_exact(Q8K_BLOCK))
        .zip(x.d())
        .zip(x.bsums().chunks_exact(16))
    {
        let (dw, isum, dmin, imin) = f(b, q, bs);
        acc += (dw * dx) * isum as f32;
        if imin != 0 {
            acc -= (dmin * dx) * imin as f32;
        }
    }
    acc
}

/// Unpacks the 6-bit scales and mins shared by Q4_K and Q5_K.
#[inline(always)]
pub fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3f;
        mn[j] = s[4 + j] & 0x3f;
        sc[4 + j] = (s[8 + j] & 0x0f) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Unpacks Q3_K's sixteen signed 6-bit scales.
#[inline(always)]
pub fn q3k_scales(sc: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, s) in out.iter_mut().enumerate() {
        let low = if i < 8 { sc[i] & 0x0f } else { sc[i - 8] >> 4 };
        let high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// Sum of `scale(g) * bsums[g]` over the sixteen groups of 16.
#[inline(always)]
fn scaled_bsums(bs: &[i16], scale: impl Fn(usize) -> i32) -> i32 {
    bs.iter()
        .enumerate()
        .map(|(g, &s)| scale(g) * s as i32)
        .sum()
}

/// Q2_K (w = d sc q - dmin m per 16) against Q8_K activations.
pub fn q2_k(src: &[u8], x: &Q8KActivations) -> f32 {
    blocks256(src, 84, x, |b, q, bs| {
        let (scales, qs) = (&b[..16], &b[16..80]);
        let mut isum = 0i32;
        // Group k of half h: bits 2k..2k+2 of the half's 32 code bytes.
        for h in 0..2 {
            for k in 0..4 {
                for s in 0..2 {
                    let g = 8 * h + 2 * k + s;
                    let base = 128 * h + 32 * k + 16 * s;
                    let codes = &qs[32 * h + 16 * s..32 * h + 16 * s + 16];
                    let sum: i32 = codes
                        .iter()
                        .zip(&q[base..base + 16])
                        .map(|(&c, &a)| ((c >> (2 * k)) & 3) as i32 * a as i32)
                        .sum();
                    isum += (scales[g] & 0x0f) as i32 * sum;
                }
            }
        }
        let imin = scaled_bsums(bs, |g| (scales[g] >> 4) as i32);
        (read_f16(&b[80..]), isum, read_f16(&b[82..]), imin)
    })
}

/// Q3_K (w = d sc (q - 4 (1 - hbit)) per 16) against Q8_K activations.
pub fn q3_k(src: &[u8], x: &Q8KActivations) -> f32 {
    blocks256(src, 110, x, |b, q, bs| {
        let (hmask, qs) = (&b[..32], &b[32..96]);
        let sc = q3k_scales(&b[96..108]);
        let mut isum = 0i32;
        // Group k of half h: bits 2k..2k+2 of the half's 32 code bytes, high
        // bit 4h + k of the 32 mask bytes.
        for h in 0..2 {
            for k in 0..4 {
                for s in 0..2 {
                    let g = 8 * h + 2 * k + s;
                    let base = 128 * h + 32 * k + 16 * s;
                    let codes = &qs[32 * h + 16 * s..32 * h + 16 * s + 16];
                    let high = &hmask[16 * s..16 * s + 16];
                    let sum: i32 = codes
                        .iter()
                        .zip(high)
                        .zip(&q[base..base + 16])
                        .map(|((&c, &m), &a)| {
                            let low = (c >> (2 * k)) & 3;
                            let hbit = (m >> (4 * h + k)) & 1;
                            (low | (hbit << 2)) as i32 * a as i32
                        })
                        .sum();
                    isum += sc[g] as i32 * sum;
                }
            }
        }
        // Codes are stored as q + 4: subtract 4 sc sum(q_x) per group.
        isum -= 4 * scaled_bsums(bs, |g| sc[g] as i32);
        (read_f16(&b[108..]), isum, 0.0, 0)
    })
}

/// Q4_K (w = d sc q - dmin m per 32) against Q8_K activations.
pub fn q4_k(src: &[u8], x: &Q8KActivations) -> f32 {
    blocks256(src, 144, x, |b, q, bs| {
        let (sc, mn) = scale_min_k4(&b[4..16]);
        let qs = &b[16..144];
        let mut isum = 0i32;
        for sub in 0..8 {
            let (chunk, shift) = (sub / 2, sub % 2);
            let s: i32 = (0..32)
                .map(|j| {
                    ((qs[chunk * 32 + j] >> (4 * shift)) & 0x0f) as i32 * q[32 * sub + j] as i32
                })
                .sum();
            isum += sc[sub] as i32 * s;
        }
        let imin = scaled_bsums(bs, |g| mn[g / 2] as i32);
        (read_f16(b), isum, read_f16(&b[2..]), imin)
    })
}

/// Q5_K (w = d sc q - dmin m per 32) against Q8_K activations.
pub fn q5_k(src: &[u8], x: &Q8KActivations) -> f32 {
    blocks256(src, 176, x, |b, q, bs| {
        let (sc, mn) = scale_min_k4(&b[4..16]);
        let (qh, qs) = (&b[16..48], &b[48..176]);
        let mut isum = 0i32;
        for sub in 0..8 {
            let (chunk, shift) = (sub / 2, sub % 2);
            let s: i32 = (0..32)
                .map(|j| {
                    let low = (qs[chunk * 32 + j] >> (4 * shift)) & 0x0f;
                    let high = (qh[j] >> sub) & 1;
                    (low | (high << 4)) as i32 * q[32 * sub + j] as i32
                })
                .sum();
            isum += sc[sub] as i32 * s;
        }
        let imin = scaled_bsums(bs, |g| mn[g / 2] as i32);
        (read_f16(b), isum, read_f16(&b[2..]), imin)
    })
}

/// Q6_K (w = d sc (q - 32) per 16) against Q8_K activations.
pub fn q6_k(src: &[u8], x: &Q8KActivations) -> f32 {
    blocks256(src, 210, x, |b, q, bs| {
        let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
        let mut isum = 0i32;
        // Group k of half h: nibble k / 2 of low bytes 64h + 32 (k % 2) ..,
        // bits 2k..2k+2 of high bytes 32h ...
        for h in 0..2 {
            for k in 0..4 {
                for s in 0..2 {
                    let g = 8 * h + 2 * k + s;
                    let base = 128 * h + 32 * k + 16 * s;
                    let lo = 64 * h + 32 * (k % 2) + 16 * s;
                    let hi = 32 * h + 16 * s;
                    let sum: i32 = ql[lo..lo + 16]
                        .iter()
                        .zip(&qh[hi..hi + 16])
                        .zip(&q[base..base + 16])
                        .map(|((&l, &hb), &a)| {
                            let low = (l >> (4 * (k / 2))) & 0x0f;
                            let high = (hb >> (2 * k)) & 3;
                            (low | (high << 4)) as i32 * a as i32
                        })
                        .sum();
                    isum += scales[g] as i8 as i32 * sum;
                }
            }
        }
        // Codes are stored as q + 32.
        isum -= 32 * scaled_bsums(bs, |g| scales[g] as i8 as i32);
        (read_f16(&b[208..]), isum, 0.0, 0)
    })
}

/// IQ4_XS (w = d ls level[q] per 32) against Q8_K activations.
pub fn iq4_xs(src: &[u8], x: &Q8KActivations) -> f32 {
    blocks256(src, 136, x, |b, q, _| {
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        let (scales_l, qs) = (&b[4..8], &b[8..136]);
        let mut isum = 0i32;
        for ib in 0..8 {
            let low = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
            let high = ((scales_h >> (2 * ib)) & 3) as u8;
            let ls = (low | (high << 4)) as i32 - 32;
            let s = nibble_dot(
                &qs[16 * ib..16 * ib + 16],
                &q[32 * ib..32 * ib + 32],
                |c, _| IQ4NL_LEVELS[c as usize] as i32,
            );
            isum += ls * s;
        }
        (read_f16(b), isum, 0.0, 0)
    })
}
