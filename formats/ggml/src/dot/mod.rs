//! Dot kernels of the standard types, per type and SIMD level, as ggml's
//! `ggml_vec_dot_*`: float types against f32 activations, the 32-element
//! types against [`Q8Activations`] (ggml's Q8_0/Q8_1: the code sums carry
//! the min of Q4_1/Q5_1), the K-quants against [`Q8KActivations`].
//!
//! The integer kernels sum code products exactly in integers per block and
//! scale once per block in f32; scalar and AVX2 differ only in the order of
//! the f32 sums. AVX2 kernels assume activation codes in -127..=127 (what
//! the quantizers produce); a code of -128 may give a different (wrong but
//! memory-safe) result on AVX2, as in ggml.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod scalar;

use crate::StdType;
use gguftool_quant::activation::{Q8Activations, Q8KActivations, VecDotType, Q8K_BLOCK, Q8_BLOCK};
use gguftool_quant::format::{with_scratch, Kernel, SimdLevel};
#[cfg(target_arch = "x86_64")]
use gguftool_quant::simd::supported;

/// Which dot kernel a standard type has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotKind {
    /// None: decode-then-dot against 8-bit activations in blocks of 32.
    None,
    /// F32 against f32.
    F32,
    /// F16 against f32.
    F16,
    /// BF16 against f32.
    Bf16,
    /// Q4_0 against Q8 (32).
    Q4_0,
    /// Q4_1 against Q8 (32).
    Q4_1,
    /// Q5_0 against Q8 (32).
    Q5_0,
    /// Q5_1 against Q8 (32).
    Q5_1,
    /// Q8_0 against Q8 (32).
    Q8_0,
    /// IQ4_NL against Q8 (32).
    Iq4Nl,
    /// Q2_K against Q8_K.
    Q2K,
    /// Q3_K against Q8_K.
    Q3K,
    /// Q4_K against Q8_K.
    Q4K,
    /// Q5_K against Q8_K.
    Q5K,
    /// Q6_K against Q8_K.
    Q6K,
    /// IQ4_XS against Q8_K.
    Iq4Xs,
}

impl DotKind {
    /// The activation block type of the type's fast dot.
    pub fn vec_dot_type(self) -> VecDotType {
        use DotKind::*;
        match self {
            F32 | F16 | Bf16 => VecDotType::F32,
            None | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Iq4Nl => VecDotType::Q8_0,
            Q2K | Q3K | Q4K | Q5K | Q6K | Iq4Xs => VecDotType::Q8K,
        }
    }

    /// Levels implemented: scalar and AVX2 for types with kernels.
    pub fn simd_levels(self) -> &'static [SimdLevel] {
        match self {
            DotKind::None => &[SimdLevel::Scalar],
            _ => gguftool_quant::simd::SCALAR_AVX2,
        }
    }
}

/// True when `level` selects the AVX2 kernels on this CPU.
#[cfg(target_arch = "x86_64")]
#[inline]
fn use_avx2(level: SimdLevel) -> bool {
    level.allows(SimdLevel::Avx2) && supported(SimdLevel::Avx2)
}

/// Dot product of float weights with f32 activations; `None` for types
/// without an f32 kernel.
///
/// # Safety
/// The kernel contract: `src` holds `x.len()` elements of the type.
pub unsafe fn dot_f32(kind: DotKind, level: SimdLevel, src: &[u8], x: &[f32]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(level) {
        // SAFETY: AVX2, FMA and F16C are supported (use_avx2); the caller
        // guarantees src holds x.len() elements.
        return unsafe {
            match kind {
                DotKind::F32 => Some(avx2::dot_f32(src, x)),
                DotKind::F16 => Some(avx2::dot_f16(src, x)),
                DotKind::Bf16 => Some(avx2::dot_bf16(src, x)),
                _ => None,
            }
        };
    }
    let _ = level;
    match kind {
        DotKind::F32 => Some(scalar::dot_f32(src, x)),
        DotKind::F16 => Some(scalar::dot_f16(src, x)),
        DotKind::Bf16 => Some(scalar::dot_bf16(src, x)),
        _ => None,
    }
}

/// Dot product with 8-bit activations in blocks of 32; `None` for types
/// without such a kernel.
///
/// # Safety
/// The kernel contract: `src` holds whole blocks of the type covering
/// `x.len()` elements.
pub unsafe fn dot_q8(
    kind: DotKind,
    level: SimdLevel,
    src: &[u8],
    x: &Q8Activations,
) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(level) {
        // SAFETY: AVX2 and FMA are supported; the caller guarantees the
        // block counts of src and x agree.
        return unsafe {
            match kind {
                DotKind::Q4_0 => Some(avx2::q4_0(src, x)),
                DotKind::Q4_1 => Some(avx2::q4_1(src, x)),
                DotKind::Q5_0 => Some(avx2::q5_0(src, x)),
                DotKind::Q5_1 => Some(avx2::q5_1(src, x)),
                DotKind::Q8_0 => Some(avx2::q8_0(src, x)),
                DotKind::Iq4Nl => Some(avx2::iq4_nl(src, x)),
                _ => None,
            }
        };
    }
    let _ = level;
    match kind {
        DotKind::Q4_0 => Some(scalar::q4_0(src, x)),
        DotKind::Q4_1 => Some(scalar::q4_1(src, x)),
        DotKind::Q5_0 => Some(scalar::q5_0(src, x)),
        DotKind::Q5_1 => Some(scalar::q5_1(src, x)),
        DotKind::Q8_0 => Some(scalar::q8_0(src, x)),
        DotKind::Iq4Nl => Some(scalar::iq4_nl(src, x)),
        _ => None,
    }
}

/// Dot product with 8-bit activations in blocks of 256; `None` for types
/// without such a kernel.
///
/// # Safety
/// The kernel contract: `src` holds whole blocks of the type covering
/// `x.len()` elements.
pub unsafe fn dot_q8k(
    kind: DotKind,
    level: SimdLevel,
    src: &[u8],
    x: &Q8KActivations,
) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(level) {
        // SAFETY: AVX2 and FMA are supported; the caller guarantees the
        // block counts of src and x agree.
        return unsafe {
            match kind {
                DotKind::Q2K => Some(avx2::q2_k(src, x)),
                DotKind::Q3K => Some(avx2::q3_k(src, x)),
                DotKind::Q4K => Some(avx2::q4_k(src, x)),
                DotKind::Q5K => Some(avx2::q5_k(src, x)),
                DotKind::Q6K => Some(avx2::q6_k(src, x)),
                DotKind::Iq4Xs => Some(avx2::iq4_xs(src, x)),
                _ => None,
            }
        };
    }
    let _ = level;
    match kind {
        DotKind::Q2K => Some(scalar::q2_k(src, x)),
        DotKind::Q3K => Some(scalar::q3_k(src, x)),
        DotKind::Q4K => Some(scalar::q4_k(src, x)),
        DotKind::Q5K => Some(scalar::q5_k(src, x)),
        DotKind::Q6K => Some(scalar::q6_k(src, x)),
        DotKind::Iq4Xs => Some(scalar::iq4_xs(src, x)),
        _ => None,
    }
}

/// Decodes whole blocks with an AVX2 decoder when `level` allows one;
/// false when the caller must run the scalar decoder.
///
/// # Safety
/// The kernel contract: `src` holds whole blocks, `dst` their elements.
pub unsafe fn dequantize(kind: DotKind, level: SimdLevel, src: &[u8], dst: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(level) {
        // SAFETY: AVX2, FMA and F16C are supported; the caller guarantees
        // whole blocks and matching lengths.
        unsafe {
            match kind {
                DotKind::Q8_0 => avx2::dequant_q8_0(src, dst),
                DotKind::Q4_0 => avx2::dequant_q4_0(src, dst),
                DotKind::Q4K => avx2::dequant_q4_k(src, dst),
                DotKind::Q6K => avx2::dequant_q6_k(src, dst),
                _ => return false,
            }
        }
        return true;
    }
    let _ = (kind, level, src, dst);
    false
}

/// The decode-then-dot fallback (what `Kernel`'s default `dot_at` does).
///
/// # Safety
/// The kernel contract.
pub(crate) unsafe fn decode_then_dot(t: &StdType, level: SimdLevel, src: &[u8], x: &[f32]) -> f32 {
    with_scratch(x.len(), 0, |w, _| {
        // SAFETY: forwarded contract; w has x.len() elements.
        unsafe { t.dequantize_at(level, src, w) };
        w.iter().zip(x).map(|(a, b)| a * b).sum()
    })
}

/// The decode-then-dot fallback against blocks of 32 (`Kernel`'s default).
///
/// # Safety
/// The kernel contract.
pub(crate) unsafe fn decode_then_dot_q8(
    t: &StdType,
    level: SimdLevel,
    src: &[u8],
    x: &Q8Activations,
) -> f32 {
    with_scratch(x.len(), x.len(), |w, a| {
        // SAFETY: forwarded contract; w has x.len() elements.
        unsafe { t.dequantize_at(level, src, w) };
        for ((o, q), d) in a
            .chunks_exact_mut(Q8_BLOCK)
            .zip(x.qs().chunks_exact(Q8_BLOCK))
            .zip(x.scales())
        {
            o.iter_mut().zip(q).for_each(|(o, &q)| *o = q as f32 * d);
        }
        w.iter().zip(a.iter()).map(|(p, q)| p * q).sum()
    })
}

/// The decode-then-dot fallback against blocks of 256 (`Kernel`'s default).
///
/// # Safety
/// The kernel contract.
pub(crate) unsafe fn decode_then_dot_q8k(
    t: &StdType,
    level: SimdLevel,
    src: &[u8],
    x: &Q8KActivations,
) -> f32 {
    with_scratch(x.len(), x.len(), |w, a| {
        // SAFETY: forwarded contract; w has x.len() elements.
        unsafe { t.dequantize_at(level, src, w) };
        for ((o, q), d) in a
            .chunks_exact_mut(Q8K_BLOCK)
            .zip(x.qs().chunks_exact(Q8K_BLOCK))
            .zip(x.d())
        {
            o.iter_mut().zip(q).for_each(|(o, &q)| *o = q as f32 * d);
        }
        w.iter().zip(a.iter()).map(|(p, q)| p * q).sum()
    })
}
