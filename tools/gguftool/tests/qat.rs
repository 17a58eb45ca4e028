//! QAT on the reference model beats PTQ: at 2 bits (PiQ2) and ternary it
//! closes at least half of the gap between PTQ and full precision.

use gguftool_core::format::Ste;
use gguftool_core::qat::config::{LossWeights, QatConfig};
use gguftool_core::qat::mlp::{CharData, Mlp, Student};
use gguftool_core::qat::train::train;
use gguftool_core::registry;
use gguftool_ggml as _;
use gguftool_piq as _;
use gguftool_ternary as _;

#[test]
fn qat_closes_at_least_half_of_the_ptq_gap() {
    let (vocab, ctx, hidden) = (8, 4, 64);
    let (train_set, test_set) = CharData::markov(8000, vocab, ctx, 11).split_every(10);
    let fp_cfg = QatConfig {
        epochs: 12,
        learning_rate: 1e-2,
        batch_size: 64,
        loss: LossWeights {
            distill: 0.0,
            task: 1.0,
        },
        ..QatConfig::default()
    };
    let mut fp = Student {
        model: Mlp::new(vocab, ctx, hidden, 1),
        teacher: None,
        data: &train_set,
        loss: fp_cfg.loss,
        temperature: 1.0,
    };
    let report = train(&mut fp, &fp_cfg, &mut |_, _, _| {});
    assert!(report.epoch_loss.last() < report.epoch_loss.first());
    let mut teacher = fp.model;
    let full = teacher.evaluate(&test_set).loss;
    for fmt in ["piq2", "ternary"] {
        let format = registry::by_name(fmt).unwrap();
        let ptq = teacher.ptq(format).evaluate(&test_set).loss;
        let cfg = QatConfig {
            format: fmt.into(),
            ste: Ste::LearnedStepSize,
            epochs: 6,
            learning_rate: 2e-3,
            loss: LossWeights {
                distill: 1.0,
                task: 0.0,
            },
            temperature: 2.0,
            ..fp_cfg.clone()
        };
        cfg.validate().unwrap();
        let mut student = Student {
            model: teacher.qat_student(&cfg).unwrap(),
            teacher: Some(&teacher),
            data: &train_set,
            loss: cfg.loss,
            temperature: cfg.temperature,
        };
        train(&mut student, &cfg, &mut |_, _, _| {});
        let qat = student.model.evaluate(&test_set).loss;
        let mut lora = Student {
            model: teacher.lora_student(format, 4, 8.0, 3),
            teacher: Some(&teacher),
            data: &train_set,
            loss: cfg.loss,
            temperature: cfg.temperature,
        };
        train(
            &mut lora,
            &QatConfig {
                learning_rate: 5e-3,
                ..cfg.clone()
            },
            &mut |_, _, _| {},
        );
        let lora = lora.model.evaluate(&test_set).loss;
        eprintln!("{fmt}: full {full:.4}, PTQ {ptq:.4}, QAT {qat:.4}, LoRA-QAT {lora:.4}");
        assert!(
            lora < ptq - 0.25 * (ptq - full),
            "{fmt}: LoRA-QAT {lora:.4} vs PTQ {ptq:.4}"
        );
        assert!(
            ptq > full + 0.02,
            "{fmt}: PTQ should hurt ({ptq} vs {full})"
        );
        assert!(
            ptq - qat >= 0.5 * (ptq - full),
            "{fmt}: QAT {qat:.4} closes less than half of the gap (full {full:.4}, PTQ {ptq:.4})"
        );
    }
}

#[test]
fn qat_command_trains_exports_and_never_does_worse_than_ptq() {
    use std::process::Command;
    let tiny = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tiny-llama-f32.gguf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qat.gguf");
    let cfg = dir.path().join("qat.toml");
    std::fs::write(
        &cfg,
        "epochs = 3\nlearning_rate = 0.01\nbatch_size = 16\n[ste.clipped]\nclip = 1.0\n",
    )
    .unwrap();
    for fmt in ["ternary", "piq2"] {
        let o = Command::new(env!("CARGO_BIN_EXE_gguftool"))
            .args([
                "qat",
                tiny.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--format",
                fmt,
            ])
            .args(["--config", cfg.to_str().unwrap(), "--json", "--force"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let tensors = v["tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), 15, "every matrix but output.weight");
        for t in tensors {
            let (ptq, qat) = (
                t["ptq_error"].as_f64().unwrap(),
                t["qat_error"].as_f64().unwrap(),
            );
            let kept = t["kept_qat"].as_bool().unwrap();
            assert_eq!(kept, qat <= ptq, "{t}");
        }
        assert_eq!(v["config"]["epochs"], 3);
        let verify = Command::new(env!("CARGO_BIN_EXE_gguftool"))
            .args(["verify", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(verify.status.success());
        let f = gguftool_core::gguf::GgufFile::open(&out).unwrap();
        assert!(f.header().metadata.get("gguftool.qat.config").is_some());
    }
    // A bad config names its field and exits 1.
    std::fs::write(&cfg, "epochs = 0\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args([
            "qat",
            tiny.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--format",
            "piq2",
            "--config",
            cfg.to_str().unwrap(),
            "--force",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("epochs"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
