//! End-to-end tests of the `gguftool` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gguftool")
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn malformed_files_exit_1_with_reason_under_memory_limit() {
    let dir = fixtures().join("malformed");
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).unwrap()
        + &std::fs::read_to_string(dir.join("fuzz-expected.tsv")).unwrap();
    for line in tsv.lines().filter(|l| !l.is_empty()) {
        let (file, expect) = line.split_once('\t').unwrap();
        let path = fixtures().join("malformed").join(file);
        for cmd in ["verify", "inspect"] {
            let start = Instant::now();
            // 1 GiB address-space limit: a parser that trusts a count would abort here.
            let out = Command::new("sh")
                .args(["-c", "ulimit -v 1048576; exec \"$0\" \"$1\" \"$2\""])
                .args([bin(), cmd, p(&path)])
                .output()
                .unwrap();
            let elapsed = start.elapsed();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{file} {cmd}: {err}");
            assert!(err.starts_with("error: "), "{file}: {err}");
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "{file}: not one line: {err}"
            );
            assert!(
                expect.split('|').any(|e| err.contains(e)),
                "{file}: {err:?} lacks {expect:?}"
            );
            assert!(elapsed < Duration::from_secs(1), "{file}: took {elapsed:?}");
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["verify"]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        run(&["dequantize", "a", "-o", "b", "--to", "q9"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn missing_file_exits_1() {
    let out = run(&["verify", "/nonexistent/x.gguf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/x.gguf"));
}

#[test]
fn inspect_json_describes_the_fixture() {
    let out = run(&[
        "inspect",
        "--json",
        p(&fixtures().join("tiny-llama-f32.gguf")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["tensor_count"], 21);
    assert_eq!(v["metadata"]["general.architecture"]["value"], "llama");
    // Arrays always have one shape, summarized or not, nested or not.
    let arr = |elem: &str, len: usize, values: serde_json::Value| serde_json::json!({"type": "array", "elem_type": elem, "len": len, "values": values, "truncated": false});
    assert_eq!(
        v["metadata"]["gguftool.fixture.nested"]["value"],
        arr(
            "array",
            2,
            serde_json::json!([
                arr("i32", 2, serde_json::json!([1, 2])),
                arr("i32", 3, serde_json::json!([3, 4, 5]))
            ])
        )
    );
    let tokens = &v["metadata"]["tokenizer.ggml.tokens"]["value"];
    assert_eq!(tokens["len"], 275);
    assert_eq!(tokens["truncated"], true);
    assert_eq!(tokens["type"], "array");
    assert_eq!(tokens["values"].as_array().unwrap().len(), 8);
    // Metadata keeps the file's order.
    let keys: Vec<&String> = v["metadata"].as_object().unwrap().keys().collect();
    assert_eq!(keys[0], "general.architecture");
    assert_eq!(keys[1], "general.name");
    assert_eq!(keys[2], "llama.context_length");
    let t0 = &v["tensors"][0];
    assert_eq!(t0["name"], "token_embd.weight");
    assert_eq!(t0["shape"], serde_json::json!([64, 275]));
    assert_eq!(t0["bytes"], 64 * 275 * 4);
}

/// Seals the tiny model into `dir` and returns the sealed path.
fn sealed_copy(dir: &Path) -> PathBuf {
    let out = dir.join("sealed.gguf");
    let o = run(&[
        "seal",
        p(&fixtures().join("tiny-llama-f32.gguf")),
        "-o",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn seal_keeps_tensor_bytes_and_verify_passes() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = sealed_copy(dir.path());
    let orig = gguftool_quant::registry::open(fixtures().join("tiny-llama-f32.gguf")).unwrap();
    let new = gguftool_quant::registry::open(&sealed).unwrap();
    for i in 0..orig.header().tensors.len() {
        assert_eq!(orig.tensor_data(i), new.tensor_data(i));
    }
    let v = run(&["verify", p(&sealed)]);
    assert!(v.status.success(), "{}", stderr(&v));
    assert!(stdout(&v).contains("sealed; metadata and all 21 tensor digests match"));
    // Output exists: refused without --force, replaced with it.
    let again = run(&[
        "seal",
        p(&fixtures().join("tiny-llama-f32.gguf")),
        "-o",
        p(&sealed),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"));
    let forced = run(&["seal", p(&sealed), "-o", p(&sealed), "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert!(run(&["verify", p(&sealed)]).status.success());
}

#[test]
fn verify_names_exactly_the_changed_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = sealed_copy(dir.path());
    let f = gguftool_quant::registry::open(&sealed).unwrap();
    let n = f.header().tensors.len();
    let offsets: Vec<(String, u64)> = f
        .header()
        .tensors
        .iter()
        .map(|t| (t.name.clone(), f.header().data_offset + t.offset))
        .collect();
    drop(f);
    let bytes = std::fs::read(&sealed).unwrap();
    for k in [0, n / 2, n - 1] {
        let (name, off) = &offsets[k];
        let mut b = bytes.clone();
        b[*off as usize + 3] ^= 0x40;
        let bad = dir.path().join(format!("bad{k}.gguf"));
        std::fs::write(&bad, &b).unwrap();
        let out = run(&["verify", "--json", p(&bad)]);
        assert_eq!(out.status.code(), Some(1));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["changed_tensors"], serde_json::json!([name]), "k={k}");
        assert_eq!(v["metadata_ok"], true);
        let text = run(&["verify", p(&bad)]);
        assert!(
            stderr(&text).contains(&format!("tensor {name:?}: data changed")),
            "{}",
            stderr(&text)
        );
    }
}

#[test]
fn verify_reports_metadata_edits() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = sealed_copy(dir.path());
    let mut bytes = std::fs::read(&sealed).unwrap();
    let needle = b"gguftool tiny llama fixture";
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[pos] = b'G';
    let bad = dir.path().join("meta.gguf");
    std::fs::write(&bad, &bytes).unwrap();
    let out = run(&["verify", p(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("metadata key \"general.name\" changed since sealing"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("\": data changed"),
        "no tensor was touched"
    );
}

#[test]
fn verify_flags_template_injection() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixtures().join("tiny-llama-f32.gguf")).unwrap();
    // Same length replacement inside the chat template string.
    let needle = b"{{ m['role'] }}";
    let evil = b"{{ lipsum.os }}";
    assert_eq!(needle.len(), evil.len());
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[pos..pos + evil.len()].copy_from_slice(evil);
    let f = dir.path().join("evil.gguf");
    std::fs::write(&f, &bytes).unwrap();
    let out = run(&["verify", p(&f)]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("suspicious patterns [\"lipsum\"]"),
        "{}",
        stderr(&out)
    );
    assert_eq!(run(&["verify", "--strict", p(&f)]).status.code(), Some(1));
}

#[test]
fn dequantize_matches_gguf_py_and_preserves_metadata() {
    let dir = tempfile::tempdir().unwrap();
    for ty in ["q4_k", "q4_1", "q8_0", "q6_k", "tq1_0"] {
        let src = fixtures().join("types").join(format!("{ty}.gguf"));
        let out = dir.path().join(format!("{ty}-f32.gguf"));
        let o = run(&["dequantize", p(&src), "-o", p(&out), "--to", "f32"]);
        assert!(o.status.success(), "{ty}: {}", stderr(&o));
        let f = gguftool_quant::registry::open(&out).unwrap();
        let h = f.header();
        let b = h.tensor_index("blocks").unwrap();
        let e = h.tensor_index("expected").unwrap();
        assert_eq!(h.tensors[b].type_name, "F32");
        assert_eq!(f.tensor_data(b), f.tensor_data(e), "{ty}");
        let src = gguftool_quant::registry::open(&src).unwrap();
        assert_eq!(
            h.metadata.get("gguftool.golden.type"),
            src.header().metadata.get("gguftool.golden.type")
        );
        assert!(run(&["verify", p(&out)]).status.success());
    }
}

#[test]
fn dequantize_to_f16_keeps_norms_f32() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f16.gguf");
    let o = run(&[
        "dequantize",
        p(&fixtures().join("tiny-llama-f32.gguf")),
        "-o",
        p(&out),
        "--to",
        "f16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = gguftool_quant::registry::open(&out).unwrap();
    let h = f.header();
    for t in &h.tensors {
        let want = if t.dims.len() == 1 { "F32" } else { "F16" };
        assert_eq!(t.type_name, want, "{}", t.name);
    }
    assert_eq!(
        h.metadata.get("general.file_type"),
        Some(&gguftool_gguf::Value::U32(1))
    );
    assert_eq!(
        h.metadata.get("tokenizer.chat_template"),
        gguftool_quant::registry::open(fixtures().join("tiny-llama-f32.gguf"))
            .unwrap()
            .header()
            .metadata
            .get("tokenizer.chat_template")
    );
}

#[test]
fn tokenize_prints_llama_tokenize_ids_and_pieces() {
    let vocab = fixtures().join("tokenizer/smollm2-vocab.gguf");
    let text = fixtures().join("tokenizer/texts/spaces.txt");
    let o = run(&["tokenize", p(&vocab), "-f", p(&text), "--ids"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let golden = std::fs::read_to_string(fixtures().join("tokenizer/smollm2_spaces.ids")).unwrap();
    assert_eq!(stdout(&o), golden);
    // Escapes are processed by default; control tokens are parsed; pieces escape control characters.
    let o = run(&["tokenize", p(&vocab), "-p", "<|im_start|>a\\nb"]);
    assert_eq!(
        stdout(&o),
        "     1 -> '<|im_start|>'\n    81 -> 'a'\n   198 -> '\\n'\n    82 -> 'b'\n"
    );
    let o = run(&[
        "tokenize",
        p(&vocab),
        "-p",
        "<|im_start|>",
        "--no-parse-special",
        "--ids",
    ]);
    assert_ne!(stdout(&o), "[1]\n");
    let o = run(&[
        "tokenize",
        p(&fixtures().join("valid-minimal.gguf")),
        "-p",
        "x",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("tokenizer.ggml.model"),
        "{}",
        stderr(&o)
    );
}

/// A header of `n` tiny pairs `kNNNNNNN = u8` (21 bytes each) and no tensors.
fn tiny_pairs(n: usize) -> Vec<u8> {
    use gguftool_gguf::write::encode_kv;
    let mut b = Vec::with_capacity(24 + 21 * n);
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(n as u64).to_le_bytes());
    for i in 0..n {
        encode_kv(
            &mut b,
            &format!("k{i:07}"),
            &gguftool_gguf::Value::U8(i as u8),
        );
    }
    b
}

/// 1 M tiny metadata pairs: table output lists the first 1000 keys and
/// says how many more there are, quickly; `--full` lists every one.
#[test]
fn inspect_summarizes_a_million_metadata_keys_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pairs.gguf");
    let n = 1_000_000;
    std::fs::write(&f, tiny_pairs(n)).unwrap();
    let start = Instant::now();
    let out = run(&["inspect", p(&f)]);
    let summary_time = start.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("metadata (1000000 keys):"), "{text}");
    assert!(text.contains("  k0000999 "), "{text}");
    assert!(!text.contains("  k0001000 "), "{text}");
    assert!(
        text.contains("  ... 999000 more keys not shown (use --full to list all)"),
        "{text}"
    );
    assert!(text.lines().count() < 1100);
    let start = Instant::now();
    let out = run(&["inspect", "--full", p(&f)]);
    let full_time = start.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("  k0999999 "));
    assert!(!text.contains("more keys not shown"));
    println!("inspect of {n} pairs: {summary_time:?} (summary), {full_time:?} (--full)");
    // Measured 0.42 s / 1.70 s (test profile, opt-level 2, on a loaded
    // 2-core machine; a plain debug build: 0.56 s / 3.3 s); the bounds leave
    // room for a slower machine and an unoptimized build.
    assert!(summary_time < Duration::from_secs(10), "{summary_time:?}");
    assert!(full_time < Duration::from_secs(30), "{full_time:?}");
}

/// A file larger than the address space allows for mapping it whole
/// (768 MiB sparse, `ulimit -v` 512 MiB) still verifies: the header is read,
/// tensor data mapped a window at a time. Without a terminal no progress is
/// drawn (stderr stays empty).
#[test]
#[cfg(target_os = "linux")]
fn verify_falls_back_to_windowed_maps_under_address_limit() {
    use gguftool_gguf::write::{encode_kv, encode_tensor_info};
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.gguf");
    let n_bytes = 256u64 << 20;
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&3u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    encode_kv(
        &mut b,
        "general.architecture",
        &gguftool_gguf::Value::String("llama".into()),
    );
    for i in 0..3u64 {
        encode_tensor_info(&mut b, &format!("t{i}"), 0, &[n_bytes / 4], i * n_bytes);
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    let len = b.len() as u64 + 3 * n_bytes;
    let file = std::fs::File::create(&f).unwrap();
    std::io::Write::write_all(&mut &file, &b).unwrap();
    file.set_len(len).unwrap();
    let out = Command::new("sh")
        .args(["-c", "ulimit -v 524288; exec \"$0\" verify \"$1\""])
        .args([bin(), p(&f)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok: "), "{}", stdout(&out));
    assert_eq!(stderr(&out), "");
    // Mapping it whole is what the limit forbids (`inspect` still maps).
    let out = Command::new("sh")
        .args(["-c", "ulimit -v 524288; exec \"$0\" inspect \"$1\""])
        .args([bin(), p(&f)])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("mapping the whole file (768.0 MiB) failed"),
        "{}",
        stderr(&out)
    );
}
