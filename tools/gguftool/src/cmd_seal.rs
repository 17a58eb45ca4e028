//! `gguftool seal`: rewrite a file with an integrity manifest; tensor bytes
//! are copied unchanged.

use crate::progress::bytes_bar;
use gguftool_core::convert::{self, Plan};
use gguftool_core::gguf::write::WriteOptions;
use gguftool_core::gguf::GgufFile;
use std::path::Path;
use std::process::ExitCode;

pub fn run(input: &Path, output: &Path, force: bool) -> Result<ExitCode, gguftool_core::Error> {
    let src = GgufFile::open(input)?;
    let h = src.header();
    let plan = Plan {
        metadata: h.metadata.clone(),
        tensors: h
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| convert::copy(t, i))
            .collect(),
    };
    let pb = bytes_bar(plan.output_bytes(), "sealing");
    convert::execute(
        &src,
        &plan,
        output,
        force,
        WriteOptions { seal: true },
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
