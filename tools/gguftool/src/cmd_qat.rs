//! `gguftool qat`: quantization-aware training of a GGUF model, exported
//! through the format's encoder; tensors not trained are converted as
//! `convert` would. Stages:
//!
//! - `per-tensor` (default): every matrix the policy would encode with the
//!   QAT format is trained alone to minimise its importance-weighted output
//!   error (imatrix);
//! - `block`: block-wise reconstruction through the model on calibration
//!   text (`gguftool_qat::blockwise`), from the GPTQ rounding when a
//!   calibration file is given, with progress, checkpoints and resume;
//! - `e2e`, `lora`, `all`: end-to-end distillation from the full-precision
//!   model, LoRA-QAT, and block-wise reconstruction followed by end-to-end
//!   distillation ([`e2e`]).

mod e2e;

use crate::escape::escape_for_terminal as esc;
use crate::progress::count_bar;
use crate::{usage, CliError};
use gguftool_calib::calib_file::Calibration;
use gguftool_calib::imatrix::Imatrix;
use gguftool_convert::output::{signals, AtomicOutput};
use gguftool_convert::policy::{self, Provenance, QuantPolicy};
use gguftool_convert::{self, TensorAction};
use gguftool_gguf::integrity::sha256_hex;
use gguftool_gguf::seal::WriteOptions;
use gguftool_gguf::value::{Metadata, Value};
use gguftool_gguf::Error;
use gguftool_qat::blockwise::{
    export_blocks, quantize_block_from, train_blocks, BlockReport, Checkpoint, Control,
    ExportedTensor, Hooks, LinearInit, Outcome, StepInfo,
};
use gguftool_qat::candle_model::{CandleModel, QLinear};
use gguftool_qat::candle_op::FakeQuant;
use gguftool_qat::config::{
    all_default_config, block_default_config, e2e_default_config, lora_default_config, QatConfig,
};
use gguftool_qat::e2e::{evaluate, EvalStats, TeacherTargets};
use gguftool_qat::engine_error::{EngineError, EngineResult};
use gguftool_qat::per_tensor::{self, default_config};
use indicatif::ProgressBar;
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// Which training `gguftool qat` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Each matrix alone against its imatrix-weighted reconstruction error.
    PerTensor,
    /// Block-wise reconstruction through the model on calibration text.
    Block,
    /// End-to-end distillation of the quantized model from the full-precision one.
    E2e,
    /// LoRA-QAT: low-rank adapters on the frozen quantized model, distilled.
    Lora,
    /// Block-wise reconstruction, then end-to-end distillation from its result.
    All,
}

impl Stage {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Stage::PerTensor => "per-tensor",
            Stage::Block => "block",
            Stage::E2e => "e2e",
            Stage::Lora => "lora",
            Stage::All => "all",
        }
    }

    /// The stage's default configuration (what a config file's missing
    /// fields and flags not given take).
    pub fn defaults(self) -> QatConfig {
        match self {
            Stage::PerTensor => default_config(),
            Stage::Block => block_default_config(),
            Stage::E2e => e2e_default_config(),
            Stage::Lora => lora_default_config(),
            Stage::All => all_default_config(),
        }
    }
}

/// `help` text of a flag that overrides a config field: the description
/// and the defaults of the stages that use it.
fn with_defaults(desc: &str, stages: &[Stage], field: impl Fn(&QatConfig) -> String) -> String {
    let d: Vec<String> = stages
        .iter()
        .map(|s| format!("{} {}", field(&s.defaults()), s.name()))
        .collect();
    format!("{desc} [default: {}]", d.join(", "))
}

use Stage::{Block as B, E2e as E, Lora as L, PerTensor as PT};

/// Options of `gguftool qat`.
#[derive(clap::Args)]
pub struct QatArgs {
    /// Input GGUF file (F32, F16 or BF16 weights; others need --allow-requantize).
    pub input: PathBuf,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Format to train and export (one with a differentiable quantizer).
    #[arg(long)]
    pub format: String,
    /// Training stage: `per-tensor` trains each matrix alone; `block` runs
    /// block-wise reconstruction through the model on -f TEXT; `e2e`
    /// distills the quantized model from INPUT (the full-precision teacher)
    /// on -f TEXT; `lora` trains low-rank adapters on the frozen quantized
    /// model the same way and writes a llama.cpp LoRA GGUF (or, with
    /// --merge, the merged model); `all` runs `block`, then `e2e` from its
    /// result (defaults: the block stage's, and the e2e stage's for the
    /// distillation-only fields).
    #[arg(long, value_enum, default_value_t = Stage::PerTensor)]
    pub stage: Stage,
    /// Training text of the block, e2e, lora and all stages, cut into -c
    /// token chunks as `perplexity` cuts its text (BOS per chunk as the
    /// model asks); never the evaluation text.
    #[arg(short = 'f', long = "file", value_name = "TEXT")]
    pub text: Option<PathBuf>,
    /// Tokens per chunk of -f TEXT (0: the model's training context).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: usize,
    /// Training chunks of -f TEXT (-1: every chunk but the held-out ones).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub chunks: i64,
    /// Held-out chunks of -f TEXT (after the training chunks), choosing
    /// each block's best epoch and the distillation's kept step.
    #[arg(long, default_value_t = 4)]
    pub heldout: usize,
    /// Calibration file from `gguftool calibrate` (block, e2e, lora, all):
    /// each matrix starts from its GPTQ rounding, and matrices not trained
    /// are rounded with GPTQ as `convert --calibration` does.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// llama.cpp importance matrix: weights the per-tensor error; in the
    /// other stages, the initial scales without --calibration.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Already quantized GGUF of INPUT in --format (e2e and lora; e.g. a
    /// block-stage output): the student starts from its matrices (decoded,
    /// at scales that reproduce them: re-derived, or read from the blocks
    /// where re-deriving does not) and norm gains, and tensors
    /// not trained keep its bytes. In the lora stage it is the frozen base
    /// the adapters are written for.
    #[arg(long, value_name = "QUANT")]
    pub student: Option<PathBuf>,
    /// Lora stage: write the model with the adapters merged and re-encoded
    /// in the format instead of a LoRA adapter file.
    #[arg(long)]
    pub merge: bool,
    /// QAT configuration (JSON or TOML; fields in docs/qat-config.md). Fields
    /// it leaves out take the stage's defaults; flags given on the command
    /// line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    // Config fields as flags (same names and defaults as the file).
    #[arg(long, help = with_defaults("Passes over the data (config: epochs)", &[PT, B],
        |c| c.epochs.to_string()))]
    pub epochs: Option<usize>,
    #[arg(long, allow_hyphen_values = true, help = with_defaults(
        "Learning rate of the latent weights, relative to each tensor's RMS; of the adapters (absolute) in the lora stage (config: learning_rate)",
        &[PT, B, E, L], |c| c.learning_rate.to_string()))]
    pub lr: Option<f32>,
    #[arg(long, allow_hyphen_values = true, help = with_defaults(
        "Learning rate of the scales (and norm gains) (config: scale_learning_rate)",
        &[PT, B, E], |c| c.scale_learning_rate.map_or("--lr".into(), |v| v.to_string())))]
    pub scale_lr: Option<f32>,
    #[arg(long, help = with_defaults(
        "Rows (per-tensor) or sequences (other stages) per micro-batch (config: batch_size)",
        &[PT, B, E, L], |c| c.batch_size.to_string()))]
    pub batch_size: Option<usize>,
    #[arg(long, help = with_defaults(
        "Micro-batches per optimizer step, their gradients combined (config: gradient_accumulation)",
        &[B, E, L], |c| c.gradient_accumulation.to_string()))]
    pub gradient_accumulation: Option<usize>,
    #[arg(long, help = with_defaults(
        "Train only the first N blocks block-wise; in --stage all the distillation then trains every block (config: max_blocks)",
        &[B], |c| c.max_blocks.map_or("all".into(), |v| v.to_string())))]
    pub max_blocks: Option<usize>,
    #[arg(long, value_name = "LOSS", value_parser = ["mse", "rms-normalized"], help = with_defaults(
        "Block-output error to minimize: mse, or rms-normalized (each position divided by its RMS, as the next RMSNorm sees it) (config: block_loss)",
        &[B], |c| c.block_loss.name().into()))]
    pub block_loss: Option<String>,
    #[arg(long, help = with_defaults("Optimizer steps of the distillation (config: steps)",
        &[E, L], |c| c.steps.to_string()))]
    pub steps: Option<usize>,
    #[arg(long, value_name = "N", help = with_defaults(
        "Measure the held-out KL every N steps; the best step is kept (config: eval_every)",
        &[E, L], |c| c.eval_every.to_string()))]
    pub eval_every: Option<usize>,
    #[arg(long, allow_hyphen_values = true, help = with_defaults("Distillation temperature (config: temperature)",
        &[E, L], |c| c.temperature.to_string()))]
    pub temperature: Option<f32>,
    #[arg(long, allow_hyphen_values = true, help = with_defaults(
        "Weight of the distillation term T^2 KL(teacher || student) (config: loss.distill)",
        &[E, L], |c| c.loss.distill.to_string()))]
    pub kd_weight: Option<f32>,
    #[arg(long, allow_hyphen_values = true, help = with_defaults(
        "Weight of the next-token cross-entropy on the text (config: loss.task)",
        &[E, L], |c| c.loss.task.to_string()))]
    pub ce_weight: Option<f32>,
    #[arg(long, value_name = "N", help = with_defaults(
        "Positions per output-head chunk of the loss, bounding its memory (config: head_chunk)",
        &[E, L], |c| c.head_chunk.to_string()))]
    pub head_chunk: Option<usize>,
    #[arg(long, help = with_defaults("Rank of the LoRA adapters (config: lora.rank)",
        &[L], |c| c.lora.as_ref().map_or("-".into(), |l| l.rank.to_string())))]
    pub lora_rank: Option<usize>,
    #[arg(long, allow_hyphen_values = true, help = with_defaults("LoRA alpha: the update is alpha / rank * B A (config: lora.alpha)",
        &[L], |c| c.lora.as_ref().map_or("-".into(), |l| l.alpha.to_string())))]
    pub lora_alpha: Option<f32>,
    #[arg(long, value_delimiter = ',', value_name = "PATTERNS", help = with_defaults(
        "Comma-separated matrices that get adapters: roles (attn_q) or names (blk.3.ffn_*), * matching any run (config: lora.targets)",
        &[L], |c| c.lora.as_ref().map_or("-".into(), |l| l.targets.join(","))))]
    pub lora_targets: Vec<String>,
    /// Learn only the scales, not the latent weights (config: learn_weights = false).
    #[arg(long, conflicts_with = "learn_weights")]
    pub scales_only: bool,
    /// Learn the latent weights too (config: learn_weights = true).
    #[arg(long)]
    pub learn_weights: bool,
    /// Checkpoint file [default: OUTPUT.ckpt]; removed when the run
    /// finishes.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Write a checkpoint every N optimizer steps (Ctrl-C always writes one).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Continue a run from its checkpoint (same model, text, student,
    /// format and configuration; in the block stage --max-blocks may
    /// differ), bit for bit.
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<PathBuf>,
    /// Stop after N optimizer steps of the run, writing a checkpoint (in
    /// --stage all the distillation's steps count after the block stage's).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,
    /// Threads (default: available cores).
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Format for output.weight (and a tied token_embd.weight).
    #[arg(long, value_name = "FORMAT", default_value = "q8_0")]
    pub output_tensor_type: String,
    /// Decode already-quantized tensors and train against the decoded weights.
    #[arg(long)]
    pub allow_requantize: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Overwrite an existing output (and, in the stages that train on text,
    /// an existing checkpoint file that is not the one --resume continues).
    #[arg(long)]
    pub force: bool,
    /// Do not embed an integrity manifest.
    #[arg(long)]
    pub no_seal: bool,
}

fn cfg_err(src: &str, e: impl std::fmt::Display) -> CliError {
    usage(format!("{src}: {e}"))
}

/// A TOML syntax error on one line: `line L, column C: message`.
fn toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(sp) => {
            let before = &text.as_bytes()[..sp.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let col = before.len()
                - before
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)
                + 1;
            format!("TOML syntax error at line {line}, column {col}: {msg}")
        }
        None => format!("TOML syntax error: {msg}"),
    }
}

/// The configuration: the stage's defaults, the file's fields over them,
/// the flags over those. Every bad value is a usage error naming its field.
fn load_config(a: &QatArgs) -> Result<QatConfig, CliError> {
    let defaults = a.stage.defaults();
    let mut cfg = match &a.config {
        None => defaults,
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let name = p.display().to_string();
            // The file's fields over the stage's defaults, merged in the
            // file's own syntax (TOML's inf and nan have no JSON form).
            if p.extension().is_some_and(|e| e == "toml") {
                let file: toml::Table =
                    toml::from_str(&text).map_err(|e| cfg_err(&name, toml_error(&e, &text)))?;
                let mut merged =
                    toml::Table::try_from(&defaults).map_err(|e| Error::Other(e.to_string()))?;
                merged.extend(file.clone());
                merged.insert("format".into(), toml::Value::String(a.format.clone()));
                let merged = toml::to_string(&merged).map_err(|e| cfg_err(&name, e))?;
                let parsed = QatConfig::from_toml(&merged).map_err(|e| cfg_err(&name, e))?;
                // TOML has no null: a field the stage leaves unset (e.g. no
                // grad_clip) is missing from the merged text and took the
                // type's default; unset it again unless the file sets it.
                let d = serde_json::to_value(&defaults).map_err(|e| Error::Other(e.to_string()))?;
                let mut p =
                    serde_json::to_value(&parsed).map_err(|e| Error::Other(e.to_string()))?;
                for (k, v) in d.as_object().into_iter().flatten() {
                    if v.is_null() && !file.contains_key(k) {
                        p[k] = serde_json::Value::Null;
                    }
                }
                QatConfig::from_json(&p.to_string()).map_err(|e| cfg_err(&name, e))?
            } else {
                let file: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| cfg_err(&name, e.to_string().lines().next().unwrap_or("")))?;
                let mut merged =
                    serde_json::to_value(defaults).map_err(|e| Error::Other(e.to_string()))?;
                match (merged.as_object_mut(), file) {
                    (Some(m), serde_json::Value::Object(f)) => m.extend(f),
                    _ => return Err(cfg_err(&name, "expected a table of fields")),
                }
                merged["format"] = json!(a.format);
                QatConfig::from_json(&merged.to_string()).map_err(|e| cfg_err(&name, e))?
            }
        }
    };
    cfg.format = a.format.clone();
    if let Some(v) = a.epochs {
        cfg.epochs = v;
    }
    if let Some(v) = a.lr {
        cfg.learning_rate = v;
    }
    if let Some(v) = a.scale_lr {
        cfg.scale_learning_rate = Some(v);
    }
    if let Some(v) = a.batch_size {
        cfg.batch_size = v;
    }
    if let Some(v) = a.gradient_accumulation {
        cfg.gradient_accumulation = v;
    }
    if let Some(v) = a.max_blocks {
        cfg.max_blocks = Some(v);
    }
    if let Some(v) = &a.block_loss {
        cfg.block_loss = serde_json::from_value(json!(v))
            .map_err(|e| CliError::Usage(format!("--block-loss: {e}")))?;
    }
    if a.scales_only {
        cfg.learn_weights = false;
    }
    if a.learn_weights {
        cfg.learn_weights = true;
    }
    if let Some(v) = a.steps {
        cfg.steps = v;
    }
    if let Some(v) = a.eval_every {
        cfg.eval_every = v;
    }
    if let Some(v) = a.temperature {
        cfg.temperature = v;
    }
    if let Some(v) = a.kd_weight {
        cfg.loss.distill = v;
    }
    if let Some(v) = a.ce_weight {
        cfg.loss.task = v;
    }
    if let Some(v) = a.head_chunk {
        cfg.head_chunk = v;
    }
    if a.lora_rank.is_some() || a.lora_alpha.is_some() || !a.lora_targets.is_empty() {
        let l = cfg.lora.get_or_insert_with(Default::default);
        if let Some(v) = a.lora_rank {
            l.rank = v;
        }
        if let Some(v) = a.lora_alpha {
            l.alpha = v;
        }
        if !a.lora_targets.is_empty() {
            l.targets = a.lora_targets.clone();
        }
    }
    let e = |e: gguftool_qat::config::ConfigError| usage(e.to_string());
    match a.stage {
        Stage::Block => {
            cfg.to_blockwise().map_err(e)?;
        }
        Stage::E2e => {
            cfg.to_e2e().map_err(e)?;
        }
        Stage::Lora => {
            cfg.to_lora().map_err(e)?;
        }
        Stage::All => {
            cfg.to_all().map_err(e)?;
        }
        Stage::PerTensor => {
            cfg.check_per_tensor().map_err(e)?;
            per_tensor::check_config(&cfg).map_err(|e| usage(e.to_string()))?;
        }
    }
    Ok(cfg)
}

pub fn run(a: QatArgs) -> Result<ExitCode, CliError> {
    let cfg = load_config(&a)?;
    crate::input::refuse_same_file(&a.input, &a.output)?;
    let format = crate::cmd_convert::encoding_format("--format", &cfg.format)?;
    if format.differentiable().is_none() {
        return Err(usage(format!(
            "--format {}: this format has no differentiable quantizer to train",
            format.name()
        )));
    }
    if !matches!(a.stage, Stage::E2e | Stage::Lora) && a.student.is_some() {
        return Err(usage(format!(
            "--student is for --stage e2e or lora (--stage {} starts from INPUT)",
            a.stage.name()
        )));
    }
    if a.stage != Stage::Lora && a.merge {
        return Err(usage("--merge is for --stage lora"));
    }
    match a.stage {
        Stage::Block => return run_block(a, cfg, format),
        Stage::E2e | Stage::Lora | Stage::All => return e2e::run_distill(a, cfg, format),
        Stage::PerTensor => {}
    }
    for (flag, set) in [
        ("-f", a.text.is_some()),
        ("--calibration", a.calibration.is_some()),
        ("--checkpoint", a.checkpoint.is_some()),
        ("--checkpoint-every", a.checkpoint_every.is_some()),
        ("--resume", a.resume.is_some()),
        ("--max-steps", a.max_steps.is_some()),
    ] {
        if set {
            return Err(usage(format!(
                "{flag} needs a stage that trains on text (--stage block, e2e, lora or all)"
            )));
        }
    }
    run_per_tensor(a, cfg, format)
}

pub(crate) fn load_imatrix(p: Option<&Path>) -> Result<Option<(Arc<Imatrix>, String)>, Error> {
    p.map(|p| -> Result<_, Error> {
        let m = Imatrix::load(p)?;
        let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        Ok((Arc::new(m), sha256_hex(&bytes)))
    })
    .transpose()
}

pub(crate) fn policy_for(
    a: &QatArgs,
    format: &'static dyn gguftool_quant::format::Format,
    imatrix: &Option<(Arc<Imatrix>, String)>,
) -> Result<(QuantPolicy, Provenance), CliError> {
    let output_tensor_type =
        crate::cmd_convert::encoding_format("--output-tensor-type", &a.output_tensor_type)?;
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
        imatrix: imatrix
            .as_ref()
            .map(|(m, sha)| (sha.clone(), m.datasets.clone())),
    };
    Ok((policy, provenance))
}

fn run_per_tensor(
    a: QatArgs,
    cfg: QatConfig,
    format: &'static dyn gguftool_quant::format::Format,
) -> Result<ExitCode, CliError> {
    let src = crate::input::open(&a.input)?;
    let imatrix = load_imatrix(a.imatrix.as_deref())?;
    let (policy, provenance) = policy_for(&a, format, &imatrix)?;
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
    let start = Instant::now();
    let only_jobs: Vec<per_tensor::Job> = jobs.iter().map(|(_, j)| j.clone()).collect();
    let trained = per_tensor::train_all(&src, format, &only_jobs, &cfg, &|| pb.inc(1))?;
    pb.finish_and_clear();
    let train_seconds = start.elapsed().as_secs_f64();
    let mut reports = Vec::with_capacity(trained.len());
    for ((k, _), t) in jobs.iter().zip(trained) {
        plan.tensors[*k].action = TensorAction::Encoded(Arc::new(t.bytes));
        reports.push(t.report);
    }
    plan.metadata
        .set("gguftool.qat.config", Value::String(cfg.to_toml()));
    write_output(&a, &src, &plan)?;
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

pub(crate) fn write_output(
    a: &QatArgs,
    src: &gguftool_gguf::GgufFile,
    plan: &gguftool_convert::Plan,
) -> Result<(), Error> {
    let opts = WriteOptions {
        seal: !a.no_seal,
        types: &gguftool_quant::registry::TYPES,
    };
    gguftool_convert::execute_with_source_hash(
        src,
        plan,
        &a.output,
        a.force,
        opts,
        Some(policy::KEY_SOURCE_SHA256),
        &|_| {},
        &|_| {},
    )
}

/// How the trained matrices start (block, e2e, lora and all stages; the
/// e2e and lora stages' `--student` start is theirs alone).
pub(crate) enum Start {
    Gptq(Calibration),
    Importance(Arc<Imatrix>),
    Plain,
}

impl Start {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Start::Gptq(_) => "gptq",
            Start::Importance(_) => "imatrix",
            Start::Plain => "plain",
        }
    }

    /// The starting point of `linear` (see `gguftool_qat::init`).
    pub(crate) fn init(&self, fq: FakeQuant, linear: &QLinear) -> EngineResult<LinearInit> {
        let imp = |m: &Imatrix| -> Option<Vec<f32>> {
            let n = *linear.weight().var().as_tensor().dims().last()?;
            m.for_tensor(linear.name(), n, 1)
                .ok()
                .flatten()
                .map(<[f32]>::to_vec)
        };
        match self {
            Start::Gptq(cal) => gguftool_qat::init::gptq_start(cal, fq, linear),
            Start::Importance(m) => Ok(gguftool_qat::init::importance_start(
                linear,
                imp(m).as_deref(),
            )),
            Start::Plain => Ok(LinearInit::default()),
        }
    }
}

/// The start from `--calibration` (GPTQ) or `--imatrix`, else plain, and
/// the calibration file's SHA-256 (empty without one).
pub(crate) fn load_start(
    a: &QatArgs,
    imatrix: &Option<(Arc<Imatrix>, String)>,
) -> Result<(Start, String), CliError> {
    Ok(match (&a.calibration, imatrix) {
        (Some(p), _) => {
            let f = gguftool_quant::registry::open(p)?;
            let cal = Calibration::from_gguf(&f)
                .map_err(|e| Error::Other(format!("{}: {e}", p.display())))?;
            (Start::Gptq(cal), sha256_hex(f.bytes()))
        }
        (None, Some((m, _))) => (Start::Importance(m.clone()), String::new()),
        (None, None) => (Start::Plain, String::new()),
    })
}

/// What the stages that train on text share: the model, the text cut into
/// training and held-out chunks.
pub(crate) struct TextRun {
    pub(crate) model: gguftool_model::Model,
    pub(crate) text_sha: String,
    pub(crate) n_ctx: usize,
    pub(crate) calib: Vec<Vec<u32>>,
    pub(crate) held: Vec<Vec<u32>>,
    pub(crate) threads: usize,
}

impl TextRun {
    /// Training tokens (chunks times their length).
    pub(crate) fn train_tokens(&self) -> u64 {
        (self.calib.len() * self.n_ctx) as u64
    }

    /// Records the provenance every stage that trains on text writes:
    /// `gguftool.qat.stage`, `.config` (TOML), `.start`, `.text_sha256`,
    /// `.calibration_tokens` and `.heldout_tokens`.
    pub(crate) fn set_provenance(
        &self,
        md: &mut Metadata,
        stage: &str,
        config: String,
        start: &str,
    ) {
        md.set("gguftool.qat.stage", Value::String(stage.into()));
        md.set("gguftool.qat.config", Value::String(config));
        md.set("gguftool.qat.start", Value::String(start.into()));
        md.set(
            "gguftool.qat.text_sha256",
            Value::String(self.text_sha.clone()),
        );
        md.set(
            "gguftool.qat.calibration_tokens",
            Value::U64(self.train_tokens()),
        );
        md.set(
            "gguftool.qat.heldout_tokens",
            Value::U64((self.held.len() * self.n_ctx) as u64),
        );
    }
}

/// Checks the flags of a stage that trains on text, sets the thread pool,
/// opens the model and cuts -f TEXT into chunks.
pub(crate) fn prepare_text_run(a: &QatArgs) -> Result<TextRun, CliError> {
    let text_path = a.text.as_ref().ok_or_else(|| {
        usage(format!(
            "--stage {} needs -f TEXT (training text)",
            a.stage.name()
        ))
    })?;
    if a.heldout == 0 {
        return Err(usage("--heldout must be at least 1"));
    }
    if a.checkpoint_every == Some(0) || a.max_steps == Some(0) {
        return Err(usage(
            "--checkpoint-every and --max-steps must be at least 1",
        ));
    }
    if a.threads == Some(0) {
        return Err(usage("-t must be at least 1"));
    }
    if a.ctx_size == 1 {
        return Err(usage("-c must be at least 2"));
    }
    if a.chunks == 0 || a.chunks < -1 {
        return Err(usage("--chunks must be at least 1 (or -1: all)"));
    }
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    if !a.force && a.output.exists() {
        return Err(Error::OutputExists(a.output.clone()).into());
    }
    check_paths(a)?;
    let model = open_model(&a.input, threads)?;
    let tok = gguftool_tokenizer::Tokenizer::from_metadata(model.metadata())
        .map_err(|e| Error::Other(format!("{}: tokenizer: {e}", a.input.display())))?;
    let bytes = std::fs::read(text_path).map_err(|e| Error::io(text_path, e))?;
    let text_sha = sha256_hex(&bytes);
    let mut text = String::from_utf8(bytes)
        .map_err(|e| Error::Other(format!("{}: not UTF-8 ({e})", text_path.display())))?;
    if text.ends_with('\n') {
        text.pop();
    }
    let tokens = gguftool_eval::tokenize_for_perplexity(&tok, &text)
        .map_err(|e| Error::Other(format!("{}: {e}", text_path.display())))?;
    let n_ctx = if a.ctx_size == 0 {
        model.hparams().n_ctx_train
    } else {
        a.ctx_size
    };
    if n_ctx < 2 {
        return Err(usage("-c must be at least 2"));
    }
    let seqs = gguftool_eval::bos_chunks(&tokens, n_ctx, gguftool_eval::chunk_bos(&tok));
    let n_cal = match usize::try_from(a.chunks) {
        Ok(n) => n,
        Err(_) => seqs.len().saturating_sub(a.heldout),
    };
    if n_cal == 0 || n_cal + a.heldout > seqs.len() {
        return Err(Error::Other(format!(
            "{}: {} tokens make {} chunks of {n_ctx}; need {} training and {} held-out chunks",
            text_path.display(),
            tokens.len(),
            seqs.len(),
            n_cal.max(1),
            a.heldout
        ))
        .into());
    }
    Ok(TextRun {
        text_sha,
        n_ctx,
        calib: seqs[..n_cal].to_vec(),
        held: seqs[n_cal..n_cal + a.heldout].to_vec(),
        threads,
        model,
    })
}

/// The same file, or (for paths that do not exist yet) the same path.
fn same_path(a: &Path, b: &Path) -> bool {
    a == b || gguftool_convert::same_file(a, b)
}

/// The directory a new file at `p` goes into, which must exist.
fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Checks before training that what is written at the end can be written
/// and that no file the run reads is overwritten (that the output is not
/// the input, `run` checks for every stage): the output's and the
/// checkpoint's directories exist, the checkpoint is none of the files the
/// run reads nor the output, and an
/// existing checkpoint file is only replaced when --resume continues it or
/// with --force (an earlier run's checkpoint is not lost by starting again).
pub(crate) fn check_paths(a: &QatArgs) -> Result<(), CliError> {
    let shown = |p: &Path| esc(&p.display().to_string()).to_string();
    let ck = checkpoint_path(a);
    for p in [&a.output, &ck] {
        let d = parent_dir(p);
        if !d.is_dir() {
            return Err(Error::Other(format!(
                "{}: cannot write there: {} is not a directory",
                shown(p),
                shown(d)
            ))
            .into());
        }
    }
    if same_path(&ck, &a.output) {
        return Err(usage(format!(
            "--checkpoint {}: the checkpoint would be the output file",
            shown(&ck)
        )));
    }
    let reads = [
        Some(&a.input),
        a.text.as_ref(),
        a.calibration.as_ref(),
        a.imatrix.as_ref(),
        a.student.as_ref(),
        a.config.as_ref(),
    ];
    for r in reads.into_iter().flatten() {
        if same_path(&ck, r) {
            return Err(usage(format!(
                "--checkpoint {}: the checkpoint would overwrite an input of the run",
                shown(&ck)
            )));
        }
    }
    let resumes_it = a.resume.as_deref().is_some_and(|r| same_path(r, &ck));
    if ck.exists() && !resumes_it && !a.force {
        return Err(Error::Other(format!(
            "{}: a checkpoint file exists (of an earlier run?); continue it with --resume {}, or pass --force to replace it",
            shown(&ck),
            shown(&ck)
        ))
        .into());
    }
    Ok(())
}

/// Opens a model through the runtime (which checks its hyperparameters,
/// names and shapes).
pub(crate) fn open_model(p: &Path, threads: usize) -> Result<gguftool_model::Model, Error> {
    gguftool_model::Model::open(p, threads).map_err(|e| match e {
        gguftool_model::Error::Gguf(g) => g,
        e => Error::Other(format!("{}: {e}", p.display())),
    })
}

/// The checkpoint path: --checkpoint, or OUTPUT.ckpt.
pub(crate) fn checkpoint_path(a: &QatArgs) -> PathBuf {
    a.checkpoint.clone().unwrap_or_else(|| {
        let mut s = a.output.clone().into_os_string();
        s.push(".ckpt");
        PathBuf::from(s)
    })
}

/// A step-counting progress bar on a terminal (message: loss, tokens/s),
/// else a hidden one.
pub(crate) fn step_bar(terminal: bool) -> ProgressBar {
    if terminal {
        let pb = ProgressBar::new(1);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "QAT {msg} [{bar:30}] {pos}/{len} steps ({elapsed}, ETA {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb
    } else {
        ProgressBar::hidden()
    }
}

/// Test hook: a pause per step, so tests can interrupt a run.
pub(crate) fn test_delay() {
    if let Some(ms) = std::env::var("GGUFTOOL_TEST_DELAY_PER_STEP_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// What to do after global step `step`: stop on Ctrl-C or at --max-steps,
/// checkpoint every --checkpoint-every steps.
pub(crate) fn control(step: usize, every: Option<usize>, max_steps: Option<usize>) -> Control {
    if signals::interrupted() || max_steps.is_some_and(|m| step >= m) {
        Control::Stop
    } else if every.is_some_and(|n| step.is_multiple_of(n)) {
        Control::Checkpoint
    } else {
        Control::Continue
    }
}

/// Writes a checkpoint atomically (temporary file renamed; removed on a
/// signal or an error) with `write`.
pub(crate) fn write_checkpoint_file(
    path: &Path,
    write: impl FnOnce(
        std::io::BufWriter<std::fs::File>,
    ) -> EngineResult<std::io::BufWriter<std::fs::File>>,
) -> EngineResult<()> {
    let io = |e: Error| EngineError::BadInput(e.to_string());
    let out = AtomicOutput::create(path, true).map_err(io)?;
    let mut w = write(out.writer().map_err(io)?)?;
    w.flush().map_err(|e| io(Error::io(path, e)))?;
    drop(w);
    out.commit().map_err(io)
}

/// The block stage's callbacks: starting points, progress, checkpoints.
pub(crate) struct CliHooks<'a> {
    pub(crate) start: &'a Start,
    pub(crate) fq: FakeQuant,
    pub(crate) pb: ProgressBar,
    pub(crate) terminal: bool,
    pub(crate) t0: Instant,
    pub(crate) session_tokens: u64,
    pub(crate) checkpoint_path: PathBuf,
    pub(crate) checkpoint_every: Option<usize>,
    pub(crate) max_steps: Option<usize>,
    pub(crate) fingerprint: String,
    pub(crate) wrote_checkpoint: bool,
    pub(crate) quiet: bool,
    /// Starting points computed before training (for the whole-model check
    /// of the start), handed to training's [`Hooks::init`] instead of
    /// computing them again (GPTQ).
    pub(crate) starts: std::collections::HashMap<String, LinearInit>,
}

impl<'a> CliHooks<'a> {
    /// Hooks of a block-stage run that starts now: a fresh step bar, the
    /// checkpoint settings and `--json` quietness from `a`.
    pub(crate) fn new(
        start: &'a Start,
        fq: FakeQuant,
        terminal: bool,
        a: &QatArgs,
        checkpoint_path: PathBuf,
        fingerprint: String,
    ) -> Self {
        Self {
            start,
            fq,
            pb: step_bar(terminal),
            terminal,
            t0: Instant::now(),
            session_tokens: 0,
            checkpoint_path,
            checkpoint_every: a.checkpoint_every,
            max_steps: a.max_steps,
            fingerprint,
            wrote_checkpoint: false,
            quiet: a.json,
            starts: std::collections::HashMap::new(),
        }
    }
}

impl Hooks for CliHooks<'_> {
    fn init(&mut self, _layer: usize, linear: &QLinear) -> EngineResult<LinearInit> {
        match self.starts.remove(linear.name()) {
            Some(init) => Ok(init),
            None => self.start.init(self.fq, linear),
        }
    }

    fn step(&mut self, s: &StepInfo) -> Control {
        test_delay();
        self.session_tokens += s.tokens as u64;
        if self.terminal {
            let secs = self.t0.elapsed().as_secs_f64().max(1e-9);
            self.pb.set_length(s.total_steps as u64);
            self.pb.set_position(s.global_step as u64);
            self.pb.set_message(format!(
                "block {}/{} epoch {} loss {:.3e} {:.0} tok/s",
                s.layer + 1,
                s.n_layers,
                s.epoch,
                s.loss,
                self.session_tokens as f64 / secs
            ));
        }
        control(s.global_step, self.checkpoint_every, self.max_steps)
    }

    fn checkpoint(&mut self, ck: &Checkpoint) -> EngineResult<()> {
        let ck = Checkpoint {
            fingerprint: self.fingerprint.clone(),
            ..ck.clone()
        };
        write_checkpoint_file(&self.checkpoint_path, |w| ck.write(w))?;
        self.wrote_checkpoint = true;
        Ok(())
    }

    fn block_done(&mut self, r: &BlockReport) {
        if self.quiet {
            return;
        }
        let line = format!(
            "block {:2}: held-out MSE {:.4e} -> {:.4e} (epoch {}, relative {:.4}), {} steps, {:.1} s",
            r.layer,
            r.initial_heldout_mse,
            r.best_heldout_mse,
            r.best_epoch,
            r.best_heldout_mse / r.heldout_target_power.max(f64::MIN_POSITIVE),
            r.steps,
            r.seconds
        );
        self.pb.suspend(|| eprintln!("{line}"));
    }
}

/// The line printed when --max-steps or Ctrl-C stopped a run (and with
/// `json` the same as a JSON object on stdout), and its exit status (130
/// after Ctrl-C, else 0).
pub(crate) fn stopped(step: usize, checkpoint: &Path, json: bool) -> ExitCode {
    let interrupted = signals::interrupted();
    if json {
        let out = json!({
            "stopped": if interrupted { "interrupted" } else { "max_steps" },
            "steps": step,
            "checkpoint": checkpoint.display().to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    eprintln!(
        "{} after {step} steps; checkpoint {} (continue with --resume {})",
        if interrupted {
            "interrupted"
        } else {
            "stopped (--max-steps)"
        },
        checkpoint.display(),
        checkpoint.display()
    );
    ExitCode::from(if interrupted { 130 } else { 0 })
}

/// Replaces the planned tensors named in `exported` with their bytes.
pub(crate) fn apply_exported(
    plan: &mut gguftool_convert::Plan,
    exported: Vec<ExportedTensor>,
    note: &str,
) -> Result<(), Error> {
    for t in exported {
        let pt = plan
            .tensors
            .iter_mut()
            .find(|p| p.spec.name == t.name)
            .ok_or_else(|| Error::Other(format!("trained tensor {} not in the plan", t.name)))?;
        pt.spec.ggml_type = t.type_id;
        pt.spec.n_bytes = t.bytes.len() as u64;
        pt.action = TensorAction::Encoded(Arc::new(t.bytes));
        pt.note = Some(note.into());
    }
    Ok(())
}

fn run_block(
    a: QatArgs,
    cfg: QatConfig,
    format: &'static dyn gguftool_quant::format::Format,
) -> Result<ExitCode, CliError> {
    let bcfg = cfg.to_blockwise().map_err(|e| usage(e.to_string()))?;
    let fq = FakeQuant::new(format, cfg.ste)
        .map_err(|e| usage(format!("--format {}: {e}", format.name())))?;
    let run = prepare_text_run(&a)?;
    let (model, n_ctx) = (&run.model, run.n_ctx);
    let (calib, held) = (&run.calib[..], &run.held[..]);
    let n_cal = calib.len();
    let imatrix = load_imatrix(a.imatrix.as_deref())?;
    let (start, calib_sha) = load_start(&a, &imatrix)?;
    // Settings of the written file are checked before training.
    let (policy, provenance) = policy_for(&a, format, &imatrix)?;
    // max_blocks does not change the blocks it keeps: a run may be resumed
    // with fewer (or more) blocks.
    let trajectory = QatConfig {
        max_blocks: None,
        ..cfg.clone()
    };
    let fingerprint = sha256_hex(
        format!(
            "qat block v1\n{}\n{}\n{}\n{}\n{}\nctx {n_ctx} calib {n_cal} heldout {}\n{}\n{}",
            a.input.display(),
            model.file().bytes().len(),
            trajectory.to_toml(),
            run.text_sha,
            calib_sha,
            a.heldout,
            imatrix.as_ref().map_or("", |(_, s)| s),
            start.name(),
        )
        .as_bytes(),
    );
    let resume = match &a.resume {
        None => None,
        Some(p) => {
            let f = open_checkpoint(p)?;
            match gguftool_qat::checkpoint::kind(&f) {
                Some(gguftool_qat::checkpoint::GENERAL_TYPE) => {}
                Some(_) => {
                    return Err(Error::Other(format!(
                        "{}: a distillation checkpoint (--stage e2e, lora or all), not one of --stage block",
                        esc(&p.display().to_string())
                    ))
                    .into())
                }
                None => return Err(not_a_checkpoint(p).into()),
            }
            let ck = Checkpoint::from_gguf(&f)
                .map_err(|e| Error::Other(format!("{}: {e}", p.display())))?;
            if ck.fingerprint != fingerprint {
                return Err(another_run(p).into());
            }
            Some(ck)
        }
    };

    let mut cm = CandleModel::from_model_cpu(model).map_err(engine)?;
    let n_blocks = cm.blocks().len().min(bcfg.max_blocks.unwrap_or(usize::MAX));
    let terminal = std::io::stderr().is_terminal();
    let checkpoint_path = checkpoint_path(&a);
    if !a.json {
        eprintln!(
            "qat: {} blocks of {} with {}, start {}; {n_cal} x {n_ctx} calibration and {} x {n_ctx} held-out tokens{}",
            n_blocks,
            cm.blocks().len(),
            format.name(),
            start.name(),
            a.heldout,
            match &resume {
                Some(c) => format!("; resuming at step {} (block {})", c.global_step, c.layer),
                None => String::new(),
            }
        );
    }
    let mut hooks = CliHooks::new(
        &start,
        fq,
        terminal,
        &a,
        checkpoint_path.clone(),
        fingerprint,
    );
    let t0 = Instant::now();
    signals::defer_interrupts(true);
    let outcome = train_blocks_checked(
        model,
        &mut cm,
        fq,
        (calib, held),
        &bcfg,
        resume.as_ref(),
        &mut hooks,
    );
    signals::defer_interrupts(false);
    hooks.pb.finish_and_clear();
    let train_seconds = t0.elapsed().as_secs_f64();
    let checked = match outcome? {
        Ok(c) => c,
        Err(global_step) => return Ok(stopped(global_step, &checkpoint_path, a.json)),
    };
    let reports = &checked.reports;
    let exported = export_blocks(&cm).map_err(engine)?;
    let src = model.file();
    let mut plan = policy::plan(src, &policy, &provenance)?;
    if let Start::Gptq(cal) = &start {
        gguftool_convert::apply_calibration(&mut plan, src, cal)?;
    }
    apply_exported(&mut plan, exported, "block-wise QAT")?;
    let cal_tokens = run.train_tokens();
    let md = &mut plan.metadata;
    run.set_provenance(md, "block", cfg.to_toml(), start.name());
    md.set("gguftool.qat.blocks", Value::U32(n_blocks as u32));
    write_output(&a, src, &plan)?;
    if hooks.wrote_checkpoint || resume.is_some() {
        let _ = std::fs::remove_file(&checkpoint_path);
    }
    let steps: usize = reports.iter().map(|r| r.steps).sum();
    let token_epochs = cal_tokens * (cfg.epochs * n_blocks) as u64;
    let kept = if checked.kept_start {
        "start"
    } else {
        "trained"
    };
    if a.json {
        let out = json!({
            "stage": "block", "start": start.name(), "blocks": reports,
            "train_seconds": train_seconds, "steps": steps,
            "calibration_tokens": cal_tokens, "block_token_epochs": token_epochs,
            "heldout_start": checked.start, "heldout_trained": checked.trained, "kept": kept,
            "config": cfg,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_block_reports(reports);
        println!(
            "\n{} blocks, {steps} steps in {train_seconds:.1} s; {cal_tokens} calibration tokens x {} epochs per block (held-out {} of the kept state)",
            reports.len(),
            cfg.epochs,
            match cfg.block_loss {
                gguftool_qat::blockwise::BlockLoss::Mse => "MSE",
                gguftool_qat::blockwise::BlockLoss::RmsNormalized =>
                    "MSE of the RMS-normalized outputs",
            }
        );
        print_model_check(&checked);
    }
    eprintln!("wrote {}", a.output.display());
    Ok(ExitCode::SUCCESS)
}

/// Block-wise training with the whole-model check: what
/// [`train_blocks_checked`] returns when every block trained.
pub(crate) struct Checked {
    /// Per block.
    pub(crate) reports: Vec<BlockReport>,
    /// Held-out statistics of the model with the trained blocks at their start.
    pub(crate) start: EvalStats,
    /// ... and trained.
    pub(crate) trained: EvalStats,
    /// The trained blocks made the held-out KL worse, so `cm` holds the
    /// start again.
    pub(crate) kept_start: bool,
}

/// [`train_blocks`] on `cm` (full precision, from `model`) with a
/// whole-model check: the held-out KL against the full-precision model
/// (`texts.1`) of the model with the blocks at their start and trained;
/// the start is kept when training made it worse (each block's held-out
/// check cannot see how its error carries through the model). `Err(step)`:
/// stopped after that global step (checkpoint written by `hooks`).
///
/// # Errors
/// Those of training and evaluation.
pub(crate) fn train_blocks_checked(
    model: &gguftool_model::Model,
    cm: &mut CandleModel,
    fq: FakeQuant,
    texts: (&[Vec<u32>], &[Vec<u32>]),
    bcfg: &gguftool_qat::blockwise::BlockwiseConfig,
    resume: Option<&Checkpoint>,
    hooks: &mut CliHooks,
) -> Result<Result<Checked, usize>, CliError> {
    let (calib, held) = texts;
    let n_blocks = cm.blocks().len().min(bcfg.max_blocks.unwrap_or(usize::MAX));
    let targets = TeacherTargets::new(cm, held, bcfg.batch_size).map_err(engine)?;
    let start_blocks = start_blocks(model, n_blocks, fq, hooks)?;
    let start = model_stats(cm, &start_blocks, &targets, bcfg.batch_size)?;
    let reports = match train_blocks(cm, fq, calib, held, bcfg, resume, hooks).map_err(engine)? {
        Outcome::Finished(r) => r,
        Outcome::Stopped { global_step } => return Ok(Err(global_step)),
    };
    let trained = evaluate(cm, cm, &targets, bcfg.batch_size, HEAD_CHUNK).map_err(engine)?;
    let kept_start = trained.kl > start.kl;
    if kept_start {
        for (il, b) in start_blocks.into_iter().enumerate() {
            cm.blocks_mut()[il] = b;
        }
    }
    Ok(Ok(Checked {
        reports,
        start,
        trained,
        kept_start,
    }))
}

/// The whole-model check's line (stdout).
pub(crate) fn print_model_check(c: &Checked) {
    println!(
        "whole model, held-out KL against the full-precision model: start {:.4e}, trained {:.4e}: kept the {}",
        c.start.kl,
        c.trained.kl,
        if c.kept_start {
            "start blocks (training made the model worse)"
        } else {
            "trained blocks"
        }
    );
}

/// Positions per chunk of the output head in the block stage's whole-model
/// check (the distillation's default `head_chunk`).
const HEAD_CHUNK: usize = 64;

/// The first `n_blocks` blocks of `model` at their starting points (from
/// `hooks`, which keeps them for training), frozen.
fn start_blocks(
    model: &gguftool_model::Model,
    n_blocks: usize,
    fq: FakeQuant,
    hooks: &mut CliHooks,
) -> Result<Vec<gguftool_qat::candle_model::Block>, CliError> {
    let mut m = CandleModel::from_model_cpu(model).map_err(engine)?;
    let mut record = RecordStarts(hooks);
    for il in 0..n_blocks {
        quantize_block_from(&mut m, il, fq, false, &mut record).map_err(engine)?;
    }
    Ok(m.blocks()[..n_blocks]
        .iter()
        .cloned()
        .map(|mut b| {
            b.set_norms_trainable(false);
            for l in b.linears_mut() {
                l.freeze();
            }
            b
        })
        .collect())
}

/// Hooks that compute each starting point with a [`CliHooks`] and keep a
/// copy in its `starts`.
struct RecordStarts<'h, 'a>(&'h mut CliHooks<'a>);

impl Hooks for RecordStarts<'_, '_> {
    fn init(&mut self, _layer: usize, linear: &QLinear) -> EngineResult<LinearInit> {
        let init = self.0.start.init(self.0.fq, linear)?;
        self.0
            .starts
            .insert(linear.name().to_string(), init.clone());
        Ok(init)
    }
}

/// Held-out statistics of `cm` with its first blocks replaced by `blocks`
/// (the rest full precision), against `targets`.
fn model_stats(
    cm: &CandleModel,
    blocks: &[gguftool_qat::candle_model::Block],
    targets: &TeacherTargets,
    batch_size: usize,
) -> Result<EvalStats, CliError> {
    let mut m = cm.clone();
    for (il, b) in blocks.iter().enumerate() {
        m.blocks_mut()[il] = b.clone();
    }
    evaluate(&m, cm, targets, batch_size, HEAD_CHUNK).map_err(engine)
}

/// The block stage's table: per block, held-out MSE at the start and kept.
pub(crate) fn print_block_reports(reports: &[BlockReport]) {
    println!(
        "{:>5} {:>12} {:>12} {:>9} {:>5} {:>6} {:>8}",
        "block", "MSE init", "MSE best", "relative", "epoch", "steps", "seconds"
    );
    for r in reports {
        println!(
            "{:>5} {:>12.4e} {:>12.4e} {:>9.5} {:>5} {:>6} {:>8.1}",
            r.layer,
            r.initial_heldout_mse,
            r.best_heldout_mse,
            r.best_heldout_mse / r.heldout_target_power.max(f64::MIN_POSITIVE),
            r.best_epoch,
            r.steps,
            r.seconds
        );
    }
}

/// Opens a file given to --resume (any registered tensor type parses, so a
/// model given by mistake is named as "not a QAT checkpoint").
pub(crate) fn open_checkpoint(p: &Path) -> Result<gguftool_gguf::GgufFile, Error> {
    gguftool_quant::registry::open(p)
}

/// The error for a --resume file that is no QAT checkpoint.
pub(crate) fn not_a_checkpoint(p: &Path) -> Error {
    Error::Other(format!(
        "{}: not a QAT checkpoint (general.type is not a checkpoint's)",
        esc(&p.display().to_string())
    ))
}

/// The error for a checkpoint whose fingerprint is not this run's.
pub(crate) fn another_run(p: &Path) -> Error {
    Error::Other(format!(
        "{}: checkpoint of another run (model, text, calibration, student, format, chunking or configuration differ)",
        p.display()
    ))
}

pub(crate) fn engine(e: EngineError) -> CliError {
    CliError::Failed(Error::Other(e.to_string()))
}
