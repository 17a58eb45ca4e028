//! NVFP4: 64-element blocks of four 16-element sub-blocks, each with an
//! unsigned E4M3 scale, and E2M1 values.

use crate::legacy::E2M1_DOUBLED;

/// Unsigned E4M3 (bias 7) to f32, halved for the doubled-E2M1 convention;
/// 0x00 and 0x7f decode to zero, as in gguf-py.
pub fn ue4m3_to_f32_half(x: u8) -> f32 {
    if x == 0 || x == 0x7f {
        return 0.0;
    }
    let exp = ((x >> 3) & 0x0f) as i32;
    let man = (x & 7) as f32;
    let raw = if exp == 0 {
        man * (2f32).powi(-9)
    } else {
        (1.0 + man / 8.0) * (2f32).powi(exp - 7)
    };
    raw * 0.5
}

/// Decodes an NVFP4 block (36 bytes: scales[4], qs[32]).
pub fn dequant_nvfp4(b: &[u8], out: &mut [f32]) {
    for (s, sub) in out.chunks_exact_mut(16).enumerate() {
        let d = ue4m3_to_f32_half(b[s]);
        let qs = &b[4 + s * 8..4 + s * 8 + 8];
        for (k, o) in sub.iter_mut().enumerate() {
            let q = if k < 8 { qs[k] & 0x0f } else { qs[k - 8] >> 4 };
            *o = d * E2M1_DOUBLED[q as usize] as f32;
        }
    }
}
