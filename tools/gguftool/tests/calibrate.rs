//! `gguftool imatrix` against llama-imatrix's file for the tiny fixture
//! (fixtures/runtime/tiny-llama.imatrix, made by scripts/imatrix_golden.sh),
//! and `gguftool calibrate`: Hessians whose diagonals are the imatrix of the
//! same pass, files that `convert` takes.

use gguftool_calib::calib_file::Calibration;
use gguftool_calib::imatrix::Imatrix;
use gguftool_formats as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguftool(args: &[&str]) -> std::process::Output {
    let o = Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args(args)
        .output()
        .unwrap();
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

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn imatrix_matches_llama_imatrix_on_the_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.imatrix");
    let model = root().join("fixtures/tiny-llama-f32.gguf");
    let text = root().join("fixtures/runtime/tiny.txt");
    gguftool(&[
        "imatrix",
        s(&model),
        "-f",
        s(&text),
        "-o",
        s(&ours),
        "-c",
        "32",
        "-b",
        "32",
        "--chunks",
        "4",
        "-t",
        "1",
        "--process-output",
    ]);
    let theirs = Imatrix::load(&root().join("fixtures/runtime/tiny-llama.imatrix")).unwrap();
    let ours = Imatrix::load(&ours).unwrap();
    let mut names: Vec<_> = theirs.entries.keys().collect();
    names.sort();
    let mut ours_names: Vec<_> = ours.entries.keys().collect();
    ours_names.sort();
    assert_eq!(
        names, ours_names,
        "the same weights, as llama-imatrix lists them"
    );
    for n in names {
        let c = cosine(&ours.entries[n], &theirs.entries[n]);
        assert!(c > 0.999, "{n}: cosine {c}");
    }
}

#[test]
fn calibration_diagonals_are_the_imatrix_of_the_same_pass() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/tiny-llama-f32.gguf");
    let text = root().join("fixtures/runtime/tiny.txt");
    let (cal, im) = (dir.path().join("c.gguf"), dir.path().join("i.gguf"));
    gguftool(&[
        "calibrate",
        s(&model),
        "-f",
        s(&text),
        "-o",
        s(&cal),
        "--imatrix-out",
        s(&im),
        "-c",
        "32",
        "--chunks",
        "4",
        "-t",
        "1",
    ]);
    let f = gguftool_quant::registry::open(&cal).unwrap();
    let c = Calibration::from_gguf(&f).unwrap();
    let m = Imatrix::load(&im).unwrap();
    // q/k/v share a site, gate/up share one: 4 sites per layer, plus the head.
    assert_eq!(c.inputs.len(), 2 * 4 + 1);
    for (name, means) in &m.entries {
        let h = c
            .hessian_for(name)
            .unwrap_or_else(|| panic!("{name} not calibrated"));
        let n = h.n();
        for (j, &mj) in means.iter().enumerate() {
            let hj = h.matrix()[j * n + j] / h.tokens() as f64;
            assert!(
                (hj - mj as f64).abs() <= 1e-4 * (mj as f64).abs() + 1e-7,
                "{name}[{j}]: {hj} vs {mj}"
            );
        }
    }
    assert!(c.hessian_for("output.weight").is_some());
    // A weight on the text scales its Hessian, not its token count.
    let cal2 = dir.path().join("c2.gguf");
    let weighted = format!("{}:2", s(&text));
    gguftool(&[
        "calibrate",
        s(&model),
        "-f",
        &weighted,
        "-o",
        s(&cal2),
        "-c",
        "32",
        "--chunks",
        "4",
        "-t",
        "1",
    ]);
    let c2 = Calibration::from_gguf(&gguftool_quant::registry::open(&cal2).unwrap()).unwrap();
    let (a, b) = (&c.inputs[0].hessian, &c2.inputs[0].hessian);
    assert_eq!(a.tokens(), b.tokens());
    assert!((b.matrix()[0] - 2.0 * a.matrix()[0]).abs() <= 1e-4 * a.matrix()[0].abs());
    // convert takes both files.
    let out = dir.path().join("q.gguf");
    let o = gguftool(&[
        "convert",
        s(&model),
        "-o",
        s(&out),
        "--format",
        "piq2",
        "--calibration",
        s(&cal),
        "--imatrix",
        s(&im),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("matrices to round with GPTQ"), "{e}");
    assert!(e.contains("tensors rounded in"), "{e}");
    // GPTQ matrices count as quantized, and their note is no fallback.
    assert!(e.contains("fallbacks: none"), "{e}");
    assert!(!e.contains("quantized: 0 elements"), "{e}");
    // The output names its calibration file by digest, as it does the imatrix.
    let f = gguftool_quant::registry::open(&out).unwrap();
    let md = &f.header().metadata;
    let sha = gguftool_gguf::integrity::sha256_hex(&std::fs::read(&cal).unwrap());
    assert_eq!(
        md.get("gguftool.convert.calibration_sha256")
            .and_then(|v| v.as_str()),
        Some(sha.as_str())
    );
    drop(f);
    // GPTQ tensors are rounded concurrently but written in plan order: the
    // file does not depend on the number of threads.
    for threads in ["1", "3"] {
        let other = dir.path().join(format!("q{threads}.gguf"));
        let o = Command::new(env!("CARGO_BIN_EXE_gguftool"))
            .env("RAYON_NUM_THREADS", threads)
            .args([
                "convert",
                s(&model),
                "-o",
                s(&other),
                "--format",
                "piq2",
                "--calibration",
                s(&cal),
                "--imatrix",
                s(&im),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(&format!("on {threads} threads")), "{e}");
        assert!(
            std::fs::read(&other).unwrap() == std::fs::read(&out).unwrap(),
            "{threads} threads: output differs"
        );
    }
    // With a calibration file (and no imatrix), 2-bit conversion does not warn.
    let o = gguftool(&[
        "convert",
        s(&model),
        "-o",
        s(&dir.path().join("p2.gguf")),
        "--format",
        "piq2",
        "--calibration",
        s(&cal),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!e.contains("warning"), "{e}");
    // Mixed precision allocates on the Hessians and says so in the file.
    let mixed = dir.path().join("m.gguf");
    let o = gguftool(&[
        "convert",
        s(&model),
        "-o",
        s(&mixed),
        "--format",
        "mixed",
        "--bpw",
        "6",
        "--candidates",
        "q4_0,q8_0",
        "--calibration",
        s(&cal),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("errors measured as tr(dW H dW^T)"), "{e}");
    assert!(e.contains("matrices to round with GPTQ"), "{e}");
    let f = gguftool_quant::registry::open(&mixed).unwrap();
    let md = &f.header().metadata;
    use gguftool_gguf::value::Value;
    assert_eq!(
        md.get("gguftool.convert.sensitivity"),
        Some(&Value::String("hessian".into()))
    );
    match md.get("gguftool.convert.sensitivity_hessian_tensors") {
        Some(Value::U32(n)) => assert!(*n > 0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_hessian_gptq_cannot_factorize_fails_naming_the_tensor_and_leaves_no_output() {
    use gguftool_calib::gptq::Hessian;
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/tiny-llama-f32.gguf");
    let text = root().join("fixtures/runtime/tiny.txt");
    let real = dir.path().join("real.calib.gguf");
    gguftool(&[
        "calibrate",
        s(&model),
        "-f",
        s(&text),
        "-o",
        s(&real),
        "-c",
        "32",
        "--chunks",
        "2",
        "-t",
        "1",
    ]);
    let f = gguftool_quant::registry::open(&real).unwrap();
    let mut cal = Calibration::from_gguf(&f).unwrap();
    drop(f);
    std::fs::remove_file(&real).unwrap();
    // The q/k/v site of layer 1 becomes symmetric with a non-negative
    // diagonal (so the file is valid), but strongly indefinite: no damping
    // GPTQ tries makes it factorizable.
    let site = cal
        .inputs
        .iter_mut()
        .find(|i| i.consumers.iter().any(|c| c == "blk.1.attn_q.weight"))
        .unwrap();
    let n = site.hessian.n();
    let h: Vec<f64> = (0..n * n)
        .map(|ij| if ij / n == ij % n { 1.0 } else { 1e9 })
        .collect();
    site.hessian = Hessian::from_matrix(n, h, 10).unwrap();
    let cal_path = dir.path().join("bad.calib.gguf");
    cal.write(std::fs::File::create(&cal_path).unwrap())
        .unwrap();
    let out = dir.path().join("o.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args([
            "convert",
            s(&model),
            "-o",
            s(&out),
            "--format",
            "q4_0",
            "--calibration",
            s(&cal_path),
        ])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("blk.1.attn_q.weight"), "{e}");
    assert!(e.contains("not positive definite"), "{e}");
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "only the calibration file: {left:?}");
}

/// A calibration file with one entry removed, or one entry of another
/// width (as for another model), is refused naming the tensor; a file with
/// a non-finite entry is refused naming the site.
#[test]
fn calibration_for_another_model_or_with_missing_entries_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/tiny-llama-f32.gguf");
    let text = root().join("fixtures/runtime/tiny.txt");
    let cal = dir.path().join("c.gguf");
    gguftool(&[
        "calibrate",
        s(&model),
        "-f",
        s(&text),
        "-o",
        s(&cal),
        "-c",
        "32",
        "--chunks",
        "2",
        "-t",
        "1",
    ]);
    let f = gguftool_quant::registry::open(&cal).unwrap();
    let good = Calibration::from_gguf(&f).unwrap();
    drop(f);
    let convert = |c: &Path| {
        let out = dir.path().join("q.gguf");
        Command::new(env!("CARGO_BIN_EXE_gguftool"))
            .args(["convert", s(&model), "-o", s(&out), "--format", "piq3"])
            .args(["--calibration", s(c), "--force"])
            .output()
            .unwrap()
    };
    let write = |c: &Calibration, name: &str| {
        let p = dir.path().join(name);
        c.write(std::fs::File::create(&p).unwrap()).unwrap();
        p
    };

    // Missing: drop the site that feeds the FFN down projections of layer 1.
    let mut missing = good.clone();
    let pos = missing
        .inputs
        .iter()
        .position(|i| i.consumers.iter().any(|c| c == "blk.1.ffn_down.weight"))
        .unwrap();
    missing.inputs.remove(pos);
    let o = convert(&write(&missing, "missing.gguf"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no Hessian for tensor \"blk.1.ffn_down.weight\""),
        "{err}"
    );

    // Another width: the same site with a Hessian twice as wide.
    let mut other = good.clone();
    let i = &mut other.inputs[pos];
    let n = 2 * i.hessian.n();
    let eye: Vec<f64> = (0..n * n)
        .map(|k| if k % (n + 1) == 0 { 1.0 } else { 0.0 })
        .collect();
    i.hessian = gguftool_calib::gptq::Hessian::from_matrix(n, eye, 10).unwrap();
    let name = i.consumers[0].clone();
    let o = convert(&write(&other, "other.gguf"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("Hessian for tensor {name:?} is {n} wide")),
        "{err}"
    );

    // Non-finite: patch one f32 of the first matrix in the file to NaN.
    let mut bytes = std::fs::read(&cal).unwrap();
    let f = gguftool_quant::registry::open(&cal).unwrap();
    let off = f.header().data_offset as usize + f.header().tensors[0].offset as usize;
    let site = f.header().tensors[0].name.clone();
    drop(f);
    bytes[off..off + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan = dir.path().join("nan.gguf");
    std::fs::write(&nan, bytes).unwrap();
    let o = convert(&nan);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let site = site.trim_end_matches(".xtx");
    assert!(err.contains(site) && err.contains("not finite"), "{err}");
}

/// Outputs that would overwrite the model or each other, and chunk or batch
/// counts that make an empty file, are refused before any work.
#[test]
fn calibrate_refuses_clobbering_outputs_and_empty_runs() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.gguf");
    std::fs::copy(root().join("fixtures/tiny-llama-f32.gguf"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let text = root().join("fixtures/runtime/tiny.txt");
    let c = dir.path().join("c.gguf");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "calibrate",
            s(&model),
            "-f",
            s(&text),
            "-c",
            "32",
            "--force",
        ];
        args.extend_from_slice(extra);
        let o = Command::new(env!("CARGO_BIN_EXE_gguftool"))
            .args(&args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, e) = run(&["-o", s(&model)]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("the output is the input file"), "{e}");
    let (code, e) = run(&["-o", s(&c), "--imatrix-out", s(&model)]);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("the output is the input file"), "{e}");
    let same = dir.path().join("./c.gguf");
    let (code, e) = run(&["-o", s(&c), "--imatrix-out", s(&same)]);
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("the same file as -o"), "{e}");
    let (code, e) = run(&["-o", s(&c), "--chunks", "0"]);
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("--chunks 0"), "{e}");
    let (code, e) = run(&["-o", s(&c), "-b", "0"]);
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("-b 0"), "{e}");
    assert_eq!(std::fs::read(&model).unwrap(), before);
    assert!(!c.exists());
}
