//! FLOPs of one distillation or block-wise training step of a GGUF model,
//! against candle's measured matmul rate on the step's own shapes.
//!
//! `cargo run --release -p gguftool-qat --example train_throughput -- MODEL.gguf
//! [--seqs 4] [--ctx 128] [--reps 3]`
//!
//! Counts, per trained token (scales and norm gains trained, latent weights
//! frozen, as the `qat` stages' defaults): the student's forward through the
//! block matrices (`2 n_in n_out` per matrix), the backward to the inputs
//! and to the fake-quantized weights (the scales' gradient is the weight
//! gradient reduced by the format's backward: `4 n_in n_out`), attention
//! scores and mixing (`4 T d_head n_head`, both directions, causal half not
//! subtracted), and for distillation the output head: teacher and student
//! logits and the student's backward to its hidden state (`6 V n_embd`).
//! Rates are candle's matmul on CPU with rayon's threads
//! (`RAYON_NUM_THREADS`), through `matmul_t`, the call `QLinear::forward` makes.

use candle_core::{Device, Tensor};
use gguftool_formats as _;
use gguftool_model::Model;
use std::time::Instant;

/// One matmul shape: `[m, k] x [k, n]`, seen `count` times per step.
struct Shape {
    what: &'static str,
    m: usize,
    k: usize,
    n: usize,
    count: usize,
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds per `[m, k] x [k, n]` product in candle (best of `reps`), the
/// right factor transposed as the model stores its matrices.
fn time_matmul(
    m: usize,
    k: usize,
    n: usize,
    reps: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let y = gguftool_qat::candle_model::matmul_t(&x, &w)?;
        std::hint::black_box(y.dims());
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first().filter(|a| !a.starts_with("--")) else {
        eprintln!("usage: train_throughput MODEL.gguf [--seqs 4] [--ctx 128] [--reps 3]");
        std::process::exit(2);
    };
    let (seqs, ctx, reps) = (
        arg(&args, "--seqs", 4),
        arg(&args, "--ctx", 128),
        arg(&args, "--reps", 3),
    );
    let model = Model::open(path, 0)?;
    let hp = model.hparams();
    let m = seqs * ctx;
    let d = hp.n_embd;
    let mut shapes = Vec::new();
    let mut body_params = 0usize;
    let mut attn_flops = 0usize;
    for l in 0..hp.n_layer {
        let (nh, nkv, ff) = (hp.n_head[l], hp.n_head_kv[l], hp.n_ff[l]);
        let q = nh * hp.head_dim_k;
        let kv = nkv * hp.head_dim_k;
        let o = nh * hp.head_dim_v;
        for (k, n) in [
            (d, q),
            (d, kv),
            (d, nkv * hp.head_dim_v),
            (o, d),
            (d, ff),
            (d, ff),
            (ff, d),
        ] {
            body_params += k * n;
            shapes.push((k, n));
        }
        // scores Q K^T and mixing P V, forward and backward (2 products each).
        attn_flops += 3 * 2 * 2 * ctx * nh * (hp.head_dim_k + hp.head_dim_v) / 2;
    }
    shapes.sort_unstable();
    let mut grouped: Vec<Shape> = Vec::new();
    for (k, n) in shapes {
        match grouped.last_mut() {
            Some(s) if s.k == k && s.n == n => s.count += 1,
            _ => grouped.push(Shape {
                what: "block matrix",
                m,
                k,
                n,
                count: 1,
            }),
        }
    }
    let head = Shape {
        what: "output head",
        m,
        k: d,
        n: hp.n_vocab,
        count: 1,
    };

    let body_per_token = 6 * body_params;
    let head_per_token = 6 * d * hp.n_vocab;
    println!(
        "{path}: {} layers, n_embd {d}, vocabulary {}, {:.1} M block-matrix parameters",
        hp.n_layer,
        hp.n_vocab,
        body_params as f64 / 1e6
    );
    println!(
        "per trained token: body 6 x params = {:.3} GFLOP, attention {:.3} GFLOP (ctx {ctx}), \
         head 6 V n_embd = {:.3} GFLOP",
        body_per_token as f64 / 1e9,
        attn_flops as f64 / 1e9,
        head_per_token as f64 / 1e9
    );
    println!(
        "  block-wise step: {:.3} GFLOP/token; distillation step: {:.3} GFLOP/token",
        (body_per_token + attn_flops) as f64 / 1e9,
        (body_per_token + attn_flops + head_per_token) as f64 / 1e9
    );
    println!(
        "\ncandle matmul, [m, k] x [k, n]^T, best of {reps}, threads {}:",
        rayon_threads()
    );
    println!("| product | m | k | n | ms | GFLOP/s |");
    println!("|---|---|---|---|---|---|");
    let mut body_time = 0.0;
    for s in grouped.iter().chain(std::iter::once(&head)) {
        // The three products of a step: y = x W^T, dx = dy W, dW = dy^T x,
        // timed as the forward's shape (same FLOPs; the layouts differ).
        let t = time_matmul(s.m, s.k, s.n, reps)?;
        let rate = 2.0 * (s.m * s.k * s.n) as f64 / t / 1e9;
        println!(
            "| {} ({}x) | {} | {} | {} | {:.2} | {:.1} |",
            s.what,
            s.count,
            s.m,
            s.k,
            s.n,
            t * 1e3,
            rate
        );
        if s.what == "block matrix" {
            body_time += 3.0 * t * s.count as f64;
        }
    }
    let head_time = 3.0 * time_matmul(head.m, head.k, head.n, reps)?;
    let body_rate = 2.0 * 3.0 * body_params as f64 * m as f64 / body_time / 1e9;
    println!(
        "\nbody matmuls at candle's rate: {:.2} s per step of {m} tokens ({body_rate:.1} GFLOP/s) \
         = {:.0} tokens/s block-wise ceiling; with the head {:.2} s = {:.0} tokens/s distillation ceiling",
        body_time,
        m as f64 / body_time,
        body_time + head_time,
        m as f64 / (body_time + head_time)
    );
    Ok(())
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
