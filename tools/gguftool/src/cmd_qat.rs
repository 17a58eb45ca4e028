//! `gguftool qat`: per-tensor reconstruction QAT of a GGUF model. Every
//! matrix the policy would encode with the QAT format is trained to
//! minimise its importance-weighted output error (imatrix), then exported
//! through the format's encoder; the rest is converted as `convert` would.

use crate::escape::escape_for_terminal as esc;
use crate::progress::count_bar;
use crate::{usage, CliError};
use gguftool_calib::imatrix::Imatrix;
use gguftool_convert::policy::{self, Provenance, QuantPolicy};
use gguftool_convert::{self, TensorAction};
use gguftool_gguf::integrity::sha256_hex;
use gguftool_gguf::seal::WriteOptions;
use gguftool_gguf::Error;
use gguftool_qat::config::QatConfig;
use gguftool_qat::per_tensor::{self, default_config};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Options of `gguftool qat`.
#[derive(clap::Args)]
pub struct QatArgs {
    /// Input GGUF file (F32, F16 or BF16 weights; others need --allow-requantize).
    pub input: PathBuf,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Format to train and export (one with a differentiable quantizer).
    #[arg(short, long)]
    pub format: String,
    /// llama.cpp importance matrix weighting the reconstruction error.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// QAT configuration (JSON or TOML; fields in docs/qat-config.md). Fields
    /// it leaves out take the defaults shown here; flags given on the
    /// command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Passes over each tensor's rows.
    #[arg(long, default_value_t = default_config().epochs)]
    pub epochs: usize,
    /// Learning rate, relative to each tensor's RMS weight (scales: to
    /// their mean magnitude).
    #[arg(long, default_value_t = default_config().learning_rate)]
    pub lr: f32,
    /// Learn only the scales, not the latent weights.
    #[arg(long)]
    pub scales_only: bool,
    /// Format for output.weight (and a tied token_embd.weight).
    #[arg(long, value_name = "FORMAT", default_value = "q8_0")]
    pub output_tensor_type: String,
    /// Decode already-quantized tensors and train against the decoded weights.
    #[arg(long)]
    pub allow_requantize: bool,
    /// Print the per-tensor report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Overwrite an existing output.
    #[arg(long)]
    pub force: bool,
    /// Do not embed an integrity manifest.
    #[arg(long)]
    pub no_seal: bool,
}

/// Flags given on the command line (they override a config file).
#[derive(Default)]
pub struct Given {
    pub epochs: bool,
    pub lr: bool,
}

fn load_config(a: &QatArgs, given: &Given) -> Result<QatConfig, CliError> {
    let mut cfg = match &a.config {
        None => default_config(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let is_toml = p.extension().is_some_and(|e| e == "toml");
            // Fields the file leaves out take the per-tensor defaults.
            let file: serde_json::Value = if is_toml {
                toml::from_str::<toml::Value>(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
            } else {
                serde_json::from_str(&text).map_err(|e| e.to_string())
            }
            .map_err(|e| {
                Error::Other(format!(
                    "{}: {}",
                    p.display(),
                    e.lines().next().unwrap_or("")
                ))
            })?;
            let mut merged =
                serde_json::to_value(default_config()).map_err(|e| Error::Other(e.to_string()))?;
            match (merged.as_object_mut(), file) {
                (Some(m), serde_json::Value::Object(f)) => m.extend(f),
                _ => {
                    return Err(Error::Other(format!(
                        "{}: expected a table of fields",
                        p.display()
                    ))
                    .into())
                }
            }
            let mut cfg = QatConfig::from_json(&merged.to_string())
                .map_err(|e| Error::Other(format!("{}: {e}", p.display())))?;
            // A bad file is a data error (exit 1); bad flags, below, a usage error.
            cfg.format = a.format.clone();
            per_tensor::check_config(&cfg)
                .map_err(|e| Error::Other(format!("{}: {e}", p.display())))?;
            cfg
        }
    };
    cfg.format = a.format.clone();
    if given.epochs || a.config.is_none() {
        cfg.epochs = a.epochs;
    }
    if given.lr || a.config.is_none() {
        cfg.learning_rate = a.lr;
    }
    if a.scales_only {
        cfg.learn_weights = false;
    }
    per_tensor::check_config(&cfg).map_err(|e| usage(e.to_string()))?;
    Ok(cfg)
}

pub fn run(a: QatArgs, given: Given) -> Result<ExitCode, CliError> {
    let cfg = load_config(&a, &given)?;
    crate::input::refuse_same_file(&a.input, &a.output)?;
    let format = crate::cmd_convert::encoding_format("--format", &cfg.format)?;
    if format.differentiable().is_none() {
        return Err(usage(format!(
            "--format {}: this format has no differentiable quantizer to train",
            format.name()
        )));
    }
    let output_tensor_type =
        crate::cmd_convert::encoding_format("--output-tensor-type", &a.output_tensor_type)?;
    let src = crate::input::open(&a.input)?;
    let imatrix = a
        .imatrix
        .as_deref()
        .map(|p| -> Result<_, Error> {
            let m = Imatrix::load(p)?;
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            Ok((Arc::new(m), sha256_hex(&bytes)))
        })
        .transpose()?;
    let policy = QuantPolicy {
        format,
        allow_requantize: a.allow_requantize,
        keep: Vec::new(),
        tensor_types: Vec::new(),
        output_tensor_type,
        token_embedding_type: None,
        fallback: policy::format_by_name("q8_0")?,
        imatrix: imatrix.as_ref().map(|(m, _)| m.clone()),
    };
    let provenance = Provenance {
        source_sha256: "0".repeat(64),
        imatrix: imatrix.map(|(m, sha)| (sha, m.datasets.clone())),
    };
    let mut plan = policy::plan(&src, &policy, &provenance)?;
    let jobs = per_tensor::select_jobs(
        format,
        plan.tensors.iter().map(|t| {
            let target = match &t.action {
                TensorAction::Transcode { target, .. } => Some(target.type_id()),
                _ => None,
            };
            (t.source_index, target, t.importance.clone())
        }),
    );
    let pb = count_bar(jobs.len() as u64, &format!("QAT {}", format.name()));
    let start = std::time::Instant::now();
    let only_jobs: Vec<per_tensor::Job> = jobs.iter().map(|(_, j)| j.clone()).collect();
    let trained = per_tensor::train_all(&src, format, &only_jobs, &cfg, &|| pb.inc(1))?;
    pb.finish_and_clear();
    let train_seconds = start.elapsed().as_secs_f64();
    let mut reports = Vec::with_capacity(trained.len());
    for ((k, _), t) in jobs.iter().zip(trained) {
        plan.tensors[*k].action = TensorAction::Encoded(Arc::new(t.bytes));
        reports.push(t.report);
    }
    plan.metadata.set(
        "gguftool.qat.config",
        gguftool_gguf::Value::String(cfg.to_toml()),
    );
    let opts = WriteOptions {
        seal: !a.no_seal,
        types: &gguftool_quant::registry::TYPES,
    };
    gguftool_convert::execute_with_source_hash(
        &src,
        &plan,
        &a.output,
        a.force,
        opts,
        Some(policy::KEY_SOURCE_SHA256),
        &|_| {},
        &|_| {},
    )?;
    let s = per_tensor::summarize(&reports);
    let (ptq, init, qat, kept) = (
        s.mean_ptq_error,
        s.mean_qat_initial_error,
        s.mean_qat_error,
        s.qat_kept,
    );
    if a.json {
        let out = json!({
            "tensors": reports, "train_seconds": train_seconds,
            "mean_ptq_error": ptq, "mean_qat_initial_error": init, "mean_qat_error": qat,
            "qat_kept": kept, "config": cfg,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        let nw = reports
            .iter()
            .map(|r| esc(&r.name).chars().count())
            .max()
            .unwrap_or(0)
            .max(6);
        println!(
            "{:<nw$} {:>12} {:>12} {:>12} {:>12}  kept",
            "tensor", "elements", "PTQ err", "QAT before", "QAT after"
        );
        for r in &reports {
            println!(
                "{:<nw$} {:>12} {:>12.5} {:>12.5} {:>12.5}  {}",
                esc(&r.name),
                r.elements,
                r.ptq_error,
                r.qat_initial_error,
                r.qat_error,
                if r.kept_qat { "qat" } else { "ptq" }
            );
        }
        println!(
            "\n{} tensors in {train_seconds:.1} s; mean weighted relative error: PTQ {ptq:.5}, QAT before {init:.5}, after {qat:.5} (QAT kept for {kept})",
            reports.len()
        );
    }
    eprintln!("wrote {}", a.output.display());
    Ok(ExitCode::SUCCESS)
}
