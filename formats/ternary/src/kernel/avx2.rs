//! AVX2 kernels. Decoding is bit-identical to the scalar reference; dot
//! products differ only by summation order.

use crate::layout::{BLOCK, CODES, TYPE_SIZE};
use gguftool_quant::activation::Q8Activations;
use gguftool_quant::simd::x86::{hsum256 as hsum, u8x8_ps};
use std::arch::x86_64::*;

/// The 64 codes (0..3) of a block as bytes in element order: (0..32, 32..64).
///
/// # Safety
/// The CPU must support AVX2; `b` holds a whole block.
#[inline(always)]
pub unsafe fn codes_epi8(b: &[u8]) -> (__m256i, __m256i) {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let v = _mm_loadu_si128(b.as_ptr().add(CODES) as *const __m128i);
        let m = _mm_set1_epi8(3);
        let c0 = _mm_and_si128(v, m);
        let c1 = _mm_and_si128(_mm_srli_epi16(v, 2), m);
        let c2 = _mm_and_si128(_mm_srli_epi16(v, 4), m);
        let c3 = _mm_and_si128(_mm_srli_epi16(v, 6), m);
        (_mm256_set_m128i(c1, c0), _mm256_set_m128i(c3, c2))
    }
}

/// Eight trits starting at element `8 * g` of 32 codes, as f32.
#[inline(always)]
unsafe fn trits_ps(codes: __m256i, g: i32) -> __m256 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe { _mm256_sub_ps(u8x8_ps(codes, g), _mm256_set1_ps(1.0)) }
}

/// Decodes whole blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `src` holds whole blocks and `dst` 64
/// elements per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize(src: &[u8], dst: &mut [f32]) {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        for (b, out) in src.chunks_exact(TYPE_SIZE).zip(dst.chunks_exact_mut(BLOCK)) {
            let s = _mm256_set1_ps(d(b));
            let (lo, hi) = codes_epi8(b);
            for g in 0..4 {
                let p = out.as_mut_ptr().add(8 * g as usize);
                _mm256_storeu_ps(p, _mm256_mul_ps(s, trits_ps(lo, g)));
                _mm256_storeu_ps(p.add(32), _mm256_mul_ps(s, trits_ps(hi, g)));
            }
        }
    }
}

/// Dot product with f32 activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `src` holds whole blocks and `x` 64
/// elements per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(src: &[u8], x: &[f32]) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (b, xb) in src.chunks_exact(TYPE_SIZE).zip(x.chunks_exact(BLOCK)) {
            let (lo, hi) = codes_epi8(b);
            let mut s = _mm256_setzero_ps();
            for g in 0..4 {
                let p = xb.as_ptr().add(8 * g as usize);
                s = _mm256_fmadd_ps(trits_ps(lo, g), _mm256_loadu_ps(p), s);
                s = _mm256_fmadd_ps(trits_ps(hi, g), _mm256_loadu_ps(p.add(32)), s);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d(b)), s, acc);
        }
        hsum(acc)
    }
}

/// `sum((c - 1) q)` of 32 codes, in 8 i32 lanes: `maddubs(c, q) - maddubs(1, q)`.
#[inline(always)]
unsafe fn sums(codes: __m256i, q: __m256i) -> __m256i {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(codes, q),
            _mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }
}

/// Dot product with 8-bit activations. Two blocks per step: their f16
/// scales are converted together and multiplied by the four activation
/// scales as one vector, then broadcast per 32 elements.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `src` holds whole blocks and `x`
/// 64 activations per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8(src: &[u8], x: &Q8Activations) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let n = src.len() / TYPE_SIZE;
        let qs = x.qs().as_ptr();
        let xs = x.scales().as_ptr();
        let mut acc = [_mm256_setzero_ps(), _mm256_setzero_ps()];
        let mut i = 0;
        while i + 2 <= n {
            let b0 = &src[i * TYPE_SIZE..(i + 1) * TYPE_SIZE];
            let b1 = &src[(i + 1) * TYPE_SIZE..(i + 2) * TYPE_SIZE];
            let halves = u16::from_le_bytes([b0[0], b0[1]]) as i64
                | (u16::from_le_bytes([b1[0], b1[1]]) as i64) << 16;
            let d01 = _mm_cvtph_ps(_mm_cvtsi64_si128(halves));
            // [d0, d0, d1, d1] * the four activation scales.
            let f = _mm_mul_ps(_mm_unpacklo_ps(d01, d01), _mm_loadu_ps(xs.add(2 * i)));
            let f8 = _mm256_castps128_ps256(f);
            let q = qs.add(i * BLOCK) as *const __m256i;
            let (l0, h0) = codes_epi8(b0);
            let (l1, h1) = codes_epi8(b1);
            let bc = |k: i32| _mm256_permutevar8x32_ps(f8, _mm256_set1_epi32(k));
            acc[0] = _mm256_fmadd_ps(
                bc(0),
                _mm256_cvtepi32_ps(sums(l0, _mm256_loadu_si256(q))),
                acc[0],
            );
            acc[1] = _mm256_fmadd_ps(
                bc(1),
                _mm256_cvtepi32_ps(sums(h0, _mm256_loadu_si256(q.add(1)))),
                acc[1],
            );
            acc[0] = _mm256_fmadd_ps(
                bc(2),
                _mm256_cvtepi32_ps(sums(l1, _mm256_loadu_si256(q.add(2)))),
                acc[0],
            );
            acc[1] = _mm256_fmadd_ps(
                bc(3),
                _mm256_cvtepi32_ps(sums(h1, _mm256_loadu_si256(q.add(3)))),
                acc[1],
            );
            i += 2;
        }
        if i < n {
            let b = &src[i * TYPE_SIZE..(i + 1) * TYPE_SIZE];
            let (lo, hi) = codes_epi8(b);
            let q = qs.add(i * BLOCK) as *const __m256i;
            let db = d(b);
            let s0 = _mm256_cvtepi32_ps(sums(lo, _mm256_loadu_si256(q)));
            let s1 = _mm256_cvtepi32_ps(sums(hi, _mm256_loadu_si256(q.add(1))));
            acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(db * *xs.add(2 * i)), s0, acc[0]);
            acc[1] = _mm256_fmadd_ps(_mm256_set1_ps(db * *xs.add(2 * i + 1)), s1, acc[1]);
        }
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }
}

/// The block's f16 scale (first two bytes) as f32, with F16C.
///
/// # Safety
/// The CPU must support F16C; `b` holds at least two bytes.
#[inline(always)]
pub unsafe fn d(b: &[u8]) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let bits = u16::from_le_bytes([b[0], b[1]]) as i32;
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
    }
}
