//! Runtime SIMD level detection, once per process, with the
//! `GGUFTOOL_SIMD=scalar|avx2|avx512` override (which can only lower the level).

use crate::format::SimdLevel;
use std::sync::OnceLock;

/// Environment variable that caps the SIMD level.
pub const ENV_OVERRIDE: &str = "GGUFTOOL_SIMD";

/// True when this CPU can run code compiled for `level`.
pub fn supported(level: SimdLevel) -> bool {
    match level {
        SimdLevel::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => {
            static AVX2: OnceLock<bool> = OnceLock::new();
            *AVX2.get_or_init(|| {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            })
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => {
            static AVX512: OnceLock<bool> = OnceLock::new();
            *AVX512.get_or_init(|| {
                supported(SimdLevel::Avx2)
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

/// Best level this CPU supports.
pub fn detected() -> SimdLevel {
    [SimdLevel::Avx512, SimdLevel::Avx2]
        .into_iter()
        .find(|l| supported(*l))
        .unwrap_or(SimdLevel::Scalar)
}

/// Parses an override value.
pub fn parse_level(s: &str) -> Option<SimdLevel> {
    match s.trim().to_ascii_lowercase().as_str() {
        "scalar" => Some(SimdLevel::Scalar),
        "avx2" => Some(SimdLevel::Avx2),
        "avx512" => Some(SimdLevel::Avx512),
        _ => None,
    }
}

/// The level kernels run at: the detected level, capped by `GGUFTOOL_SIMD`.
pub fn active() -> SimdLevel {
    static ACTIVE: OnceLock<SimdLevel> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let best = detected();
        match std::env::var(ENV_OVERRIDE)
            .ok()
            .as_deref()
            .and_then(parse_level)
        {
            Some(wanted) => wanted.min(best),
            None => best,
        }
    })
}

/// Every level this CPU supports, lowest first.
pub fn available() -> Vec<SimdLevel> {
    [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .filter(|l| supported(*l))
        .collect()
}

/// The highest level in `offered` that is at most `cap` and supported here.
pub fn pick(offered: &[SimdLevel], cap: SimdLevel) -> SimdLevel {
    offered
        .iter()
        .copied()
        .filter(|l| *l <= cap && supported(*l))
        .max()
        .unwrap_or(SimdLevel::Scalar)
}

/// The levels of a format crate that implements scalar, AVX2 and AVX-512
/// kernels (only scalar off x86-64).
#[cfg(target_arch = "x86_64")]
pub const SCALAR_AVX2_AVX512: &[SimdLevel] =
    &[SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512];
/// The levels of a format crate that implements scalar, AVX2 and AVX-512
/// kernels (only scalar off x86-64).
#[cfg(not(target_arch = "x86_64"))]
pub const SCALAR_AVX2_AVX512: &[SimdLevel] = &[SimdLevel::Scalar];

/// Small x86-64 helpers shared by the format crates' kernels.
#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use std::arch::x86_64::*;

    /// Sum of the eight lanes.
    ///
    /// # Safety
    /// The CPU must support AVX; call it from AVX2 kernels.
    #[inline(always)]
    pub unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Bytes `8 * g .. 8 * g + 8` (`g` in 0..4) of `v`, zero-extended, as f32.
    ///
    /// # Safety
    /// The CPU must support AVX2; call it from AVX2 kernels.
    #[inline(always)]
    pub unsafe fn u8x8_ps(v: __m256i, g: i32) -> __m256 {
        let half = if g < 2 {
            _mm256_castsi256_si128(v)
        } else {
            _mm256_extracti128_si256(v, 1)
        };
        let part = if g % 2 == 0 {
            half
        } else {
            _mm_srli_si128(half, 8)
        };
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part))
    }
}
