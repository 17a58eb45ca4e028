//! `gguftool dequantize`: decode every tensor to f32, f16 or bf16.

use crate::progress::bytes_bar;
use gguftool_convert::{self, Plan};
use gguftool_gguf::ggml_type::ids;
use gguftool_gguf::seal::WriteOptions;
use gguftool_gguf::Error;
use gguftool_gguf::Value;
use gguftool_quant::registry;
use std::path::Path;
use std::process::ExitCode;

/// Float types a file can be decoded to.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FloatTarget {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl FloatTarget {
    fn type_id(self) -> u32 {
        match self {
            FloatTarget::F32 => ids::F32,
            FloatTarget::F16 => ids::F16,
            FloatTarget::Bf16 => ids::BF16,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32`, `MOSTLY_F16`, `MOSTLY_BF16`).
    fn file_type(self) -> u32 {
        match self {
            FloatTarget::F32 => 0,
            FloatTarget::F16 => 1,
            FloatTarget::Bf16 => 32,
        }
    }
}

/// ggml integer types, copied unchanged.
const INTEGER_TYPES: [u32; 4] = [24, 25, 26, 27];

pub fn run(
    input: &Path,
    output: &Path,
    to: FloatTarget,
    force: bool,
    seal: bool,
) -> Result<ExitCode, crate::CliError> {
    crate::input::refuse_same_file(input, output)?;
    let src = crate::input::open(input)?;
    let h = src.header();
    let lookup = |id| {
        registry::by_type_id(id)
            .ok_or_else(|| Error::Other(format!("type id {id} is not registered")))
    };
    let (target, f32_fmt) = (lookup(to.type_id())?, lookup(ids::F32)?);
    let mut tensors = Vec::with_capacity(h.tensors.len());
    for (i, t) in h.tensors.iter().enumerate() {
        let want = if t.dims.len() <= 1 { f32_fmt } else { target };
        tensors.push(
            if INTEGER_TYPES.contains(&t.ggml_type) || t.ggml_type == want.type_id() {
                gguftool_convert::copy(t, i)
            } else {
                gguftool_convert::transcode(t, i, want)?
            },
        );
    }
    let mut metadata = h.metadata.clone();
    metadata.set("general.file_type", Value::U32(to.file_type()));
    let plan = Plan { metadata, tensors };
    let total: u64 = h.tensors.iter().map(|t| t.n_bytes).sum();
    let pb = bytes_bar(total, "dequantizing");
    gguftool_convert::execute(
        &src,
        &plan,
        output,
        force,
        WriteOptions {
            seal,
            types: &gguftool_quant::registry::TYPES,
        },
        &|n| pb.inc(n),
    )?;
    pb.finish_and_clear();
    println!(
        "wrote {} ({} tensors, {} bytes of tensor data)",
        output.display(),
        plan.tensors.len(),
        plan.output_bytes()
    );
    Ok(ExitCode::SUCCESS)
}
