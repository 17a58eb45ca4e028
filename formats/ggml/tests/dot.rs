//! Dot kernels of the standard types: every level against the
//! dequantize-then-dot of the same quantized activations, AVX2 against
//! scalar, exact integer results with unit scales, and the activation
//! quantization error against the f32 dot.

use gguftool_ggml::half_bits::f32_to_f16; // (also links the plugin)
use gguftool_quant::activation::{Q8Activations, Q8KActivations, VecDotType};
use gguftool_quant::format::{quantize, Format, SimdLevel};
use gguftool_quant::kernels::KernelTable;
use gguftool_quant::{registry, simd};

/// Types with dot kernels, with the byte offsets of their f16 scale fields.
const TYPES: &[(&str, &[usize])] = &[
    ("f32", &[]),
    ("f16", &[]),
    ("bf16", &[]),
    ("q4_0", &[0]),
    ("q4_1", &[0, 2]),
    ("q5_0", &[0]),
    ("q5_1", &[0, 2]),
    ("q8_0", &[0]),
    ("iq4_nl", &[0]),
    ("q2_k", &[80, 82]),
    ("q3_k", &[108]),
    ("q4_k", &[0, 2]),
    ("q5_k", &[0, 2]),
    ("q6_k", &[208]),
    ("iq4_xs", &[0]),
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }
}

fn fmt(name: &str) -> &'static dyn Format {
    registry::by_name(name).unwrap_or_else(|| panic!("{name} not registered"))
}

/// `n` elements of `f` as encoded bytes: random bytes with the f16 scale
/// fields set to finite values of magnitude 0.01..1 (or `unit`: 1.0), or
/// the encoder's output for float types.
fn blocks(f: &dyn Format, scales: &[usize], n: usize, rng: &mut Rng, unit: bool) -> Vec<u8> {
    let mut enc = vec![0u8; n / f.block_size() * f.type_size()];
    if f.block_size() == 1 {
        let w: Vec<f32> = (0..n).map(|_| rng.f() * 3.0).collect();
        quantize(f, &w, None, &mut enc).unwrap();
        return enc;
    }
    enc.iter_mut().for_each(|b| *b = rng.byte());
    for b in enc.chunks_exact_mut(f.type_size()) {
        for &o in scales {
            let v = if unit {
                1.0
            } else {
                let m = 0.01 + 0.99 * rng.f().abs();
                if rng.f() < 0.0 {
                    -m
                } else {
                    m
                }
            };
            b[o..o + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
        }
    }
    enc
}

fn levels(f: &dyn Format) -> Vec<SimdLevel> {
    f.simd_levels()
        .iter()
        .copied()
        .filter(|l| simd::supported(*l))
        .collect()
}

/// The kernel's dot at `level` and the activations as f32.
fn dot_at(f: &dyn Format, level: SimdLevel, w: &[u8], x: &Acts) -> f32 {
    match x {
        Acts::F32(v) => f.dot_with(level, w, v).unwrap(),
        Acts::Q8(q) => f.dot_q8_with(level, w, q).unwrap(),
        Acts::Q8K(q) => f.dot_q8k_with(level, w, q).unwrap(),
    }
}

enum Acts {
    F32(Vec<f32>),
    Q8(Q8Activations),
    Q8K(Q8KActivations),
}

impl Acts {
    fn quantize(t: VecDotType, x: &[f32]) -> Acts {
        match t {
            VecDotType::F32 => Acts::F32(x.to_vec()),
            VecDotType::Q8_0 => Acts::Q8(Q8Activations::quantize(x).unwrap()),
            VecDotType::Q8K => Acts::Q8K(Q8KActivations::quantize(x).unwrap()),
        }
    }
    fn values(&self) -> Vec<f32> {
        match self {
            Acts::F32(v) => v.clone(),
            Acts::Q8(q) => q.dequantized(),
            Acts::Q8K(q) => q.dequantized(),
        }
    }
}

/// Decode-then-dot in f64, and the sum of |w x| for the tolerance.
fn reference(f: &dyn Format, w: &[u8], x: &[f32]) -> (f64, f64) {
    let mut dec = vec![0f32; x.len()];
    f.dequantize(w, &mut dec).unwrap();
    let dot = dec.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
    let mag = dec
        .iter()
        .zip(x)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum();
    (dot, mag)
}

fn close(got: f32, want: f64, mag: f64) -> bool {
    (got as f64 - want).abs() <= 1e-5 * mag + 1e-6
}

#[test]
fn vec_dot_types_are_per_type() {
    for (name, _) in TYPES {
        let want = match *name {
            "f32" | "f16" | "bf16" => VecDotType::F32,
            n if n.ends_with("_k") || n == "iq4_xs" => VecDotType::Q8K,
            _ => VecDotType::Q8_0,
        };
        let f = fmt(name);
        assert_eq!(f.kernel().vec_dot_type(), want, "{name}");
        assert_eq!(f.simd_levels(), simd::SCALAR_AVX2, "{name}");
    }
    // Types without kernels keep the default (decode-then-dot, scalar).
    assert_eq!(fmt("tq2_0").kernel().vec_dot_type(), VecDotType::Q8_0);
    assert_eq!(fmt("tq2_0").simd_levels(), &[SimdLevel::Scalar]);
}

#[test]
fn every_level_matches_decode_then_dot() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (name, scales) in TYPES {
        let f = fmt(name);
        let t = f.kernel().vec_dot_type();
        // Odd block counts too (the AVX2 32-element kernels step 8 blocks).
        let sizes = [256usize, 1024, 2048, 13 * 32, 7 * 32, 32, 768];
        for n in sizes
            .into_iter()
            .filter(|n| n % f.block_size().max(t.block_size()) == 0)
        {
            let w = blocks(f, scales, n, &mut rng, false);
            let x: Vec<f32> = (0..n).map(|_| rng.f() * 2.0).collect();
            let acts = Acts::quantize(t, &x);
            let (want, mag) = reference(f, &w, &acts.values());
            for level in levels(f) {
                let got = dot_at(f, level, &w, &acts);
                assert!(
                    close(got, want, mag),
                    "{name} n={n} {level}: {got} vs {want} (|wx| {mag})"
                );
            }
        }
    }
}

#[test]
fn avx2_matches_scalar() {
    if !simd::supported(SimdLevel::Avx2) {
        return;
    }
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for (name, scales) in TYPES {
        let f = fmt(name);
        let t = f.kernel().vec_dot_type();
        for _ in 0..20 {
            let n = 512;
            let w = blocks(f, scales, n, &mut rng, false);
            let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
            let acts = Acts::quantize(t, &x);
            let (_, mag) = reference(f, &w, &acts.values());
            let s = dot_at(f, SimdLevel::Scalar, &w, &acts);
            let a = dot_at(f, SimdLevel::Avx2, &w, &acts);
            assert!(close(a, s as f64, mag), "{name}: avx2 {a} scalar {s}");
            if t == VecDotType::Q8K {
                // K-quants reduce each block exactly and scale it as scalar does.
                assert_eq!(a.to_bits(), s.to_bits(), "{name}: avx2 {a} scalar {s}");
            }
        }
    }
}

#[test]
fn unit_scales_give_the_exact_integer_dot() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for (name, scales) in TYPES.iter().filter(|(_, s)| !s.is_empty()) {
        let f = fmt(name);
        let t = f.kernel().vec_dot_type();
        for _ in 0..20 {
            let n = 1024;
            // d = dmin = 1 and activation scale 1: every weight and code is
            // an integer and every partial sum stays below 2^24.
            let w = blocks(f, scales, n, &mut rng, true);
            let codes: Vec<i8> = (0..n).map(|_| (rng.byte() % 17) as i8 - 8).collect();
            let acts = match t {
                VecDotType::Q8_0 => {
                    Acts::Q8(Q8Activations::from_parts(codes.clone(), vec![1.0; n / 32]).unwrap())
                }
                _ => Acts::Q8K(
                    Q8KActivations::from_parts(codes.clone(), vec![1.0; n / 256]).unwrap(),
                ),
            };
            let mut dec = vec![0f32; n];
            f.dequantize(&w, &mut dec).unwrap();
            let want: i64 = dec
                .iter()
                .zip(&codes)
                .map(|(&v, &c)| {
                    assert_eq!(v, v.trunc(), "{name}: non-integer weight {v}");
                    v as i64 * c as i64
                })
                .sum();
            for level in levels(f) {
                let got = dot_at(f, level, &w, &acts);
                assert_eq!(got, want as f32, "{name} {level}");
            }
        }
    }
}

#[test]
fn q8_dot_is_close_to_the_f32_dot() {
    let mut rng = Rng(0x0bad_5eed_0bad_5eed);
    for (name, scales) in TYPES.iter().filter(|(_, s)| !s.is_empty()) {
        let f = fmt(name);
        let t = f.kernel().vec_dot_type();
        let n = 2048;
        let w = blocks(f, scales, n, &mut rng, false);
        let x: Vec<f32> = (0..n).map(|_| rng.f() * 4.0).collect();
        let acts = Acts::quantize(t, &x);
        let mut dec = vec![0f32; n];
        f.dequantize(&w, &mut dec).unwrap();
        // Each activation moves by at most half its block's step, amax/254.
        let block = t.block_size();
        let bound: f64 = dec
            .chunks(block)
            .zip(x.chunks(block))
            .map(|(wb, xb)| {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                wb.iter().map(|v| v.abs() as f64).sum::<f64>() * amax / 254.0
            })
            .sum();
        let exact: f64 = dec.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
        let mag: f64 = dec
            .iter()
            .zip(&x)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum();
        let f32dot = f.dot_with(SimdLevel::Scalar, &w, &x).unwrap() as f64;
        assert!(
            (f32dot - exact).abs() < 1e-4 * bound.max(1.0),
            "{name}: f32 dot {f32dot} vs {exact}"
        );
        for level in levels(f) {
            let got = dot_at(f, level, &w, &acts) as f64;
            assert!(
                (got - exact).abs() <= bound * 1.001 + 1e-4,
                "{name} {level}: {got} vs {exact} (bound {bound})"
            );
            // Random errors mostly cancel: far below 0.5% of sum |w x|.
            assert!(
                (got - exact).abs() <= 0.005 * mag,
                "{name} {level}: {got} vs {exact} (|wx| {mag})"
            );
        }
    }
}

#[test]
fn kernel_table_uses_each_types_activation_blocks() {
    let mut rng = Rng(42);
    for (name, scales) in TYPES {
        let f = fmt(name);
        let n = 512;
        let table = KernelTable::new(f, n, None, simd::active()).unwrap();
        assert_eq!(table.vec_dot_type(), f.kernel().vec_dot_type(), "{name}");
        let w = blocks(f, scales, n, &mut rng, false);
        let x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
        let got = table
            .dot(&w, &table.quantize_activations(&x).unwrap())
            .unwrap();
        let acts = Acts::quantize(table.vec_dot_type(), &x);
        let want = dot_at(f, table.level(), &w, &acts);
        assert_eq!(got.to_bits(), want.to_bits(), "{name}");
    }
}

#[test]
fn avx2_dequantize_is_bit_identical_to_scalar() {
    if !simd::supported(SimdLevel::Avx2) {
        return;
    }
    let mut rng = Rng(0x5151_7a7a_0101_fefe);
    for (name, scales) in TYPES {
        let f = fmt(name);
        for raw in [false, true] {
            let n = 1024;
            let mut w = blocks(f, scales, n, &mut rng, false);
            if raw {
                // Any bytes, NaN and infinite scales included.
                w.iter_mut().for_each(|b| *b = rng.byte());
            }
            let (mut s, mut a) = (vec![0f32; n], vec![0f32; n]);
            f.dequantize_with(SimdLevel::Scalar, &w, &mut s).unwrap();
            f.dequantize_with(SimdLevel::Avx2, &w, &mut a).unwrap();
            for (i, (p, q)) in s.iter().zip(&a).enumerate() {
                assert_eq!(p.to_bits(), q.to_bits(), "{name} element {i}: {p} vs {q}");
            }
        }
    }
}
