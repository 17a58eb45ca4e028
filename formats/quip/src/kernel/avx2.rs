//! AVX2 kernels. Decoding is bit-identical to the scalar reference; dot
//! products differ only by summation order.

use crate::layout::{
    codes_offset, max_scale, scale_bits, sub_scales, type_size, BLOCK, LEVEL_OFFSET, SUB,
};
use gguftool_quant::activation::Q8Activations;
use gguftool_quant::simd::x86::hsum256 as hsum;
use std::arch::x86_64::*;

/// The 64 codes of a block as bytes in element order: (elements 0..32, 32..64).
///
/// # Safety
/// The CPU must support AVX2; `b` holds a whole block.
#[inline(always)]
pub unsafe fn codes_epi8<const SB: u32>(b: &[u8]) -> (__m256i, __m256i) {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let v = _mm_loadu_si128(b.as_ptr().add(codes_offset::<SB>()) as *const __m128i);
        let m = _mm_set1_epi8(3);
        let c0 = _mm_and_si128(v, m);
        let c1 = _mm_and_si128(_mm_srli_epi16(v, 2), m);
        let c2 = _mm_and_si128(_mm_srli_epi16(v, 4), m);
        let c3 = _mm_and_si128(_mm_srli_epi16(v, 6), m);
        (_mm256_set_m128i(c1, c0), _mm256_set_m128i(c3, c2))
    }
}

/// Sub-block `k`'s 16 codes as two vectors of 8 levels (`code - 1.5`).
#[inline(always)]
unsafe fn levels<const SB: u32>(b: &[u8], k: usize) -> (__m256, __m256) {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let v = _mm_loadu_si128(b.as_ptr().add(codes_offset::<SB>()) as *const __m128i);
        let c = match k {
            0 => v,
            1 => _mm_srli_epi16(v, 2),
            2 => _mm_srli_epi16(v, 4),
            _ => _mm_srli_epi16(v, 6),
        };
        let c = _mm_and_si128(c, _mm_set1_epi8(3));
        let off = _mm256_set1_ps(LEVEL_OFFSET);
        let lo = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c)), off);
        let hi = _mm256_sub_ps(
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(c, 8))),
            off,
        );
        (lo, hi)
    }
}

/// Decodes whole blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `src` holds whole blocks and `dst` 64
/// elements per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize<const SB: u32>(src: &[u8], dst: &mut [f32]) {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        for (b, out) in src
            .chunks_exact(type_size::<SB>())
            .zip(dst.chunks_exact_mut(BLOCK))
        {
            let (db, sc) = (d(b), sub_scales::<SB>(b));
            for (k, &s) in sc.iter().enumerate() {
                let step = _mm256_set1_ps(db * s as f32);
                let (lo, hi) = levels::<SB>(b, k);
                let p = out.as_mut_ptr().add(k * SUB);
                _mm256_storeu_ps(p, _mm256_mul_ps(step, lo));
                _mm256_storeu_ps(p.add(8), _mm256_mul_ps(step, hi));
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
pub unsafe fn dot<const SB: u32>(src: &[u8], x: &[f32]) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (b, xb) in src
            .chunks_exact(type_size::<SB>())
            .zip(x.chunks_exact(BLOCK))
        {
            let (db, sc) = (d(b), sub_scales::<SB>(b));
            for (k, &s) in sc.iter().enumerate() {
                let (lo, hi) = levels::<SB>(b, k);
                let p = xb.as_ptr().add(k * SUB);
                let t = _mm256_fmadd_ps(
                    lo,
                    _mm256_loadu_ps(p),
                    _mm256_mul_ps(hi, _mm256_loadu_ps(p.add(8))),
                );
                acc = _mm256_fmadd_ps(_mm256_set1_ps(db * s as f32), t, acc);
            }
        }
        hsum(acc)
    }
}

/// `sum((2 code - 3) q)` over groups of four elements of 32 codes.
#[inline(always)]
unsafe fn group_sums(codes: __m256i, q: __m256i) -> __m256i {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        // (2c - 3) q = 2c q - 3 q, both products of an unsigned and a signed byte.
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(_mm256_add_epi8(codes, codes), q),
            _mm256_maddubs_epi16(_mm256_set1_epi8(3), q),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }
}

/// The four sub-block factors `d * sc * x_scale / 2` of block `i` as a vector.
#[inline(always)]
unsafe fn block_factors<const SB: u32>(b: &[u8], xs: *const f32, i: usize) -> __m128 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        // Sub-scales: four SB-bit integers -> floats.
        let v = scale_bits::<SB>(b) as i32;
        let sb = SB as i32;
        let sc = _mm_and_si128(
            _mm_srlv_epi32(_mm_set1_epi32(v), _mm_setr_epi32(0, sb, 2 * sb, 3 * sb)),
            _mm_set1_epi32(max_scale::<SB>() as i32),
        );
        // Activation scales of the block's two halves: [x0, x0, x1, x1].
        let x01 = _mm_castsi128_ps(_mm_loadl_epi64(xs.add(2 * i) as *const __m128i));
        let h = _mm_mul_ps(_mm_set1_ps(0.5 * d(b)), _mm_unpacklo_ps(x01, x01));
        _mm_mul_ps(h, _mm_cvtepi32_ps(sc))
    }
}

/// Dot product with 8-bit activations: per block, the four sub-scales
/// become one float vector `d * sc * x_scale / 2` (unpacked and converted
/// with SIMD), broadcast to the four lanes of each sub-block's sums; two
/// blocks per step with four accumulators.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `src` holds whole blocks and `x`
/// 64 activations per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8<const SB: u32>(src: &[u8], x: &Q8Activations) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let qs = x.qs().as_ptr();
        let xs = x.scales().as_ptr();
        let lo_idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        let hi_idx = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
        let n = src.len() / type_size::<SB>();
        let mut i = 0;
        while i < n {
            let pair = if i + 2 <= n { 2 } else { 1 };
            for k in 0..pair {
                let b = &src[(i + k) * type_size::<SB>()..(i + k + 1) * type_size::<SB>()];
                let (c01, c23) = codes_epi8::<SB>(b);
                let qp = qs.add((i + k) * BLOCK) as *const __m256i;
                let s01 = group_sums(c01, _mm256_loadu_si256(qp));
                let s23 = group_sums(c23, _mm256_loadu_si256(qp.add(1)));
                let f = _mm256_castps128_ps256(block_factors::<SB>(b, xs, i + k));
                acc[2 * k] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(s01),
                    _mm256_permutevar8x32_ps(f, lo_idx),
                    acc[2 * k],
                );
                acc[2 * k + 1] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(s23),
                    _mm256_permutevar8x32_ps(f, hi_idx),
                    acc[2 * k + 1],
                );
            }
            i += pair;
        }
        hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
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
