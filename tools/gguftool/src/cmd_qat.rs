//! `gguftool qat`: quantization-aware training of a GGUF model, exported
//! through the format's encoder; tensors not trained are converted as
//! `convert` would. Two stages:
//!
//! - `per-tensor` (default): every matrix the policy would encode with the
//!   QAT format is trained alone to minimise its importance-weighted output
//!   error (imatrix);
//! - `block`: block-wise reconstruction through the model on calibration
//!   text (`gguftool_qat::blockwise`), from the GPTQ rounding when a
//!   calibration file is given, with progress, checkpoints and resume.
//!
//! `e2e` and `lora` are reserved for end-to-end distillation and LoRA-QAT.

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
use gguftool_gguf::value::Value;
use gguftool_gguf::Error;
use gguftool_qat::blockwise::{
    export_blocks, train_blocks, BlockReport, Checkpoint, Control, Hooks, LinearInit, Outcome,
    StepInfo,
};
use gguftool_qat::candle_model::{CandleModel, QLinear};
use gguftool_qat::candle_op::FakeQuant;
use gguftool_qat::config::{block_default_config, QatConfig};
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
    /// End-to-end distillation (not yet available).
    E2e,
    /// LoRA-QAT (not yet available).
    Lora,
}

/// `help` text of a flag that overrides config field values: the
/// description and both stages' defaults.
fn with_defaults(desc: &str, field: impl Fn(&QatConfig) -> String) -> String {
    format!(
        "{desc} [default: {} per-tensor, {} block]",
        field(&default_config()),
        field(&block_default_config())
    )
}

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
    /// block-wise reconstruction through the model on -f TEXT.
    #[arg(long, value_enum, default_value_t = Stage::PerTensor)]
    pub stage: Stage,
    /// Calibration text of the block stage, cut into -c token chunks as
    /// `perplexity` cuts its text (BOS per chunk as the model asks); never
    /// the evaluation text.
    #[arg(short = 'f', long = "file", value_name = "TEXT")]
    pub text: Option<PathBuf>,
    /// Tokens per chunk of the block stage (0: the model's training context).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: usize,
    /// Calibration chunks of the block stage (-1: every chunk but the held-out ones).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub chunks: i64,
    /// Held-out chunks of the block stage (after the calibration chunks),
    /// choosing each block's best epoch.
    #[arg(long, default_value_t = 4)]
    pub heldout: usize,
    /// Calibration file from `gguftool calibrate` (block stage): each
    /// matrix starts from its GPTQ rounding, and matrices not trained are
    /// rounded with GPTQ as `convert --calibration` does.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// llama.cpp importance matrix: weights the per-tensor error; in the
    /// block stage, the initial scales without --calibration.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// QAT configuration (JSON or TOML; fields in docs/qat-config.md). Fields
    /// it leaves out take the stage's defaults; flags given on the command
    /// line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    // Config fields as flags (same names and defaults as the file).
    #[arg(long, help = with_defaults("Passes over the data (config: epochs)", |c| c.epochs.to_string()))]
    pub epochs: Option<usize>,
    #[arg(long, help = with_defaults(
        "Learning rate of the latent weights, relative to each tensor's RMS (config: learning_rate)",
        |c| c.learning_rate.to_string()))]
    pub lr: Option<f32>,
    #[arg(long, help = with_defaults(
        "Learning rate of the scales (and norm gains) (config: scale_learning_rate)",
        |c| c.scale_learning_rate.map_or("--lr".into(), |v| v.to_string())))]
    pub scale_lr: Option<f32>,
    #[arg(long, help = with_defaults(
        "Rows (per-tensor) or sequences (block) per step (config: batch_size)",
        |c| c.batch_size.to_string()))]
    pub batch_size: Option<usize>,
    #[arg(long, help = with_defaults(
        "Micro-batches summed per optimizer step, block stage (config: gradient_accumulation)",
        |c| c.gradient_accumulation.to_string()))]
    pub gradient_accumulation: Option<usize>,
    #[arg(long, help = with_defaults(
        "Train only the first N blocks, block stage (config: max_blocks)",
        |c| c.max_blocks.map_or("all".into(), |v| v.to_string())))]
    pub max_blocks: Option<usize>,
    /// Learn only the scales, not the latent weights (config: learn_weights = false).
    #[arg(long, conflicts_with = "learn_weights")]
    pub scales_only: bool,
    /// Learn the latent weights too (config: learn_weights = true).
    #[arg(long)]
    pub learn_weights: bool,
    /// Checkpoint file of the block stage [default: OUTPUT.ckpt]; removed
    /// when the run finishes.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Write a checkpoint every N optimizer steps (block stage; Ctrl-C
    /// always writes one).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Continue a block-stage run from its checkpoint (same model, text,
    /// format and configuration; --max-blocks may differ), bit for bit.
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<PathBuf>,
    /// Stop after N optimizer steps of the run, writing a checkpoint
    /// (block stage).
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
    /// Overwrite an existing output.
    #[arg(long)]
    pub force: bool,
    /// Do not embed an integrity manifest.
    #[arg(long)]
    pub no_seal: bool,
}

fn cfg_err(src: &str, e: impl std::fmt::Display) -> CliError {
    usage(format!("{src}: {e}"))
}

/// The configuration: the stage's defaults, the file's fields over them,
/// the flags over those. Every bad value is a usage error naming its field.
fn load_config(a: &QatArgs) -> Result<QatConfig, CliError> {
    let defaults = match a.stage {
        Stage::Block => block_default_config(),
        _ => default_config(),
    };
    let mut cfg = match &a.config {
        None => defaults,
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let name = p.display().to_string();
            // The file's fields over the stage's defaults, merged in the
            // file's own syntax (TOML's inf and nan have no JSON form).
            if p.extension().is_some_and(|e| e == "toml") {
                let file: toml::Table = toml::from_str(&text).map_err(|e| cfg_err(&name, e))?;
                let mut merged =
                    toml::Table::try_from(&defaults).map_err(|e| Error::Other(e.to_string()))?;
                merged.extend(file);
                merged.insert("format".into(), toml::Value::String(a.format.clone()));
                let merged = toml::to_string(&merged).map_err(|e| cfg_err(&name, e))?;
                QatConfig::from_toml(&merged).map_err(|e| cfg_err(&name, e))?
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
    if a.scales_only {
        cfg.learn_weights = false;
    }
    if a.learn_weights {
        cfg.learn_weights = true;
    }
    match a.stage {
        Stage::Block => {
            cfg.to_blockwise().map_err(|e| usage(e.to_string()))?;
        }
        _ => {
            cfg.check_per_tensor().map_err(|e| usage(e.to_string()))?;
            per_tensor::check_config(&cfg).map_err(|e| usage(e.to_string()))?;
        }
    }
    Ok(cfg)
}

pub fn run(a: QatArgs) -> Result<ExitCode, CliError> {
    if matches!(a.stage, Stage::E2e | Stage::Lora) {
        return Err(usage(format!(
            "--stage {}: not yet available (stages: per-tensor, block)",
            if a.stage == Stage::E2e { "e2e" } else { "lora" }
        )));
    }
    let cfg = load_config(&a)?;
    crate::input::refuse_same_file(&a.input, &a.output)?;
    let format = crate::cmd_convert::encoding_format("--format", &cfg.format)?;
    if format.differentiable().is_none() {
        return Err(usage(format!(
            "--format {}: this format has no differentiable quantizer to train",
            format.name()
        )));
    }
    if a.stage == Stage::Block {
        return run_block(a, cfg, format);
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
            return Err(usage(format!("{flag} needs --stage block")));
        }
    }
    run_per_tensor(a, cfg, format)
}

fn load_imatrix(p: Option<&Path>) -> Result<Option<(Arc<Imatrix>, String)>, Error> {
    p.map(|p| -> Result<_, Error> {
        let m = Imatrix::load(p)?;
        let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        Ok((Arc::new(m), sha256_hex(&bytes)))
    })
    .transpose()
}

fn policy_for(
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

fn write_output(
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

/// How the block stage's matrices start.
enum Start {
    Gptq(Calibration),
    Importance(Arc<Imatrix>),
    Plain,
}

impl Start {
    fn name(&self) -> &'static str {
        match self {
            Start::Gptq(_) => "gptq",
            Start::Importance(_) => "imatrix",
            Start::Plain => "plain",
        }
    }
}

/// The block stage's callbacks: starting points, progress, checkpoints.
struct CliHooks<'a> {
    start: &'a Start,
    fq: FakeQuant,
    pb: ProgressBar,
    terminal: bool,
    t0: Instant,
    session_tokens: u64,
    checkpoint_path: PathBuf,
    checkpoint_every: Option<usize>,
    max_steps: Option<usize>,
    fingerprint: String,
    wrote_checkpoint: bool,
    quiet: bool,
}

impl Hooks for CliHooks<'_> {
    fn init(&mut self, _layer: usize, linear: &QLinear) -> EngineResult<LinearInit> {
        let imp = |m: &Imatrix| -> Option<Vec<f32>> {
            let n = *linear.weight().var().as_tensor().dims().last()?;
            m.for_tensor(linear.name(), n, 1)
                .ok()
                .flatten()
                .map(<[f32]>::to_vec)
        };
        match self.start {
            Start::Gptq(cal) => gguftool_qat::init::gptq_start(cal, self.fq, linear),
            Start::Importance(m) => Ok(gguftool_qat::init::importance_start(
                linear,
                imp(m).as_deref(),
            )),
            Start::Plain => Ok(LinearInit::default()),
        }
    }

    fn step(&mut self, s: &StepInfo) -> Control {
        // Test hook: a pause per step, so tests can interrupt a run.
        if let Some(ms) = std::env::var("GGUFTOOL_TEST_DELAY_PER_STEP_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
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
        if signals::interrupted() || self.max_steps.is_some_and(|m| s.global_step >= m) {
            Control::Stop
        } else if self
            .checkpoint_every
            .is_some_and(|n| s.global_step.is_multiple_of(n))
        {
            Control::Checkpoint
        } else {
            Control::Continue
        }
    }

    fn checkpoint(&mut self, ck: &Checkpoint) -> EngineResult<()> {
        let ck = Checkpoint {
            fingerprint: self.fingerprint.clone(),
            ..ck.clone()
        };
        let io = |e: Error| EngineError::BadInput(e.to_string());
        let out = AtomicOutput::create(&self.checkpoint_path, true).map_err(io)?;
        let w = ck.write(out.writer().map_err(io)?)?;
        let mut w = w;
        w.flush()
            .map_err(|e| io(Error::io(&self.checkpoint_path, e)))?;
        drop(w);
        out.commit().map_err(io)?;
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

fn run_block(
    a: QatArgs,
    cfg: QatConfig,
    format: &'static dyn gguftool_quant::format::Format,
) -> Result<ExitCode, CliError> {
    let bcfg = cfg.to_blockwise().map_err(|e| usage(e.to_string()))?;
    let text_path = a
        .text
        .as_ref()
        .ok_or_else(|| usage("--stage block needs -f TEXT (calibration text)"))?;
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
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    let fq = FakeQuant::new(format, cfg.ste)
        .map_err(|e| usage(format!("--format {}: {e}", format.name())))?;
    if !a.force && a.output.exists() {
        return Err(Error::OutputExists(a.output.clone()).into());
    }
    let model = gguftool_model::Model::open(&a.input, threads).map_err(|e| match e {
        gguftool_model::Error::Gguf(g) => g,
        e => Error::Other(format!("{}: {e}", a.input.display())),
    })?;
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
    let bos = gguftool_eval::chunk_bos(&tok);
    let seqs: Vec<Vec<u32>> = tokens
        .chunks_exact(n_ctx)
        .map(|c| {
            let mut v = c.to_vec();
            if let Some(b) = bos {
                v[0] = b;
            }
            v
        })
        .collect();
    let n_cal = match usize::try_from(a.chunks) {
        Ok(0) => return Err(usage("--chunks must be at least 1 (or -1: all)")),
        Ok(n) => n,
        Err(_) => seqs.len().saturating_sub(a.heldout),
    };
    if n_cal == 0 || n_cal + a.heldout > seqs.len() {
        return Err(Error::Other(format!(
            "{}: {} tokens make {} chunks of {n_ctx}; need {} calibration and {} held-out chunks",
            text_path.display(),
            tokens.len(),
            seqs.len(),
            n_cal.max(1),
            a.heldout
        ))
        .into());
    }
    let (calib, held) = (&seqs[..n_cal], &seqs[n_cal..n_cal + a.heldout]);

    let imatrix = load_imatrix(a.imatrix.as_deref())?;
    let mut calib_sha = String::new();
    let start = match (&a.calibration, &imatrix) {
        (Some(p), _) => {
            let f = gguftool_quant::registry::open(p)?;
            let cal = Calibration::from_gguf(&f)
                .map_err(|e| Error::Other(format!("{}: {e}", p.display())))?;
            calib_sha = sha256_hex(f.bytes());
            Start::Gptq(cal)
        }
        (None, Some((m, _))) => Start::Importance(m.clone()),
        (None, None) => Start::Plain,
    };
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
            text_sha,
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
            let f = gguftool_gguf::GgufFile::open(p, &gguftool_gguf::validate::StandardTypes)?;
            let ck = Checkpoint::from_gguf(&f)
                .map_err(|e| Error::Other(format!("{}: {e}", p.display())))?;
            if ck.fingerprint != fingerprint {
                return Err(Error::Other(format!(
                    "{}: checkpoint of another run (model, text, calibration, format, chunking or configuration differ)",
                    p.display()
                ))
                .into());
            }
            Some(ck)
        }
    };

    let mut cm = CandleModel::from_model_cpu(&model).map_err(engine)?;
    let n_blocks = cm.blocks().len().min(bcfg.max_blocks.unwrap_or(usize::MAX));
    let terminal = std::io::stderr().is_terminal();
    let pb = if terminal {
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
    };
    let checkpoint_path = a.checkpoint.clone().unwrap_or_else(|| {
        let mut s = a.output.clone().into_os_string();
        s.push(".ckpt");
        PathBuf::from(s)
    });
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
    let mut hooks = CliHooks {
        start: &start,
        fq,
        pb,
        terminal,
        t0: Instant::now(),
        session_tokens: 0,
        checkpoint_path: checkpoint_path.clone(),
        checkpoint_every: a.checkpoint_every,
        max_steps: a.max_steps,
        fingerprint,
        wrote_checkpoint: false,
        quiet: a.json,
    };
    let t0 = Instant::now();
    signals::defer_interrupts(true);
    let outcome = train_blocks(&mut cm, fq, calib, held, &bcfg, resume.as_ref(), &mut hooks);
    signals::defer_interrupts(false);
    hooks.pb.finish_and_clear();
    let train_seconds = t0.elapsed().as_secs_f64();
    let reports = match outcome.map_err(engine)? {
        Outcome::Finished(r) => r,
        Outcome::Stopped { global_step } => {
            let interrupted = signals::interrupted();
            eprintln!(
                "{} after {global_step} steps; checkpoint {} (continue with --resume {})",
                if interrupted {
                    "interrupted"
                } else {
                    "stopped (--max-steps)"
                },
                checkpoint_path.display(),
                checkpoint_path.display()
            );
            return Ok(ExitCode::from(if interrupted { 130 } else { 0 }));
        }
    };

    let exported = export_blocks(&cm).map_err(engine)?;
    let src = model.file();
    let (policy, provenance) = policy_for(&a, format, &imatrix)?;
    let mut plan = policy::plan(src, &policy, &provenance)?;
    if let Start::Gptq(cal) = &start {
        gguftool_convert::apply_calibration(&mut plan, src, cal)?;
    }
    for t in exported {
        let pt = plan
            .tensors
            .iter_mut()
            .find(|p| p.spec.name == t.name)
            .ok_or_else(|| Error::Other(format!("trained tensor {} not in the plan", t.name)))?;
        pt.spec.ggml_type = t.type_id;
        pt.spec.n_bytes = t.bytes.len() as u64;
        pt.action = TensorAction::Encoded(Arc::new(t.bytes));
        pt.note = Some("block-wise QAT".into());
    }
    let cal_tokens = (n_cal * n_ctx) as u64;
    let md = &mut plan.metadata;
    md.set("gguftool.qat.stage", Value::String("block".into()));
    md.set("gguftool.qat.config", Value::String(cfg.to_toml()));
    md.set("gguftool.qat.start", Value::String(start.name().into()));
    md.set("gguftool.qat.text_sha256", Value::String(text_sha));
    md.set("gguftool.qat.calibration_tokens", Value::U64(cal_tokens));
    md.set(
        "gguftool.qat.heldout_tokens",
        Value::U64((a.heldout * n_ctx) as u64),
    );
    md.set("gguftool.qat.blocks", Value::U32(n_blocks as u32));
    write_output(&a, src, &plan)?;
    if hooks.wrote_checkpoint || resume.is_some() {
        let _ = std::fs::remove_file(&checkpoint_path);
    }
    let steps: usize = reports.iter().map(|r| r.steps).sum();
    let token_epochs = cal_tokens * (cfg.epochs * n_blocks) as u64;
    if a.json {
        let out = json!({
            "stage": "block", "start": start.name(), "blocks": reports,
            "train_seconds": train_seconds, "steps": steps,
            "calibration_tokens": cal_tokens, "block_token_epochs": token_epochs,
            "config": cfg,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "{:>5} {:>12} {:>12} {:>9} {:>5} {:>6} {:>8}",
            "block", "MSE init", "MSE best", "relative", "epoch", "steps", "seconds"
        );
        for r in &reports {
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
        println!(
            "\n{} blocks, {steps} steps in {train_seconds:.1} s; {cal_tokens} calibration tokens x {} epochs per block (held-out MSE of the kept state)",
            reports.len(),
            cfg.epochs
        );
    }
    eprintln!("wrote {}", a.output.display());
    Ok(ExitCode::SUCCESS)
}

fn engine(e: EngineError) -> CliError {
    CliError::Failed(Error::Other(e.to_string()))
}
