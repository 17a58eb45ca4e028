//! Kernel dispatch: scalar reference, AVX2 and AVX-512, chosen per call from
//! the requested level and what the CPU supports.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod scalar;

use gguftool_quant::activation::Q8Activations;
use gguftool_quant::format::SimdLevel;
use gguftool_quant::simd::supported;

/// Levels implemented on this architecture.
pub const LEVELS: &[SimdLevel] = gguftool_quant::simd::SCALAR_AVX2_AVX512;

macro_rules! dispatch {
    ($level:expr, $f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $level.allows(SimdLevel::Avx512) && supported(SimdLevel::Avx512) {
                // SAFETY: the CPU supports AVX-512F/BW, AVX2, FMA and F16C; the
                // caller checked the buffer lengths against the blocks.
                return unsafe { avx512::$f($($arg),*) };
            }
            if $level.allows(SimdLevel::Avx2) && supported(SimdLevel::Avx2) {
                // SAFETY: the CPU supports AVX2, FMA and F16C; lengths checked.
                return unsafe { avx2::$f($($arg),*) };
            }
        }
        let _ = ($level, supported);
        scalar::$f($($arg),*)
    }};
}

/// Decodes whole blocks at `level` (falls back when unsupported).
pub fn dequantize(level: SimdLevel, src: &[u8], dst: &mut [f32]) {
    dispatch!(level, dequantize(src, dst))
}

/// Dot product with f32 activations at `level`.
pub fn dot(level: SimdLevel, src: &[u8], x: &[f32]) -> f32 {
    dispatch!(level, dot(src, x))
}

/// Dot product with 8-bit activations at `level`. The AVX-512 level runs
/// the AVX2 kernel: on the Zen 4 this was measured on, 512-bit byte
/// multiply-adds are double-pumped and the AVX2 kernel is 2.5x faster
/// (docs/RESULTS.md); `avx512::dot_q8` is kept and tested directly.
pub fn dot_q8(level: SimdLevel, src: &[u8], x: &Q8Activations) -> f32 {
    dispatch!(level.min(SimdLevel::Avx2), dot_q8(src, x))
}
