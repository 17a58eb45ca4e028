//! Kernel throughput measurement, shared by `gguftool bench` and the
//! criterion benches: decode, f32 dot and 8-bit dot per format and SIMD level,
//! single-threaded, on a matrix that stays in cache. The 8-bit dot runs
//! against each format's own activation blocks (its `vec_dot_type`: blocks
//! of 32, or of 256 for the K-quants), next to the decode-then-dot path that
//! `Kernel`'s default methods take, measured in the same run.

use gguftool_quant::activation::{Activations, Q8Activations, Q8_BLOCK};
use gguftool_quant::format::{quantize, with_scratch, Format, SimdLevel};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Row length of the benchmark matrix.
pub const ROW: usize = 4096;

fn level_name<S: serde::Serializer>(l: &SimdLevel, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(l.name())
}

/// One measured kernel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelThroughput {
    /// Format name.
    pub format: String,
    /// SIMD level (serialized by its lower-case name, as everywhere else).
    #[serde(serialize_with = "level_name")]
    pub level: SimdLevel,
    /// `dequantize`, `dot_f32`, `dot_q8` (8-bit activations in the format's
    /// own block type) or `dot_q8_decode` (the decode-then-dot fallback
    /// against 8-bit activations in blocks of 32).
    pub kernel: &'static str,
    /// Encoded bytes processed per second (GB/s = 1e9 bytes).
    pub gbytes_per_s: f64,
    /// Weights processed per second (G = 1e9).
    pub gweights_per_s: f64,
}

/// A deterministic test matrix of `rows` x [`ROW`] encoded with `f` (random
/// bytes when `f` cannot encode), and an activation vector.
pub fn test_matrix(f: &dyn Format, rows: usize) -> (Vec<u8>, Vec<f32>) {
    let n = rows * ROW;
    let mut rng = gguftool_quant::rng::SplitMix64::new(0x2545_f491_4f6c_dd1d);
    let mut next = move || rng.next_f32() - 0.5;
    let w: Vec<f32> = (0..n).map(|_| next() + next() + next()).collect();
    let x: Vec<f32> = (0..ROW).map(|_| next()).collect();
    let mut enc = vec![0u8; n / f.block_size() * f.type_size()];
    if quantize(f, &w, None, &mut enc).is_err() {
        enc.iter_mut()
            .for_each(|b| *b = (next() * 64.0) as i8 as u8 & 0x3f);
    }
    (enc, x)
}

fn time_per_iter(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut iters = 0u64;
    while start.elapsed() < budget {
        f();
        iters += 1;
    }
    start.elapsed().as_secs_f64() / iters as f64
}

/// The fast dot of one encoded row with activations of the format's own
/// block type ([`gguftool_quant::activation::VecDotType::quantize`]).
pub fn dot_row(f: &dyn Format, level: SimdLevel, row: &[u8], x: &Activations) -> f32 {
    match x {
        Activations::F32(v) => f.dot_with(level, row, v),
        Activations::Q8_0(q) => f.dot_q8_with(level, row, q),
        Activations::Q8K(q) => f.dot_q8k_with(level, row, q),
    }
    .unwrap_or(f32::NAN)
}

/// The decode-then-dot path of `Kernel`'s default `dot_q8_at`: decode the
/// row and the activations to f32 scratch, then one f32 dot.
pub fn decode_then_dot_q8(f: &dyn Format, level: SimdLevel, row: &[u8], x: &Q8Activations) -> f32 {
    with_scratch(x.len(), x.len(), |w, a| {
        if f.dequantize_with(level, row, w).is_err() {
            return f32::NAN;
        }
        for ((o, q), d) in a
            .chunks_exact_mut(Q8_BLOCK)
            .zip(x.qs().chunks_exact(Q8_BLOCK))
            .zip(x.scales())
        {
            o.iter_mut().zip(q).for_each(|(o, &q)| *o = q as f32 * d);
        }
        w.iter().zip(a.iter()).map(|(p, q)| p * q).sum()
    })
}

/// Measures the kernels of `f` at `level` for about `budget` each:
/// decode, f32 dot, 8-bit dot in the format's block type (not for float
/// types, whose fast dot is the f32 one) and the decode-then-dot fallback.
pub fn measure(f: &dyn Format, level: SimdLevel, budget: Duration) -> Vec<KernelThroughput> {
    let rows = 64;
    let (enc, x) = test_matrix(f, rows);
    let row_bytes = enc.len() / rows;
    let q8 = Q8Activations::quantize(&x).expect("whole blocks");
    let acts = f
        .kernel()
        .vec_dot_type()
        .quantize(&x)
        .expect("whole blocks");
    let mut out = vec![0f32; rows * ROW];
    let weights = (rows * ROW) as f64;
    let bytes = enc.len() as f64;
    let mut results = Vec::new();
    let mut record = |kernel: &'static str, secs: f64| {
        results.push(KernelThroughput {
            format: f.name().to_string(),
            level,
            kernel,
            gbytes_per_s: bytes / secs / 1e9,
            gweights_per_s: weights / secs / 1e9,
        })
    };
    let t = time_per_iter(budget, || {
        f.dequantize_with(level, black_box(&enc), &mut out).ok();
    });
    record("dequantize", t);
    let t = time_per_iter(budget, || {
        for r in enc.chunks_exact(row_bytes) {
            black_box(f.dot_with(level, black_box(r), &x).ok());
        }
    });
    record("dot_f32", t);
    if !matches!(acts, Activations::F32(_)) {
        let t = time_per_iter(budget, || {
            for r in enc.chunks_exact(row_bytes) {
                black_box(dot_row(f, level, black_box(r), &acts));
            }
        });
        record("dot_q8", t);
    }
    let t = time_per_iter(budget, || {
        for r in enc.chunks_exact(row_bytes) {
            black_box(decode_then_dot_q8(f, level, black_box(r), &q8));
        }
    });
    record("dot_q8_decode", t);
    results
}
