//! "A new user's first hour": escaping, exit codes, validation, messages.

use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::value::{Metadata, Value};
use gguftool_gguf::write::{GgufWriter, TensorSpec};
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
    let mut w = GgufWriter::begin(file, &md, specs, &StandardTypes).unwrap();
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
            &["--format", "iq4_xs"],
            "--format iq4_xs: this format cannot encode",
        ),
        (
            &["--format", "q4_0", "--fallback", "mxfp4"],
            "--fallback mxfp4: this format cannot encode",
        ),
        (
            &["--format", "q4_0", "--output-tensor-type", "nvfp4"],
            "--output-tensor-type nvfp4: this format cannot encode",
        ),
        (
            &["--format", "q4_0", "--tensor-type", "ffn_down=iq4_xs"],
            "--tensor-type iq4_xs: this format cannot encode",
        ),
        (
            &["--format", "q4_0", "--token-embedding-type", "mxfp4"],
            "--token-embedding-type mxfp4",
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
    let r = run(&[&base[..], &["--format", "q4_0", "--fallback", "mxfp4"]].concat());
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
    assert!(help.contains("[default: 4 per-tensor, 2 block]"), "{help}");
    assert!(
        help.contains("[default: 0.01 per-tensor, 0.0001 block, 0.0001 e2e, 0.0005 lora]"),
        "{help}"
    );

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

#[test]
fn inputs_that_are_not_gguf_say_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let d = run(&["inspect", s(dir.path())]);
    assert_eq!(d.status.code(), Some(1));
    assert!(err(&d).contains("is a directory"), "{}", err(&d));

    let mut st = 64u64.to_le_bytes().to_vec();
    st.extend_from_slice(b"{\"__metadata__\":{}}");
    st.resize(8 + 64 + 16, b' ');
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("model.safetensors", st, "safetensors"),
        (
            "model.pt",
            b"PK\x03\x04\x14\x00\x00\x00".to_vec(),
            "zip archive",
        ),
        (
            "model.bin",
            vec![0x80, 0x02, 0x7d, 0x71, 0x00, 0x28],
            "pickle",
        ),
    ];
    for (name, bytes, expect) in cases {
        let f = dir.path().join(name);
        std::fs::write(&f, &bytes).unwrap();
        for cmd in ["inspect", "verify"] {
            let r = run(&[cmd, s(&f)]);
            let e = err(&r);
            assert_eq!(r.status.code(), Some(1), "{name}: {e}");
            assert!(e.contains("bad magic") && e.contains(expect), "{name}: {e}");
            assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        }
    }
    // The magic is shown as escaped text and hex, not as decimal bytes.
    let r = run(&["inspect", s(&dir.path().join("model.pt"))]);
    assert!(
        err(&r).contains("\"PK\\x03\\x04\" (hex 50 4b 03 04)"),
        "{}",
        err(&r)
    );
}

#[test]
fn inspect_shows_the_header_of_a_truncated_file_before_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(tiny()).unwrap();
    let f = dir.path().join("cut.gguf");
    std::fs::write(&f, &bytes[..200]).unwrap();
    let r = run(&["inspect", s(&f)]);
    assert_eq!(r.status.code(), Some(1));
    let o = out(&r);
    assert!(o.contains("version:     3"), "{o}");
    assert!(o.contains("tensors:     21 (declared)"), "{o}");
    assert!(o.contains("metadata:    23 keys (declared)"), "{o}");
    assert!(err(&r).starts_with("error: "), "{}", err(&r));
    assert_eq!(err(&r).trim_end().lines().count(), 1);
}

#[test]
fn bench_refuses_zero_millis() {
    let r = run(&["bench", "--millis", "0", "--format", "q8_0"]);
    assert_eq!(r.status.code(), Some(2), "{}", err(&r));
    assert!(err(&r).contains("--millis"));
    let bad = run(&["bench", "--millis", "1", "--format", "nope"]);
    assert_eq!(bad.status.code(), Some(2), "{}", err(&bad));
}

#[test]
fn convert_prints_a_summary_with_fallbacks_and_warns_on_low_bits_without_imatrix() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o.gguf");
    // tq2_0 has blocks of 256; the fixture's rows of 64 fall back to q8_0.
    let r = run(&["convert", s(&tiny()), "-o", s(&o), "--format", "tq2_0"]);
    assert!(r.status.success(), "{}", err(&r));
    let e = err(&r);
    assert!(e.contains("without --imatrix"), "{e}");
    assert!(e.contains("multiplies perplexity"), "{e}");
    assert!(e.contains("gguftool calibrate"), "{e}");
    let warnings = e.lines().filter(|l| l.starts_with("warning: ")).count();
    assert_eq!(warnings, 1, "one line: {e}");
    assert!(e.contains("types: "), "{e}");
    assert!(e.contains("q8_0 x"), "{e}");
    assert!(e.contains("bits/weight"), "{e}");
    assert!(e.contains("fallbacks: "), "{e}");
    assert!(e.contains("does not fit tq2_0"), "{e}");
    assert!(e.contains("(plan "), "{e}");

    let r = run(&[
        "convert",
        s(&tiny()),
        "-o",
        s(&o),
        "--format",
        "q8_0",
        "--force",
    ]);
    assert!(!err(&r).contains("without --imatrix"), "{}", err(&r));
    assert!(err(&r).contains("fallbacks: none"), "{}", err(&r));

    // A mixed budget below 3 bpw warns too; one above does not.
    for (bpw, warns) in [("2.8", true), ("4", false)] {
        let r = run(&[
            "convert",
            s(&tiny()),
            "-o",
            s(&o),
            "--format",
            "mixed",
            "--bpw",
            bpw,
            "--candidates",
            "piq2,q4_0",
            "--force",
        ]);
        assert!(r.status.success(), "{}", err(&r));
        assert_eq!(
            err(&r).contains("warning: converting to mixed at"),
            warns,
            "{bpw}: {}",
            err(&r)
        );
    }
}

#[test]
fn quality_lists_matrices_first_and_needs_no_imatrix() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o.gguf");
    assert!(
        run(&["convert", s(&tiny()), "-o", s(&o), "--format", "q8_0"])
            .status
            .success()
    );
    let r = run(&["quality", s(&tiny()), s(&o)]);
    assert!(r.status.success(), "{}", err(&r));
    let text = out(&r);
    let names: Vec<&str> = text
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("matrices"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let first_norm = names.iter().position(|n| n.contains("norm")).unwrap();
    assert!(
        names[first_norm..].iter().all(|n| n.contains("norm")),
        "norms after every matrix: {names:?}"
    );
}

#[test]
fn formats_lists_recipes_and_aligns_columns() {
    let r = run(&["formats"]);
    let text = out(&r);
    assert!(text.contains("recipes"), "{text}");
    assert!(text
        .lines()
        .any(|l| l.starts_with("mixed") && l.contains("recipe")));
    // The description column starts where its header does, even after the
    // longest SIMD list.
    let header = text.lines().next().unwrap();
    let col = header.find("description").unwrap();
    for (name, desc) in [("piq3", "3-bit pi-step"), ("q4_0", "4-bit, f16 scale")] {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        assert_eq!(row.find(desc), Some(col), "{row:?} vs {header:?}");
    }
    // Which formats `qat` can train: ours, not llama.cpp's.
    let qat = header.find(" qat").unwrap() + 1;
    for (name, yes) in [("piq2", true), ("q4_0", false)] {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        assert_eq!(
            &row[qat..qat + 3],
            if yes { "yes" } else { " no" },
            "{row:?}"
        );
    }
    let j: serde_json::Value = serde_json::from_slice(&run(&["formats", "--json"]).stdout).unwrap();
    assert!(j
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "recipe" && e["name"] == "mixed"));
}

#[test]
fn convert_refuses_to_replace_its_own_input() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.gguf");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama-f32.gguf"),
        &src,
    )
    .unwrap();
    let before = std::fs::read(&src).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args([
            "convert",
            src.to_str().unwrap(),
            "-o",
            src.to_str().unwrap(),
            "--format",
            "piq3",
            "--force",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the output is the input file"));
    assert_eq!(std::fs::read(&src).unwrap(), before);
}
