//! Our forward of fixtures/tiny-llama-f32.gguf against llama.cpp's own
//! distributions: fixtures/runtime/tiny-llama.logits was written by
//! `llama-perplexity --kl-divergence-base` (scripts/runtime_golden.sh).

use gguftool_eval::kl_divergence;
use gguftool_formats as _;
use gguftool_model::{Logits, MatmulPath, Model, NoHooks};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model(path: MatmulPath) -> Model {
    let mut m = Model::open(root().join("fixtures/tiny-llama-f32.gguf"), 2).unwrap();
    m.set_matmul_path(path);
    m
}

struct Golden {
    n_ctx: usize,
    n_vocab: usize,
    n_chunk: usize,
    tokens: Vec<u32>,
    recs: Vec<u16>,
}

fn golden() -> Golden {
    let b = std::fs::read(root().join("fixtures/runtime/tiny-llama.logits")).unwrap();
    assert_eq!(&b[..8], b"_logits_");
    let i = |o: usize| i32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let (n_ctx, n_vocab, n_chunk) = (i(8), i(12), i(16));
    let tokens = (0..n_ctx * n_chunk).map(|k| i(20 + 4 * k) as u32).collect();
    let recs = b[20 + 4 * n_ctx * n_chunk..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Golden {
        n_ctx,
        n_vocab,
        n_chunk,
        tokens,
        recs,
    }
}

fn f32_of(lo: u16, hi: u16) -> f32 {
    let (a, b) = (lo.to_le_bytes(), hi.to_le_bytes());
    f32::from_le_bytes([a[0], a[1], b[0], b[1]])
}

#[test]
fn log_probs_match_llama_cpp() {
    let g = golden();
    let nv = 2 * g.n_vocab.div_ceil(2) + 4;
    let first = g.n_ctx / 2;
    let n_score = g.n_ctx - 1 - first;
    assert_eq!(g.recs.len(), g.n_chunk * n_score * nv);
    for path in [
        MatmulPath::Auto,
        MatmulPath::Kernels,
        MatmulPath::ReferenceF32,
    ] {
        let m = model(path);
        assert_eq!(m.n_vocab(), g.n_vocab);
        let mut cache = m.new_cache(g.n_ctx);
        let (mut worst, mut spread_min) = (0.0f32, f32::MAX);
        for c in 0..g.n_chunk {
            let mut toks = g.tokens[c * g.n_ctx..(c + 1) * g.n_ctx].to_vec();
            toks[0] = 1; // BOS, as llama-perplexity writes it
            cache.clear();
            let logits = m
                .forward(&mut cache, &toks, Logits::From(first), &mut NoHooks)
                .unwrap();
            for k in 0..n_score {
                let row = &logits[k * g.n_vocab..(k + 1) * g.n_vocab];
                let mx = row.iter().cloned().fold(f32::MIN, f32::max);
                let lse = mx + row.iter().map(|v| (v - mx).exp()).sum::<f32>().ln();
                let rec = &g.recs[(c * n_score + k) * nv..(c * n_score + k + 1) * nv];
                let (scale, minlp) = (f32_of(rec[0], rec[1]), f32_of(rec[2], rec[3]));
                let mut lo = f32::MAX;
                let mut hi = f32::MIN;
                for (v, &q) in row.iter().zip(&rec[4..4 + g.n_vocab]) {
                    let base = scale * q as f32 + minlp;
                    lo = lo.min(base);
                    hi = hi.max(base);
                    worst = worst.max((v - lse - base).abs());
                }
                spread_min = spread_min.min(hi - lo);
            }
        }
        eprintln!("{path:?}: worst {worst} spread {spread_min}");
        // Every position's log-probs spread over more than 0.05 nats, and
        // ours agree with llama.cpp's to 2% of that (8-bit activations
        // against llama.cpp's f32 ones, plus the file's 16-bit codes).
        assert!(spread_min > 0.05, "{spread_min}");
        assert!(
            worst < 0.02 * spread_min,
            "{path:?}: worst {worst} spread {spread_min}"
        );
    }
}

#[test]
fn kl_divergence_against_llama_cpp_file() {
    let m = model(MatmulPath::Auto);
    let f = std::fs::File::open(root().join("fixtures/runtime/tiny-llama.logits")).unwrap();
    let mut r = std::io::BufReader::new(f);
    let mut lines = Vec::new();
    let res = kl_divergence(&m, &mut r, Some(1), 2048, &mut |c| {
        lines.push(c.line.clone())
    })
    .unwrap();
    eprintln!("{lines:?} {res:?}");
    assert_eq!(lines.len(), 4);
    assert_eq!(res.count, 4 * 15);
    assert!(res.mean_kld < 1e-4, "{}", res.mean_kld);
    assert!(
        (res.ppl / res.ppl_base - 1.0).abs() < 2e-3,
        "{} {}",
        res.ppl,
        res.ppl_base
    );
    // llama.cpp prints statistics only from 100 tokens on.
    assert!(res.report.is_empty());
}
