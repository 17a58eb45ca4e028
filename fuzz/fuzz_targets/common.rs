//! Shared body of the decoder targets.
use gguftool_formats as _;
use gguftool_quant::activation::Q8Activations;
use gguftool_quant::format::{Format, SimdLevel};
use gguftool_quant::simd;

/// Decodes `bytes` (any length: wrong lengths must be refused, not read
/// past) with `f` at every SIMD level and checks decoders agree bit for bit.
pub fn exercise(f: &dyn Format, bytes: &[u8]) {
    let n = bytes.len() / f.type_size() * f.block_size();
    let mut wrong = vec![0f32; n + 1];
    assert!(
        f.dequantize(bytes, &mut wrong).is_err(),
        "length mismatch accepted"
    );
    let whole = &bytes[..bytes.len() / f.type_size() * f.type_size()];
    let mut reference = vec![0f32; n];
    f.dequantize_with(SimdLevel::Scalar, whole, &mut reference)
        .expect("whole blocks decode");
    for level in simd::available() {
        let mut out = vec![0f32; n];
        f.dequantize_with(level, whole, &mut out)
            .expect("whole blocks decode");
        assert!(
            out.iter()
                .zip(&reference)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{} {level:?} differs from scalar",
            f.name()
        );
        let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
        let _ = f.dot_with(level, whole, &x).expect("dot");
        if n % 32 == 0 {
            let _ = f
                .dot_q8_with(level, whole, &Q8Activations::quantize(&x).expect("n % 32 == 0"))
                .expect("dot q8");
        }
    }
}
