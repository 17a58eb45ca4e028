//! `gguftool formats`: the registry.

use gguftool_quant::registry;
use serde_json::json;
use std::process::ExitCode;

pub fn run(as_json: bool) -> Result<ExitCode, gguftool_gguf::Error> {
    let mut formats: Vec<_> = registry::all().to_vec();
    formats.sort_by_key(|f| f.type_id());
    if as_json {
        let rows: Vec<_> = formats
            .iter()
            .map(|f| {
                json!({
                    "name": f.name(),
                    "type_id": f.type_id(),
                    "block_size": f.block_size(),
                    "type_size": f.type_size(),
                    "bits_per_weight": f.bits_per_weight(),
                    "quantize": f.quantizer().is_some(),
                    "simd": f.simd_levels().iter().map(|l| l.name()).collect::<Vec<_>>(),
                    "description": f.description(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let w = formats
        .iter()
        .map(|f| f.name().len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<w$} {:>7} {:>6} {:>6} {:>8} {:>8}  {:<18} description",
        "name", "type_id", "block", "bytes", "bpw", "quantize", "simd"
    );
    for f in formats {
        let simd: Vec<_> = f.simd_levels().iter().map(|l| l.name()).collect();
        println!(
            "{:<w$} {:>7} {:>6} {:>6} {:>8.4} {:>8}  {:<18} {}",
            f.name(),
            f.type_id(),
            f.block_size(),
            f.type_size(),
            f.bits_per_weight(),
            if f.quantizer().is_some() { "yes" } else { "no" },
            simd.join(","),
            f.description()
        );
    }
    Ok(ExitCode::SUCCESS)
}
