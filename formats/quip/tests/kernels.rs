//! Q2+QuIP kernels: SIMD decode == scalar bit for bit, dots agree, the
//! matvec through the rotated activations equals the dot with the decoded
//! matrix, and incoherence beats plain 2-bit on outlier-heavy rows.

use gguftool_quant::activation::Q8Activations;
use gguftool_quant::format::{quantize, Format, SimdLevel};
use gguftool_quant::rows::RowCodec;
use gguftool_quant::simd;
use gguftool_quip::rotation::SplitMix64;
use gguftool_quip::{Q2_QUIP, Q2_QUIP_LITE};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| r.next_normal() as f32).collect()
}

/// Gaussian weights with a few large outliers, like real LLM rows.
fn heavy_tailed(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let g = r.next_normal() as f32 * 0.02;
            if r.next_u64().is_multiple_of(50) {
                g * 12.0
            } else {
                g
            }
        })
        .collect()
}

fn levels() -> Vec<SimdLevel> {
    Q2_QUIP
        .simd_levels()
        .iter()
        .copied()
        .filter(|&l| simd::supported(l))
        .collect()
}

/// Decode, dots and 8-bit dots of one variant on arbitrary blocks: SIMD
/// decode bit-identical to scalar, dots within rounding of the decoded dot.
fn check_variant<const SB: u32>(
    f: &gguftool_quip::Q2Quip<SB>,
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let ts = f.type_size();
    let mut src = bytes[..4 * ts].to_vec();
    for b in src.chunks_exact_mut(ts) {
        b[1] &= 0x3b; // finite f16 scales
    }
    let x = gaussian(256, 3);
    let q = Q8Activations::quantize(&x).expect("whole blocks");
    let mut want = vec![0f32; 256];
    f.dequantize_with(SimdLevel::Scalar, &src, &mut want)
        .unwrap();
    let dot_ref: f32 = want.iter().zip(&x).map(|(a, b)| a * b).sum();
    let dq_ref: f32 = want.iter().zip(q.dequantized()).map(|(a, b)| a * b).sum();
    let scale: f32 = want.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1e-6;
    for level in levels() {
        let mut got = vec![0f32; 256];
        f.dequantize_with(level, &src, &mut got).unwrap();
        prop_assert_eq!(&got, &want, "{} decode at {:?}", f.name(), level);
        let d = f.dot_with(level, &src, &x).unwrap();
        prop_assert!(
            (d - dot_ref).abs() <= 1e-5 * scale,
            "dot at {:?}: {} vs {}",
            level,
            d,
            dot_ref
        );
        let d8 = f.dot_q8_with(level, &src, &q).unwrap();
        prop_assert!(
            (d8 - dq_ref).abs() <= 1e-5 * scale,
            "dot_q8 at {:?}: {} vs {}",
            level,
            d8,
            dq_ref
        );
    }
    // The AVX-512 8-bit kernel is not dispatched (AVX2 is faster here); test it directly.
    #[cfg(target_arch = "x86_64")]
    if simd::supported(SimdLevel::Avx512) {
        // SAFETY: AVX-512F/BW, AVX2, FMA and F16C are present; whole blocks.
        let d8 = unsafe { gguftool_quip::kernel::avx512::dot_q8::<SB>(&src, &q) };
        prop_assert!(
            (d8 - dq_ref).abs() <= 1e-5 * scale,
            "avx512 dot_q8: {} vs {}",
            d8,
            dq_ref
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn simd_decode_is_bit_identical_and_dots_agree(bytes in proptest::collection::vec(any::<u8>(), 21 * 4)) {
        check_variant(&Q2_QUIP, &bytes)?;
        check_variant(&Q2_QUIP_LITE, &bytes)?;
    }
}

#[test]
fn the_lite_variant_packs_four_bit_scales_and_loses_little() {
    let (rows, n) = (8usize, 1024usize);
    let w = heavy_tailed(rows * n, 17);
    let sq = |f: &dyn Format| {
        let codec = RowCodec::new(f, n, Some(2)).unwrap();
        let mut enc = vec![0u8; rows * codec.row_bytes()];
        codec.encode(&w, None, &mut enc).unwrap();
        let mut dec = vec![0f32; w.len()];
        codec.decode(&enc, &mut dec).unwrap();
        (sqnr(&w, &dec), enc.len())
    };
    let ((full, full_len), (lite, lite_len)) = (sq(&Q2_QUIP), sq(&Q2_QUIP_LITE));
    assert_eq!(full_len, rows * n / 64 * 21);
    assert_eq!(lite_len, rows * n / 64 * 20);
    assert!(
        lite < full && lite > full - 0.5,
        "lite {lite:.2} dB vs {full:.2} dB"
    );
}

#[test]
fn matvec_through_rotated_activations_equals_dot_with_decoded_matrix() {
    let (rows, n) = (12usize, 640usize);
    let w = heavy_tailed(rows * n, 1);
    let codec = RowCodec::new(&Q2_QUIP, n, Some(42)).unwrap();
    let mut enc = vec![0u8; rows * codec.row_bytes()];
    codec.encode(&w, None, &mut enc).unwrap();
    let mut dec = vec![0f32; rows * n];
    codec.decode(&enc, &mut dec).unwrap();
    let x = gaussian(n, 2);
    let mut y = vec![0f32; rows];
    codec.matvec(&enc, &x, &mut y).unwrap();
    let mut y8 = vec![0f32; rows];
    codec.matvec_q8(&enc, &x, &mut y8).unwrap();
    for r in 0..rows {
        let row = &dec[r * n..(r + 1) * n];
        let want: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
        let mag: f32 = row.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        assert!(
            (y[r] - want).abs() <= 1e-4 * mag,
            "row {r}: {} vs {want}",
            y[r]
        );
        // 8-bit activations: within a few percent of the magnitude.
        assert!(
            (y8[r] - want).abs() <= 0.03 * mag,
            "row {r} q8: {} vs {want}",
            y8[r]
        );
    }
}

fn sqnr(x: &[f32], y: &[f32]) -> f64 {
    let s: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
    let e: f64 = x
        .iter()
        .zip(y)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    10.0 * (s / e).log10()
}

#[test]
fn rotation_beats_plain_two_bit_on_outlier_rows() {
    let (rows, n) = (16usize, 1024usize);
    let w = heavy_tailed(rows * n, 5);
    let codec = RowCodec::new(&Q2_QUIP, n, Some(1)).unwrap();
    let mut enc = vec![0u8; rows * codec.row_bytes()];
    codec.encode(&w, None, &mut enc).unwrap();
    let mut dec = vec![0f32; w.len()];
    codec.decode(&enc, &mut dec).unwrap();
    // The same blocks without rotation.
    let mut plain = vec![0u8; enc.len()];
    quantize(&Q2_QUIP, &w, None, &mut plain).unwrap();
    let mut plain_dec = vec![0f32; w.len()];
    Q2_QUIP.dequantize(&plain, &mut plain_dec).unwrap();
    let (rot, unrot) = (sqnr(&w, &dec), sqnr(&w, &plain_dec));
    assert!(
        rot > unrot + 1.0,
        "rotated {rot:.2} dB vs plain {unrot:.2} dB"
    );
    // Gaussian after rotation: 2-bit with 16-weight scales reaches ~9 dB.
    assert!(rot > 8.0, "rotated SQNR {rot:.2} dB");
}

#[test]
fn importance_lowers_the_weighted_error() {
    let n = 512;
    let w = gaussian(n * 8, 9);
    let imp: Vec<f32> = (0..w.len())
        .map(|i| if i % n < 64 { 50.0 } else { 1.0 })
        .collect();
    let codec = RowCodec::new(&Q2_QUIP, n, Some(3)).unwrap();
    let err = |importance: Option<&[f32]>| {
        let mut enc = vec![0u8; 8 * codec.row_bytes()];
        codec.encode(&w, importance, &mut enc).unwrap();
        let mut dec = vec![0f32; w.len()];
        codec.decode(&enc, &mut dec).unwrap();
        w.iter()
            .zip(&dec)
            .zip(&imp)
            .map(|((a, b), i)| i * (a - b).powi(2))
            .sum::<f32>()
    };
    let (with, without) = (err(Some(&imp)), err(None));
    assert!(
        with <= without,
        "weighted error {with} with importance vs {without} without"
    );
}

#[test]
fn missing_seed_is_an_error_naming_the_key() {
    let e = RowCodec::new(&Q2_QUIP, 128, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("gguftool.row_transform.seed"), "{e}");
}

#[test]
fn encoding_is_deterministic_and_all_zero_rows_decode_to_zero() {
    let codec = RowCodec::new(&Q2_QUIP, 128, Some(5)).unwrap();
    let w = heavy_tailed(256, 4);
    let (mut a, mut b) = (
        vec![0u8; 2 * codec.row_bytes()],
        vec![0u8; 2 * codec.row_bytes()],
    );
    codec.encode(&w, None, &mut a).unwrap();
    codec.encode(&w, None, &mut b).unwrap();
    assert_eq!(a, b);
    let zeros = vec![0f32; 128];
    let mut z = vec![0u8; codec.row_bytes()];
    codec.encode(&zeros, None, &mut z).unwrap();
    let mut dec = vec![1f32; 128];
    codec.decode(&z, &mut dec).unwrap();
    assert!(dec.iter().all(|&v| v == 0.0));
}

#[test]
fn ldlq_uses_the_importance_through_the_rotation() {
    // Importance spread over orders of magnitude, like an imatrix.
    let (rows, n) = (16usize, 384usize);
    let w = gaussian(rows * n, 21);
    let mut r = SplitMix64::new(8);
    let col_imp: Vec<f32> = (0..n)
        .map(|_| (r.next_normal() as f32 * 1.5).exp())
        .collect();
    let imp: Vec<f32> = (0..rows * n).map(|i| col_imp[i % n]).collect();
    let codec = RowCodec::new(&Q2_QUIP, n, Some(3)).unwrap();
    let weighted = |importance: Option<&[f32]>| {
        let mut enc = vec![0u8; rows * codec.row_bytes()];
        codec.encode(&w, importance, &mut enc).unwrap();
        let mut dec = vec![0f32; w.len()];
        codec.decode(&enc, &mut dec).unwrap();
        let e: f32 = w
            .iter()
            .zip(&dec)
            .zip(&imp)
            .map(|((a, b), i)| i * (a - b).powi(2))
            .sum();
        let s: f32 = w.iter().zip(&imp).map(|(a, i)| i * a * a).sum();
        10.0 * (s / e).log10()
    };
    let (with, without) = (weighted(Some(&imp)), weighted(None));
    eprintln!("LDLQ {with:.2} dB, plain {without:.2} dB");
    assert!(
        with > without + 1.5,
        "weighted SQNR {with:.2} dB with LDLQ vs {without:.2} dB without"
    );
}
