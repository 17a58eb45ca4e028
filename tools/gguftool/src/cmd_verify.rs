//! `gguftool verify`: structural validation, integrity manifest check,
//! chat-template scan.

use crate::escape::{escape_for_terminal as esc, sha256sum_line};
use crate::progress;
use gguftool_gguf::integrity::{self, IntegrityReport};
use gguftool_gguf::template_scan;
use gguftool_gguf::GgufHeader;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

/// Warnings that do not make a file invalid.
fn warnings(h: &GgufHeader) -> Vec<String> {
    let mut w = Vec::new();
    if !h.is_canonical_layout() {
        w.push("tensor data is not laid out in info order at aligned offsets; llama.cpp's loader will refuse this file".to_string());
    }
    for (k, v) in h.metadata.entries() {
        if let (true, Some(t)) = (template_scan::is_template_key(k), v.as_str()) {
            let hits = template_scan::scan(t);
            if !hits.is_empty() {
                w.push(format!(
                    "{}: suspicious patterns {hits:?}; review before rendering",
                    esc(k)
                ));
            }
        }
    }
    w
}

/// Failures found by the integrity check, one line each, naming the key,
/// tensor or header field concerned.
fn failures(r: &IntegrityReport) -> Vec<String> {
    let mut f = Vec::new();
    if let Some(e) = &r.manifest_error {
        f.push(format!("integrity manifest malformed: {e}"));
    }
    f.extend(r.changes.iter().map(|c| esc(&c.to_string()).into_owned()));
    f
}

pub fn run(
    path: &Path,
    as_json: bool,
    sha256sum: bool,
    strict: bool,
) -> Result<ExitCode, crate::CliError> {
    // Mapped whole when small enough and the address space allows, else
    // header-only with tensor data mapped a window at a time.
    let file = crate::input::open_with(path, |p| {
        gguftool_gguf::open_source(p, &gguftool_quant::registry::TYPES)
    })?;
    let total: u64 = file.header().tensors.iter().map(|t| t.n_bytes).sum();
    // Drawn only when stderr is a terminal; output is unchanged otherwise.
    let bar = progress::tty_bytes_bar(total, "hashing");
    let digests = integrity::tensor_digests_from(&*file, &|n| bar.inc(n));
    bar.finish_and_clear();
    let report = integrity::check_with_digests(&*file, digests?);
    let mut warns = warnings(file.header());
    if let Some(v @ 1) = report.manifest_version {
        warns.push(format!(
            "older integrity manifest (version {v}): it cannot name changed keys or tensors and does not cover the header fields or trailing bytes; run `gguftool seal` to upgrade to version {}",
            integrity::MANIFEST_VERSION
        ));
    }
    let fails = failures(&report);
    let ok = fails.is_empty() && (!strict || warns.is_empty());
    if as_json {
        let out = json!({
            "file": path.display().to_string(),
            "valid": true,
            "ok": ok,
            "sealed": report.sealed,
            "metadata_ok": report.metadata_ok,
            "tensor_info_ok": report.tensor_info_ok,
            "changed_tensors": report.changed_tensors,
            "manifest_version": report.manifest_version,
            "failures": fails,
            "warnings": warns,
            "tensors": report.digests.iter().map(|(n, d)| json!({"name": n, "sha256": d})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if sha256sum {
        for (name, d) in &report.digests {
            println!("{}", sha256sum_line(d, name));
        }
    } else {
        for w in &warns {
            eprintln!("warning: {w}");
        }
        for f in &fails {
            eprintln!("error: {}: {f}", esc(&path.display().to_string()));
        }
        let n = file.header().tensors.len();
        if ok {
            let seal = if report.sealed {
                format!("sealed; metadata and all {n} tensor digests match")
            } else {
                "not sealed (no integrity manifest; run `gguftool seal`)".to_string()
            };
            println!(
                "ok: {}: valid GGUF v{}, {n} tensors, {seal}",
                esc(&path.display().to_string()),
                file.header().version
            );
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
