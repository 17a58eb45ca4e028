//! `gguftool formats`: the registry: formats (which can quantize, which
//! `qat` can train, SIMD levels), then recipes.

use gguftool_quant::registry;
use serde_json::json;
use std::process::ExitCode;

pub fn run(as_json: bool) -> Result<ExitCode, crate::CliError> {
    let mut formats: Vec<_> = registry::all().to_vec();
    formats.sort_by_key(|f| f.type_id());
    let mut recipes: Vec<_> = registry::recipes().to_vec();
    recipes.sort_by_key(|r| r.name());
    if as_json {
        let rows: Vec<_> = formats
            .iter()
            .map(|f| {
                json!({
                    "kind": "format",
                    "name": f.name(),
                    "type_id": f.type_id(),
                    "block_size": f.block_size(),
                    "type_size": f.type_size(),
                    "bits_per_weight": f.bits_per_weight(),
                    "quantize": f.quantizer().is_some(),
                    "qat": f.differentiable().is_some(),
                    "simd": f.simd_levels().iter().map(|l| l.name()).collect::<Vec<_>>(),
                    "description": f.description(),
                })
            })
            .chain(recipes.iter().map(|r| {
                json!({
                    "kind": "recipe",
                    "name": r.name(),
                    "description": r.description(),
                })
            }))
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
        .chain(recipes.iter().map(|r| r.name().len()))
        .max()
        .unwrap_or(4)
        .max(4);
    let levels: Vec<String> = formats
        .iter()
        .map(|f| {
            let l: Vec<_> = f.simd_levels().iter().map(|l| l.name()).collect();
            l.join(",")
        })
        .collect();
    let sw = levels.iter().map(String::len).max().unwrap_or(0).max(4);
    println!(
        "{:<w$} {:>7} {:>6} {:>6} {:>8} {:>8} {:>4}  {:<sw$} description",
        "name", "type_id", "block", "bytes", "bpw", "quantize", "qat", "simd"
    );
    for (f, simd) in formats.iter().zip(&levels) {
        println!(
            "{:<w$} {:>7} {:>6} {:>6} {:>8.4} {:>8} {:>4}  {:<sw$} {}",
            f.name(),
            f.type_id(),
            f.block_size(),
            f.type_size(),
            f.bits_per_weight(),
            if f.quantizer().is_some() { "yes" } else { "no" },
            if f.differentiable().is_some() {
                "yes"
            } else {
                "no"
            },
            simd,
            f.description()
        );
    }
    if !recipes.is_empty() {
        println!("\nrecipes (convert --format NAME --bpw BITS chooses a format per tensor):");
        for r in &recipes {
            println!("{:<w$} {:>7}  {}", r.name(), "recipe", r.description());
        }
    }
    Ok(ExitCode::SUCCESS)
}
