//! `gguftool perplexity` on the tiny fixture, against llama-perplexity's
//! figures and logits file for it (fixtures/runtime, scripts/runtime_golden.sh).

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn perplexity_and_logits_file_match_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let model = s(&root().join("fixtures/tiny-llama-f32.gguf"));
    let text = s(&root().join("fixtures/runtime/tiny.txt"));
    let ours = dir.path().join("tiny.logits");
    let o = run(&[
        "perplexity",
        &model,
        "-f",
        &text,
        "-c",
        "32",
        "--chunks",
        "4",
        "-t",
        "2",
        "--kl-divergence-base",
        &s(&ours),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("[1]"), "{out}");
    assert!(out.contains("[4]"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("Final estimate: PPL = "))
        .unwrap();
    let ppl: f64 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
    // llama-perplexity on the same file and text: 289.0349 +/- 5.77463.
    assert!((ppl / 289.0349 - 1.0).abs() < 1e-3, "{line}");
    // Smaller forward batches (a chunk in several passes) change nothing.
    let o = run(&[
        "perplexity",
        &model,
        "-f",
        &text,
        "-c",
        "32",
        "--chunks",
        "4",
        "-b",
        "7",
    ]);
    let out7 = String::from_utf8(o.stdout).unwrap();
    assert!(out7.contains(line), "{out7}");
    // Same header and token stream as llama.cpp's file (same tokenizer,
    // same chunking), same size.
    let golden = std::fs::read(root().join("fixtures/runtime/tiny-llama.logits")).unwrap();
    let mine = std::fs::read(&ours).unwrap();
    assert_eq!(mine.len(), golden.len());
    let head = 20 + 4 * 32 * 4;
    assert_eq!(mine[..head], golden[..head]);

    // KL divergence against our own file is ~0; against llama.cpp's small.
    for base in [
        s(&ours),
        s(&root().join("fixtures/runtime/tiny-llama.logits")),
    ] {
        let o = run(&[
            "perplexity",
            &model,
            "--kl-divergence-base",
            &base,
            "--kl-divergence",
            "-t",
            "1",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(out.starts_with("chunk             PPL"), "{out}");
        let last = out.lines().find(|l| l.starts_with("   4")).unwrap();
        let kld: f64 = last.split_whitespace().nth(7).unwrap().parse().unwrap();
        assert!(kld < 1e-4, "{last}");
    }
}

#[test]
fn short_text_and_usage_errors() {
    let model = s(&root().join("fixtures/tiny-llama-f32.gguf"));
    let text = s(&root().join("fixtures/runtime/tiny.txt"));
    let o = run(&["perplexity", &model, "-f", &text, "-c", "4096"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("tokens") && err.contains("8192"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );

    // --kl-divergence needs the base file; -f is required otherwise.
    assert_eq!(
        run(&["perplexity", &model, "--kl-divergence"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(&["perplexity", &model]).status.code(), Some(2));
    assert_eq!(
        run(&["perplexity", &model, "-f", &text, "-c", "x"])
            .status
            .code(),
        Some(2)
    );
    // A missing model is a one-line error, exit 1.
    let o = run(&["perplexity", "/nonexistent.gguf", "-f", &text]);
    assert_eq!(o.status.code(), Some(1));
    // A logits file that is not one.
    let o = run(&[
        "perplexity",
        &model,
        "--kl-divergence-base",
        &text,
        "--kl-divergence",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("_logits_"));
}

/// Writes a llama.cpp-layout LoRA GGUF for the tiny model: one rank-4
/// adapter on `blk.0.attn_q.weight`, alpha 16.
fn write_adapter(path: &std::path::Path) {
    use gguftool_gguf::validate::StandardTypes;
    use gguftool_gguf::value::{Metadata, Value};
    use gguftool_gguf::write::{GgufWriter, TensorSpec};
    let mut md = Metadata::new();
    md.set("general.architecture", Value::String("llama".into()));
    md.set("general.type", Value::String("adapter".into()));
    md.set("adapter.type", Value::String("lora".into()));
    md.set("adapter.lora.alpha", Value::F32(16.0));
    let v = |n: usize, k: f32| -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.77 + k).sin() * 0.1).collect()
    };
    let tensors = [
        ("blk.0.attn_q.weight.lora_a", vec![64u64, 4], v(256, 0.3)),
        ("blk.0.attn_q.weight.lora_b", vec![4u64, 64], v(256, 1.9)),
    ];
    let specs = tensors
        .iter()
        .map(|(n, d, x)| TensorSpec {
            name: n.to_string(),
            ggml_type: 0,
            dims: d.clone(),
            n_bytes: x.len() as u64 * 4,
        })
        .collect();
    let f = std::fs::File::create(path).unwrap();
    let mut w = GgufWriter::begin(f, &md, specs, &StandardTypes).unwrap();
    for (_, _, x) in &tensors {
        let b: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_tensor_data(&b).unwrap();
    }
    w.finish().unwrap();
}

/// `--lora` / `--lora-scaled` (llama.cpp's flags) apply an adapter at run
/// time: it changes the perplexity, at scale 0 it changes nothing, and bad
/// scales (exit 2) and files that are no adapter (exit 1) are refused.
#[test]
fn lora_adapters_apply_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let model = s(&root().join("fixtures/tiny-llama-f32.gguf"));
    let text = s(&root().join("fixtures/runtime/tiny.txt"));
    let ad = dir.path().join("a.gguf");
    write_adapter(&ad);
    let ppl = |extra: &[&str]| -> (String, String) {
        let mut args = vec![
            "perplexity",
            &model,
            "-f",
            &text,
            "-c",
            "32",
            "--chunks",
            "2",
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        let out = String::from_utf8(o.stdout).unwrap();
        let line = out
            .lines()
            .find(|l| l.starts_with("Final estimate"))
            .unwrap();
        (line.to_string(), err)
    };
    let (base, _) = ppl(&[]);
    let (with, err) = ppl(&["--lora", &s(&ad)]);
    assert_ne!(with, base);
    assert!(err.contains("(1 matrices, alpha 16, scale 1)"), "{err}");
    let (zero, _) = ppl(&["--lora-scaled", &format!("{}:0", s(&ad))]);
    assert_eq!(zero, base);
    let (half, _) = ppl(&["--lora-scaled", &format!("{}:0.5", s(&ad))]);
    assert!(half != base && half != with, "{half}");
    // Two halves, comma-separated, add up to the whole adapter.
    let (two, err) = ppl(&["--lora-scaled", &format!("{0}:0.5,{0}:0.5", s(&ad))]);
    assert_eq!(two, with);
    assert_eq!(err.matches("scale 0.5").count(), 2, "{err}");

    for bad in [format!("{}:x", s(&ad)), s(&ad), format!("{}:inf", s(&ad))] {
        let o = run(&["perplexity", &model, "-f", &text, "--lora-scaled", &bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("expected FNAME:SCALE with a finite SCALE"),
            "{e}"
        );
    }
    let o = run(&["perplexity", &model, "-f", &text, "--lora", &model]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("general.type"));
}
