//! `gguftool convert` and `gguftool quality` end to end on the tiny fixture.

use gguftool_formats as _;
use gguftool_gguf::integrity::sha256_hex;
use gguftool_gguf::{GgufFile, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama-f32.gguf")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn piq_conversion_follows_the_policy_and_records_provenance() {
    let dir = tempfile::tempdir().unwrap();
    for fmt in ["piq3", "piq2"] {
        let out = dir.path().join(format!("{fmt}.gguf"));
        ok(&["convert", s(&tiny()), "-o", s(&out), "--format", fmt]);
        let f = gguftool_quant::registry::open(&out).unwrap();
        let h = f.header();
        for t in &h.tensors {
            let want = match (t.dims.len(), t.name.as_str()) {
                (1, _) => "F32",
                (_, "output.weight") => "Q8_0",
                _ => fmt,
            };
            let got = gguftool_quant::registry::by_type_id(t.ggml_type)
                .unwrap()
                .name();
            assert!(
                got.eq_ignore_ascii_case(want),
                "{}: {got} vs {want}",
                t.name
            );
        }
        let md = &h.metadata;
        let src_sha = sha256_hex(&std::fs::read(tiny()).unwrap());
        assert_eq!(
            md.get("gguftool.convert.source_sha256"),
            Some(&Value::String(src_sha))
        );
        assert_eq!(
            md.get("gguftool.convert.format"),
            Some(&Value::String(fmt.into()))
        );
        assert!(
            md.get("general.file_type").is_none(),
            "no llama.cpp file type for {fmt}"
        );
        let orig = gguftool_quant::registry::open(tiny()).unwrap();
        assert_eq!(
            md.get("tokenizer.chat_template"),
            orig.header().metadata.get("tokenizer.chat_template")
        );
        ok(&["verify", s(&out)]);

        let q = ok(&["quality", "--json", s(&tiny()), s(&out)]);
        let v: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
        let sqnr = v["matrices"]["sqnr_db"].as_f64().unwrap();
        // Gaussian weights: about 6 dB per bit, minus the clipping/scale overhead.
        let (lo, hi) = if fmt == "piq3" {
            (13.0, 18.0)
        } else {
            (8.0, 12.0)
        };
        assert!(sqnr > lo && sqnr < hi, "{fmt}: SQNR {sqnr}");

        // The PiQ file decodes to an F32 file with the same values.
        let back = dir.path().join(format!("{fmt}-f32.gguf"));
        ok(&["dequantize", s(&out), "-o", s(&back)]);
        let q2 = ok(&["quality", "--json", s(&out), s(&back)]);
        let v2: serde_json::Value = serde_json::from_slice(&q2.stdout).unwrap();
        assert_eq!(v2["all"]["rmse"], 0.0);
    }
}

#[test]
fn overrides_keep_and_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let src = tiny();
    let args = [
        "convert",
        s(&src),
        "-o",
        s(&out),
        "--format",
        "piq2",
        "--keep",
        "attn_q",
        "--tensor-type",
        "ffn_down=q4_0",
        "--output-tensor-type",
        "piq3",
    ];
    let plan = ok(&[&args[..], &["--dry-run", "--json"]].concat());
    assert!(!out.exists(), "dry run wrote a file");
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let to = |name: &str| -> String {
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["to"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(to("blk.0.attn_q.weight"), "f32");
    assert_eq!(to("blk.1.ffn_down.weight"), "q4_0");
    assert_eq!(to("output.weight"), "piq3");
    assert_eq!(to("blk.0.ffn_up.weight"), "piq2");
    // The predicted size is exact.
    ok(&args);
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        v["output_file_size"].as_u64().unwrap()
    );
    // An existing output is not overwritten without --force.
    let again = run(&["convert", s(&tiny()), "-o", s(&out), "--format", "piq2"]);
    assert_eq!(again.status.code(), Some(1));
}

#[test]
fn quantized_input_needs_allow_requantize() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q8.gguf");
    ok(&["convert", s(&tiny()), "-o", s(&q), "--format", "q8_0"]);
    let out = dir.path().join("p.gguf");
    let refused = run(&["convert", s(&q), "-o", s(&out), "--format", "piq2"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--allow-requantize"));
    ok(&[
        "convert",
        s(&q),
        "-o",
        s(&out),
        "--format",
        "piq2",
        "--allow-requantize",
    ]);
    let unknown = run(&[
        "convert",
        s(&tiny()),
        "-o",
        s(&out),
        "--format",
        "piq9",
        "--force",
    ]);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "an unknown format is a usage error"
    );
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("\"piq9\": unknown format or recipe"), "{err}");
}

/// A legacy .dat importance matrix that makes column 0 of every row of one
/// tensor dominant.
fn legacy_imatrix(path: &Path, tensor: &str, row_len: usize) {
    let mut b = 1i32.to_le_bytes().to_vec();
    b.extend((tensor.len() as i32).to_le_bytes());
    b.extend(tensor.as_bytes());
    b.extend(1i32.to_le_bytes());
    b.extend((row_len as i32).to_le_bytes());
    for j in 0..row_len {
        b.extend((if j % 32 == 0 { 1000.0f32 } else { 1.0 }).to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn imatrix_weights_the_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let im = dir.path().join("m.dat");
    let name = "blk.0.ffn_up.weight";
    legacy_imatrix(&im, name, 64);
    let (plain, weighted) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    ok(&["convert", s(&tiny()), "-o", s(&plain), "--format", "piq2"]);
    ok(&[
        "convert",
        s(&tiny()),
        "-o",
        s(&weighted),
        "--format",
        "piq2",
        "--imatrix",
        s(&im),
    ]);
    let (o, a, b) = (
        gguftool_quant::registry::open(tiny()).unwrap(),
        gguftool_quant::registry::open(&plain).unwrap(),
        gguftool_quant::registry::open(&weighted).unwrap(),
    );
    assert!(b
        .header()
        .metadata
        .get("gguftool.convert.imatrix_sha256")
        .is_some());
    let err_col0 = |f: &GgufFile| -> f64 {
        let i = f.header().tensor_index(name).unwrap();
        let fmt = gguftool_quant::registry::by_type_id(f.header().tensors[i].ggml_type).unwrap();
        let mut dec = vec![0f32; 64 * 128];
        fmt.dequantize(f.tensor_data(i), &mut dec).unwrap();
        let oi = o.header().tensor_index(name).unwrap();
        let orig: Vec<f32> = o
            .tensor_data(oi)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (0..dec.len())
            .filter(|j| j % 32 == 0)
            .map(|j| ((dec[j] - orig[j]) as f64).powi(2))
            .sum()
    };
    assert!(
        err_col0(&b) < 0.5 * err_col0(&a),
        "{} vs {}",
        err_col0(&b),
        err_col0(&a)
    );
    // Other tensors are unaffected by an imatrix that does not name them.
    let i = a.header().tensor_index("blk.1.ffn_up.weight").unwrap();
    assert_eq!(a.tensor_data(i), b.tensor_data(i));
}

#[test]
fn simd_override_caps_the_kernels() {
    let out = Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args(["bench", "--format", "piq2", "--millis", "5", "--json"])
        .env("GGUFTOOL_SIMD", "scalar")
        .output()
        .unwrap();
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let levels: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["level"].as_str().unwrap())
        .collect();
    assert_eq!(
        levels, ["scalar"; 4],
        "lower-case level names, as in the text output"
    );
    let kernels: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kernel"].as_str().unwrap())
        .collect();
    assert_eq!(
        kernels,
        ["dequantize", "dot_f32", "dot_q8", "dot_q8_decode"]
    );
}

#[test]
fn unknown_simd_override_is_a_usage_error() {
    for bad in ["bogus", "neon2", ""] {
        let out = Command::new(env!("CARGO_BIN_EXE_gguftool"))
            .args(["formats"])
            .env("GGUFTOOL_SIMD", bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "GGUFTOOL_SIMD={bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("GGUFTOOL_SIMD") && err.contains("scalar"),
            "{err}"
        );
    }
}

#[test]
fn quip_conversion_stores_its_seed_and_decodes_in_the_original_basis() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quip.gguf");
    ok(&["convert", s(&tiny()), "-o", s(&out), "--format", "q2_quip"]);
    let f = gguftool_quant::registry::open(&out).unwrap();
    let md = &f.header().metadata;
    assert!(matches!(
        md.get(gguftool_quant::rows::SEED_KEY),
        Some(Value::U64(_))
    ));
    ok(&["verify", s(&out)]);
    let q = ok(&["quality", "--json", s(&tiny()), s(&out)]);
    let v: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
    let sqnr = v["matrices"]["sqnr_db"].as_f64().unwrap();
    // Rotated Gaussian weights at 2 bits with a scale per 16: about 9 dB.
    assert!(sqnr > 8.0 && sqnr < 12.0, "SQNR {sqnr}");
    // Decoding in the wrong basis would look like noise (SQNR near 0 dB).
    let back = dir.path().join("quip-f32.gguf");
    ok(&["dequantize", s(&out), "-o", s(&back)]);
    let q2 = ok(&["quality", "--json", s(&tiny()), s(&back)]);
    let v2: serde_json::Value = serde_json::from_slice(&q2.stdout).unwrap();
    assert_eq!(v2["matrices"]["sqnr_db"], v["matrices"]["sqnr_db"]);
    // Re-encoding the quip file keeps its seed and decodes the same way.
    let again = dir.path().join("again.gguf");
    ok(&[
        "convert",
        s(&out),
        "-o",
        s(&again),
        "--format",
        "q8_0",
        "--allow-requantize",
    ]);
    let q3 = ok(&["quality", "--json", s(&back), s(&again)]);
    let v3: serde_json::Value = serde_json::from_slice(&q3.stdout).unwrap();
    assert!(v3["matrices"]["sqnr_db"].as_f64().unwrap() > 35.0);
}

#[test]
fn mixed_allocation_keeps_the_budget_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let dry = ok(&[
        "convert",
        s(&tiny()),
        "-o",
        "unused.gguf",
        "--format",
        "mixed",
        "--bpw",
        "3",
        "--dry-run",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let alloc = &v["allocation"];
    assert!(alloc["bits_per_weight"].as_f64().unwrap() <= 3.0);
    let formats: std::collections::BTreeSet<&str> = alloc["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["format"].as_str().unwrap())
        .collect();
    assert!(
        formats.len() >= 2,
        "a 3-bit budget mixes formats: {formats:?}"
    );

    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    for out in [&a, &b] {
        ok(&[
            "convert",
            s(&tiny()),
            "-o",
            s(out),
            "--format",
            "mixed",
            "--bpw",
            "3",
            "--allocate-output",
        ]);
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let f = gguftool_quant::registry::open(&a).unwrap();
    let h = f.header();
    let (bits, elems) = h
        .tensors
        .iter()
        .filter(|t| t.dims.len() >= 2)
        .fold((0f64, 0u64), |(b, e), t| {
            (b + t.n_bytes as f64 * 8.0, e + t.n_elements)
        });
    assert!(bits / elems as f64 <= 3.0, "{} bpw", bits / elems as f64);
    assert_eq!(
        h.metadata.get("gguftool.convert.format"),
        Some(&Value::String("mixed".into()))
    );
    ok(&["verify", s(&a)]);

    // By default output.weight keeps the output type (q8_0) outside the budget.
    let pinned = ok(&[
        "convert",
        s(&tiny()),
        "-o",
        "unused.gguf",
        "--format",
        "mixed",
        "--bpw",
        "3",
        "--dry-run",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&pinned.stdout).unwrap();
    let choices = v["allocation"]["choices"].as_array().unwrap();
    assert!(choices.iter().all(|c| c["name"] != "output.weight"));
    assert!(v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "output.weight" && t["to"] == "q8_0"));

    let low = run(&[
        "convert",
        s(&tiny()),
        "-o",
        s(&dir.path().join("c.gguf")),
        "--format",
        "mixed",
        "--bpw",
        "1",
    ]);
    assert_eq!(
        low.status.code(),
        Some(2),
        "a budget out of range is a usage error"
    );
    assert!(String::from_utf8_lossy(&low.stderr).contains("below the smallest"));
    let stray = run(&[
        "convert",
        s(&tiny()),
        "-o",
        s(&dir.path().join("d.gguf")),
        "--format",
        "piq2",
        "--bpw",
        "3",
    ]);
    assert_eq!(
        stray.status.code(),
        Some(2),
        "--bpw without a recipe is a usage error"
    );
}

#[test]
fn ternary_conversions_and_quality() {
    let dir = tempfile::tempdir().unwrap();
    let mut sqnr = std::collections::BTreeMap::new();
    for fmt in ["ternary", "ternary_mse"] {
        let out = dir.path().join(format!("{fmt}.gguf"));
        ok(&["convert", s(&tiny()), "-o", s(&out), "--format", fmt]);
        ok(&["verify", s(&out)]);
        let q = ok(&["quality", "--json", s(&tiny()), s(&out)]);
        let v: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
        sqnr.insert(fmt, v["matrices"]["sqnr_db"].as_f64().unwrap());
    }
    // Gaussian weights: ternary keeps a few dB; the MSE-optimal scale beats absmean.
    assert!(sqnr["ternary"] > 2.0, "{sqnr:?}");
    assert!(sqnr["ternary_mse"] > sqnr["ternary"], "{sqnr:?}");
}

#[test]
fn calibration_rounds_covered_matrices_with_gptq() {
    use gguftool_calib::calib_file::{CalibInput, Calibration};
    use gguftool_calib::gptq::Hessian;
    use gguftool_quant::hadamard::SplitMix64;
    let dir = tempfile::tempdir().unwrap();
    let src = gguftool_quant::registry::open(tiny()).unwrap();
    let name = "blk.0.attn_q.weight";
    let idx = src.header().tensor_index(name).unwrap();
    let n = src.header().tensors[idx].row_len() as usize;
    // Correlated inputs with a few loud channels.
    let mut rng = SplitMix64::new(3);
    let basis: Vec<f32> = (0..4 * n).map(|_| rng.next_normal() as f32).collect();
    let x: Vec<f32> = (0..256)
        .flat_map(|_| {
            let z: Vec<f32> = (0..4).map(|_| rng.next_normal() as f32).collect();
            (0..n)
                .map(|j| {
                    let v: f32 = (0..4).map(|c| z[c] * basis[c * n + j]).sum();
                    if j % 11 == 0 {
                        6.0 * v
                    } else {
                        v
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut h = Hessian::new(n);
    h.accumulate(&x).unwrap();
    let cal = Calibration {
        datasets: vec!["synthetic".into()],
        inputs: vec![CalibInput {
            site: name.into(),
            consumers: vec![name.into(), "blk.0.attn_k.weight".into()],
            hessian: h.clone(),
        }],
    };
    let cal_path = dir.path().join("calib.gguf");
    let bytes = cal
        .write(std::io::Cursor::new(Vec::new()))
        .unwrap()
        .into_inner();
    std::fs::write(&cal_path, bytes).unwrap();
    let plain = dir.path().join("plain.gguf");
    let gptq = dir.path().join("gptq.gguf");
    ok(&["convert", s(&tiny()), "-o", s(&plain), "--format", "q4_0"]);
    // The file covers two matrices: converting the others too is refused,
    // naming the first uncovered one.
    let refused = Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args(["convert", s(&tiny()), "-o", s(&gptq), "--format", "q4_0"])
        .args(["--calibration", s(&cal_path)])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{e}");
    assert!(
        e.contains("no Hessian for tensor \"blk.0.attn_v.weight\""),
        "{e}"
    );
    assert!(!gptq.exists());
    // Keeping the uncovered matrices unquantized, the covered ones get GPTQ.
    let o = ok(&[
        "convert",
        s(&tiny()),
        "-o",
        s(&gptq),
        "--format",
        "q4_0",
        "--keep",
        r"^(token_embd|output|blk\.1\.|blk\.0\.(attn_v|attn_output|ffn_))",
        "--calibration",
        s(&cal_path),
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("calibration: 2 matrices to round with GPTQ")
    );
    let w = {
        let mut v = vec![0f32; src.header().tensors[idx].n_elements as usize];
        gguftool_quant::rows::tensor_decoder(&src, idx)
            .unwrap()
            .decode(src.tensor_data(idx), &mut v)
            .unwrap();
        v
    };
    let err = |p: &Path| -> f64 {
        let f = gguftool_quant::registry::open(p).unwrap();
        let i = f.header().tensor_index(name).unwrap();
        let mut q = vec![0f32; w.len()];
        gguftool_quant::rows::tensor_decoder(&f, i)
            .unwrap()
            .decode(f.tensor_data(i), &mut q)
            .unwrap();
        w.chunks(n)
            .zip(q.chunks(n))
            .map(|(a, b)| {
                h.quadratic_form(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>())
            })
            .sum()
    };
    let (e_plain, e_gptq) = (err(&plain), err(&gptq));
    assert!(e_gptq < 0.7 * e_plain, "GPTQ {e_gptq} vs plain {e_plain}");
}
