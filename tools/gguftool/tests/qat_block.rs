//! `gguftool qat --stage block` on the tiny fixture: training lowers every
//! block's held-out MSE below its start (plain and GPTQ starts), bad
//! configuration fields are usage errors naming the field, and a run
//! stopped by `--max-steps` and resumed from its checkpoint writes the same
//! bytes as a run that was not stopped.

mod common;

use common::{gguftool, interrupt, interrupt_n, ok, root, run, s};
use gguftool_formats as _;
use std::path::Path;
use std::process::Output;

/// The block-stage command line on the tiny fixture, writing `out`.
fn block_args(out: &Path) -> Vec<String> {
    common::stage_args("block", out)
}

fn check_lowered(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The whole-model check: the trained blocks are kept when they do not
    // raise the held-out KL.
    let kl = |k: &str| v[k]["kl"].as_f64().unwrap();
    let (start, trained) = (kl("heldout_start"), kl("heldout_trained"));
    assert!(start > 0.0, "{v}");
    assert_eq!(v["kept"], if trained > start { "start" } else { "trained" });
    let blocks = v["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 2);
    for b in blocks {
        let (init, best) = (
            b["initial_heldout_mse"].as_f64().unwrap(),
            b["best_heldout_mse"].as_f64().unwrap(),
        );
        assert!(best < init, "block not improved: {b}");
        assert!(b["best_epoch"].as_u64().unwrap() > 0, "{b}");
    }
    v
}

#[test]
fn block_stage_lowers_block_mse_from_plain_and_gptq_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("block.gguf");
    let args = block_args(&out);
    // The plain start under the (default) RMS-normalized loss, the GPTQ
    // starts below under MSE.
    let v = check_lowered(&run(&args, &["--epochs", "3", "--json"]));
    assert_eq!(v["start"], "plain");
    assert_eq!(v["config"]["epochs"], 3);
    assert_eq!(v["config"]["block_loss"], "rms-normalized");
    assert_eq!(v["calibration_tokens"], 8 * 32);
    ok(&["verify", s(&out)]);
    let f = gguftool_quant::registry::open(&out).unwrap();
    let md = &f.header().metadata;
    for k in [
        "gguftool.qat.config",
        "gguftool.qat.text_sha256",
        "gguftool.qat.calibration_tokens",
    ] {
        assert!(md.get(k).is_some(), "{k}");
    }
    let text = std::fs::read(root().join("fixtures/runtime/tiny.txt")).unwrap();
    assert_eq!(
        md.get("gguftool.qat.text_sha256")
            .unwrap()
            .as_str()
            .unwrap(),
        gguftool_gguf::integrity::sha256_hex(&text)
    );
    // Every block matrix is piq2; the output head as convert makes it.
    let piq2 = gguftool_quant::registry::by_name("piq2").unwrap().type_id();
    let h = f.header();
    for t in &h.tensors {
        if t.name.starts_with("blk.") && t.name.ends_with(".weight") && t.dims.len() == 2 {
            assert_eq!(t.ggml_type, piq2, "{}", t.name);
        }
    }
    // The output runs in the runtime.
    common::runs_in_runtime(&out);

    // GPTQ start from a calibration file of the same text; a
    // row-transformed format (q2_quip) rounds with GPTQ in the basis of the
    // seed its output records, and the output decodes in the runtime.
    let cal = common::calibration(dir.path());
    let gptq = [
        "--epochs",
        "3",
        "--json",
        "--block-loss",
        "mse",
        "--calibration",
        s(&cal),
    ];
    for format in ["piq2", "q2_quip"] {
        let v = check_lowered(&run(&common::with_format(block_args(&out), format), &gptq));
        assert_eq!(v["start"], "gptq");
    }
    ok(&["verify", s(&out)]);
    common::runs_in_runtime(&out);
}

/// The decoded values of every block matrix (`blk.*.weight`, 2-D) of `path`.
fn block_matrices(path: &Path) -> Vec<(String, Vec<f32>)> {
    let f = gguftool_quant::registry::open(path).unwrap();
    let h = f.header();
    let mut out = Vec::new();
    for (i, t) in h.tensors.iter().enumerate() {
        if t.name.starts_with("blk.") && t.name.ends_with(".weight") && t.dims.len() == 2 {
            let mut v = vec![0f32; t.n_elements as usize];
            gguftool_quant::rows::tensor_decoder(&f, i)
                .unwrap()
                .decode(f.tensor_data(i), &mut v)
                .unwrap();
            out.push((t.name.clone(), v));
        }
    }
    out
}

#[test]
fn gptq_start_is_the_gptq_rounding() {
    // With no training (steps of 1e-30 of each tensor's RMS), the block
    // stage's output from a GPTQ start holds the matrices `convert
    // --calibration` writes: ternary, whose absmean rule does not
    // reproduce its own output, starts at the scales its GPTQ bytes store;
    // piq2 at re-derived scales that reproduce them.
    let dir = tempfile::tempdir().unwrap();
    let cal = common::calibration(dir.path());
    for format in ["ternary", "piq2"] {
        let out = dir.path().join(format!("{format}-block.gguf"));
        let args = common::with_format(block_args(&out), format);
        let o = run(
            &args,
            &[
                "--epochs",
                "1",
                "--lr",
                "1e-30",
                "--scale-lr",
                "1e-30",
                "--calibration",
                s(&cal),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // The whole-model check's start is the start training took.
        let line = String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with("whole model"))
            .unwrap()
            .to_string();
        assert!(line.contains("kept the trained blocks"), "{line}");
        let (start, trained) = (
            line.split("start ")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap(),
            line.split("trained ")
                .nth(1)
                .unwrap()
                .split(':')
                .next()
                .unwrap(),
        );
        assert_eq!(start, trained, "{line}");
        let conv = dir.path().join(format!("{format}-gptq.gguf"));
        common::convert_fixture(&conv, format, &["--calibration", s(&cal)]);
        let (a, b) = (block_matrices(&out), block_matrices(&conv));
        assert_eq!(a.len(), 14, "{format}");
        for ((name, x), (name_b, y)) in a.iter().zip(&b) {
            assert_eq!(name, name_b);
            let err: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
            let norm: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
            assert!(
                err <= 1e-4 * norm,
                "{format} {name}: relative error {}",
                err / norm
            );
        }
    }
}

#[test]
fn bad_config_fields_are_usage_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let cfg = dir.path().join("qat.toml");
    let args = block_args(&out);
    for (text, field) in [
        ("gradient_accumulation = 0\n", "gradient_accumulation"),
        ("learning_rate = -1.0\n", "learning_rate"),
        ("scale_learning_rate = inf\n", "scale_learning_rate"),
        ("epochs = 0\n", "epochs"),
        ("batch_size = 0\n", "batch_size"),
        ("max_blocks = 0\n", "max_blocks"),
        ("temperature = 2.0\n", "temperature"),
        ("grad_clip = 0.0\n", "grad_clip"),
        ("[ste.clipped]\nclip = -1.0\n", "ste.clip"),
        ("epoch = 3\n", "epoch"),
        ("learn_norms = \"yes\"\n", "learn_norms"),
        ("block_loss = \"l1\"\n", "block_loss"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let o = run(&args, &["--config", s(&cfg)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(field), "{text}: {err}");
        assert!(!out.exists());
    }
    // Flags too; and per-tensor fields refused by the block stage and back.
    let o = run(&args, &["--gradient-accumulation", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("gradient_accumulation"));
    let o = run(&args, &["--block-loss", "l1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--block-loss"));
    std::fs::write(&cfg, "max_blocks = 1\n").unwrap();
    let model = root().join("fixtures/tiny-llama-f32.gguf");
    let o = gguftool(&[
        "qat",
        s(&model),
        "-o",
        s(&out),
        "--format",
        "piq2",
        "--config",
        s(&cfg),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("max_blocks"));
    // Stages that train on text need it; their flags need such a stage.
    let o = gguftool(&[
        "qat",
        s(&model),
        "-o",
        s(&out),
        "--format",
        "piq2",
        "--stage",
        "e2e",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs -f TEXT"));
    let o = gguftool(&[
        "qat",
        s(&model),
        "-o",
        s(&out),
        "--format",
        "piq2",
        "--max-steps",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // --help shows both stages' defaults.
    let o = ok(&["qat", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("[default: 4 per-tensor, 2 block]"), "{help}");
}

#[test]
fn stopped_and_resumed_run_writes_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    let ck = dir.path().join("run.ckpt");
    // 8 sequences, micro-batches of 2, 2 per step: 2 steps per epoch, 6
    // per block, 12 in all; latent weights trained too.
    let common = [
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--gradient-accumulation",
        "2",
        "--learn-weights",
    ];
    let mut extra_a = common.to_vec();
    extra_a.extend(["--checkpoint-every", "4"]);
    let o = run(&block_args(&a), &extra_a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut ck_a = a.clone().into_os_string();
    ck_a.push(".ckpt");
    assert!(!Path::new(&ck_a).exists(), "checkpoint removed at the end");

    // Stopped mid-epoch in block 0, then in block 1, then to the end.
    let args_b = block_args(&b);
    for (resume, stop) in [(false, Some("5")), (true, Some("9")), (true, None)] {
        let mut extra = common.to_vec();
        extra.extend(["--checkpoint", s(&ck)]);
        if resume {
            extra.extend(["--resume", s(&ck)]);
        }
        if let Some(n) = stop {
            extra.extend(["--max-steps", n]);
        }
        extra.push("--json");
        let o = run(&args_b, &extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{extra:?}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if let Some(n) = stop {
            assert!(ck.exists() && !b.exists(), "{err}");
            assert!(err.contains("--resume"), "{err}");
            // --json says so on stdout too.
            assert_eq!(v["stopped"], "max_steps");
            assert_eq!(v["steps"].to_string(), n);
            assert_eq!(v["checkpoint"], s(&ck));
        }
    }
    assert!(!ck.exists());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // --max-blocks may change on resume: blocks it keeps train the same.
    let (c, d) = (dir.path().join("c.gguf"), dir.path().join("d.gguf"));
    let mut extra = common.to_vec();
    extra.extend(["--max-blocks", "1"]);
    assert!(run(&block_args(&c), &extra).status.success());
    let mut extra = common.to_vec();
    extra.extend(["--checkpoint", s(&ck), "--max-steps", "3"]);
    assert!(run(&block_args(&d), &extra).status.success());
    let mut extra = common.to_vec();
    extra.extend(["--resume", s(&ck), "--max-blocks", "1"]);
    let o = run(&block_args(&d), &extra);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&c).unwrap(), std::fs::read(&d).unwrap());

    // A checkpoint of another configuration is refused (exit 1).
    let mut extra = common.to_vec();
    extra.extend(["--checkpoint", s(&ck), "--max-steps", "2"]);
    assert!(run(&args_b, &extra).status.success());
    let o = run(&args_b, &["--resume", s(&ck), "--epochs", "4"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another run"));
}

#[test]
fn ctrl_c_leaves_a_checkpoint_that_resumes_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    let ck = dir.path().join("b.ckpt");
    let common = ["--epochs", "3", "--batch-size", "2"];
    assert!(run(&block_args(&a), &common).status.success());
    let mut args = block_args(&b);
    args.extend(common.iter().map(|x| x.to_string()));
    args.extend(["--checkpoint".to_string(), s(&ck).to_string()]);
    let o = interrupt(&args, 100, 1500);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && ck.exists() && !b.exists(),
        "{err}"
    );
    let mut extra = common.to_vec();
    extra.extend(["--checkpoint", s(&ck), "--resume", s(&ck)]);
    let o = run(&block_args(&b), &extra);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn paths_are_checked_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let input = dir.path().join("in.gguf");
    std::fs::copy(common::model(), &input).unwrap();
    let mut args = block_args(&out);
    args[1] = s(&input).to_string();
    args.retain(|a| a != "--force");
    let before = std::fs::read(&input).unwrap();
    let quick = |o: &Output, code: i32, what: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{what}: {err}");
        assert!(err.contains(what), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!out.exists());
    };
    // The checkpoint may not be an input of the run or the output.
    let o = run(&args, &["--checkpoint", s(&input)]);
    quick(&o, 2, "would overwrite an input");
    let o = run(&args, &["--checkpoint", s(&out)]);
    quick(&o, 2, "would be the output");
    assert_eq!(std::fs::read(&input).unwrap(), before);
    // Missing directories are found before training, not after it.
    let o = run(&args, &["--checkpoint", s(&dir.path().join("no/ck"))]);
    quick(&o, 1, "is not a directory");
    let mut nodir = args.clone();
    let i = nodir.iter().position(|a| a == "-o").unwrap();
    nodir[i + 1] = s(&dir.path().join("no/o.gguf")).to_string();
    quick(&run(&nodir, &[]), 1, "is not a directory");
    // A model given to --resume is no checkpoint.
    let o = run(&args, &["--resume", s(&input)]);
    quick(&o, 1, "not a QAT checkpoint");
    // A bad setting of the written file, too.
    let o = run(&args, &["--output-tensor-type", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    // An earlier run's checkpoint is not replaced by a fresh run ...
    let ck = dir.path().join("run.ckpt");
    let stop = ["--checkpoint", s(&ck), "--max-steps", "2"];
    assert!(run(&args, &stop).status.success());
    let kept = std::fs::read(&ck).unwrap();
    quick(&run(&args, &stop), 1, "--resume");
    assert_eq!(std::fs::read(&ck).unwrap(), kept);
    // ... but continued by --resume, or replaced with --force.
    let o = run(&args, &["--checkpoint", s(&ck), "--resume", s(&ck)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!ck.exists());
    std::fs::remove_file(&out).unwrap();
    std::fs::write(&ck, b"not a checkpoint").unwrap();
    let o = run(&args, &["--checkpoint", s(&ck), "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn two_quick_interrupts_are_one_ctrl_c() {
    // `timeout -s INT` sends SIGINT to the process and to its group: both
    // within a second count as one Ctrl-C, which writes a checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    let ck = dir.path().join("run.ckpt");
    let mut args = block_args(&out);
    args.extend(["--checkpoint".into(), s(&ck).to_string()]);
    let o = interrupt_n(&args, 200, 1500, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(ck.exists() && !out.exists(), "{err}");
}
