//! Peak memory while parsing stays within the file size plus a small
//! constant, for every file of the fixture and regression corpus. Each file
//! is parsed in a fresh child process (this test binary re-run with
//! `RSS_CHILD_FILE` set), which reports its peak RSS growth.

mod support;

use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::GgufFile;
use std::path::PathBuf;
use std::process::Command;

/// Allowed growth beyond the file's own size.
const CONSTANT: u64 = 4 << 20;

#[test]
fn rss_child() {
    let Some(path) = std::env::var_os("RSS_CHILD_FILE") else {
        return;
    };
    let before = support::vm_hwm_kib();
    let parsed = GgufFile::open(&path, &StandardTypes).map(|f| f.header().tensors.len());
    let after = support::vm_hwm_kib();
    println!(
        "RSS_GROWTH_KIB={} ok={}",
        after.saturating_sub(before),
        parsed.is_ok()
    );
}

#[test]
#[cfg(target_os = "linux")]
fn parsing_memory_is_bounded_by_the_file() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let mut files = Vec::new();
    for dir in [
        root.clone(),
        root.join("types"),
        root.join("malformed"),
        root.join("regressions"),
    ] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "gguf")
                || p.parent().is_some_and(|d| d.ends_with("regressions"))
            {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 80, "{} files", files.len());
    let exe = std::env::current_exe().unwrap();
    for f in files {
        let out = Command::new(&exe)
            .args(["--exact", "rss_child", "--nocapture", "--test-threads=1"])
            .env("RSS_CHILD_FILE", &f)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let growth: u64 = text
            .split("RSS_GROWTH_KIB=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: no report in {text}", f.display()));
        let size = std::fs::metadata(&f).unwrap().len();
        assert!(
            growth * 1024 <= size + CONSTANT,
            "{}: peak RSS grew {growth} KiB for a {size}-byte file",
            f.display()
        );
    }
}
