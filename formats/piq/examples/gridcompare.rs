//! Measures grid choices on real weights (docs/RESULTS.md):
//! PiQ (alpha * pi / k) vs a plain uniform step stored in f16, symmetric
//! half-integer levels vs the integer set, and MSE-optimal vs absmax scales.
//!
//! `cargo run --release -p gguftool-piq --example gridcompare -- model-f32.gguf`

use gguftool_ggml as _;
use gguftool_piq::encode::encode;
use gguftool_piq::kernel::scalar::dequantize;
use gguftool_piq::layout::{PiqSpec, BLOCK};
use gguftool_quant::registry;
use std::collections::BTreeMap;
use std::f32::consts::PI;

/// A quantize-then-decode function.
type Variant = Box<dyn Fn(&[f32]) -> Vec<f32>>;

/// Elements sampled per tensor (leading rows).
const SAMPLE: usize = 1 << 20;

fn roundtrip(spec: &PiqSpec, x: &[f32]) -> Vec<f32> {
    let mut enc = vec![0u8; x.len() / BLOCK * spec.type_size()];
    encode(spec, x, None, &mut enc);
    let mut out = vec![0f32; x.len()];
    dequantize(spec, &enc, &mut out);
    out
}

/// Symmetric grid with step = absmax / outermost level (no search).
fn absmax(spec: &PiqSpec, x: &[f32]) -> Vec<f32> {
    let max_code = (spec.n_codes() - 1) as f32;
    x.chunks_exact(BLOCK)
        .flat_map(|b| {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = half::f16::from_f32(amax / spec.offset).to_f32();
            b.iter()
                .map(move |v| {
                    if step == 0.0 {
                        0.0
                    } else {
                        step * ((v / step + spec.offset + 0.5).floor().clamp(0.0, max_code)
                            - spec.offset)
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn noise(x: &[f32], y: &[f32]) -> f64 {
    x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: gridcompare MODEL-F32.gguf");
    let f = gguftool_quant::registry::open(&path).expect("open");
    let variants: Vec<(&str, Variant)> = vec![
        (
            "piq3 half-int -3.5..3.5",
            Box::new(|x| {
                roundtrip(
                    &PiqSpec {
                        bits: 3,
                        k: 4.0,
                        offset: 3.5,
                    },
                    x,
                )
            }),
        ),
        (
            "uniform3 f16 step, half-int",
            Box::new(|x| {
                roundtrip(
                    &PiqSpec {
                        bits: 3,
                        k: PI,
                        offset: 3.5,
                    },
                    x,
                )
            }),
        ),
        (
            "piq3 int -4..3 (chosen)",
            Box::new(|x| roundtrip(&gguftool_piq::PIQ3, x)),
        ),
        (
            "uniform3 f16 step, int",
            Box::new(|x| {
                roundtrip(
                    &PiqSpec {
                        bits: 3,
                        k: PI,
                        offset: 4.0,
                    },
                    x,
                )
            }),
        ),
        (
            "absmax3 half-int",
            Box::new(|x| {
                absmax(
                    &PiqSpec {
                        bits: 3,
                        k: 4.0,
                        offset: 3.5,
                    },
                    x,
                )
            }),
        ),
        (
            "piq2 half-int -1.5..1.5",
            Box::new(|x| {
                roundtrip(
                    &PiqSpec {
                        bits: 2,
                        k: 3.0,
                        offset: 1.5,
                    },
                    x,
                )
            }),
        ),
        (
            "uniform2 f16 step, half-int",
            Box::new(|x| {
                roundtrip(
                    &PiqSpec {
                        bits: 2,
                        k: PI,
                        offset: 1.5,
                    },
                    x,
                )
            }),
        ),
        (
            "piq2 int -2..1 (chosen)",
            Box::new(|x| roundtrip(&gguftool_piq::PIQ2, x)),
        ),
        (
            "uniform2 f16 step, int",
            Box::new(|x| {
                roundtrip(
                    &PiqSpec {
                        bits: 2,
                        k: PI,
                        offset: 2.0,
                    },
                    x,
                )
            }),
        ),
        (
            "absmax2 half-int",
            Box::new(|x| {
                absmax(
                    &PiqSpec {
                        bits: 2,
                        k: 3.0,
                        offset: 1.5,
                    },
                    x,
                )
            }),
        ),
    ];
    // Per tensor kind (attn_q, ffn_down, ...): signal and per-variant noise.
    let mut by_kind: BTreeMap<String, (f64, Vec<f64>)> = BTreeMap::new();
    for (i, t) in f.header().tensors.iter().enumerate() {
        if t.dims.len() < 2 || t.row_len() % 32 != 0 {
            continue;
        }
        let fmt = registry::by_type_id(t.ggml_type).expect("decodable");
        let n = (t.n_elements as usize).min(SAMPLE) / t.row_len() as usize * t.row_len() as usize;
        let bytes = &f.tensor_data(i)[..n / fmt.block_size() * fmt.type_size()];
        let mut x = vec![0f32; n];
        fmt.dequantize(bytes, &mut x).expect("decode");
        let kind = t
            .name
            .split('.')
            .rev()
            .nth(1)
            .unwrap_or(&t.name)
            .to_string();
        let e = by_kind
            .entry(kind)
            .or_insert_with(|| (0.0, vec![0.0; variants.len()]));
        e.0 += x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
        for (k, (_, v)) in variants.iter().enumerate() {
            e.1[k] += noise(&x, &v(&x));
        }
    }
    let mut total = (0.0, vec![0.0; variants.len()]);
    print!("{:<14}", "tensor kind");
    for (name, _) in &variants {
        print!(" | {name}");
    }
    println!();
    for (kind, (sig, noises)) in &by_kind {
        print!("{kind:<14}");
        for nz in noises {
            print!(" | {:.2}", 10.0 * (sig / nz).log10());
        }
        println!();
        total.0 += sig;
        for (t, n) in total.1.iter_mut().zip(noises) {
            *t += n;
        }
    }
    print!("{:<14}", "all");
    for nz in &total.1 {
        print!(" | {:.2}", 10.0 * (total.0 / nz).log10());
    }
    println!("\n(SQNR in dB; higher is better)");
}
