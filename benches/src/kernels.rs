//! Kernel throughput measurement, shared by `gguftool bench` and the
//! criterion benches: decode, f32 dot and 8-bit dot per format and SIMD level,
//! single-threaded, on a matrix that stays in cache.

use gguftool_quant::activation::Q8Activations;
use gguftool_quant::format::{quantize, Format, SimdLevel};
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
    /// `dequantize`, `dot_f32` or `dot_q8`.
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

/// Measures the three kernels of `f` at `level` for about `budget` each.
pub fn measure(f: &dyn Format, level: SimdLevel, budget: Duration) -> Vec<KernelThroughput> {
    let rows = 64;
    let (enc, x) = test_matrix(f, rows);
    let row_bytes = enc.len() / rows;
    let q8 = Q8Activations::quantize(&x);
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
    let t = time_per_iter(budget, || {
        for r in enc.chunks_exact(row_bytes) {
            black_box(f.dot_q8_with(level, black_box(r), &q8).ok());
        }
    });
    record("dot_q8", t);
    results
}
