//! `gguftool inspect`: header, metadata and tensor table.

use crate::escape::escape_for_terminal as esc;
use crate::json::{value_json, value_text};
use gguftool_gguf::TensorInfo;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Metadata keys listed in table output before the rest are summarized
/// (unless `--full`). Models have tens of keys; a file with millions (a
/// hostile or broken one) would otherwise print millions of lines: 4 M tiny
/// pairs took 10 s in a debug build, most of it formatting.
pub const METADATA_PREVIEW: usize = 1_000;

fn shape(t: &TensorInfo) -> String {
    let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// Per-type totals: (tensors, elements, bytes).
fn type_summary(tensors: &[TensorInfo]) -> BTreeMap<&'static str, (usize, u64, u64)> {
    let mut m: BTreeMap<&'static str, (usize, u64, u64)> = BTreeMap::new();
    for t in tensors {
        let e = m.entry(t.type_name).or_default();
        e.0 += 1;
        e.1 += t.n_elements;
        e.2 += t.n_bytes;
    }
    m
}

pub fn run(path: &Path, as_json: bool, full: bool) -> Result<ExitCode, crate::CliError> {
    let file = match crate::input::open(path) {
        Ok(f) => f,
        Err(e) => {
            // Show what the fixed header says before the error (text only;
            // JSON output stays all-or-nothing).
            if !as_json && !matches!(e, gguftool_gguf::Error::Io { .. }) && path.is_file() {
                if let Some(rows) = crate::input::raw_header(path) {
                    println!("file:        {}", esc(&path.display().to_string()));
                    if let Ok(m) = std::fs::metadata(path) {
                        println!("size:        {} bytes", m.len());
                    }
                    for (k, v) in rows {
                        println!("{:<12} {v}", format!("{k}:"));
                    }
                    println!("(could not parse further; see the error)");
                }
            }
            return Err(e.into());
        }
    };
    let h = file.header();
    let n_params: u64 = h.tensors.iter().map(|t| t.n_elements).sum();
    let n_bytes: u64 = h.tensors.iter().map(|t| t.n_bytes).sum();
    let bpw = if n_params > 0 {
        n_bytes as f64 * 8.0 / n_params as f64
    } else {
        0.0
    };
    if as_json {
        let metadata: serde_json::Map<String, serde_json::Value> = h
            .metadata
            .entries()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    json!({"type": v.value_type().name(), "value": value_json(v, full)}),
                )
            })
            .collect();
        let tensors: Vec<_> = h
            .tensors
            .iter()
            .map(|t| {
                json!({
                    "name": t.name, "type": t.type_name, "type_id": t.ggml_type,
                    "shape": t.dims, "elements": t.n_elements, "bytes": t.n_bytes,
                    "bits_per_weight": t.bits_per_weight(),
                    "offset": h.data_offset + t.offset,
                })
            })
            .collect();
        let out = json!({
            "file": path.display().to_string(),
            "file_size": file.bytes().len(),
            "version": h.version,
            "alignment": h.alignment,
            "data_offset": h.data_offset,
            "metadata_count": h.metadata.len(),
            "tensor_count": h.tensors.len(),
            "parameters": n_params,
            "tensor_bytes": n_bytes,
            "bits_per_weight": bpw,
            "metadata": metadata,
            "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    // One buffered writer: a file may have millions of keys, and a write
    // per line made listing them take tens of seconds.
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    macro_rules! outln {
        ($($t:tt)*) => {
            let _ = writeln!(out, $($t)*);
        };
    }
    outln!("file:        {}", esc(&path.display().to_string()));
    outln!("size:        {} bytes", file.bytes().len());
    outln!("version:     GGUF v{}", h.version);
    outln!("alignment:   {}", h.alignment);
    outln!("data offset: {}", h.data_offset);
    outln!(
        "tensors:     {} ({} parameters, {} bytes, {:.4} bits/weight)",
        h.tensors.len(),
        n_params,
        n_bytes,
        bpw
    );
    outln!("\nmetadata ({} keys):", h.metadata.len());
    let shown = if full {
        h.metadata.len()
    } else {
        h.metadata.len().min(METADATA_PREVIEW)
    };
    let kw = h
        .metadata
        .entries()
        .take(shown)
        .map(|(k, _)| esc(k).chars().count())
        .max()
        .unwrap_or(0)
        .max(3);
    for (k, v) in h.metadata.entries().take(shown) {
        outln!(
            "  {:<kw$} {:<7} {}",
            esc(k),
            v.value_type().name(),
            esc(&value_text(v, full))
        );
    }
    if shown < h.metadata.len() {
        outln!(
            "  ... {} more keys not shown (use --full to list all)",
            h.metadata.len() - shown
        );
    }
    outln!("\ntensor types:");
    let summary = type_summary(&h.tensors);
    let tyw = summary.keys().map(|t| t.len()).max().unwrap_or(0).max(4);
    for (ty, (n, e, b)) in summary {
        let bpw = if e > 0 {
            b as f64 * 8.0 / e as f64
        } else {
            0.0
        };
        outln!("  {ty:<tyw$} {n:>5} tensors {e:>12} elements {b:>12} bytes {bpw:>8.4} bpw");
    }
    outln!("\ntensors:");
    let nw = h
        .tensors
        .iter()
        .map(|t| esc(&t.name).chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let tw = h
        .tensors
        .iter()
        .map(|t| t.type_name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let sw = h
        .tensors
        .iter()
        .map(|t| shape(t).len())
        .max()
        .unwrap_or(0)
        .max(5);
    outln!(
        "  {:<nw$} {:<tw$} {:<sw$} {:>12} {:>8}",
        "name",
        "type",
        "shape",
        "bytes",
        "bpw"
    );
    for t in &h.tensors {
        outln!(
            "  {:<nw$} {:<tw$} {:<sw$} {:>12} {:>8.4}",
            esc(&t.name),
            t.type_name,
            shape(t),
            t.n_bytes,
            t.bits_per_weight()
        );
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}
