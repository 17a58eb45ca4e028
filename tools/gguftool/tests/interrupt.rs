//! Interrupted commands leave no temporary file; stale ones are named; a
//! missing output directory is reported by the output's path.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama-f32.gguf")
}

fn temps(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}

#[test]
fn sigint_and_sigterm_remove_the_temporary_output() {
    for (sig, name) in [(libc_sig::SIGINT, "INT"), (libc_sig::SIGTERM, "TERM")] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.gguf");
        let mut child = Command::new(env!("CARGO_BIN_EXE_gguftool"))
            .args(["convert", tiny().to_str().unwrap(), "-o"])
            .arg(&out)
            .args(["--format", "q8_0"])
            .env("GGUFTOOL_TEST_DELAY_PER_TENSOR_MS", "300")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while temps(dir.path()).is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no temp file appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let k = Command::new("kill")
            .args([format!("-{name}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(k.success());
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(sig), "{status:?}");
        assert!(temps(dir.path()).is_empty(), "{:?}", temps(dir.path()));
        assert!(!out.exists());
    }
}

/// Signal numbers (Linux) without a libc dependency in the test.
mod libc_sig {
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;
}

#[test]
fn stale_temporary_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join(".gguftool-AbC123.tmp");
    std::fs::write(&stale, b"partial").unwrap();
    let out = dir.path().join("out.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args(["seal", tiny().to_str().unwrap(), "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "stale temporary file {} from an interrupted run; remove it",
            stale.display()
        )),
        "{err}"
    );
}

#[test]
fn missing_output_directory_names_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("no/such/dir/out.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_gguftool"))
        .args(["seal", tiny().to_str().unwrap(), "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&out.display().to_string()), "{err}");
    assert!(!err.contains(".gguftool-"), "{err}");
}
