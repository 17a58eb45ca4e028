//! Decode throughput of every registered format, in GB/s of encoded bytes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gguftool_core::registry;
use gguftool_ggml as _;

fn bench_dequantize(c: &mut Criterion) {
    const ELEMS: usize = 1 << 20;
    let mut g = c.benchmark_group("dequantize");
    for f in registry::all() {
        let n_blocks = ELEMS / f.block_size();
        let mut src = vec![0u8; n_blocks * f.type_size()];
        for (i, b) in src.iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] & 0x3f;
        }
        let mut dst = vec![0f32; n_blocks * f.block_size()];
        g.throughput(Throughput::Bytes(src.len() as u64));
        g.bench_function(f.name(), |b| {
            b.iter(|| f.dequantize(&src, &mut dst).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_dequantize);
criterion_main!(benches);
