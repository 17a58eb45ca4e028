//! `gguftool generate` and `gguftool bench --model` on the tiny fixture.

use std::path::PathBuf;
use std::process::{Command, Output};

fn model() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tiny-llama-f32.gguf")
        .to_str()
        .unwrap()
        .to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args(args)
        .output()
        .unwrap()
}

fn gen(extra: &[&str]) -> Output {
    let m = model();
    let mut a = vec!["generate", &m, "-p", "the cat sat on", "-t", "2"];
    a.extend_from_slice(extra);
    run(&a)
}

#[test]
fn greedy_is_deterministic_and_seed_fixes_text() {
    let a = gen(&["--temp", "0", "-n", "16", "--no-display-prompt"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = gen(&["--temp", "0", "-n", "16", "--no-display-prompt", "-s", "9"]);
    assert_eq!(a.stdout, b.stdout);
    assert!(!a.stdout.is_empty());
    let err = String::from_utf8_lossy(&a.stderr);
    assert!(err.contains("prompt eval time"), "{err}");
    assert!(err.contains("tokens per second"), "{err}");
    assert!(err.contains("seed "), "{err}");

    let s1 = gen(&["-n", "16", "-s", "5"]);
    let s2 = gen(&["-n", "16", "-s", "5"]);
    assert!(s1.status.success());
    assert_eq!(s1.stdout, s2.stdout);
    // The prompt is echoed unless --no-display-prompt.
    assert!(String::from_utf8_lossy(&s1.stdout).starts_with("the cat sat on"));
}

#[test]
fn errors_and_exit_codes() {
    let long = gen(&["-c", "3"]);
    assert_eq!(long.status.code(), Some(1));
    let err = String::from_utf8_lossy(&long.stderr);
    assert!(err.contains("longer than the context of 3"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for bad in [
        &["--temp", "-1"][..],
        &["--top-p", "0"],
        &["--top-p", "1.5"],
        &["-n", "-2"],
        &["-t", "0"],
        &["-n", "x"],
    ] {
        let o = gen(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn bench_model_rows_and_json() {
    let m = model();
    let o = run(&[
        "bench", "--model", &m, "-p", "32", "-n", "8", "-r", "2", "-t", "1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    for test in ["pp32", "tg8"] {
        let line = out.lines().find(|l| l.contains(test)).expect(test);
        let ts: f64 = line
            .split('|')
            .nth(6)
            .unwrap()
            .split('±')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(ts > 0.0, "{line}");
    }
    let o = run(&[
        "bench", "--model", &m, "-p", "16", "-n", "4", "-r", "2", "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["test"], "pp16");
    assert_eq!(list[1]["test"], "tg4");
    for r in list {
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["stddev"].as_f64().unwrap() >= 0.0);
        assert!(r["n_threads"].as_u64().unwrap() >= 1);
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2);
        assert_eq!(r["model"], "tiny-llama-f32.gguf");
    }
    // Kernel mode still works; model-only flags need --model.
    let o = run(&["bench", "--format", "q4_0", "--millis", "1", "--json"]);
    assert!(o.status.success());
    assert_eq!(run(&["bench", "-r", "2"]).status.code(), Some(2));
    assert_eq!(
        run(&["bench", "--model", &m, "-r", "0"]).status.code(),
        Some(2)
    );
}
