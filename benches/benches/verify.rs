//! `verify` throughput (parallel per-tensor SHA-256 over the mapping)
//! against `sha256sum` of the same 250 MB file, in the same run.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gguftool_gguf::integrity;
use std::process::Command;

fn bench_verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench-250mb.gguf");
    gguftool_benches::write_synthetic_gguf(&path, 250_000_000, 96).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let mut g = c.benchmark_group("verify_250MB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(size));
    g.bench_function("gguftool_verify", |b| {
        b.iter(|| {
            let f = gguftool_quant::registry::open(&path).unwrap();
            let r = integrity::check(&f);
            assert!(r.passed());
        })
    });
    g.bench_function("sha256sum", |b| {
        b.iter(|| {
            let out = Command::new("sha256sum").arg(&path).output().unwrap();
            assert!(out.status.success());
        })
    });
    g.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
