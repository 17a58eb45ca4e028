//! Kernel throughput (GB/s of encoded weights): decoding for every
//! registered block format; decode, f32 dot and 8-bit dot per SIMD level for
//! formats with SIMD kernels. Single-threaded, 64 x 4096 matrix (in cache).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gguftool_benches::kernels::{dot_row, test_matrix, ROW};
use gguftool_formats as _;
use gguftool_quant::{registry, simd};

const ROWS: usize = 64;

fn bench_kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    g.sample_size(20);
    for f in registry::block_formats() {
        let (enc, x) = test_matrix(f, ROWS);
        // 8-bit activations in the format's own block type (32 or 256).
        let acts = f
            .kernel()
            .vec_dot_type()
            .quantize(&x)
            .expect("whole blocks");
        let row_bytes = enc.len() / ROWS;
        let mut out = vec![0f32; ROWS * ROW];
        g.throughput(Throughput::Bytes(enc.len() as u64));
        for level in simd::available()
            .into_iter()
            .filter(|l| f.simd_levels().contains(l))
        {
            let id = |k: &str| BenchmarkId::new(format!("{}/{k}", f.name()), level.name());
            g.bench_function(id("dequantize"), |b| {
                b.iter(|| f.dequantize_with(level, &enc, &mut out).unwrap())
            });
            if f.simd_levels().len() > 1 {
                g.bench_function(id("dot_f32"), |b| {
                    b.iter(|| {
                        enc.chunks_exact(row_bytes)
                            .map(|r| f.dot_with(level, r, &x).unwrap())
                            .sum::<f32>()
                    })
                });
                g.bench_function(id("dot_q8"), |b| {
                    b.iter(|| {
                        enc.chunks_exact(row_bytes)
                            .map(|r| dot_row(f, level, r, &acts))
                            .sum::<f32>()
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
