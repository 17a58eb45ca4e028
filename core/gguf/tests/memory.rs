//! Memory bounds on hostile counts and on metadata made of millions of tiny
//! elements. Each case runs in a child process (this test binary re-run with
//! `MEM_CHILD_FILE` set), under `ulimit -v` where an address-space limit is
//! the point, reporting its peak RSS growth.

mod support;

use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::write::{encode_kv, encode_tensor_info};
use gguftool_gguf::{Array, GgufFile, StrArray, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn mem_child() {
    let Some(path) = std::env::var_os("MEM_CHILD_FILE") else {
        return;
    };
    let before = support::vm_hwm_kib();
    let t = std::time::Instant::now();
    let parsed = GgufFile::open(&path, &StandardTypes).map(|f| f.header().metadata.len());
    let after = support::vm_hwm_kib();
    println!(
        "GROWTH_KIB={} MS={} RESULT={:?}",
        after.saturating_sub(before),
        t.elapsed().as_millis(),
        parsed.map_err(|e| e.to_string())
    );
}

/// Runs the child on `file`, optionally under `ulimit -v limit_kib`;
/// returns (peak RSS growth in bytes, parse milliseconds, result text).
fn run_child(file: &Path, limit_kib: Option<u64>) -> (u64, u64, String) {
    let exe = std::env::current_exe().unwrap();
    let cmd = format!(
        "{} exec \"$0\" --exact mem_child --nocapture --test-threads=1",
        limit_kib.map_or(String::new(), |l| format!("ulimit -v {l};"))
    );
    let out = Command::new("sh")
        .args(["-c", &cmd])
        .arg(&exe)
        .env("MEM_CHILD_FILE", file)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "child died ({:?}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> u64 {
        text.split(name)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let result = text.split("RESULT=").nth(1).unwrap_or("").to_string();
    (field("GROWTH_KIB=") * 1024, field("MS="), result)
}

fn header(n_tensors: u64, kvs: &[(String, Value)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        encode_kv(&mut b, k, v);
    }
    b
}

/// A valid ~300 MB file (sparse: one zero f32 tensor) whose header counts
/// can be raised.
fn big_sparse(dir: &Path) -> PathBuf {
    let kvs = vec![(
        "general.architecture".to_string(),
        Value::String("llama".into()),
    )];
    let mut b = header(2, &kvs);
    let n = 75_000_000u64;
    encode_tensor_info(&mut b, "a", 0, &[n], 0);
    encode_tensor_info(&mut b, "b", 0, &[8], n * 4);
    b.resize(b.len().div_ceil(32) * 32, 0);
    let total = b.len() as u64 + n * 4 + 32;
    let p = dir.join("big.gguf");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&b).unwrap();
    f.set_len(total).unwrap();
    p
}

/// Raising `n_kv` (byte 16) to 19.5 M or `n_tensors` (byte 8) to 10.3 M
/// passes the encoded-size check but must not make the parser reserve
/// gigabytes: under a 1 GiB address-space limit the file is refused with a
/// typed error instead of an abort.
#[test]
#[cfg(target_os = "linux")]
fn raised_counts_fail_cleanly_under_1_gib_address_space() {
    let dir = support::temp_dir("mem");
    let path = big_sparse(&dir);
    let (_, _, ok) = run_child(&path, Some(1 << 20));
    assert!(ok.starts_with("Ok(1)"), "{ok}");
    for (at, count) in [(16usize, 19_500_000u64), (8, 10_300_000)] {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::io::{Seek, SeekFrom};
        let orig = std::fs::read(&path).unwrap()[..24].to_vec();
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        f.write_all(&count.to_le_bytes()).unwrap();
        let (_, _, res) = run_child(&path, Some(1 << 20));
        assert!(res.starts_with("Err("), "byte {at} = {count}: {res}");
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&orig).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Peak RSS while parsing a file of `n` tiny metadata pairs (or one string
/// array of `n` one-byte strings) stays within the file size (the mapping)
/// plus a documented multiple of the metadata's encoded size.
#[test]
#[cfg(target_os = "linux")]
fn tiny_metadata_elements_cost_a_small_multiple_of_their_size() {
    let dir = support::temp_dir("mem");
    let n = 1_000_000usize;
    let pairs: Vec<(String, Value)> = (0..n)
        .map(|i| (format!("k{i:07}"), Value::U8(i as u8)))
        .collect();
    let p1 = dir.join("pairs.gguf");
    std::fs::write(&p1, header(0, &pairs)).unwrap();
    let strs: StrArray = (0..n)
        .map(|i| ((b'a' + (i % 26) as u8) as char).to_string())
        .collect();
    let nested: Vec<Array> = (0..n / 4).map(|_| Array::U8(Vec::new())).collect();
    let p2 = dir.join("arrays.gguf");
    std::fs::write(
        &p2,
        header(
            0,
            &[
                ("s".to_string(), Value::Array(Array::String(strs))),
                ("n".to_string(), Value::Array(Array::Array(nested))),
            ],
        ),
    )
    .unwrap();
    for p in [&p1, &p2] {
        let size = std::fs::metadata(p).unwrap().len();
        let (growth, ms, res) = run_child(p, None);
        assert!(res.starts_with("Ok("), "{res}");
        println!(
            "{}: {size} bytes, peak RSS growth {growth} bytes ({:.2} x file), {ms} ms",
            p.display(),
            growth as f64 / size as f64
        );
        // The mapping (1 x file) plus at most 3 x the encoded metadata.
        assert!(
            growth <= 4 * size + (4 << 20),
            "{}: grew {growth} for {size} bytes",
            p.display()
        );
        assert!(ms < 5_000, "{}: {ms} ms", p.display());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
