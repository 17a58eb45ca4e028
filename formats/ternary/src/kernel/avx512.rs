//! AVX-512 kernels: a whole block (64 codes) per 512-bit vector.

use crate::kernel::avx2::d;
use crate::layout::{BLOCK, TYPE_SIZE};
use gguftool_quant::activation::Q8Activations;
use std::arch::x86_64::*;

/// The 64 codes of a block as bytes in element order.
#[inline(always)]
unsafe fn codes_epi8(b: &[u8]) -> __m512i {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let (lo, hi) = crate::kernel::avx2::codes_epi8(b);
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }
}

/// Sixteen trits starting at element `16 * g`, as f32.
#[inline(always)]
unsafe fn trits_ps(codes: __m512i, g: i32) -> __m512 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let part = match g {
            0 => _mm512_extracti32x4_epi32(codes, 0),
            1 => _mm512_extracti32x4_epi32(codes, 1),
            2 => _mm512_extracti32x4_epi32(codes, 2),
            _ => _mm512_extracti32x4_epi32(codes, 3),
        };
        _mm512_sub_ps(
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(part)),
            _mm512_set1_ps(1.0),
        )
    }
}

/// Decodes whole blocks.
///
/// # Safety
/// The CPU must support AVX-512F/BW, AVX2 and F16C; `src` holds whole blocks and
/// `dst` 64 elements per block.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn dequantize(src: &[u8], dst: &mut [f32]) {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        for (b, out) in src.chunks_exact(TYPE_SIZE).zip(dst.chunks_exact_mut(BLOCK)) {
            let s = _mm512_set1_ps(d(b));
            let c = codes_epi8(b);
            for g in 0..4 {
                let v = _mm512_mul_ps(s, trits_ps(c, g));
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * g as usize), v);
            }
        }
    }
}

/// Dot product with f32 activations.
///
/// # Safety
/// The CPU must support AVX-512F/BW, AVX2 and F16C; `src` holds whole blocks and
/// `x` 64 elements per block.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn dot(src: &[u8], x: &[f32]) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let mut acc = _mm512_setzero_ps();
        for (b, xb) in src.chunks_exact(TYPE_SIZE).zip(x.chunks_exact(BLOCK)) {
            let c = codes_epi8(b);
            let mut s = _mm512_setzero_ps();
            for g in 0..4 {
                let xv = _mm512_loadu_ps(xb.as_ptr().add(16 * g as usize));
                s = _mm512_fmadd_ps(trits_ps(c, g), xv, s);
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(d(b)), s, acc);
        }
        _mm512_reduce_add_ps(acc)
    }
}

/// Dot product with 8-bit activations: `maddubs(c, q) - maddubs(1, q)`, two
/// activation blocks (two scales) per weight block.
///
/// # Safety
/// The CPU must support AVX-512F/BW, AVX2 and F16C; `src` holds whole blocks and
/// `x` 64 activations per block.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn dot_q8(src: &[u8], x: &Q8Activations) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let mut acc = _mm512_setzero_ps();
        for (i, b) in src.chunks_exact(TYPE_SIZE).enumerate() {
            let c = codes_epi8(b);
            let q = _mm512_loadu_si512(x.qs().as_ptr().add(i * BLOCK) as *const _);
            let p = _mm512_sub_epi16(
                _mm512_maddubs_epi16(c, q),
                _mm512_maddubs_epi16(_mm512_set1_epi8(1), q),
            );
            let sums = _mm512_cvtepi32_ps(_mm512_madd_epi16(p, _mm512_set1_epi16(1)));
            let db = d(b);
            let f = _mm512_castpd_ps(_mm512_insertf64x4(
                _mm512_castps_pd(_mm512_set1_ps(db * x.scales()[2 * i])),
                _mm256_castps_pd(_mm256_set1_ps(db * x.scales()[2 * i + 1])),
                1,
            ));
            acc = _mm512_fmadd_ps(sums, f, acc);
        }
        _mm512_reduce_add_ps(acc)
    }
}
