//! `gguftool quality`: per-tensor and overall RMSE, SQNR and bpw.

use crate::escape::escape_for_terminal as esc;
use gguftool_convert::quality::{compare, summarize};
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

pub fn run(orig: &Path, quant: &Path, as_json: bool) -> Result<ExitCode, crate::CliError> {
    let (o, q) = (crate::input::open(orig)?, crate::input::open(quant)?);
    let mut rows = compare(&o, &q)?;
    // Weight matrices first, then norms and other vectors (stable within each).
    let is_matrix = |name: &str| {
        q.header()
            .tensor_index(name)
            .is_some_and(|i| q.header().tensors[i].dims.len() >= 2)
    };
    rows.sort_by_key(|r| !is_matrix(&r.name));
    // Overall figures cover the weight matrices (norms and biases are 1-D and kept exact).
    let matrices = summarize(&rows, |r| {
        q.header()
            .tensor_index(&r.name)
            .is_some_and(|i| q.header().tensors[i].dims.len() >= 2)
    });
    let all = summarize(&rows, |_| true);
    if as_json {
        let out = json!({ "tensors": rows, "matrices": matrices, "all": all });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let nw = rows
        .iter()
        .map(|r| esc(&r.name).chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let tw = rows
        .iter()
        .map(|r| r.quant_type.len())
        .max()
        .unwrap_or(0)
        .max(4);
    println!(
        "{:<nw$} {:<tw$} {:>12} {:>8} {:>12} {:>9}",
        "tensor", "type", "elements", "bpw", "rmse", "sqnr dB"
    );
    for r in &rows {
        println!(
            "{:<nw$} {:<tw$} {:>12} {:>8.4} {:>12.6e} {:>9.2}",
            esc(&r.name),
            r.quant_type,
            r.elements,
            r.bits_per_weight,
            r.rmse,
            r.sqnr_db
        );
    }
    for (label, s) in [("matrices (2-D+)", &matrices), ("all tensors", &all)] {
        println!(
            "{label}: {} tensors, {} elements, {:.4} bpw, rmse {:.6e}, SQNR {:.2} dB",
            s.tensors, s.elements, s.bits_per_weight, s.rmse, s.sqnr_db
        );
    }
    Ok(ExitCode::SUCCESS)
}
