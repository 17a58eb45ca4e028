//! `gguftool`: inspect, verify, seal and convert GGUF model files.
#![deny(unsafe_op_in_unsafe_fn)]

mod args;
mod cmd_bench;
mod cmd_bench_model;
mod cmd_calibrate;
mod cmd_convert;
mod cmd_dequantize;
mod cmd_formats;
mod cmd_generate;
mod cmd_inspect;
mod cmd_perplexity;
mod cmd_qat;
mod cmd_quality;
mod cmd_seal;
mod cmd_tokenize;
mod cmd_verify;
mod escape;
mod input;
mod json;
mod lora_args;
mod mixed;
mod progress;

// Link every format plugin so its registration is kept by the linker.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Inspect, verify, seal, quantize and train GGUF model files.
#[derive(Parser)]
#[command(name = "gguftool", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the header, metadata and tensor table.
    Inspect {
        /// GGUF file.
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Print long arrays and strings in full, and every metadata key
        /// (table output lists the first 1000 otherwise).
        #[arg(long)]
        full: bool,
    },
    /// Validate structure and check the integrity manifest.
    Verify {
        /// GGUF file.
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Print per-tensor digests in `sha256sum` format.
        #[arg(long)]
        sha256sum: bool,
        /// Treat warnings (e.g. suspicious chat template) as failures.
        #[arg(long)]
        strict: bool,
    },
    /// Add an integrity manifest without changing any tensor byte.
    Seal {
        /// Input GGUF file.
        input: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Overwrite an existing output.
        #[arg(long)]
        force: bool,
    },
    /// Decode every quantized tensor to a float type.
    Dequantize {
        /// Input GGUF file.
        input: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Target type for 2-D and larger tensors (1-D tensors become f32).
        #[arg(long, value_enum, default_value = "f32")]
        to: cmd_dequantize::FloatTarget,
        /// Overwrite an existing output.
        #[arg(long)]
        force: bool,
        /// Do not embed an integrity manifest.
        #[arg(long)]
        no_seal: bool,
    },
    /// Quantize a model to a registered format.
    Convert(Box<cmd_convert::ConvertArgs>),
    /// Quantization-aware training, exported through the format's encoder:
    /// each matrix alone (--stage per-tensor), block-wise through the model
    /// on calibration text (--stage block), end-to-end distillation from the
    /// full-precision model (--stage e2e), LoRA adapters (--stage lora), or
    /// block then e2e (--stage all).
    Qat(Box<cmd_qat::QatArgs>),
    /// Compare a quantized file with its original: RMSE, SQNR, bpw per tensor.
    Quality {
        /// Original GGUF file.
        original: PathBuf,
        /// Quantized GGUF file with the same tensors.
        quantized: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Measure kernel throughput per format and SIMD level (one thread), or
    /// with --model a model's prompt and generation speed as llama-bench does.
    Bench {
        /// Formats to measure (default: every block format).
        #[arg(long = "format", value_name = "NAME", conflicts_with = "model")]
        formats: Vec<String>,
        /// Measure this GGUF model's pp/tg tokens per second instead of kernels.
        #[arg(short = 'm', long)]
        model: Option<PathBuf>,
        /// Prompt tokens of the pp test (0: skip), with --model.
        #[arg(
            short = 'p',
            long = "n-prompt",
            default_value_t = 512,
            requires = "model"
        )]
        n_prompt: usize,
        /// Generated tokens of the tg test (0: skip), with --model.
        #[arg(short = 'n', long = "n-gen", default_value_t = 128, requires = "model")]
        n_gen: usize,
        /// Threads, with --model (default: available cores).
        #[arg(short = 't', long = "threads", requires = "model")]
        threads: Option<usize>,
        /// Repetitions per test, with --model.
        #[arg(
            short = 'r',
            long = "repetitions",
            default_value_t = 3,
            requires = "model"
        )]
        reps: usize,
        /// Milliseconds per measurement.
        #[arg(long, default_value_t = 300)]
        millis: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Tokenize a text with a model's tokenizer, as llama.cpp's llama-tokenize does.
    Tokenize(Box<cmd_tokenize::TokenizeArgs>),
    /// Perplexity and KL divergence of a model on a text, as llama.cpp's llama-perplexity computes them.
    Perplexity(Box<cmd_perplexity::PerplexityArgs>),
    /// Importance matrix of a model on a text (llama.cpp's GGUF imatrix, as llama-imatrix writes it).
    Imatrix(Box<cmd_calibrate::ImatrixArgs>),
    /// Input Hessians (X^T X per linear input) for GPTQ (`convert --calibration`), optionally with the imatrix.
    Calibrate(Box<cmd_calibrate::CalibrateArgs>),
    /// Generate text from a prompt (llama-cli's sampling flags and timing lines).
    Generate(Box<cmd_generate::GenerateArgs>),
    /// List registered formats.
    Formats {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Why a command failed: a usage error (bad arguments; exit 2, like clap's
/// own errors) or a failure reading, checking or writing data (exit 1).
#[derive(Debug)]
pub enum CliError {
    /// The arguments are at fault.
    Usage(String),
    /// A file or its data is at fault.
    Failed(gguftool_gguf::Error),
}

impl From<gguftool_gguf::Error> for CliError {
    fn from(e: gguftool_gguf::Error) -> Self {
        CliError::Failed(e)
    }
}

/// A usage error.
pub fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// Turns any error of argument parsing (format lookups, patterns) into a usage error.
pub fn as_usage(e: gguftool_gguf::Error) -> CliError {
    CliError::Usage(e.to_string())
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    if gguftool_formats::link() == 0 {
        return Err(gguftool_gguf::Error::Other("no formats linked".into()).into());
    }
    gguftool_quant::registry::check().map_err(gguftool_gguf::Error::Other)?;
    match cli.command {
        Command::Inspect { file, json, full } => cmd_inspect::run(&file, json, full),
        Command::Verify {
            file,
            json,
            sha256sum,
            strict,
        } => cmd_verify::run(&file, json, sha256sum, strict),
        Command::Seal {
            input,
            output,
            force,
        } => cmd_seal::run(&input, &output, force),
        Command::Dequantize {
            input,
            output,
            to,
            force,
            no_seal,
        } => cmd_dequantize::run(&input, &output, to, force, !no_seal),
        Command::Convert(args) => cmd_convert::run(*args),
        Command::Qat(args) => cmd_qat::run(*args),
        Command::Quality {
            original,
            quantized,
            json,
        } => cmd_quality::run(&original, &quantized, json),
        Command::Bench {
            model: Some(model),
            n_prompt,
            n_gen,
            threads,
            reps,
            json,
            ..
        } => cmd_bench_model::run(cmd_bench_model::ModelBench {
            model: &model,
            n_prompt,
            n_gen,
            threads,
            reps,
            json,
        }),
        Command::Bench {
            formats,
            millis,
            json,
            ..
        } => cmd_bench::run(&formats, millis, json),
        Command::Formats { json } => cmd_formats::run(json),
        Command::Generate(args) => cmd_generate::run(*args),
        Command::Tokenize(args) => cmd_tokenize::run(*args).map_err(CliError::from),
        Command::Perplexity(args) => cmd_perplexity::run(*args).map_err(CliError::from),
        Command::Imatrix(args) => cmd_calibrate::run_imatrix(*args),
        Command::Calibrate(args) => cmd_calibrate::run_calibrate(*args),
    }
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`gguftool inspect x | head`), like other Unix tools.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // A bad GGUFTOOL_SIMD is a usage error, reported before any work.
    if let Err(e) = gguftool_quant::simd::init() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(code) => code,
        Err(CliError::Usage(msg)) => {
            eprintln!("error: {}", escape::escape_for_terminal(&msg));
            ExitCode::from(2)
        }
        Err(CliError::Failed(e @ gguftool_gguf::Error::OutputExists(_))) => {
            eprintln!("error: {e} (use --force to overwrite)");
            ExitCode::from(1)
        }
        Err(CliError::Failed(e)) => {
            eprintln!("error: {}", escape::escape_for_terminal(&e.to_string()));
            ExitCode::from(1)
        }
    }
}
