//! Set-up shared by the `gguftool qat` tests (`qat_block.rs`,
//! `qat_e2e.rs`): the tiny llama fixture and its text, running the binary,
//! the command line of a stage that trains on text.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tiny full-precision llama fixture (the teacher).
pub fn model() -> PathBuf {
    root().join("fixtures/tiny-llama-f32.gguf")
}

/// The fixture's training text.
pub fn text() -> PathBuf {
    root().join("fixtures/runtime/tiny.txt")
}

/// A path as a `&str`.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `gguftool` with `args`.
pub fn gguftool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args(args)
        .output()
        .unwrap()
}

/// [`gguftool`], asserting success.
pub fn ok(args: &[&str]) -> Output {
    let o = gguftool(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `gguftool convert` of the fixture to `format` at `out`, with `extra`
/// flags, asserting success.
pub fn convert_fixture(out: &Path, format: &str, extra: &[&str]) {
    let m = model();
    let mut args = vec!["convert", s(&m), "-o", s(out), "--format", format];
    args.extend_from_slice(extra);
    ok(&args);
}

/// `gguftool calibrate` of the fixture on its text (4 chunks of 32
/// tokens, one thread), written to `dir/cal.gguf`; returns that path.
pub fn calibration(dir: &Path) -> PathBuf {
    let cal = dir.join("cal.gguf");
    ok(&[
        "calibrate",
        s(&model()),
        "-f",
        s(&text()),
        "-o",
        s(&cal),
        "-c",
        "32",
        "--chunks",
        "4",
        "-t",
        "1",
    ]);
    cal
}

/// `gguftool perplexity` of `model` on the fixture's text (2 chunks of
/// 32 tokens, one thread), asserting success: the file runs in the runtime.
pub fn runs_in_runtime(model: &Path) -> Output {
    ok(&[
        "perplexity",
        s(model),
        "-f",
        s(&text()),
        "-c",
        "32",
        "--chunks",
        "2",
        "-t",
        "1",
    ])
}

/// `gguftool qat` of `stage` on the tiny fixture writing `out` (piq2,
/// 8 training and 2 held-out chunks of 32 tokens, one thread, --force).
pub fn stage_args(stage: &str, out: &Path) -> Vec<String> {
    [
        "qat",
        s(&model()),
        "-o",
        s(out),
        "--format",
        "piq2",
        "--stage",
        stage,
        "-f",
        s(&text()),
        "-c",
        "32",
        "--chunks",
        "8",
        "--heldout",
        "2",
        "-t",
        "1",
        "--force",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

/// `args` with the format `piq2` (as [`stage_args`] writes it) replaced by
/// `format`.
pub fn with_format(mut args: Vec<String>, format: &str) -> Vec<String> {
    let i = args.iter().position(|a| a == "piq2").unwrap();
    args[i] = format.into();
    args
}

/// Runs `args` followed by `extra`.
pub fn run(args: &[String], extra: &[&str]) -> Output {
    let mut v: Vec<&str> = args.iter().map(String::as_str).collect();
    v.extend_from_slice(extra);
    gguftool(&v)
}

/// Asserts a usage error (exit 2) whose message names `what`, and that
/// `out` was not written.
pub fn usage_error(o: &Output, what: &str, out: &Path) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{what}: {err}");
    assert!(err.contains(what), "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!out.exists(), "{what}: output written");
}

/// Runs `args` (with a pause of `delay_ms` per training step), sends
/// SIGINT after `after_ms`, and returns its output.
pub fn interrupt(args: &[String], delay_ms: u64, after_ms: u64) -> Output {
    interrupt_n(args, delay_ms, after_ms, 1)
}

/// [`interrupt`] with `count` SIGINTs 50 ms apart (as `timeout -s INT`
/// delivers one to the process and one to its group).
pub fn interrupt_n(args: &[String], delay_ms: u64, after_ms: u64, count: usize) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args(args)
        .env("GGUFTOOL_TEST_DELAY_PER_STEP_MS", delay_ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(after_ms));
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let k = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(k.success());
    }
    child.wait_with_output().unwrap()
}

/// The `--json` report of a successful run.
pub fn report(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}
