//! AVX-512 kernels: a whole block (64 codes) per 512-bit vector.

use crate::kernel::avx2::d;
use crate::layout::{codes_offset, sub_scales, type_size, BLOCK, LEVEL_OFFSET, SUB};
use gguftool_quant::activation::Q8Activations;
use std::arch::x86_64::*;

/// The 64 codes of a block as bytes in element order.
#[inline(always)]
unsafe fn codes_epi8<const SB: u32>(b: &[u8]) -> __m512i {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let (lo, hi) = crate::kernel::avx2::codes_epi8::<SB>(b);
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }
}

/// Sub-block `k`'s 16 levels (`code - 1.5`).
#[inline(always)]
unsafe fn levels<const SB: u32>(b: &[u8], k: usize) -> __m512 {
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
        _mm512_sub_ps(
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c)),
            _mm512_set1_ps(LEVEL_OFFSET),
        )
    }
}

/// Decodes whole blocks.
///
/// # Safety
/// The CPU must support AVX-512F/BW, AVX2 and F16C; `src` holds whole blocks and
/// `dst` 64 elements per block.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
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
                let v = _mm512_mul_ps(_mm512_set1_ps(db * s as f32), levels::<SB>(b, k));
                _mm512_storeu_ps(out.as_mut_ptr().add(k * SUB), v);
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
pub unsafe fn dot<const SB: u32>(src: &[u8], x: &[f32]) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let mut acc = _mm512_setzero_ps();
        for (b, xb) in src
            .chunks_exact(type_size::<SB>())
            .zip(x.chunks_exact(BLOCK))
        {
            let (db, sc) = (d(b), sub_scales::<SB>(b));
            for (k, &s) in sc.iter().enumerate() {
                let t = _mm512_mul_ps(
                    levels::<SB>(b, k),
                    _mm512_loadu_ps(xb.as_ptr().add(k * SUB)),
                );
                acc = _mm512_fmadd_ps(_mm512_set1_ps(db * s as f32), t, acc);
            }
        }
        _mm512_reduce_add_ps(acc)
    }
}

/// Dot product with 8-bit activations: `(2c - 3) q` as two unsigned-by-signed
/// byte products, summed per four elements; four lanes per sub-block.
///
/// # Safety
/// The CPU must support AVX-512F/BW, AVX2 and F16C; `src` holds whole blocks and
/// `x` 64 activations per block.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn dot_q8<const SB: u32>(src: &[u8], x: &Q8Activations) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let mut acc = _mm512_setzero_ps();
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        for (i, b) in src.chunks_exact(type_size::<SB>()).enumerate() {
            let c = codes_epi8::<SB>(b);
            let q = _mm512_loadu_si512(x.qs().as_ptr().add(i * BLOCK) as *const _);
            let p = _mm512_sub_epi16(
                _mm512_maddubs_epi16(_mm512_add_epi8(c, c), q),
                _mm512_maddubs_epi16(_mm512_set1_epi8(3), q),
            );
            let sums = _mm512_madd_epi16(p, _mm512_set1_epi16(1));
            let (db, sc) = (d(b), sub_scales::<SB>(b));
            let h0 = 0.5 * db * x.scales()[2 * i];
            let h1 = 0.5 * db * x.scales()[2 * i + 1];
            let f = _mm_setr_ps(
                h0 * sc[0] as f32,
                h0 * sc[1] as f32,
                h1 * sc[2] as f32,
                h1 * sc[3] as f32,
            );
            let f = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(f));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), f, acc);
        }
        _mm512_reduce_add_ps(acc)
    }
}
