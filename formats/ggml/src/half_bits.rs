//! f16 and bf16 conversions with gguf-py/numpy semantics, NaN payloads included.

/// f16 bits to f32, keeping NaN payloads as numpy does (no quieting).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    if h & 0x7c00 == 0x7c00 && h & 0x03ff != 0 {
        let sign = ((h as u32) & 0x8000) << 16;
        return f32::from_bits(sign | 0x7f80_0000 | (((h as u32) & 0x03ff) << 13));
    }
    half::f16::from_bits(h).to_f32()
}

/// f32 to f16 bits, round-to-nearest-even; NaN keeps its top payload bits
/// (forced non-zero), as numpy does.
#[inline]
pub fn f32_to_f16(f: f32) -> u16 {
    if f.is_nan() {
        let x = f.to_bits();
        let sign = ((x >> 16) & 0x8000) as u16;
        let mut m = 0x7c00u16 + ((x & 0x007f_ffff) >> 13) as u16;
        if m == 0x7c00 {
            m += 1;
        }
        return sign | m;
    }
    half::f16::from_f32(f).to_bits()
}

/// bf16 bits to f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 to bf16 bits: NaN forced quiet, otherwise round-to-nearest-even
/// (ggml's `ggml_compute_fp32_to_bf16`).
#[inline]
pub fn f32_to_bf16(f: f32) -> u16 {
    let mut n = f.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u16
}

/// Reads a little-endian f16 at `b[0..2]` as f32.
#[inline]
pub fn read_f16(b: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_roundtrips_every_non_nan_pattern() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if !f.is_nan() {
                assert_eq!(f32_to_f16(f), h, "{h:#06x}");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0);
    }
}
