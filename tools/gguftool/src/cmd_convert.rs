//! `gguftool convert`: quantize a model to any registered format.

use crate::args::{parse_tensor_type, regex_error_line};
use crate::escape::escape_for_terminal as esc;
use crate::progress::bytes_bar;
use crate::{as_usage, usage, CliError};
use gguftool_calib::calib_file::Calibration;
use gguftool_calib::imatrix::Imatrix;
use gguftool_convert::policy::{self, Provenance, QuantPolicy};
use gguftool_convert::recipe::RecipeSettings;
use gguftool_convert::{self, Plan, TensorAction};
use gguftool_gguf::integrity::sha256_hex;
use gguftool_gguf::seal::WriteOptions;
use gguftool_gguf::Error;
use gguftool_gguf::GgufFile;
use gguftool_quant::format::Format;
use gguftool_quant::recipe::{Allocation, Objective, Recipe, RecipeError};
use gguftool_quant::registry;
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
    /// Target format for weight matrices, or a recipe such as `mixed` that
    /// chooses one per tensor under the --bpw budget (see `gguftool formats`).
    #[arg(short, long)]
    pub format: String,
    /// With `--format mixed`: average bits per weight over the allocated
    /// matrices (finite, within the candidates' range).
    #[arg(long, value_name = "BITS")]
    pub bpw: Option<f64>,
    /// With `--format mixed`: candidate formats, quantized block formats that
    /// can encode (comma-separated; default: every registered one that suits
    /// post-training quantization, so not the ternary ones).
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
    /// Format for matrices whose rows do not fit the chosen format's blocks
    /// (f16 where this one does not fit either).
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

/// Compiles `--keep` patterns; an invalid one is a usage error on one line.
fn regexes(args: &[String]) -> Result<Vec<Regex>, CliError> {
    args.iter()
        .map(|r| {
            if r.is_empty() {
                return Err(usage("--keep: empty pattern (it would match every tensor)"));
            }
            Regex::new(r).map_err(|e| usage(format!("--keep {r:?}: {}", regex_error_line(&e))))
        })
        .collect()
}

/// Names of the formats that can encode, sorted.
fn encodable_names() -> String {
    let mut names: Vec<&str> = registry::all()
        .iter()
        .filter(|f| f.quantizer().is_some())
        .map(|f| f.name())
        .collect();
    names.sort_unstable();
    names.join(", ")
}

/// The format `name` given to `flag`, which must be able to encode.
pub fn encoding_format(flag: &str, name: &str) -> Result<&'static dyn Format, CliError> {
    let f = registry::by_name(name).ok_or_else(|| {
        usage(format!(
            "{flag} {name:?}: unknown format (formats that can encode: {})",
            encodable_names()
        ))
    })?;
    if f.quantizer().is_none() {
        return Err(usage(format!(
            "{flag} {}: this format cannot encode (formats that can: {})",
            f.name(),
            encodable_names()
        )));
    }
    Ok(f)
}

/// What `--format` names: a format or a recipe.
enum Target {
    Format(&'static dyn Format),
    Recipe(&'static dyn Recipe),
}

fn target(name: &str) -> Result<Target, CliError> {
    if let Some(f) = registry::by_name(name) {
        return encoding_format("--format", f.name()).map(Target::Format);
    }
    if let Some(r) = registry::recipe_by_name(name) {
        return Ok(Target::Recipe(r));
    }
    let mut recipes: Vec<&str> = registry::recipes().iter().map(|r| r.name()).collect();
    recipes.sort_unstable();
    Err(usage(format!(
        "--format {name:?}: unknown format or recipe (formats that can encode: {}; recipes: {})",
        encodable_names(),
        recipes.join(", ")
    )))
}

/// Tallies of a plan for the summary and the dry run.
struct PlanSummary {
    /// Output type name and tensor count, most tensors first.
    types: Vec<(&'static str, usize)>,
    /// Quantized (block) elements and their bytes.
    q_elems: u64,
    q_bytes: u64,
    /// Tensors given another type than asked for, with the reason.
    substitutions: Vec<(String, String)>,
}

impl PlanSummary {
    fn of(src: &GgufFile, plan: &Plan) -> Self {
        let h = src.header();
        let mut types: Vec<(&'static str, usize)> = Vec::new();
        let (mut q_elems, mut q_bytes) = (0u64, 0u64);
        let mut substitutions = Vec::new();
        for t in &plan.tensors {
            let info = &h.tensors[t.source_index];
            let to = registry::by_type_id(t.spec.ggml_type).map_or(info.type_name, |f| f.name());
            match types.iter_mut().find(|(n, _)| *n == to) {
                Some((_, c)) => *c += 1,
                None => types.push((to, 1)),
            }
            if let TensorAction::Transcode { target, .. } | TensorAction::Gptq { target, .. } =
                &t.action
            {
                if target.block_size() > 1 {
                    q_elems += info.n_elements;
                    q_bytes += t.spec.n_bytes;
                }
            }
            // A GPTQ note is no substitution; a fallback's reason precedes it.
            let reason = t.note.as_deref().map(|n| {
                n.strip_suffix(gguftool_convert::GPTQ_NOTE)
                    .map_or(n, |r| r.trim_end_matches("; "))
            });
            if let Some(note) = reason.filter(|r| !r.is_empty()) {
                substitutions.push((info.name.clone(), note.to_string()));
            }
        }
        types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        PlanSummary {
            types,
            q_elems,
            q_bytes,
            substitutions,
        }
    }

    fn bpw(&self) -> f64 {
        if self.q_elems > 0 {
            self.q_bytes as f64 * 8.0 / self.q_elems as f64
        } else {
            0.0
        }
    }

    fn types_line(&self) -> String {
        let parts: Vec<String> = self
            .types
            .iter()
            .map(|(n, c)| format!("{n} x{c}"))
            .collect();
        parts.join(", ")
    }
}

fn print_plan(
    src: &GgufFile,
    plan: &Plan,
    file_size: u64,
    allocation: Option<&Allocation>,
    as_json: bool,
) {
    let h = src.header();
    let summary = PlanSummary::of(src, plan);
    let bpw = summary.bpw();
    let (q_elems, q_bytes) = (summary.q_elems, summary.q_bytes);
    let rows: Vec<_> = plan
        .tensors
        .iter()
        .map(|t| {
            let info = &h.tensors[t.source_index];
            let to = registry::by_type_id(t.spec.ggml_type).map_or(info.type_name, |f| f.name());
            (info, to, t)
        })
        .collect();
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
    let shapes: Vec<String> = rows
        .iter()
        .map(|(i, _, _)| format!("{:?}", i.dims))
        .collect();
    let names: Vec<_> = rows.iter().map(|(i, _, _)| esc(&i.name)).collect();
    let nw = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let fw = rows
        .iter()
        .map(|(i, _, _)| i.type_name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let tw = rows
        .iter()
        .map(|(_, to, _)| to.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let sw = shapes.iter().map(String::len).max().unwrap_or(0).max(5);
    println!(
        "{:<nw$} {:<fw$} {:<tw$} {:<sw$} {:>12} {:>12}  note",
        "tensor", "from", "to", "shape", "bytes in", "bytes out"
    );
    for (((info, to, t), shape), name) in rows.iter().zip(&shapes).zip(&names) {
        let mut note = t.note.clone().unwrap_or_default();
        if t.importance.is_some() {
            note = format!("imatrix {note}");
        }
        println!(
            "{:<nw$} {:<fw$} {:<tw$} {:<sw$} {:>12} {:>12}  {}",
            name,
            info.type_name,
            to,
            shape,
            info.n_bytes,
            t.spec.n_bytes,
            esc(&note)
        );
    }
    println!(
        "\n{} quantized elements at {bpw:.4} bits/weight; output file {file_size} bytes (input {})",
        q_elems,
        src.bytes().len()
    );
    println!("types: {}", summary.types_line());
}

/// Tallies of the GPTQ reports during a conversion.
#[derive(Default)]
struct GptqLog {
    /// Tensors whose damping had to be raised.
    retried: usize,
    /// Tensors with dead input columns.
    with_dead: usize,
    /// Seconds from the start of writing to the last finished tensor.
    last: f64,
}

/// Bits per weight below which a conversion without an imatrix loses
/// much more quality.
const LOW_BIT_WARNING_BPW: f64 = 3.0;

pub fn run(a: ConvertArgs) -> Result<ExitCode, CliError> {
    let start = std::time::Instant::now();
    // Arguments first: every usage error before any file is read.
    let target = target(&a.format)?;
    crate::input::refuse_same_file(&a.input, &a.output)?;
    let recipe = match target {
        Target::Recipe(r) => Some(r),
        Target::Format(_) => None,
    };
    if recipe.is_some() != a.bpw.is_some() {
        return Err(usage(match recipe {
            Some(r) => format!("--format {} needs --bpw", r.name()),
            None => "--bpw goes with a recipe such as --format mixed".to_string(),
        }));
    }
    if recipe.is_none() && !a.candidates.is_empty() {
        return Err(usage(
            "--candidates goes with a recipe such as --format mixed",
        ));
    }
    let candidates: Vec<&'static dyn Format> = a
        .candidates
        .iter()
        .map(|n| encoding_format("--candidates", n))
        .collect::<Result<_, _>>()?;
    if let (Some(bpw), Some(r)) = (a.bpw, recipe) {
        let cands = if candidates.is_empty() {
            gguftool_quant::registry::default_candidates()
        } else {
            candidates.clone()
        };
        r.validate(&cands, bpw).map_err(|e| usage(e.to_string()))?;
    }
    let tensor_types = a
        .tensor_type
        .iter()
        .map(|s| {
            let (re, f) = parse_tensor_type(s).map_err(as_usage)?;
            encoding_format("--tensor-type", f.name())?;
            Ok((re, f))
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let output_tensor_type = encoding_format(
        "--output-tensor-type",
        a.output_tensor_type.as_deref().unwrap_or("q8_0"),
    )?;
    let token_embedding_type = a
        .token_embedding_type
        .as_deref()
        .map(|n| encoding_format("--token-embedding-type", n))
        .transpose()?;
    let fallback = encoding_format("--fallback", &a.fallback)?;
    let keep = regexes(&a.keep)?;
    if a.json && !a.dry_run {
        return Err(usage("--json goes with --dry-run"));
    }

    let src = crate::input::open(&a.input)?;
    let imatrix = a
        .imatrix
        .as_deref()
        .map(|p: &Path| -> Result<_, Error> {
            let m = Imatrix::load(p)?;
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            Ok((Arc::new(m), sha256_hex(&bytes)))
        })
        .transpose()?;
    let policy = QuantPolicy {
        format: match target {
            Target::Format(f) => f,
            Target::Recipe(_) => policy::format_by_name("f32")?,
        },
        allow_requantize: a.allow_requantize,
        keep,
        tensor_types,
        output_tensor_type,
        token_embedding_type,
        fallback,
        imatrix: imatrix.as_ref().map(|(m, _)| m.clone()),
    };
    let provenance = Provenance {
        // Hashed while converting, then patched in.
        source_sha256: "0".repeat(64),
        imatrix: imatrix.map(|(m, sha)| (sha, m.datasets.clone())),
    };
    let has_imatrix = policy.imatrix.is_some();
    let low_bits = match target {
        Target::Format(f) => (f.block_size() > 1 && f.bits_per_weight() < LOW_BIT_WARNING_BPW)
            .then(|| format!("{} ({:.2} bpw)", f.name(), f.bits_per_weight())),
        Target::Recipe(r) => a
            .bpw
            .filter(|b| *b < LOW_BIT_WARNING_BPW)
            .map(|b| format!("{} at {b} bpw", r.name())),
    };
    if let (Some(what), false) = (&low_bits, has_imatrix || a.calibration.is_some()) {
        eprintln!(
            "warning: converting to {what} without --imatrix or --calibration: rounding below 3 bits per weight \
             without importance data typically multiplies perplexity many times (SmolLM2-135M piq2: 3141 without, \
             77 with --calibration); make input Hessians with `gguftool calibrate MODEL -f TEXT -o CALIB.gguf` \
             and pass --calibration CALIB.gguf (or an importance matrix with --imatrix)"
        );
    }
    let calibration = a
        .calibration
        .as_deref()
        .map(|path| -> Result<_, Error> {
            let f = registry::open(path)?;
            let c = Calibration::from_gguf(&f)
                .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
            Ok((c, gguftool_gguf::integrity::sha256_hex(f.bytes())))
        })
        .transpose()?;
    let (calibration, calibration_sha) = match calibration {
        Some((c, sha)) => (Some(c), Some(sha)),
        None => (None, None),
    };
    let (plan, allocation) = if let Some(r) = recipe {
        let pb = crate::progress::count_bar(0, "measuring candidate formats");
        let settings = RecipeSettings {
            bpw: a.bpw.unwrap_or_default(),
            candidates: &candidates,
            sample_rows: a.sample_rows.max(1),
            objective: match a.objective {
                ObjectiveArg::Relative => Objective::Relative,
                ObjectiveArg::Absolute => Objective::Absolute,
            },
            pin_output: a.output_tensor_type.is_some() || !a.allocate_output,
            pin_embedding: a.token_embedding_type.is_some(),
            calibration: calibration.as_ref(),
        };
        let res =
            gguftool_convert::recipe::plan(&src, r, policy, &provenance, &settings, &|d, t| {
                pb.set_length(t);
                pb.set_position(d);
            });
        pb.finish_and_clear();
        let (plan, alloc) = res.map_err(|e| match e {
            RecipeError::Invalid(m) => usage(m),
            RecipeError::Data(e) => CliError::Failed(e),
        })?;
        if calibration.is_some() {
            let n = match plan
                .metadata
                .get(gguftool_convert::recipe::KEY_HESSIAN_TENSORS)
            {
                Some(gguftool_gguf::value::Value::U32(n)) => *n,
                _ => 0,
            };
            eprintln!(
                "{}: errors measured as tr(dW H dW^T) with the input Hessians of {n} of {} allocated matrices",
                r.name(),
                alloc.choices.len()
            );
        }
        (plan, Some(alloc))
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
    if let (Some(cal), Some(path)) = (&calibration, &a.calibration) {
        gguftool_convert::calibration::check_calibration(&plan, &src, cal)
            .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        let n = gguftool_convert::apply_calibration(&mut plan, &src, cal)
            .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        eprintln!("calibration: {n} matrices to round with GPTQ");
        // Provenance, as for the imatrix.
        if let Some(sha) = &calibration_sha {
            plan.metadata.set(
                "gguftool.convert.calibration_sha256",
                gguftool_gguf::value::Value::String(sha.clone()),
            );
        }
        plan.metadata.set(
            "gguftool.convert.calibration_datasets",
            gguftool_gguf::value::Value::Array(gguftool_gguf::value::Array::String(
                cal.datasets.clone().into(),
            )),
        );
        if n == 0 {
            eprintln!(
                "warning: the calibration file covers none of this model's quantized matrices"
            );
        }
    }
    let opts = WriteOptions {
        seal: !a.no_seal,
        types: &registry::TYPES,
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
    let planned = start.elapsed();
    let total: u64 = src.header().tensors.iter().map(|t| t.n_bytes).sum();
    let gptq_total = plan
        .tensors
        .iter()
        .filter(|t| matches!(t.action, TensorAction::Gptq { .. }))
        .count();
    // GPTQ dominates the time when there is any: count its tensors (with an
    // ETA) instead of bytes.
    let pb = if gptq_total > 0 {
        let pb = crate::progress::tty_count_bar(
            gptq_total as u64,
            &format!("GPTQ rounding to {}", a.format),
        );
        pb.tick();
        pb
    } else {
        bytes_bar(total, &format!("converting to {}", a.format))
    };
    let gptq_start = std::time::Instant::now();
    let gptq_log = std::sync::Mutex::new(GptqLog::default());
    gguftool_convert::execute_with_source_hash(
        &src,
        &plan,
        &a.output,
        a.force,
        opts,
        Some(policy::KEY_SOURCE_SHA256),
        &|n| {
            if gptq_total == 0 {
                pb.inc(n)
            }
        },
        &|d| {
            pb.set_position(d.done as u64);
            let r = &d.report;
            let mut log = gptq_log.lock().unwrap_or_else(|e| e.into_inner());
            log.last = gptq_start.elapsed().as_secs_f64();
            if r.retries > 0 {
                log.retried += 1;
            }
            if r.dead_columns > 0 {
                log.with_dead += 1;
            }
            if r.retries > 0 || r.dead_columns > 0 {
                pb.suspend(|| {
                    eprintln!(
                        "gptq: {}: damping {:.0e} after {} retries, {} dead input columns (weights zeroed)",
                        esc(d.tensor),
                        r.damp,
                        r.retries,
                        r.dead_columns
                    )
                });
            }
        },
    )?;
    pb.finish_and_clear();
    let summary = PlanSummary::of(&src, &plan);
    let elapsed = start.elapsed();
    eprintln!(
        "wrote {} ({} tensors, {} bytes) in {:.1} s ({} {:.1} s, write {:.1} s)",
        a.output.display(),
        plan.tensors.len(),
        plan.output_file_size(opts)?,
        elapsed.as_secs_f64(),
        if recipe.is_some() {
            "plan and measure"
        } else {
            "plan"
        },
        planned.as_secs_f64(),
        (elapsed - planned).as_secs_f64(),
    );
    eprintln!("types: {}", summary.types_line());
    if gptq_total > 0 {
        let log = gptq_log.into_inner().unwrap_or_else(|e| e.into_inner());
        eprintln!(
            "gptq: {gptq_total} tensors rounded in {:.1} s on {} threads; damping raised on {}, dead input columns in {}",
            log.last,
            rayon::current_num_threads(),
            log.retried,
            log.with_dead
        );
    }
    eprintln!(
        "quantized: {} elements at {:.4} bits/weight{}",
        summary.q_elems,
        summary.bpw(),
        allocation
            .as_ref()
            .map(|al| format!(
                " (allocated {} tensors at {:.4} bpw)",
                al.choices.len(),
                al.bits_per_weight
            ))
            .unwrap_or_default()
    );
    if summary.substitutions.is_empty() {
        eprintln!("fallbacks: none");
    } else {
        eprintln!("fallbacks: {} tensors", summary.substitutions.len());
        for (name, note) in &summary.substitutions {
            eprintln!("  {}: {}", esc(name), esc(note));
        }
    }
    Ok(ExitCode::SUCCESS)
}
