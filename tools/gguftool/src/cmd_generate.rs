//! `gguftool generate`: text generation with llama-cli's flags and timing
//! lines. The prompt is tokenized with BOS per the model and special tokens
//! parsed, run as one batch, then each token is sampled and decoded alone.
//! Text streams to stdout; the seed and timings go to stderr.

use crate::{usage, CliError};
use gguftool_eval::{Sampler, SamplerParams, Stop};
use gguftool_model::Model;
use gguftool_tokenizer::{Tokenizer, Utf8Stream};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `gguftool generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// GGUF model file (any registered tensor type).
    model: PathBuf,
    /// The prompt (special tokens such as `<|im_start|>` are recognised).
    #[arg(short = 'p', long = "prompt")]
    prompt: String,
    /// Tokens to generate at most (-1: until the context is full).
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    n_predict: i64,
    /// Temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Top-k (0: off).
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    /// Top-p (1: off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    /// Random seed (default: from the clock, printed on stderr).
    #[arg(short = 's', long)]
    seed: Option<u64>,
    /// Context size in tokens, prompt included (0: the model's training context).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    ctx_size: usize,
    /// Threads (default: available cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    #[command(flatten)]
    lora: crate::lora_args::LoraArgs,
    /// Do not echo the prompt.
    #[arg(long)]
    no_display_prompt: bool,
}

fn failed(msg: String) -> CliError {
    CliError::Failed(gguftool_gguf::Error::Other(msg))
}

/// A llama.cpp `llama_perf_context_print` line.
fn perf_line(what: &str, ms: f64, n: usize, unit: &str) -> String {
    let per = if n > 0 { ms / n as f64 } else { 0.0 };
    let tps = if ms > 0.0 { 1e3 * n as f64 / ms } else { 0.0 };
    format!(
        "generate: {what:>16} = {ms:10.2} ms / {n:5} {unit} ({per:8.2} ms per token, {tps:8.2} tokens per second)"
    )
}

pub fn run(a: GenerateArgs) -> Result<ExitCode, CliError> {
    if !(a.temp.is_finite() && a.temp >= 0.0) {
        return Err(usage(format!("--temp {}: must be 0 or more", a.temp)));
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        return Err(usage(format!("--top-p {}: must be in (0, 1]", a.top_p)));
    }
    if a.n_predict < -1 {
        return Err(usage(format!(
            "-n {}: must be -1 (until the context is full) or more",
            a.n_predict
        )));
    }
    let threads = match a.threads {
        Some(0) => return Err(usage("-t 0: at least one thread")),
        Some(t) => t,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let adapters = a.lora.adapters().map_err(usage)?;
    let t_load = Instant::now();
    let mut model = Model::open(&a.model, threads).map_err(|e| match e {
        gguftool_model::Error::Gguf(g) => CliError::Failed(g),
        e => failed(format!("{}: {e}", a.model.display())),
    })?;
    crate::lora_args::LoraArgs::apply(&adapters, &mut model).map_err(failed)?;
    let tok = Tokenizer::from_metadata(model.metadata())
        .map_err(|e| failed(format!("{}: tokenizer: {e}", a.model.display())))?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let n_ctx = if a.ctx_size == 0 {
        model.hparams().n_ctx_train
    } else {
        a.ctx_size
    };
    let prompt = tok
        .tokenize(&a.prompt, true, true)
        .map_err(|e| failed(format!("tokenizing the prompt: {e}")))?;
    if prompt.is_empty() {
        return Err(usage("the prompt is empty"));
    }
    if prompt.len() > n_ctx {
        return Err(failed(format!(
            "the prompt is {} tokens, longer than the context of {n_ctx} (raise -c)",
            prompt.len()
        )));
    }
    eprintln!(
        "generate: {} ({}, {} layers, vocab {}), {} threads, n_ctx {n_ctx}, seed {seed}, temp {}, top-k {}, top-p {}",
        a.model.display(),
        model.hparams().arch.name(),
        model.hparams().n_layer,
        model.n_vocab(),
        model.threads(),
        a.temp,
        a.top_k,
        a.top_p
    );
    let n_predict = if a.n_predict < 0 {
        usize::MAX
    } else {
        a.n_predict as usize
    };
    let mut sampler = Sampler::new(
        SamplerParams {
            temp: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
        },
        seed,
    );
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !a.no_display_prompt {
        let _ = write!(out, "{}", a.prompt);
        let _ = out.flush();
    }
    let mut cache = model.new_cache(n_ctx);
    let vocab = tok.vocab();
    let mut stream = Utf8Stream::new();
    let mut write_err = None;
    let res = gguftool_eval::generate(
        &model,
        &mut cache,
        &prompt,
        n_predict,
        &mut sampler,
        &|t| vocab.is_eog(t),
        &mut |t| {
            let piece = tok.token_to_piece(t, false).unwrap_or_default();
            let text = stream.push(&piece);
            if let Err(e) = write!(out, "{text}").and_then(|()| out.flush()) {
                write_err = Some(e);
                return false;
            }
            true
        },
    );
    let st = res.map_err(|e| failed(e.to_string()))?;
    if let Some(e) = write_err {
        return Err(failed(format!("writing the text: {e}")));
    }
    let _ = writeln!(out, "{}", stream.finish());
    let _ = out.flush();
    let why = match st.stop {
        Stop::Eog(_) => "end of generation token",
        Stop::Length => "token limit (-n)",
        Stop::ContextFull => "context full (raise -c)",
        Stop::Callback => "output closed",
    };
    eprintln!();
    eprintln!(
        "generate: stopped: {why}, {} tokens generated",
        st.tokens.len()
    );
    eprintln!("generate: {:>16} = {load_ms:10.2} ms", "load time");
    eprintln!(
        "{}",
        perf_line(
            "sampling time",
            st.sample_time.as_secs_f64() * 1e3,
            st.tokens.len() + usize::from(matches!(st.stop, Stop::Eog(_))),
            "runs  "
        )
    );
    eprintln!(
        "{}",
        perf_line(
            "prompt eval time",
            st.prompt_time.as_secs_f64() * 1e3,
            st.n_prompt,
            "tokens"
        )
    );
    eprintln!(
        "{}",
        perf_line(
            "eval time",
            st.decode_time.as_secs_f64() * 1e3,
            st.n_decode,
            "runs  "
        )
    );
    Ok(ExitCode::SUCCESS)
}
