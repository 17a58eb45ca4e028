//! `gguftool seal`: rewrite a file with an integrity manifest; tensor bytes
//! are copied unchanged.

use crate::progress::bytes_bar;
use gguftool_convert::{self, Plan};
use gguftool_gguf::seal::WriteOptions;
use std::path::Path;
use std::process::ExitCode;

pub fn run(input: &Path, output: &Path, force: bool) -> Result<ExitCode, crate::CliError> {
    let src = crate::input::open(input)?;
    let h = src.header();
    let plan = Plan {
        metadata: h.metadata.clone(),
        tensors: h
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| gguftool_convert::copy(t, i))
            .collect(),
    };
    let pb = bytes_bar(plan.output_bytes(), "sealing");
    gguftool_convert::execute(
        &src,
        &plan,
        output,
        force,
        WriteOptions {
            seal: true,
            types: &gguftool_quant::registry::TYPES,
        },
        &|n| pb.inc(n),
    )?;
    pb.finish_and_clear();
    println!(
        "sealed {} -> {} ({} tensors)",
        input.display(),
        output.display(),
        h.tensors.len()
    );
    Ok(ExitCode::SUCCESS)
}
