//! `gguftool bench`: kernel throughput per format and SIMD level.

use gguftool_benches::kernels::measure;
use gguftool_convert::policy::format_by_name;
use gguftool_quant::{registry, simd};
use std::process::ExitCode;
use std::time::Duration;

pub fn run(
    formats: &[String],
    millis: u64,
    as_json: bool,
) -> Result<ExitCode, gguftool_gguf::Error> {
    let selected: Vec<_> = if formats.is_empty() {
        registry::block_formats()
    } else {
        formats
            .iter()
            .map(|n| format_by_name(n))
            .collect::<Result<_, _>>()?
    };
    let budget = Duration::from_millis(millis);
    let mut rows = Vec::new();
    for f in selected {
        // Every implemented level up to the active one (GGUFTOOL_SIMD caps it).
        for level in simd::available()
            .into_iter()
            .filter(|l| simd::active().allows(*l))
        {
            if f.simd_levels().contains(&level) {
                rows.extend(measure(f, level, budget));
            }
        }
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "single thread, 64 x 4096 matrix, active SIMD level {}",
        simd::active().name()
    );
    println!(
        "{:<10} {:<7} {:<13} {:>10} {:>12} {:>10}",
        "format", "simd", "kernel", "GB/s enc", "Gweights/s", "vs decode"
    );
    for r in &rows {
        // dot_q8 against the decode-then-dot fallback of the same run.
        let ratio = (r.kernel == "dot_q8")
            .then(|| {
                rows.iter().find(|o| {
                    o.kernel == "dot_q8_decode" && o.format == r.format && o.level == r.level
                })
            })
            .flatten()
            .map(|o| format!("{:.1}x", r.gbytes_per_s / o.gbytes_per_s))
            .unwrap_or_default();
        println!(
            "{:<10} {:<7} {:<13} {:>10.2} {:>12.2} {:>10}",
            r.format,
            r.level.name(),
            r.kernel,
            r.gbytes_per_s,
            r.gweights_per_s,
            ratio
        );
    }
    Ok(ExitCode::SUCCESS)
}
