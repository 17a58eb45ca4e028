//! `gguftool qat` on the tiny fixture: trains, exports, never worse than PTQ.

use gguftool_formats as _;

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
        let f = gguftool_quant::registry::open(&out).unwrap();
        assert!(f.header().metadata.get("gguftool.qat.config").is_some());
    }
    // A bad config names its field and is a usage error (exit 2).
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
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("epochs"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
