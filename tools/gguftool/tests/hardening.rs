//! "A new user's first hour": escaping, exit codes, validation, messages.

use gguftool_gguf::value::{Metadata, Value};
use gguftool_gguf::write::{GgufWriter, TensorSpec, WriteOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gguftool")
}

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama-f32.gguf")
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every byte that reaches a terminal from these commands is free of raw
/// control characters other than newline.
fn assert_no_raw_controls(text: &str, what: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{what} prints raw control characters: {text:?}"
    );
}

const EVIL_KEY: &str = "x.\x1b[2Jclear";
const EVIL_TENSOR: &str = "w\x1b]8;;http://x.invalid/\x1b\\link";
const NEWLINE_TENSOR: &str = "a.weight\nb.weight";

/// A file with a hostile key, a hostile chat template key and hostile tensor names.
fn evil_file(path: &Path) {
    let mut md = Metadata::new();
    md.set("general.architecture", Value::String("llama".into()));
    md.set(EVIL_KEY, Value::String("v\x1b[31mred".into()));
    md.set(
        "tokenizer.chat_template",
        Value::String("{{ ''.__class__.__mro__ }}".into()),
    );
    let names = [EVIL_TENSOR, NEWLINE_TENSOR];
    let specs: Vec<TensorSpec> = names
        .iter()
        .map(|n| TensorSpec {
            name: n.to_string(),
            ggml_type: 0,
            dims: vec![32, 2],
            n_bytes: 32 * 2 * 4,
        })
        .collect();
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = GgufWriter::begin(file, &md, specs, WriteOptions::default()).unwrap();
    for _ in names {
        let data: Vec<u8> = (0..64)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect();
        w.write_tensor_data(&data).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn names_from_the_file_are_escaped_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("evil.gguf");
    evil_file(&f);

    let table = run(&["inspect", s(&f)]);
    assert!(table.status.success(), "{}", err(&table));
    assert_no_raw_controls(&out(&table), "inspect");
    assert!(out(&table).contains("x.\\x1b[2Jclear"), "{}", out(&table));
    assert!(out(&table).contains("a.weight\\nb.weight"));

    let full = run(&["inspect", "--full", s(&f)]);
    assert_no_raw_controls(&out(&full), "inspect --full");

    let sums = run(&["verify", "--sha256sum", s(&f)]);
    let text = out(&sums);
    assert_no_raw_controls(&text, "verify --sha256sum");
    assert_eq!(text.lines().count(), 2, "one line per tensor: {text:?}");
    // sha256sum's convention: an escaped name starts its line with a backslash.
    assert!(text
        .lines()
        .any(|l| l.starts_with('\\') && l.ends_with("  a.weight\\nb.weight")));

    let verify = run(&["verify", s(&f)]);
    assert_no_raw_controls(&err(&verify), "verify warnings");
    assert_no_raw_controls(&out(&verify), "verify");

    let plan = run(&[
        "convert",
        s(&f),
        "-o",
        s(&dir.path().join("o.gguf")),
        "--format",
        "q8_0",
        "--dry-run",
    ]);
    assert!(plan.status.success(), "{}", err(&plan));
    assert_no_raw_controls(&out(&plan), "convert --dry-run");
    assert!(out(&plan).contains("w\\x1b]8;;http://x.invalid/\\x1b\\link"));

    let conv = run(&[
        "convert",
        s(&f),
        "-o",
        s(&dir.path().join("o.gguf")),
        "--format",
        "q4_0",
    ]);
    assert!(conv.status.success(), "{}", err(&conv));
    assert_no_raw_controls(&err(&conv), "convert summary");
}

#[test]
fn usage_errors_exit_2_and_data_errors_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o.gguf");
    let t = tiny();
    let base = ["convert", s(&t), "-o", s(&o), "--force"];
    let cases: &[(&[&str], &str)] = &[
        (&["--format", "bogus"], "unknown format or recipe"),
        (
            &["--format", "q4_0", "--tensor-type", "ffn_down"],
            "expected REGEX=FORMAT",
        ),
        (
            &["--format", "q4_0", "--tensor-type", "=piq3"],
            "empty pattern",
        ),
        (
            &["--format", "q4_0", "--tensor-type", "(=piq3"],
            "unclosed group",
        ),
        (&["--format", "q4_0", "--keep", "("], "unclosed group"),
        (
            &["--format", "q4_0", "--bpw", "3"],
            "--bpw goes with a recipe",
        ),
        (&["--format", "mixed"], "needs --bpw"),
        (
            &["--format", "q4_k"],
            "--format q4_k: this format cannot encode",
        ),
        (
            &["--format", "q4_0", "--fallback", "q5_k"],
            "--fallback q5_k: this format cannot encode",
        ),
        (
            &["--format", "q4_0", "--output-tensor-type", "q6_k"],
            "--output-tensor-type q6_k: this format cannot encode",
        ),
        (
            &["--format", "q4_0", "--tensor-type", "ffn_down=q4_k"],
            "--tensor-type q4_k: this format cannot encode",
        ),
        (
            &["--format", "q4_0", "--token-embedding-type", "q5_k"],
            "--token-embedding-type q5_k",
        ),
        (
            &["--format", "mixed", "--candidates", "f32", "--bpw", "2.86"],
            "not a quantized block format",
        ),
        (&["--format", "mixed", "--bpw", "nan"], "finite"),
        (&["--format", "mixed", "--bpw", "inf"], "finite"),
        (
            &["--format", "mixed", "--bpw", "1e308"],
            "above the largest candidate",
        ),
        (&["--format", "mixed", "--bpw=-1"], "finite"),
        (
            &["--format", "mixed", "--bpw", "1"],
            "below the smallest candidate",
        ),
    ];
    for (extra, expect) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let r = run(&args);
        let e = err(&r);
        assert_eq!(r.status.code(), Some(2), "{extra:?}: {e}");
        assert!(e.contains(expect), "{extra:?}: {e:?} lacks {expect:?}");
        assert_eq!(
            e.trim_end().lines().count(),
            1,
            "{extra:?}: not one line: {e}"
        );
        assert!(
            e.contains("formats that can") || !expect.contains("cannot encode"),
            "{e}"
        );
    }
    // The cannot-encode messages list the formats that can.
    let r = run(&[&base[..], &["--format", "q4_0", "--fallback", "q5_k"]].concat());
    assert!(err(&r).contains("formats that can: "), "{}", err(&r));
    // Data errors stay 1.
    let missing = run(&["inspect", s(&dir.path().join("missing.gguf"))]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn qat_accepts_the_flag_its_message_names_and_shows_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q4_0.gguf");
    let r = run(&["convert", s(&tiny()), "-o", s(&q), "--format", "q4_0"]);
    assert!(r.status.success(), "{}", err(&r));
    let o = dir.path().join("qat.gguf");
    let refused = run(&[
        "qat",
        s(&q),
        "-o",
        s(&o),
        "--format",
        "piq3",
        "--epochs",
        "1",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        err(&refused).contains("--allow-requantize"),
        "{}",
        err(&refused)
    );
    let accepted = run(&[
        "qat",
        s(&q),
        "-o",
        s(&o),
        "--format",
        "piq3",
        "--epochs",
        "1",
        "--allow-requantize",
    ]);
    assert!(accepted.status.success(), "{}", err(&accepted));

    let help = out(&run(&["qat", "--help"]));
    assert!(help.contains("[default: 4]"), "{help}");
    assert!(help.contains("[default: 0.01]"), "{help}");

    // A config file that leaves fields out gets the same defaults as no file.
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "seed = 1\n").unwrap();
    let t = tiny();
    let config = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "qat",
            s(&t),
            "-o",
            s(&o),
            "--format",
            "piq3",
            "--json",
            "--force",
        ];
        args.extend_from_slice(extra);
        let r = run(&args);
        assert!(r.status.success(), "{}", err(&r));
        serde_json::from_slice::<serde_json::Value>(&r.stdout).unwrap()["config"].clone()
    };
    let plain = config(&["--epochs", "1"]);
    let from_file = config(&["--config", s(&cfg), "--epochs", "1"]);
    for field in ["epochs", "learning_rate", "batch_size", "loss"] {
        assert_eq!(plain[field], from_file[field], "{field}");
    }
    assert_eq!(from_file["seed"], 1);
}
