//! `gguftool bench`: kernel throughput per format and SIMD level.

use crate::{as_usage, usage, CliError};
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
            .map(|n| format_by_name(n).map_err(as_usage))
            .collect::<Result<_, CliError>>()?
    };
    if millis == 0 {
        return Err(usage(
            "--millis 0: each measurement needs at least 1 millisecond",
        ));
    }
    let budget = Duration::from_millis(millis);
    // Every implemented level up to the active one (GGUFTOOL_SIMD caps it).
    let jobs: Vec<_> = selected
        .iter()
        .flat_map(|f| {
            simd::available()
                .into_iter()
                .filter(|l| simd::active().allows(*l) && f.simd_levels().contains(l))
                .map(move |l| (*f, l))
        })
        .collect();
    // Shown on a terminal only (each job runs three kernels for --millis each).
    let pb = crate::progress::count_bar(jobs.len() as u64, "measuring kernels");
    let mut rows = Vec::new();
    for (f, level) in jobs {
        pb.set_message(format!("measuring {} {}", f.name(), level.name()));
        rows.extend(measure(f, level, budget));
        pb.inc(1);
    }
    pb.finish_and_clear();
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
    let fw = rows
        .iter()
        .map(|r| r.format.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let kw = rows
        .iter()
        .map(|r| r.kernel.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!(
        "{:<fw$} {:<7} {:<kw$} {:>10} {:>12} {:>10}",
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
            "{:<fw$} {:<7} {:<kw$} {:>10.2} {:>12.2} {:>10}",
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
