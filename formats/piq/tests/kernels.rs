//! Every SIMD level against the scalar reference, on random blocks.

use gguftool_piq as _;
use gguftool_quant::activation::Q8Activations;
use gguftool_quant::format::{Format, SimdLevel};
use gguftool_quant::{registry, simd};
use proptest::prelude::*;

fn formats() -> [&'static dyn Format; 2] {
    [
        registry::by_name("piq3").unwrap(),
        registry::by_name("piq2").unwrap(),
    ]
}

/// Random encoded blocks with finite alphas.
fn blocks(f: &dyn Format, n: usize, seed: &[u8]) -> Vec<u8> {
    let ts = f.type_size();
    let mut out: Vec<u8> = (0..n * ts)
        .map(|i| seed[i % seed.len()].wrapping_mul(31).wrapping_add(i as u8))
        .collect();
    for (b, &s) in out.chunks_exact_mut(ts).zip(seed.iter().cycle()) {
        let alpha = half::f16::from_f32((s as f32 - 128.0) / 512.0);
        b[..2].copy_from_slice(&alpha.to_bits().to_le_bytes());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn simd_levels_match_scalar(n in 1usize..24, seed in prop::collection::vec(any::<u8>(), 1..64), xs in prop::collection::vec(-4.0f32..4.0, 32)) {
        for f in formats() {
            let src = blocks(f, n, &seed);
            let x: Vec<f32> = (0..n * 32).map(|i| xs[i % 32] * (1.0 + (i / 32) as f32 * 0.01)).collect();
            let mut want = vec![0f32; n * 32];
            f.dequantize_with(SimdLevel::Scalar, &src, &mut want).unwrap();
            let dot_ref = f.dot_with(SimdLevel::Scalar, &src, &x).unwrap();
            let q8 = Q8Activations::quantize(&x).expect("whole blocks");
            let q8_ref = f.dot_q8_with(SimdLevel::Scalar, &src, &q8).unwrap();
            // Exact f32 dot of the decoded values, in f64, as the yardstick.
            let exact: f64 = want.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = want.iter().zip(&x).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            let tol = 1e-5 * mag + 1e-6;
            prop_assert!((dot_ref as f64 - exact).abs() <= tol);
            for level in simd::available() {
                let mut got = vec![0f32; n * 32];
                f.dequantize_with(level, &src, &mut got).unwrap();
                prop_assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{} {level:?} decode", f.name());
                let d = f.dot_with(level, &src, &x).unwrap();
                prop_assert!((d as f64 - exact).abs() <= tol, "{} {level:?} dot {d} vs {exact}", f.name());
                let dq = f.dot_q8_with(level, &src, &q8).unwrap();
                prop_assert!((dq - q8_ref).abs() as f64 <= tol, "{} {level:?} dot_q8 {dq} vs {q8_ref}", f.name());
            }
        }
    }
}

#[test]
fn q8_dot_approximates_f32_dot() {
    for f in formats() {
        let n = 20;
        let x: Vec<f32> = (0..n * 32)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..n * 32)
            .map(|i| ((i * 104_729) % 997) as f32 / 498.0 - 1.0)
            .collect();
        let mut src = vec![0u8; n * f.type_size()];
        gguftool_quant::format::quantize(f, &w, None, &mut src).unwrap();
        let exact = f.dot_with(SimdLevel::Scalar, &src, &x).unwrap();
        let q8 = f
            .dot_q8(&src, &Q8Activations::quantize(&x).unwrap())
            .unwrap();
        let mut dec = vec![0f32; x.len()];
        f.dequantize(&src, &mut dec).unwrap();
        // 8-bit activations carry at most half a step (amax/254) of error each.
        let bound: f32 = dec
            .iter()
            .zip(&x)
            .map(|(w, v)| w.abs() * v.abs().max(1.0) / 254.0)
            .sum();
        assert!(
            (q8 - exact).abs() <= bound,
            "{}: {q8} vs {exact} (bound {bound})",
            f.name()
        );
    }
}
