//! SIMD levels per architecture, runtime detection once per process, and the
//! `GGUFTOOL_SIMD` cap.
//!
//! Levels are not one total order: each architecture has its own chain
//! (x86-64: scalar < avx2 < avx512; aarch64: scalar < neon; wasm32:
//! scalar < simd128), and only scalar is common to all. [`SimdLevel::allows`]
//! answers "may a kernel written for level B run when the cap is A".

use std::sync::OnceLock;

/// Environment variable that caps the SIMD level (`scalar`, or a level of
/// this architecture). An unknown value is an error ([`init`]).
pub const ENV_OVERRIDE: &str = "GGUFTOOL_SIMD";

/// A SIMD instruction-set level a kernel can be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// Portable reference code; runs everywhere.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512F/BW (on top of AVX2).
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
    /// wasm32 128-bit SIMD.
    Simd128,
}

/// The instruction-set family a level belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdFamily {
    /// Scalar code (every architecture).
    Portable,
    /// x86-64.
    X86_64,
    /// aarch64.
    Aarch64,
    /// wasm32.
    Wasm32,
}

impl SimdLevel {
    /// Every level, on any architecture.
    pub const ALL: [SimdLevel; 5] = [
        SimdLevel::Scalar,
        SimdLevel::Avx2,
        SimdLevel::Avx512,
        SimdLevel::Neon,
        SimdLevel::Simd128,
    ];

    /// Lower-case name, as `GGUFTOOL_SIMD` and `--json` outputs spell it.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Neon => "neon",
            SimdLevel::Simd128 => "simd128",
        }
    }

    /// The family and the rank within it (scalar is rank 0 of every family).
    pub fn family_rank(self) -> (SimdFamily, u8) {
        match self {
            SimdLevel::Scalar => (SimdFamily::Portable, 0),
            SimdLevel::Avx2 => (SimdFamily::X86_64, 1),
            SimdLevel::Avx512 => (SimdFamily::X86_64, 2),
            SimdLevel::Neon => (SimdFamily::Aarch64, 1),
            SimdLevel::Simd128 => (SimdFamily::Wasm32, 1),
        }
    }

    /// True when a kernel written for `other` may run under the cap `self`:
    /// `other` is scalar, or of the same family and not above `self`.
    pub fn allows(self, other: SimdLevel) -> bool {
        let (fa, ra) = self.family_rank();
        let (fb, rb) = other.family_rank();
        fb == SimdFamily::Portable || (fa == fb && rb <= ra)
    }

    /// The lower of two levels of one family (scalar when the families differ).
    pub fn min(self, other: SimdLevel) -> SimdLevel {
        if self.allows(other) {
            other
        } else if other.allows(self) {
            self
        } else {
            SimdLevel::Scalar
        }
    }

    /// Parses a level name (case-insensitive, surrounding space ignored).
    pub fn parse(s: &str) -> Option<SimdLevel> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s))
    }
}

impl serde::Serialize for SimdLevel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A bad `GGUFTOOL_SIMD` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ENV_OVERRIDE}={value:?} is not a SIMD level of this machine (valid: {valid})")]
pub struct SimdEnvError {
    /// The value found.
    pub value: String,
    /// The accepted names, comma-separated.
    pub valid: String,
}

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
        #[cfg(target_arch = "aarch64")]
        SimdLevel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        SimdLevel::Simd128 => true,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Every level this CPU supports, lowest first within its family.
pub fn available() -> Vec<SimdLevel> {
    SimdLevel::ALL
        .into_iter()
        .filter(|l| supported(*l))
        .collect()
}

/// Best level this CPU supports.
pub fn detected() -> SimdLevel {
    available()
        .into_iter()
        .max_by_key(|l| l.family_rank().1)
        .unwrap_or(SimdLevel::Scalar)
}

/// The SIMD family of the architecture this binary was compiled for.
pub const ARCH_FAMILY: SimdFamily = if cfg!(target_arch = "x86_64") {
    SimdFamily::X86_64
} else if cfg!(target_arch = "aarch64") {
    SimdFamily::Aarch64
} else if cfg!(target_arch = "wasm32") {
    SimdFamily::Wasm32
} else {
    SimdFamily::Portable
};

/// Resolves a `GGUFTOOL_SIMD` value: `None` means no cap (the detected
/// level). A level of this architecture caps kernels to it; one above what
/// the CPU supports caps to the detected level (the cap only lowers).
///
/// # Errors
/// A name that is no level, or a level of another architecture.
pub fn resolve_override(value: Option<&str>) -> Result<SimdLevel, SimdEnvError> {
    let Some(v) = value else {
        return Ok(detected());
    };
    match SimdLevel::parse(v) {
        Some(l) if supported(l) => Ok(l),
        Some(l) if l.family_rank().0 == ARCH_FAMILY => Ok(detected()),
        _ => Err(SimdEnvError {
            value: v.to_string(),
            valid: SimdLevel::ALL
                .iter()
                .filter(|l| {
                    matches!(l.family_rank().0, SimdFamily::Portable)
                        || l.family_rank().0 == ARCH_FAMILY
                })
                .map(|l| l.name())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn active_result() -> &'static Result<SimdLevel, SimdEnvError> {
    static ACTIVE: OnceLock<Result<SimdLevel, SimdEnvError>> = OnceLock::new();
    ACTIVE.get_or_init(|| resolve_override(std::env::var(ENV_OVERRIDE).ok().as_deref()))
}

/// Checks `GGUFTOOL_SIMD` and returns the level kernels will run at.
/// Programs call it once at start-up to report a bad value.
///
/// # Errors
/// [`SimdEnvError`] for an unknown or unsupported value.
pub fn init() -> Result<SimdLevel, SimdEnvError> {
    active_result().clone()
}

/// The level kernels run at: the detected level, capped by `GGUFTOOL_SIMD`.
/// With a bad value (which [`init`] reports) kernels run scalar code.
pub fn active() -> SimdLevel {
    active_result().clone().unwrap_or(SimdLevel::Scalar)
}

/// The best level in `offered` that `cap` allows and this CPU supports
/// (scalar when none is).
pub fn pick(offered: &[SimdLevel], cap: SimdLevel) -> SimdLevel {
    offered
        .iter()
        .copied()
        .filter(|l| cap.allows(*l) && supported(*l))
        .max_by_key(|l| l.family_rank().1)
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

/// The levels of a crate with scalar and AVX2 kernels (only scalar off x86-64).
#[cfg(target_arch = "x86_64")]
pub const SCALAR_AVX2: &[SimdLevel] = &[SimdLevel::Scalar, SimdLevel::Avx2];
/// The levels of a crate with scalar and AVX2 kernels (only scalar off x86-64).
#[cfg(not(target_arch = "x86_64"))]
pub const SCALAR_AVX2: &[SimdLevel] = &[SimdLevel::Scalar];

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
        // SAFETY: the caller guarantees AVX; these are register-only operations.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// Sum of the eight i32 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2; call it from AVX2 kernels.
    #[inline(always)]
    pub unsafe fn hsum256_epi32(v: __m256i) -> i32 {
        // SAFETY: the caller guarantees AVX2; these are register-only operations.
        unsafe {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
            _mm_cvtsi128_si32(s)
        }
    }

    /// Bytes `8 * g .. 8 * g + 8` (`g` in 0..4) of `v`, zero-extended, as f32.
    ///
    /// # Safety
    /// The CPU must support AVX2; call it from AVX2 kernels.
    #[inline(always)]
    pub unsafe fn u8x8_ps(v: __m256i, g: i32) -> __m256 {
        // SAFETY: the caller guarantees AVX2; these are register-only operations.
        unsafe {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_separate_chains() {
        assert!(SimdLevel::Avx512.allows(SimdLevel::Avx2));
        assert!(SimdLevel::Avx2.allows(SimdLevel::Scalar));
        assert!(!SimdLevel::Avx2.allows(SimdLevel::Avx512));
        assert!(!SimdLevel::Avx512.allows(SimdLevel::Neon));
        assert!(!SimdLevel::Neon.allows(SimdLevel::Avx2));
        assert!(SimdLevel::Neon.allows(SimdLevel::Scalar));
        assert!(!SimdLevel::Scalar.allows(SimdLevel::Simd128));
    }

    #[test]
    fn override_values() {
        assert_eq!(resolve_override(Some("scalar")), Ok(SimdLevel::Scalar));
        assert_eq!(resolve_override(Some(" SCALAR ")), Ok(SimdLevel::Scalar));
        assert_eq!(resolve_override(None), Ok(detected()));
        let e = resolve_override(Some("bogus")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(e.to_string().contains("scalar"), "{e}");
        // A level of another architecture is refused, not silently ignored.
        #[cfg(target_arch = "x86_64")]
        assert!(resolve_override(Some("neon")).is_err());
    }

    #[test]
    fn pick_respects_cap_and_family() {
        let offered = [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512];
        assert_eq!(pick(&offered, SimdLevel::Scalar), SimdLevel::Scalar);
        assert_eq!(pick(&offered, SimdLevel::Neon), SimdLevel::Scalar);
        let got = pick(&offered, SimdLevel::Avx2);
        assert!(got == SimdLevel::Avx2 || !supported(SimdLevel::Avx2));
    }
}
