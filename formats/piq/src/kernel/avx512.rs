//! AVX-512 (F + BW) kernels: 16-wide decoding, and two blocks per step for
//! the 8-bit dot product. Decoding is bit-identical to the scalar reference.

use crate::kernel::avx2::codes_epi8;
use crate::kernel::scalar::{block_step, dot_q8_block};
use crate::layout::{PiqSpec, BLOCK};
use gguftool_core::activation::Q8Activations;
use std::arch::x86_64::*;

/// Decodes whole blocks.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW, AVX2 and FMA; `src` holds whole blocks and the other
/// buffers hold 32 elements per block of `src` (at least one block for `b`).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
pub unsafe fn dequantize(spec: &PiqSpec, src: &[u8], dst: &mut [f32]) {
    let off = _mm512_set1_ps(spec.offset);
    for (b, out) in src
        .chunks_exact(spec.type_size())
        .zip(dst.chunks_exact_mut(BLOCK))
    {
        let step = _mm512_set1_ps(block_step(spec, b));
        let codes = codes_epi8(spec, b);
        let halves = [
            _mm256_castsi256_si128(codes),
            _mm256_extracti128_si256(codes, 1),
        ];
        for (h, part) in halves.into_iter().enumerate() {
            let level = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(part)), off);
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * h), _mm512_mul_ps(step, level));
        }
    }
}

/// Dot product with f32 activations.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW, AVX2 and FMA; `src` holds whole blocks and the other
/// buffers hold 32 elements per block of `src` (at least one block for `b`).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
pub unsafe fn dot(spec: &PiqSpec, src: &[u8], x: &[f32]) -> f32 {
    let off = _mm512_set1_ps(spec.offset);
    let mut acc = _mm512_setzero_ps();
    for (b, xb) in src
        .chunks_exact(spec.type_size())
        .zip(x.chunks_exact(BLOCK))
    {
        let codes = codes_epi8(spec, b);
        let lo = _mm512_sub_ps(
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(codes))),
            off,
        );
        let hi = _mm512_sub_ps(
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(codes, 1))),
            off,
        );
        let s = _mm512_fmadd_ps(
            hi,
            _mm512_loadu_ps(xb.as_ptr().add(16)),
            _mm512_mul_ps(lo, _mm512_loadu_ps(xb.as_ptr())),
        );
        acc = _mm512_fmadd_ps(_mm512_set1_ps(block_step(spec, b)), s, acc);
    }
    _mm512_reduce_add_ps(acc)
}

/// Dot product with 8-bit activations, two blocks per 512-bit step, with
/// the same doubled odd levels as the AVX2 kernel (exact integer sums).
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW, AVX2, FMA and F16C; `src`
/// holds whole blocks and `x` holds 32 activations per block of `src`.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn dot_q8(spec: &PiqSpec, src: &[u8], x: &Q8Activations) -> f32 {
    let ts = spec.type_size();
    let n = src.len() / ts;
    let two_off = _mm512_set1_epi8((2.0 * spec.offset) as i8);
    let ones = _mm512_set1_epi16(1);
    let pik_half = spec.pi_over_k() * 0.5;
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i + 2 <= n {
        let (ba, bb) = (&src[i * ts..], &src[(i + 1) * ts..]);
        let codes = _mm512_inserti64x4(
            _mm512_castsi256_si512(codes_epi8(spec, ba)),
            codes_epi8(spec, bb),
            1,
        );
        let l2 = _mm512_sub_epi8(_mm512_add_epi8(codes, codes), two_off);
        let q = _mm512_loadu_si512(x.qs.as_ptr().add(i * BLOCK) as *const _);
        let neg = _mm512_movepi8_mask(l2);
        let signed_q = _mm512_mask_sub_epi8(q, neg, _mm512_setzero_si512(), q);
        let prod = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(l2), signed_q), ones);
        let alphas = _mm_cvtph_ps(_mm_cvtsi32_si128(
            (u16::from_le_bytes([ba[0], ba[1]]) as u32
                | ((u16::from_le_bytes([bb[0], bb[1]]) as u32) << 16)) as i32,
        ));
        let (sa, sb) = (
            _mm_cvtss_f32(alphas) * pik_half * x.scales[i],
            _mm_cvtss_f32(_mm_shuffle_ps(alphas, alphas, 1)) * pik_half * x.scales[i + 1],
        );
        let scale = _mm512_castpd_ps(_mm512_insertf64x4(
            _mm512_castps_pd(_mm512_castps256_ps512(_mm256_set1_ps(sa))),
            _mm256_castps_pd(_mm256_set1_ps(sb)),
            1,
        ));
        acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(prod), acc);
        i += 2;
    }
    let mut total = _mm512_reduce_add_ps(acc);
    if i < n {
        let q = &x.qs[i * BLOCK..(i + 1) * BLOCK];
        total += dot_q8_block(spec, &src[i * ts..], q, x.scales[i], x.sums[i]);
    }
    total
}
