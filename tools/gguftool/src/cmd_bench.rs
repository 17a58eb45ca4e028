//! `gguftool bench`: kernel throughput per format and SIMD level.

use gguftool_benches::kernels::measure;
use gguftool_convert::policy::format_by_name;
use gguftool_quant::{registry, simd};
use std::process::ExitCode;
use std::time::Duration;

pub fn run(formats: &[String], millis: u64, as_json: bool) -> Result<ExitCode, crate::CliError> {
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
            .filter(|l| *l <= simd::active())
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
        "{:<10} {:<7} {:<11} {:>10} {:>12}",
        "format", "simd", "kernel", "GB/s enc", "Gweights/s"
    );
    for r in rows {
        println!(
            "{:<10} {:<7} {:<11} {:>10.2} {:>12.2}",
            r.format,
            r.level.name(),
            r.kernel,
            r.gbytes_per_s,
            r.gweights_per_s
        );
    }
    Ok(ExitCode::SUCCESS)
}
