//! `gguftool convert`: quantize a model to any registered format.

use crate::mixed::{self, MixedArgs};
use crate::progress::bytes_bar;
use gguftool_calib::imatrix::Imatrix;
use gguftool_convert::policy::{self, format_by_name, parse_tensor_type, Provenance, QuantPolicy};
use gguftool_convert::{self, Plan, TensorAction};
use gguftool_gguf::integrity::sha256_hex;
use gguftool_gguf::seal::WriteOptions;
use gguftool_gguf::Error;
use gguftool_gguf::GgufFile;
use regex::Regex;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Options of `gguftool convert`.
#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Input GGUF file (F32, F16 or BF16 weights; others need --allow-requantize).
    pub input: PathBuf,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Target format for weight matrices (see `gguftool formats`), or
    /// `mixed` to choose one per tensor under the --bpw budget.
    #[arg(short, long)]
    pub format: String,
    /// With `--format mixed`: average bits per weight over the allocated matrices.
    #[arg(long, value_name = "BITS")]
    pub bpw: Option<f64>,
    /// With `--format mixed`: candidate formats (comma-separated; default:
    /// every registered block format that can encode and suits post-training
    /// quantization, so not the ternary ones).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub candidates: Vec<String>,
    /// With `--format mixed`: let the allocator choose output.weight (and a
    /// tied token_embd.weight) too, instead of --output-tensor-type.
    #[arg(long)]
    pub allocate_output: bool,
    /// With `--format mixed`: how tensor errors are compared: `relative`
    /// (noise over signal per tensor, importance-weighted) or `absolute`
    /// (importance-weighted squared error).
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Relative)]
    pub objective: ObjectiveArg,
    /// With `--format mixed`: rows sampled per tensor to measure errors.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub sample_rows: u64,
    /// Decode already-quantized tensors and re-encode them.
    #[arg(long)]
    pub allow_requantize: bool,
    /// Keep tensors whose names match REGEX unchanged (repeatable).
    #[arg(long, value_name = "REGEX")]
    pub keep: Vec<String>,
    /// Use FORMAT for tensors whose names match REGEX (repeatable; first match wins).
    #[arg(long, value_name = "REGEX=FORMAT")]
    pub tensor_type: Vec<String>,
    /// Format for output.weight, and for token_embd.weight when the model ties
    /// its embeddings (has no output.weight). Default q8_0 (with `--format
    /// mixed` too, unless --allocate-output).
    #[arg(long, value_name = "FORMAT")]
    pub output_tensor_type: Option<String>,
    /// Format for token_embd.weight (default: the main format, or the output
    /// type when embeddings are tied).
    #[arg(long, value_name = "FORMAT")]
    pub token_embedding_type: Option<String>,
    /// Format for matrices whose rows do not fit the chosen format's blocks.
    #[arg(long, value_name = "FORMAT", default_value = "q8_0")]
    pub fallback: String,
    /// llama.cpp importance matrix (GGUF from llama-imatrix, or legacy .dat).
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Calibration file from `gguftool calibrate` (input Hessians): matrices
    /// whose input it covers are rounded with GPTQ.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Print the plan and the resulting size; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Overwrite an existing output.
    #[arg(long)]
    pub force: bool,
    /// Do not embed an integrity manifest.
    #[arg(long)]
    pub no_seal: bool,
}

/// `--objective` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ObjectiveArg {
    /// Noise over signal per tensor.
    Relative,
    /// Squared error.
    Absolute,
}

fn regexes(args: &[String]) -> Result<Vec<Regex>, Error> {
    args.iter()
        .map(|r| Regex::new(r).map_err(|e| Error::Other(format!("--keep {r:?}: {e}"))))
        .collect()
}

fn optional_format(
    name: &Option<String>,
) -> Result<Option<&'static dyn gguftool_quant::format::Format>, Error> {
    name.as_deref().map(format_by_name).transpose()
}

fn print_plan(
    src: &GgufFile,
    plan: &Plan,
    file_size: u64,
    allocation: Option<&gguftool_mixed::Allocation>,
    as_json: bool,
) {
    let h = src.header();
    let (mut q_elems, mut q_bytes) = (0u64, 0u64);
    let mut rows = Vec::new();
    for t in &plan.tensors {
        let info = &h.tensors[t.source_index];
        let to = gguftool_quant::registry::by_type_id(t.spec.ggml_type)
            .map_or(info.type_name, |f| f.name());
        if let TensorAction::Transcode { target, .. } = &t.action {
            if target.block_size() > 1 {
                q_elems += info.n_elements;
                q_bytes += t.spec.n_bytes;
            }
        }
        rows.push((info, to, t));
    }
    let bpw = if q_elems > 0 {
        q_bytes as f64 * 8.0 / q_elems as f64
    } else {
        0.0
    };
    if as_json {
        let tensors: Vec<_> = rows
            .iter()
            .map(|(info, to, t)| {
                json!({
                    "name": info.name, "from": info.type_name, "to": to, "shape": info.dims,
                    "bytes_in": info.n_bytes, "bytes_out": t.spec.n_bytes,
                    "action": format!("{:?}", t.action), "imatrix": t.importance.is_some(), "note": t.note,
                })
            })
            .collect();
        let out = json!({
            "tensors": tensors, "output_file_size": file_size,
            "quantized_elements": q_elems, "quantized_bytes": q_bytes, "quantized_bits_per_weight": bpw,
            "allocation": allocation,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return;
    }
    println!(
        "{:<40} {:<8} {:<8} {:<20} {:>12} {:>12}  note",
        "tensor", "from", "to", "shape", "bytes in", "bytes out"
    );
    for (info, to, t) in &rows {
        let shape = format!("{:?}", info.dims);
        let mut note = t.note.clone().unwrap_or_default();
        if t.importance.is_some() {
            note = format!("imatrix {note}");
        }
        println!(
            "{:<40} {:<8} {:<8} {:<20} {:>12} {:>12}  {}",
            info.name, info.type_name, to, shape, info.n_bytes, t.spec.n_bytes, note
        );
    }
    println!(
        "\n{} quantized elements at {bpw:.4} bits/weight; output file {file_size} bytes (input {})",
        q_elems,
        src.bytes().len()
    );
}

pub fn run(a: ConvertArgs) -> Result<ExitCode, Error> {
    let src = gguftool_quant::registry::open(&a.input)?;
    let imatrix = a
        .imatrix
        .as_deref()
        .map(|p: &Path| -> Result<_, Error> {
            let m = Imatrix::load(p)?;
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            Ok((Arc::new(m), sha256_hex(&bytes)))
        })
        .transpose()?;
    let mixed = a.format.eq_ignore_ascii_case("mixed");
    if mixed != a.bpw.is_some() {
        return Err(Error::Other(
            "--bpw goes with --format mixed (and --format mixed needs --bpw)".into(),
        ));
    }
    let policy = QuantPolicy {
        format: if mixed {
            format_by_name("f32")?
        } else {
            format_by_name(&a.format)?
        },
        allow_requantize: a.allow_requantize,
        keep: regexes(&a.keep)?,
        tensor_types: a
            .tensor_type
            .iter()
            .map(|s| parse_tensor_type(s))
            .collect::<Result<_, _>>()?,
        output_tensor_type: format_by_name(a.output_tensor_type.as_deref().unwrap_or("q8_0"))?,
        token_embedding_type: optional_format(&a.token_embedding_type)?,
        fallback: format_by_name(&a.fallback)?,
        imatrix: imatrix.as_ref().map(|(m, _)| m.clone()),
    };
    if !mixed && policy.format.quantizer().is_none() {
        return Err(Error::Other(format!(
            "format {} cannot quantize",
            policy.format.name()
        )));
    }
    let provenance = Provenance {
        // Hashed while converting, then patched in.
        source_sha256: "0".repeat(64),
        imatrix: imatrix.map(|(m, sha)| (sha, m.datasets.clone())),
    };
    let has_imatrix = policy.imatrix.is_some();
    let (plan, allocation) = if let Some(bpw) = a.bpw {
        let pb = crate::progress::count_bar(0, "measuring candidate formats");
        let args = MixedArgs {
            bpw,
            candidates: &a.candidates,
            sample_rows: a.sample_rows.max(1),
            objective: match a.objective {
                ObjectiveArg::Relative => gguftool_mixed::Objective::Relative,
                ObjectiveArg::Absolute => gguftool_mixed::Objective::Absolute,
            },
            pin_output: a.output_tensor_type.is_some() || !a.allocate_output,
            pin_embedding: a.token_embedding_type.is_some(),
        };
        let r = mixed::plan(&src, policy, &provenance, &args, &|d, t| {
            pb.set_length(t);
            pb.set_position(d);
        })?;
        pb.finish_and_clear();
        (r.0, Some(r.1))
    } else {
        (policy::plan(&src, &policy, &provenance)?, None)
    };
    if has_imatrix {
        let quantized = plan
            .tensors
            .iter()
            .filter(|t| matches!(t.action, TensorAction::Transcode { target, .. } if target.block_size() > 1))
            .count();
        let weighted = plan
            .tensors
            .iter()
            .filter(|t| t.importance.is_some())
            .count();
        eprintln!("imatrix: {weighted} of {quantized} quantized matrices weighted");
        if weighted == 0 && quantized > 0 {
            eprintln!(
                "warning: the imatrix names none of this model's tensors (made for another model?)"
            );
        }
    }
    let mut plan = plan;
    if let Some(path) = &a.calibration {
        let f = gguftool_quant::registry::open(path)?;
        let cal = gguftool_calib::calib_file::Calibration::from_gguf(&f)
            .map_err(|e| gguftool_gguf::Error::Other(format!("{}: {e}", path.display())))?;
        let n = gguftool_convert::apply_calibration(&mut plan, &src, &cal);
        eprintln!("calibration: {n} matrices rounded with GPTQ");
        if n == 0 {
            eprintln!(
                "warning: the calibration file covers none of this model's quantized matrices"
            );
        }
    }
    let opts = WriteOptions {
        seal: !a.no_seal,
        types: &gguftool_quant::registry::TYPES,
    };
    if a.dry_run {
        if let Some(alloc) = &allocation {
            if !a.json {
                crate::mixed::print_allocation(alloc);
            }
        }
        let size = plan.output_file_size(opts)?;
        print_plan(&src, &plan, size, allocation.as_ref(), a.json);
        return Ok(ExitCode::SUCCESS);
    }
    let total: u64 = src.header().tensors.iter().map(|t| t.n_bytes).sum();
    let pb = bytes_bar(total, &format!("converting to {}", a.format));
    let start = std::time::Instant::now();
    gguftool_convert::execute_with_source_hash(
        &src,
        &plan,
        &a.output,
        a.force,
        opts,
        Some(policy::KEY_SOURCE_SHA256),
        &|n| pb.inc(n),
    )?;
    pb.finish_and_clear();
    eprintln!(
        "wrote {} ({} tensors, {} bytes) in {:.1} s",
        a.output.display(),
        plan.tensors.len(),
        plan.output_file_size(opts)?,
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
