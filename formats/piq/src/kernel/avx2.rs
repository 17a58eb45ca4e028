//! AVX2 kernels. Decoding is bit-identical to the scalar reference; dot
//! products differ only by summation order.

use crate::kernel::scalar::block_step;
use crate::layout::{PiqSpec, BLOCK};
use gguftool_quant::activation::Q8Activations;
use gguftool_quant::simd::x86::{hsum256 as hsum, u8x8_ps};
use std::arch::x86_64::*;

/// The 32 codes of a block as bytes, in element order.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `src` holds whole blocks and the other
/// buffers hold 32 elements per block of `src` (at least one block for `b`).
#[inline(always)]
pub unsafe fn codes_epi8(spec: &PiqSpec, b: &[u8]) -> __m256i {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let ql = i64::from_le_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]);
        // Lane k (64 bits) shifted right by 2k: byte i then holds element 8k + i.
        let v = _mm256_srlv_epi64(_mm256_set1_epi64x(ql), _mm256_setr_epi64x(0, 2, 4, 6));
        let mut codes = _mm256_and_si256(v, _mm256_set1_epi8(3));
        if spec.bits == 3 {
            let qh = u32::from_le_bytes([b[10], b[11], b[12], b[13]]);
            // Byte j takes byte j/8 of qh, then tests bit j%8.
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(qh as i32),
                _mm256_setr_epi8(
                    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
                    2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
                ),
            );
            let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits);
            codes = _mm256_or_si256(codes, _mm256_and_si256(set, _mm256_set1_epi8(4)));
        }
        codes
    }
}

/// Decodes whole blocks.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `src` holds whole blocks and the other
/// buffers hold 32 elements per block of `src` (at least one block for `b`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dequantize(spec: &PiqSpec, src: &[u8], dst: &mut [f32]) {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let off = _mm256_set1_ps(spec.offset);
        for (b, out) in src
            .chunks_exact(spec.type_size())
            .zip(dst.chunks_exact_mut(BLOCK))
        {
            let step = _mm256_set1_ps(block_step(spec, b));
            let codes = codes_epi8(spec, b);
            for g in 0..4 {
                let level = _mm256_sub_ps(u8x8_ps(codes, g), off);
                _mm256_storeu_ps(
                    out.as_mut_ptr().add(8 * g as usize),
                    _mm256_mul_ps(step, level),
                );
            }
        }
    }
}

/// Dot product with f32 activations.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `src` holds whole blocks and the other
/// buffers hold 32 elements per block of `src` (at least one block for `b`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(spec: &PiqSpec, src: &[u8], x: &[f32]) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let off = _mm256_set1_ps(spec.offset);
        let mut acc = _mm256_setzero_ps();
        for (b, xb) in src
            .chunks_exact(spec.type_size())
            .zip(x.chunks_exact(BLOCK))
        {
            let codes = codes_epi8(spec, b);
            let mut s = _mm256_setzero_ps();
            for g in 0..4 {
                let level = _mm256_sub_ps(u8x8_ps(codes, g), off);
                s = _mm256_fmadd_ps(level, _mm256_loadu_ps(xb.as_ptr().add(8 * g as usize)), s);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(block_step(spec, b)), s, acc);
        }
        hsum(acc)
    }
}

/// The block's f16 alpha bits.
#[inline(always)]
fn alpha(b: &[u8]) -> i64 {
    u16::from_le_bytes([b[0], b[1]]) as i64
}

/// `sum((code - offset) * q)` of block `i` in 8 f32 lanes (exact integers).
#[inline(always)]
unsafe fn block_sum(
    spec: &PiqSpec,
    b: &[u8],
    x: &Q8Activations,
    i: usize,
    integer_offset: bool,
) -> __m256 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let codes = codes_epi8(spec, b);
        let q = _mm256_loadu_si256(x.qs().as_ptr().add(i * BLOCK) as *const __m256i);
        let p16 = if integer_offset {
            let off = _mm256_set1_epi8(spec.offset as i8);
            _mm256_sub_epi16(_mm256_maddubs_epi16(codes, q), _mm256_maddubs_epi16(off, q))
        } else {
            let l2 = _mm256_sub_epi8(
                _mm256_add_epi8(codes, codes),
                _mm256_set1_epi8((2.0 * spec.offset) as i8),
            );
            _mm256_maddubs_epi16(_mm256_sign_epi8(l2, l2), _mm256_sign_epi8(q, l2))
        };
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }
}

/// Dot product with 8-bit activations. With integer offsets the sum
/// `sum((code - offset) * q)` is `maddubs(code, q) - maddubs(offset, q)` in
/// 16-bit lanes (exact: |sums| <= 2 * 7 * 127); half-integer offsets use
/// doubled odd levels with sign/abs instead. Two accumulators.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `src` holds whole blocks and `x`
/// holds 32 activations per block of `src`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8(spec: &PiqSpec, src: &[u8], x: &Q8Activations) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract
    // (CPU features, and buffer lengths that cover every access below).
    unsafe {
        let ts = spec.type_size();
        let n = src.len() / ts;
        let integer_offset = spec.offset.fract() == 0.0;
        let pik = _mm_set1_ps(spec.pi_over_k() * if integer_offset { 1.0 } else { 0.5 });
        let mut acc = [_mm256_setzero_ps(), _mm256_setzero_ps()];
        let mut i = 0;
        // Four blocks per step: their four scales are converted and multiplied as one vector.
        while i + 4 <= n {
            let b = &src[i * ts..(i + 4) * ts];
            let halves = alpha(b)
                | alpha(&b[ts..]) << 16
                | alpha(&b[2 * ts..]) << 32
                | alpha(&b[3 * ts..]) << 48;
            let scales = _mm_mul_ps(
                _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128(halves)), pik),
                _mm_loadu_ps(x.scales().as_ptr().add(i)),
            );
            let s01 = _mm256_castps128_ps256(scales);
            acc[0] = _mm256_fmadd_ps(
                _mm256_permutevar8x32_ps(s01, _mm256_setzero_si256()),
                block_sum(spec, b, x, i, integer_offset),
                acc[0],
            );
            acc[1] = _mm256_fmadd_ps(
                _mm256_permutevar8x32_ps(s01, _mm256_set1_epi32(1)),
                block_sum(spec, &b[ts..], x, i + 1, integer_offset),
                acc[1],
            );
            acc[0] = _mm256_fmadd_ps(
                _mm256_permutevar8x32_ps(s01, _mm256_set1_epi32(2)),
                block_sum(spec, &b[2 * ts..], x, i + 2, integer_offset),
                acc[0],
            );
            acc[1] = _mm256_fmadd_ps(
                _mm256_permutevar8x32_ps(s01, _mm256_set1_epi32(3)),
                block_sum(spec, &b[3 * ts..], x, i + 3, integer_offset),
                acc[1],
            );
            i += 4;
        }
        while i < n {
            let b = &src[i * ts..];
            let a = _mm_cvtss_f32(_mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128(alpha(b))), pik));
            acc[0] = _mm256_fmadd_ps(
                _mm256_set1_ps(a * x.scales()[i]),
                block_sum(spec, b, x, i, integer_offset),
                acc[0],
            );
            i += 1;
        }
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }
}
