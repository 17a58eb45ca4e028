//! AVX2 dot kernels. The integer sums are the scalar kernels' integers
//! (unsigned codes times signed activations with `maddubs`, pairs widened
//! with `madd`); the 32-element types accumulate f32 per block in vector
//! lanes, the K-quants reduce each block's integer sum exactly and then
//! scale it as the scalar kernel does (so their results are bit-identical
//! to scalar).
//!
//! The AVX2 decoders (Q8_0, Q4_0, Q4_K, Q6_K) are bit-identical to the
//! scalar ones: scales are converted by the same scalar code and each
//! element is one multiply (and one subtraction) of the same operands.
//!
//! Every function here requires AVX2, FMA and F16C, and the kernel contract
//! (`src` holds whole blocks covering the activations' elements).

use crate::dot::scalar::{q3k_scales, scale_min_k4};
use crate::half_bits::read_f16;
use crate::legacy::IQ4NL_LEVELS;
use gguftool_quant::activation::{Q8Activations, Q8KActivations, Q8K_BLOCK, Q8_BLOCK};
use gguftool_quant::simd::x86::{hsum256, hsum256_epi32};
use std::arch::x86_64::*;

/// The f16 at `b[0..2]` as f32 (F16C).
///
/// # Safety
/// F16C; `b` has at least 2 bytes.
#[inline(always)]
unsafe fn f16(b: &[u8]) -> f32 {
    let h = u16::from_le_bytes([b[0], b[1]]);
    // SAFETY: the caller guarantees F16C; register-only operations.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32))) }
}

/// 32 bytes at `p`.
///
/// # Safety
/// AVX; `p` is valid for 32 bytes.
#[inline(always)]
unsafe fn load32(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes; unaligned load.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// 16 bytes at `p` as 32 nibbles in element order (low nibbles first).
///
/// # Safety
/// AVX2; `p` is valid for 16 bytes.
#[inline(always)]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees AVX2 and 16 readable bytes.
    unsafe {
        let t = _mm_loadu_si128(p as *const __m128i);
        let both = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
    }
}

/// 0xff in byte `j` where bit `j` of `qh` is set, else 0.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn bits32(qh: u32) -> __m256i {
    // SAFETY: the caller guarantees AVX2; register-only operations.
    unsafe {
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh as i32),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
            ),
        );
        let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits)
    }
}

/// Pairwise-summed products of unsigned bytes `w` and signed bytes `y`,
/// as eight i32 (each the sum of four products).
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn madd_u8(w: __m256i, y: __m256i) -> __m256i {
    // SAFETY: the caller guarantees AVX2; register-only operations.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), _mm256_set1_epi16(1)) }
}

/// As [`madd_u8`] for signed weights (|w| moved onto the activations'
/// signs; exact for activations in -127..=127).
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn madd_i8(w: __m256i, y: __m256i) -> __m256i {
    // SAFETY: the caller guarantees AVX2; register-only operations.
    unsafe { madd_u8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w)) }
}

/// Eight f16 values at byte `offset` of consecutive blocks (zero past `m`
/// blocks), converted together. Converting each block's scale alone lets the
/// compiler merge it into a register that holds the accumulator, which
/// chains every block on the previous one's multiply-add.
///
/// # Safety
/// F16C; `blocks` holds at least `m <= 8` blocks of `type_size` bytes.
#[inline(always)]
unsafe fn f16x8(blocks: &[u8], type_size: usize, offset: usize, m: usize) -> __m256 {
    let mut h = [0u16; 8];
    for (k, v) in h.iter_mut().enumerate().take(m) {
        let b = &blocks[k * type_size + offset..];
        *v = u16::from_le_bytes([b[0], b[1]]);
    }
    // SAFETY: the caller guarantees F16C; `h` is 16 bytes.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i)) }
}

/// The 32-element driver, eight blocks per step: `f` gives the eight i32
/// partial code dots of a block; the result is
/// `sum d_w d_x isum + m_w d_x sum(q_x)` (the min term only when `MIN`,
/// with `m_w` the f16 at byte 2).
///
/// # Safety
/// AVX2, FMA and F16C; `src` holds `x.n_blocks()` blocks of `type_size` bytes.
#[inline(always)]
unsafe fn blocks32<const MIN: bool>(
    src: &[u8],
    type_size: usize,
    x: &Q8Activations,
    f: impl Fn(&[u8], __m256i) -> __m256i,
) -> f32 {
    // SAFETY: the caller guarantees AVX2/FMA/F16C and the block counts; each
    // `q` is 32 codes, and every step reads its own m <= 8 blocks.
    unsafe {
        let n = x.n_blocks();
        let (qs, scales, sums) = (x.qs(), x.scales(), x.sums());
        let mut acc = _mm256_setzero_ps();
        let mut mins = _mm256_setzero_ps();
        let mut i = 0;
        while i < n {
            let m = (n - i).min(8);
            let blocks = &src[i * type_size..(i + m) * type_size];
            // The next rows' bytes stream in while this group computes
            // (decode reads every weight once, straight from DRAM).
            let ahead = blocks.as_ptr().wrapping_add(1024);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(128) as *const i8);
            let mut dx = [0f32; 8];
            dx[..m].copy_from_slice(&scales[i..i + m]);
            let dx = _mm256_loadu_ps(dx.as_ptr());
            // d_w d_x for the eight blocks, as the scalar kernel rounds it.
            let mut dd = [0f32; 8];
            _mm256_storeu_ps(
                dd.as_mut_ptr(),
                _mm256_mul_ps(f16x8(blocks, type_size, 0, m), dx),
            );
            if MIN {
                let mut sx = [0i32; 8];
                sx[..m].copy_from_slice(&sums[i..i + m]);
                let mdx = _mm256_mul_ps(f16x8(blocks, type_size, 2, m), dx);
                let sx = _mm256_cvtepi32_ps(_mm256_loadu_si256(sx.as_ptr() as *const __m256i));
                mins = _mm256_fmadd_ps(mdx, sx, mins);
            }
            for (k, (b, &d)) in blocks.chunks_exact(type_size).zip(&dd).enumerate() {
                let y = load32(qs.as_ptr().add((i + k) * Q8_BLOCK) as *const u8);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(f(b, y)), acc);
            }
            i += m;
        }
        hsum256(acc) + hsum256(mins)
    }
}

/// Q4_0 against 8-bit activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_0(src: &[u8], x: &Q8Activations) -> f32 {
    // SAFETY: features enabled here; blocks are 18 bytes (16 nibble bytes at 2).
    unsafe {
        blocks32::<false>(src, 18, x, |b, y| {
            let w = _mm256_sub_epi8(nibbles32(b.as_ptr().add(2)), _mm256_set1_epi8(8));
            madd_i8(w, y)
        })
    }
}

/// Q4_1 against 8-bit activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_1(src: &[u8], x: &Q8Activations) -> f32 {
    // SAFETY: features enabled here; blocks are 20 bytes (16 nibble bytes at 4).
    unsafe {
        blocks32::<true>(src, 20, x, |b, y| {
            let w = nibbles32(b.as_ptr().add(4));
            madd_u8(w, y)
        })
    }
}

/// Q5_0 against 8-bit activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_0(src: &[u8], x: &Q8Activations) -> f32 {
    // SAFETY: features enabled here; blocks are 22 bytes (qh at 2, nibbles at 6).
    unsafe {
        blocks32::<false>(src, 22, x, |b, y| {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            // q - 16: a clear high bit makes the byte nibble | 0xf0 (nibble - 16).
            let hi = _mm256_andnot_si256(bits32(qh), _mm256_set1_epi8(0xf0u8 as i8));
            let w = _mm256_or_si256(nibbles32(b.as_ptr().add(6)), hi);
            madd_i8(w, y)
        })
    }
}

/// Q5_1 against 8-bit activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_1(src: &[u8], x: &Q8Activations) -> f32 {
    // SAFETY: features enabled here; blocks are 24 bytes (qh at 4, nibbles at 8).
    unsafe {
        blocks32::<true>(src, 24, x, |b, y| {
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let hi = _mm256_and_si256(bits32(qh), _mm256_set1_epi8(0x10));
            let w = _mm256_or_si256(nibbles32(b.as_ptr().add(8)), hi);
            madd_u8(w, y)
        })
    }
}

/// Q8_0 against 8-bit activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0(src: &[u8], x: &Q8Activations) -> f32 {
    // SAFETY: features enabled here; blocks are 34 bytes (codes at 2).
    unsafe { blocks32::<false>(src, 34, x, |b, y| madd_i8(load32(b.as_ptr().add(2)), y)) }
}

/// IQ4_NL's levels in both 128-bit lanes.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn iq4_lut() -> __m256i {
    // SAFETY: the caller guarantees AVX2; the table has 16 bytes.
    unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4NL_LEVELS.as_ptr() as *const __m128i)) }
}

/// IQ4_NL against 8-bit activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn iq4_nl(src: &[u8], x: &Q8Activations) -> f32 {
    // SAFETY: features enabled here; blocks are 18 bytes (nibbles at 2).
    unsafe {
        let lut = iq4_lut();
        blocks32::<false>(src, 18, x, |b, y| {
            let w = _mm256_shuffle_epi8(lut, nibbles32(b.as_ptr().add(2)));
            madd_i8(w, y)
        })
    }
}

/// The 256-element driver: `f` gives (d_w, exact integer dot, dmin_w,
/// integer min term) for a block from its bytes, codes and partial sums; the
/// result is summed exactly as the scalar kernel does.
///
/// # Safety
/// AVX2; `src` holds `x.n_blocks()` blocks of `type_size` bytes.
#[inline(always)]
unsafe fn blocks256(
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
        // Stream the bytes of a few blocks ahead (decode reads each weight
        // once, from DRAM); past the end it is a harmless hint.
        let ahead = b.as_ptr().wrapping_add(1024);
        let mut o = 0;
        while o < type_size {
            // SAFETY: SSE is baseline on x86_64; a prefetch never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(o) as *const i8) };
            o += 64;
        }
        let (dw, isum, dmin, imin) = f(b, q, bs);
        acc += (dw * dx) * isum as f32;
        if imin != 0 {
            acc -= (dmin * dx) * imin as f32;
        }
    }
    acc
}

/// Sum of `scale[g] * bsums[g]` over the sixteen groups.
#[inline(always)]
fn scaled_bsums(bs: &[i16], scale: impl Fn(usize) -> i32) -> i32 {
    bs.iter()
        .enumerate()
        .map(|(g, &s)| scale(g) * s as i32)
        .sum()
}

/// Scales `g` and `g + 1` of sixteen i8 scales `sc` as sixteen i16: eight
/// copies of each (one per 16 elements of a 32-element group).
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn scale_pair(sc: __m128i, g: usize) -> __m256i {
    let lo = 0x0101_0101_0101_0101u64.wrapping_mul(g as u64);
    let hi = 0x0101_0101_0101_0101u64.wrapping_mul(g as u64 + 1);
    // SAFETY: the caller guarantees AVX2; register-only operations.
    unsafe { _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, _mm_set_epi64x(hi as i64, lo as i64))) }
}

/// Q2_K against Q8_K activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q2_k(src: &[u8], x: &Q8KActivations) -> f32 {
    // SAFETY: features enabled here; blocks are 84 bytes (scales 0..16,
    // codes 16..80, d and dmin at 80 and 82); each q is 256 codes.
    unsafe {
        blocks256(src, 84, x, |b, q, bs| {
            let sc = _mm_and_si128(
                _mm_loadu_si128(b.as_ptr() as *const __m128i),
                _mm_set1_epi8(0x0f),
            );
            let three = _mm256_set1_epi8(3);
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let mut q2 = load32(b.as_ptr().add(16 + 32 * h));
                for s in 0..4 {
                    let c = _mm256_and_si256(q2, three);
                    q2 = _mm256_srli_epi16(q2, 2);
                    let y = load32(q.as_ptr().add(128 * h + 32 * s) as *const u8);
                    let p = _mm256_maddubs_epi16(c, y);
                    sumi =
                        _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(sc, 8 * h + 2 * s)));
                }
            }
            let imin = scaled_bsums(bs, |g| (b[g] >> 4) as i32);
            (f16(&b[80..]), hsum256_epi32(sumi), f16(&b[82..]), imin)
        })
    }
}

/// Q3_K against Q8_K activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q3_k(src: &[u8], x: &Q8KActivations) -> f32 {
    // SAFETY: features enabled here; blocks are 110 bytes (hmask 0..32,
    // codes 32..96, scales 96..108, d at 108); each q is 256 codes.
    unsafe {
        blocks256(src, 110, x, |b, q, bs| {
            let scales = q3k_scales(&b[96..108]);
            let sc = _mm_loadu_si128(scales.as_ptr() as *const __m128i);
            let (three, four) = (_mm256_set1_epi8(3), _mm256_set1_epi8(4));
            let mut hm = load32(b.as_ptr());
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let mut q2 = load32(b.as_ptr().add(32 + 32 * h));
                for s in 0..4 {
                    // Codes stored as q + 4: low two bits, high bit at 4.
                    let low = _mm256_and_si256(q2, three);
                    let high = _mm256_and_si256(_mm256_slli_epi16(hm, 2), four);
                    q2 = _mm256_srli_epi16(q2, 2);
                    hm = _mm256_srli_epi16(hm, 1);
                    let c = _mm256_or_si256(low, high);
                    let y = load32(q.as_ptr().add(128 * h + 32 * s) as *const u8);
                    let p = _mm256_maddubs_epi16(c, y);
                    sumi =
                        _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(sc, 8 * h + 2 * s)));
                }
            }
            let isum = hsum256_epi32(sumi) - 4 * scaled_bsums(bs, |g| scales[g] as i32);
            (f16(&b[108..]), isum, 0.0, 0)
        })
    }
}

/// Q4_K against Q8_K activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k(src: &[u8], x: &Q8KActivations) -> f32 {
    // SAFETY: features enabled here; blocks are 144 bytes (d, dmin, scales
    // 4..16, nibbles 16..144); each q is 256 codes.
    unsafe {
        blocks256(src, 144, x, |b, q, bs| {
            let (sc, mn) = scale_min_k4(&b[4..16]);
            let m4 = _mm256_set1_epi8(0x0f);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let q4 = load32(b.as_ptr().add(16 + 32 * j));
                let lo = _mm256_and_si256(q4, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
                let yl = load32(q.as_ptr().add(64 * j) as *const u8);
                let yh = load32(q.as_ptr().add(64 * j + 32) as *const u8);
                let pl = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, yl),
                    _mm256_set1_epi16(sc[2 * j] as i16),
                );
                let ph = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, yh),
                    _mm256_set1_epi16(sc[2 * j + 1] as i16),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
            }
            let imin = scaled_bsums(bs, |g| mn[g / 2] as i32);
            (f16(b), hsum256_epi32(sumi), f16(&b[2..]), imin)
        })
    }
}

/// Q5_K against Q8_K activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_k(src: &[u8], x: &Q8KActivations) -> f32 {
    // SAFETY: features enabled here; blocks are 176 bytes (d, dmin, scales
    // 4..16, high bits 16..48, nibbles 48..176); each q is 256 codes.
    unsafe {
        blocks256(src, 176, x, |b, q, bs| {
            let (sc, mn) = scale_min_k4(&b[4..16]);
            let (m4, bit4) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x10));
            let mut hb = load32(b.as_ptr().add(16));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let q4 = load32(b.as_ptr().add(48 + 32 * j));
                // Bit 2j of each high-bit byte to bit 4 (low half), 2j+1 (high half).
                let hl = _mm256_and_si256(_mm256_slli_epi16(hb, 4), bit4);
                let hh = _mm256_and_si256(_mm256_slli_epi16(hb, 3), bit4);
                hb = _mm256_srli_epi16(hb, 2);
                let lo = _mm256_or_si256(_mm256_and_si256(q4, m4), hl);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), hh);
                let yl = load32(q.as_ptr().add(64 * j) as *const u8);
                let yh = load32(q.as_ptr().add(64 * j + 32) as *const u8);
                let pl = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, yl),
                    _mm256_set1_epi16(sc[2 * j] as i16),
                );
                let ph = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, yh),
                    _mm256_set1_epi16(sc[2 * j + 1] as i16),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
            }
            let imin = scaled_bsums(bs, |g| mn[g / 2] as i32);
            (f16(b), hsum256_epi32(sumi), f16(&b[2..]), imin)
        })
    }
}

/// Q6_K against Q8_K activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k(src: &[u8], x: &Q8KActivations) -> f32 {
    // SAFETY: features enabled here; blocks are 210 bytes (ql 0..128, qh
    // 128..192, scales 192..208, d at 208); each q is 256 codes.
    unsafe {
        blocks256(src, 210, x, |b, q, bs| {
            let sc = _mm_loadu_si128(b.as_ptr().add(192) as *const __m128i);
            let (m4, m30) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let qh = load32(b.as_ptr().add(128 + 32 * h));
                let ql0 = load32(b.as_ptr().add(64 * h));
                let ql1 = load32(b.as_ptr().add(64 * h + 32));
                let codes = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        _mm256_and_si256(qh, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                    ),
                ];
                for (k, c) in codes.into_iter().enumerate() {
                    let y = load32(q.as_ptr().add(128 * h + 32 * k) as *const u8);
                    let p = _mm256_maddubs_epi16(c, y);
                    sumi =
                        _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(sc, 8 * h + 2 * k)));
                }
            }
            // Codes are stored as q + 32.
            let isum = hsum256_epi32(sumi) - 32 * scaled_bsums(bs, |g| b[192 + g] as i8 as i32);
            (f16(&b[208..]), isum, 0.0, 0)
        })
    }
}

/// IQ4_XS against Q8_K activations.
///
/// # Safety
/// AVX2, FMA, F16C; the kernel contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn iq4_xs(src: &[u8], x: &Q8KActivations) -> f32 {
    // SAFETY: features enabled here; blocks are 136 bytes (d, scales_h,
    // scales_l 4..8, nibbles 8..136); each q is 256 codes.
    unsafe {
        let lut = iq4_lut();
        blocks256(src, 136, x, |b, q, _| {
            let scales_h = u16::from_le_bytes([b[2], b[3]]);
            let mut sumi = _mm256_setzero_si256();
            for ib in 0..8 {
                let low = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0f;
                let high = ((scales_h >> (2 * ib)) & 3) as u8;
                let ls = (low | (high << 4)) as i16 - 32;
                let w = _mm256_shuffle_epi8(lut, nibbles32(b.as_ptr().add(8 + 16 * ib)));
                let y = load32(q.as_ptr().add(32 * ib) as *const u8);
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_set1_epi16(ls)));
            }
            (f16(b), hsum256_epi32(sumi), 0.0, 0)
        })
    }
}

/// Four f32 accumulators over 32 elements per step; `load(i)` gives the
/// eight weights at element `i`.
///
/// # Safety
/// AVX2 and FMA; `load(i)` is valid for every `i + 8 <= x.len()`.
#[inline(always)]
unsafe fn dot_float(x: &[f32], load: impl Fn(usize) -> __m256, tail: impl Fn(usize) -> f32) -> f32 {
    // SAFETY: the caller guarantees AVX2/FMA; x loads stay below x.len().
    unsafe {
        let n = x.len();
        let xp = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let j = i + 8 * k;
                *a = _mm256_fmadd_ps(load(j), _mm256_loadu_ps(xp.add(j)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(load(i), _mm256_loadu_ps(xp.add(i)), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut r = hsum256(s);
        while i < n {
            r += tail(i) * x[i];
            i += 1;
        }
        r
    }
}

/// F32 weights against f32 activations.
///
/// # Safety
/// AVX2, FMA, F16C; `src` holds `4 * x.len()` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(src: &[u8], x: &[f32]) -> f32 {
    let p = src.as_ptr();
    // SAFETY: features enabled here; element i is bytes 4i..4i+4 of src.
    unsafe {
        dot_float(
            x,
            |i| _mm256_loadu_ps(p.add(4 * i) as *const f32),
            |i| f32::from_le_bytes([src[4 * i], src[4 * i + 1], src[4 * i + 2], src[4 * i + 3]]),
        )
    }
}

/// F16 weights against f32 activations.
///
/// # Safety
/// AVX2, FMA, F16C; `src` holds `2 * x.len()` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(src: &[u8], x: &[f32]) -> f32 {
    let p = src.as_ptr();
    // SAFETY: features enabled here; element i is bytes 2i..2i+2 of src.
    unsafe {
        dot_float(
            x,
            |i| _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i)),
            |i| f16(&src[2 * i..]),
        )
    }
}

/// BF16 weights against f32 activations.
///
/// # Safety
/// AVX2, FMA, F16C; `src` holds `2 * x.len()` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_bf16(src: &[u8], x: &[f32]) -> f32 {
    let p = src.as_ptr();
    // SAFETY: features enabled here; element i is bytes 2i..2i+2 of src.
    unsafe {
        dot_float(
            x,
            |i| {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * i) as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
            },
            |i| f32::from_bits((u16::from_le_bytes([src[2 * i], src[2 * i + 1]]) as u32) << 16),
        )
    }
}

/// Bytes `8 g .. 8 g + 8` (`g` in 0..4) of `v`, sign-extended, as f32.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn i8x8_ps(v: __m256i, g: usize) -> __m256 {
    // SAFETY: the caller guarantees AVX2; register-only operations.
    unsafe {
        let half = if g < 2 {
            _mm256_castsi256_si128(v)
        } else {
            _mm256_extracti128_si256(v, 1)
        };
        let part = if g.is_multiple_of(2) {
            half
        } else {
            _mm_srli_si128(half, 8)
        };
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part))
    }
}

/// Writes `scale * codes[8g..8g+8] - min` for the four groups of 32 codes,
/// one multiply and one subtraction per element (no fused multiply-add:
/// bit-identical to the scalar decoders' `scale * q - min`).
///
/// # Safety
/// AVX2; `out` has at least 32 elements.
#[inline(always)]
unsafe fn store32(out: &mut [f32], codes: __m256i, scale: [f32; 4], min: Option<f32>) {
    // SAFETY: the caller guarantees AVX2 and 32 writable elements.
    unsafe {
        for (g, &s) in scale.iter().enumerate() {
            let mut v = _mm256_mul_ps(_mm256_set1_ps(s), i8x8_ps(codes, g));
            if let Some(m) = min {
                v = _mm256_sub_ps(v, _mm256_set1_ps(m));
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * g), v);
        }
    }
}

/// Decodes Q8_0 blocks, bit-identical to [`crate::legacy::dequant_q8_0`].
///
/// # Safety
/// AVX2, FMA, F16C; `src` holds whole 34-byte blocks, `dst` 32 per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, out) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = read_f16(b);
        // SAFETY: features enabled here; the block has 32 codes at 2, out 32 slots.
        unsafe { store32(out, load32(b.as_ptr().add(2)), [d; 4], None) };
    }
}

/// Decodes Q4_0 blocks, bit-identical to [`crate::legacy::dequant_q4_0`].
///
/// # Safety
/// AVX2, FMA, F16C; `src` holds whole 18-byte blocks, `dst` 32 per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, out) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        let d = read_f16(b);
        // SAFETY: features enabled here; 16 nibble bytes at 2, out 32 slots.
        unsafe {
            let q = _mm256_sub_epi8(nibbles32(b.as_ptr().add(2)), _mm256_set1_epi8(8));
            store32(out, q, [d; 4], None);
        }
    }
}

/// Decodes Q4_K blocks, bit-identical to [`crate::kquants::dequant_q4_k`].
///
/// # Safety
/// AVX2, FMA, F16C; `src` holds whole 144-byte blocks, `dst` 256 per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, out) in src.chunks_exact(144).zip(dst.chunks_exact_mut(256)) {
        let (d, dmin) = (read_f16(b), read_f16(&b[2..]));
        let (sc, mn) = scale_min_k4(&b[4..16]);
        // SAFETY: features enabled here; 128 nibble bytes at 16, out 256 slots.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            for j in 0..4 {
                let q4 = load32(b.as_ptr().add(16 + 32 * j));
                for (h, codes) in [
                    _mm256_and_si256(q4, m4),
                    _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4),
                ]
                .into_iter()
                .enumerate()
                {
                    let sub = 2 * j + h;
                    let dl = d * sc[sub] as f32;
                    let ml = dmin * mn[sub] as f32;
                    store32(&mut out[32 * sub..], codes, [dl; 4], Some(ml));
                }
            }
        }
    }
}

/// Decodes Q6_K blocks, bit-identical to [`crate::kquants::dequant_q6_k`].
///
/// # Safety
/// AVX2, FMA, F16C; `src` holds whole 210-byte blocks, `dst` 256 per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, out) in src.chunks_exact(210).zip(dst.chunks_exact_mut(256)) {
        let d = read_f16(&b[208..]);
        let scales = &b[192..208];
        // SAFETY: features enabled here; ql at 0..128, qh at 128..192, out 256 slots.
        unsafe {
            let (m4, m30) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
            let m32 = _mm256_set1_epi8(32);
            for h in 0..2 {
                let qh = load32(b.as_ptr().add(128 + 32 * h));
                let ql0 = load32(b.as_ptr().add(64 * h));
                let ql1 = load32(b.as_ptr().add(64 * h + 32));
                let codes = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        _mm256_and_si256(qh, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                    ),
                ];
                for (k, c) in codes.into_iter().enumerate() {
                    let g = 8 * h + 2 * k;
                    let (s0, s1) = (d * scales[g] as i8 as f32, d * scales[g + 1] as i8 as f32);
                    let q = _mm256_sub_epi8(c, m32);
                    store32(&mut out[128 * h + 32 * k..], q, [s0, s0, s1, s1], None);
                }
            }
        }
    }
}
