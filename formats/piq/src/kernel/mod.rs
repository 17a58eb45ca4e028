//! Kernel dispatch: scalar reference, AVX2 and AVX-512, chosen per call from
//! the requested level and what the CPU supports.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod scalar;

use crate::layout::PiqSpec;
use gguftool_quant::activation::Q8Activations;
use gguftool_quant::format::SimdLevel;
use gguftool_quant::simd::supported;

/// Levels implemented on this architecture.
pub const LEVELS: &[SimdLevel] = gguftool_quant::simd::SCALAR_AVX2_AVX512;

/// Decodes whole blocks at `level` (falls back when unsupported).
pub fn dequantize(spec: &PiqSpec, level: SimdLevel, src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if level.allows(SimdLevel::Avx512) && supported(SimdLevel::Avx512) {
            // SAFETY: the CPU supports AVX-512F/BW, AVX2 and FMA.
            return unsafe { avx512::dequantize(spec, src, dst) };
        }
        if level.allows(SimdLevel::Avx2) && supported(SimdLevel::Avx2) {
            // SAFETY: the CPU supports AVX2 and FMA.
            return unsafe { avx2::dequantize(spec, src, dst) };
        }
    }
    let _ = (level, supported);
    scalar::dequantize(spec, src, dst)
}

/// Dot product with f32 activations at `level`.
pub fn dot(spec: &PiqSpec, level: SimdLevel, src: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if level.allows(SimdLevel::Avx512) && supported(SimdLevel::Avx512) {
            // SAFETY: the CPU supports AVX-512F/BW, AVX2 and FMA.
            return unsafe { avx512::dot(spec, src, x) };
        }
        if level.allows(SimdLevel::Avx2) && supported(SimdLevel::Avx2) {
            // SAFETY: the CPU supports AVX2 and FMA.
            return unsafe { avx2::dot(spec, src, x) };
        }
    }
    scalar::dot(spec, src, x)
}

/// Dot product with 8-bit activations at `level`.
pub fn dot_q8(spec: &PiqSpec, level: SimdLevel, src: &[u8], x: &Q8Activations) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // AVX-512 uses the AVX2 kernel here (see the avx512 module).
        if level.allows(SimdLevel::Avx2) && supported(SimdLevel::Avx2) {
            // SAFETY: the CPU supports AVX2, FMA and F16C.
            return unsafe { avx2::dot_q8(spec, src, x) };
        }
    }
    scalar::dot_q8(spec, src, x)
}
