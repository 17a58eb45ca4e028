//! AVX2 kernels. Decoding is bit-identical to the scalar reference; dot
//! products differ only by summation order.

use crate::layout::{BLOCK, CODES, TYPE_SIZE};
use gguftool_core::activation::Q8Activations;
use std::arch::x86_64::*;

/// The 64 codes (0..3) of a block as bytes in element order: (0..32, 32..64).
///
/// # Safety
/// The CPU must support AVX2; `b` holds a whole block.
#[inline(always)]
pub unsafe fn codes_epi8(b: &[u8]) -> (__m256i, __m256i) {
    let v = _mm_loadu_si128(b.as_ptr().add(CODES) as *const __m128i);
    let m = _mm_set1_epi8(3);
    let c0 = _mm_and_si128(v, m);
    let c1 = _mm_and_si128(_mm_srli_epi16(v, 2), m);
    let c2 = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    let c3 = _mm_and_si128(_mm_srli_epi16(v, 6), m);
    (_mm256_set_m128i(c1, c0), _mm256_set_m128i(c3, c2))
}

/// Eight trits starting at element `8 * g` of 32 codes, as f32.
#[inline(always)]
unsafe fn trits_ps(codes: __m256i, g: i32) -> __m256 {
    let half = if g < 2 {
        _mm256_castsi256_si128(codes)
    } else {
        _mm256_extracti128_si256(codes, 1)
    };
    let part = if g % 2 == 0 {
        half
    } else {
        _mm_srli_si128(half, 8)
    };
    _mm256_sub_ps(
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part)),
        _mm256_set1_ps(1.0),
    )
}

/// Decodes whole blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `src` holds whole blocks and `dst` 64
/// elements per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize(src: &[u8], dst: &mut [f32]) {
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

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Dot product with f32 activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `src` holds whole blocks and `x` 64
/// elements per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(src: &[u8], x: &[f32]) -> f32 {
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

/// `sum((c - 1) q)` of 32 codes, in 8 i32 lanes: `maddubs(c, q) - maddubs(1, q)`.
#[inline(always)]
unsafe fn sums(codes: __m256i, q: __m256i) -> __m256i {
    let p = _mm256_sub_epi16(
        _mm256_maddubs_epi16(codes, q),
        _mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
    );
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// Dot product with 8-bit activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `src` holds whole blocks and `x` 64
/// activations per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8(src: &[u8], x: &Q8Activations) -> f32 {
    let mut acc = [_mm256_setzero_ps(), _mm256_setzero_ps()];
    for (i, b) in src.chunks_exact(TYPE_SIZE).enumerate() {
        let (lo, hi) = codes_epi8(b);
        let qp = x.qs.as_ptr().add(i * BLOCK) as *const __m256i;
        let db = d(b);
        let s0 = _mm256_cvtepi32_ps(sums(lo, _mm256_loadu_si256(qp)));
        let s1 = _mm256_cvtepi32_ps(sums(hi, _mm256_loadu_si256(qp.add(1))));
        acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(db * x.scales[2 * i]), s0, acc[0]);
        acc[1] = _mm256_fmadd_ps(_mm256_set1_ps(db * x.scales[2 * i + 1]), s1, acc[1]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// The block's f16 scale (first two bytes) as f32, with F16C.
///
/// # Safety
/// The CPU must support F16C; `b` holds at least two bytes.
#[inline(always)]
pub unsafe fn d(b: &[u8]) -> f32 {
    let bits = u16::from_le_bytes([b[0], b[1]]) as i32;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}
