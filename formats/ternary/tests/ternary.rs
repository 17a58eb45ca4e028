//! Ternary kernels and encoders: SIMD == scalar, BitNet's absmean rule
//! reproduced exactly, the MSE rule optimal, QAT export == fake quant, and
//! lossless export to llama.cpp's TQ1_0/TQ2_0 when scales agree.

use gguftool_ggml as _;
use gguftool_quant::activation::Q8Activations;
use gguftool_quant::format::{quantize, Format, SimdLevel};
use gguftool_quant::rng::SplitMix64;
use gguftool_quant::{registry, simd};
use gguftool_ternary::encode::mse_optimal;
use proptest::prelude::*;

fn fmt(name: &str) -> &'static dyn Format {
    registry::by_name(name).unwrap()
}

fn weights(n: usize, seed: u64) -> Vec<f32> {
    // A heavy-ish tail from the project's one generator, deterministic.
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let u = rng.next_f64() as f32 - 0.5;
            u * u * u * 8.0 + u * 0.1
        })
        .collect()
}

fn decode(f: &dyn Format, enc: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    f.dequantize(enc, &mut out).unwrap();
    out
}

fn encode(f: &dyn Format, w: &[f32], imp: Option<&[f32]>) -> Vec<u8> {
    let mut enc = vec![0u8; w.len() / f.block_size() * f.type_size()];
    quantize(f, w, imp, &mut enc).unwrap();
    enc
}

proptest! {
    #[test]
    fn simd_decode_is_bit_identical_and_dots_agree(bytes in proptest::collection::vec(any::<u8>(), 18 * 4)) {
        let f = fmt("ternary");
        let mut src = bytes;
        for b in src.chunks_exact_mut(18) {
            b[1] &= 0x3b; // finite f16 scales
        }
        let x = weights(256, 3);
        let q = Q8Activations::quantize(&x).expect("whole blocks");
        let mut want = vec![0f32; 256];
        f.dequantize_with(SimdLevel::Scalar, &src, &mut want).unwrap();
        let dot_ref: f32 = want.iter().zip(&x).map(|(a, b)| a * b).sum();
        let dq_ref: f32 = want.iter().zip(q.dequantized()).map(|(a, b)| a * b).sum();
        let mag: f32 = want.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1e-6;
        for &level in f.simd_levels().iter().filter(|&&l| simd::supported(l)) {
            let mut got = vec![0f32; 256];
            f.dequantize_with(level, &src, &mut got).unwrap();
            prop_assert_eq!(&got, &want, "decode at {:?}", level);
            let d = f.dot_with(level, &src, &x).unwrap();
            prop_assert!((d - dot_ref).abs() <= 1e-5 * mag, "dot {:?}: {} vs {}", level, d, dot_ref);
            let d8 = f.dot_q8_with(level, &src, &q).unwrap();
            prop_assert!((d8 - dq_ref).abs() <= 1e-5 * mag, "dot_q8 {:?}: {} vs {}", level, d8, dq_ref);
        }
        // The AVX-512 8-bit kernel is not dispatched (AVX2 is faster here); test it directly.
        #[cfg(target_arch = "x86_64")]
        if simd::supported(SimdLevel::Avx512) {
            // SAFETY: AVX-512F/BW, AVX2, FMA and F16C are present; whole blocks.
            let d8 = unsafe { gguftool_ternary::kernel::avx512::dot_q8(&src, &q) };
            prop_assert!((d8 - dq_ref).abs() <= 1e-5 * mag, "avx512 dot_q8: {} vs {}", d8, dq_ref);
        }
    }
}

#[test]
fn absmean_rule_is_bitnet_b158() {
    let w = weights(64 * 8, 1);
    let dec = decode(fmt("ternary"), &encode(fmt("ternary"), &w, None), w.len());
    for (x, got) in w.chunks(64).zip(dec.chunks(64)) {
        let gamma = x.iter().map(|v| v.abs()).sum::<f32>() / 64.0;
        let d = half::f16::from_f32(gamma).to_f32();
        for (v, g) in x.iter().zip(got) {
            let t = (v / (gamma + 1e-8)).round().clamp(-1.0, 1.0);
            assert_eq!(*g, d * t);
        }
    }
}

fn sq_err(w: &[f32], d: &[f32], imp: &[f32]) -> f32 {
    w.iter()
        .zip(d)
        .zip(imp)
        .map(|((a, b), i)| i * (a - b).powi(2))
        .sum()
}

#[test]
fn mse_rule_beats_absmean_and_every_rounded_scale() {
    let w = weights(64 * 16, 2);
    let imp: Vec<f32> = (0..w.len()).map(|i| 1.0 + (i % 7) as f32).collect();
    for block in 0..16 {
        let x = &w[block * 64..(block + 1) * 64];
        let m = &imp[block * 64..(block + 1) * 64];
        let (d, t) = mse_optimal(x, m);
        let ours: Vec<f32> = t.iter().map(|&v| d * v as f32).collect();
        let e = sq_err(x, &ours, m);
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        for k in 1..=400 {
            let s = amax * k as f32 / 200.0;
            let r: Vec<f32> = x
                .iter()
                .map(|v| s * (v / s).round().clamp(-1.0, 1.0))
                .collect();
            assert!(
                e <= sq_err(x, &r, m) * (1.0 + 1e-5),
                "block {block}, scale {s}"
            );
        }
    }
    let ones = vec![1f32; w.len()];
    let e_mse = sq_err(
        &w,
        &decode(
            fmt("ternary_mse"),
            &encode(fmt("ternary_mse"), &w, None),
            w.len(),
        ),
        &ones,
    );
    let e_abs = sq_err(
        &w,
        &decode(fmt("ternary"), &encode(fmt("ternary"), &w, None), w.len()),
        &ones,
    );
    assert!(e_mse < e_abs, "mse {e_mse} vs absmean {e_abs}");
}

#[test]
fn qat_export_decodes_to_the_fake_quant_forward() {
    for name in ["ternary", "ternary_mse"] {
        let f = fmt(name);
        let dq = f.differentiable().unwrap();
        let w = weights(64 * 4, 5);
        let mut scales = vec![0f32; 4];
        dq.init_scales(&w, None, &mut scales);
        // f16-representable scales, so export and forward agree exactly.
        scales
            .iter_mut()
            .for_each(|s| *s = half::f16::from_f32(*s).to_f32());
        let mut fwd = vec![0f32; w.len()];
        dq.forward(&w, &scales, &mut fwd);
        let mut enc = vec![0u8; 4 * f.type_size()];
        dq.export(&w, &scales, &mut enc);
        assert_eq!(decode(f, &enc, w.len()), fwd, "{name}");
    }
}

#[test]
fn export_to_tq1_0_and_tq2_0_is_lossless_when_blocks_share_a_scale() {
    // Ternary weights with one scale per 256 (BitNet's per-tensor scale).
    let w: Vec<f32> = weights(256 * 3, 9)
        .iter()
        .map(|v| {
            if v.abs() < 0.05 {
                0.0
            } else {
                0.25 * v.signum()
            }
        })
        .collect();
    let tern = decode(
        fmt("ternary"),
        &encode(fmt("ternary_mse"), &w, None),
        w.len(),
    );
    assert_eq!(tern, w);
    for tq in ["tq1_0", "tq2_0"] {
        let back = decode(fmt(tq), &encode(fmt(tq), &tern, None), w.len());
        assert_eq!(back, w, "{tq}");
    }
}

#[test]
fn variants_share_one_layout() {
    let w = weights(64 * 4, 11);
    let enc = encode(fmt("ternary_mse"), &w, None);
    assert_eq!(
        decode(fmt("ternary"), &enc, w.len()),
        decode(fmt("ternary_mse"), &enc, w.len())
    );
}
