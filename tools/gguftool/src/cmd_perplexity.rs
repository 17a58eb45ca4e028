//! `gguftool perplexity`: llama-perplexity's perplexity, logits files
//! (`--kl-divergence-base`) and KL divergence (`--kl-divergence`), with its
//! flag names, defaults and output lines. Results on stdout, progress on
//! stderr.

use gguftool_eval::{PplParams, Result as EvalResult};
use gguftool_model::Model;
use gguftool_tokenizer::Tokenizer;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `gguftool perplexity`.
#[derive(clap::Args)]
pub struct PerplexityArgs {
    /// GGUF model file (any registered tensor type).
    model: PathBuf,
    /// Evaluation text (one trailing newline is dropped, as llama.cpp's -f does).
    #[arg(short = 'f', long = "file", required_unless_present = "kl_divergence")]
    file: Option<PathBuf>,
    /// Tokens per chunk (0: the model's training context).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx_size: usize,
    /// Positions per forward batch.
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    batch_size: usize,
    /// Evaluate at most this many chunks (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    chunks: i64,
    /// Threads (default: available cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    #[command(flatten)]
    lora: crate::lora_args::LoraArgs,
    /// Logits file: written during a perplexity run, or read with --kl-divergence.
    #[arg(
        long = "kl-divergence-base",
        visible_alias = "save-all-logits",
        value_name = "FILE"
    )]
    kl_divergence_base: Option<PathBuf>,
    /// Compute the KL divergence against the --kl-divergence-base file (tokens come from that file).
    #[arg(long = "kl-divergence", requires = "kl_divergence_base")]
    kl_divergence: bool,
    /// Batch products: `auto` decodes each weight row once per batch for
    /// formats without a batched kernel path; `kernels` always runs the
    /// kernel table's matmul; `f32` is the reference: decoded weights times
    /// unquantized f32 activations.
    #[arg(long, value_enum, default_value_t = MatmulArg::Auto)]
    matmul: MatmulArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MatmulArg {
    Auto,
    Kernels,
    F32,
}

fn other(msg: String) -> gguftool_gguf::Error {
    gguftool_gguf::Error::Other(msg)
}

fn eval_err(e: gguftool_eval::Error) -> gguftool_gguf::Error {
    other(e.to_string())
}

pub fn run(args: PerplexityArgs) -> Result<ExitCode, gguftool_gguf::Error> {
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 {
        eprintln!("error: -t must be at least 1");
        return Ok(ExitCode::from(2));
    }
    // Global pool for the per-token log-softmax; the model has its own.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    let adapters = match args.lora.adapters() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Ok(ExitCode::from(2));
        }
    };
    let t_load = Instant::now();
    let mut model = Model::open(&args.model, threads).map_err(|e| match e {
        gguftool_model::Error::Gguf(g) => g,
        e => other(format!("{}: {e}", args.model.display())),
    })?;
    crate::lora_args::LoraArgs::apply(&adapters, &mut model).map_err(other)?;
    model.set_matmul_path(match args.matmul {
        MatmulArg::Auto => gguftool_model::MatmulPath::Auto,
        MatmulArg::Kernels => gguftool_model::MatmulPath::Kernels,
        MatmulArg::F32 => gguftool_model::MatmulPath::ReferenceF32,
    });
    let tok = Tokenizer::from_metadata(model.metadata())
        .map_err(|e| other(format!("{}: tokenizer: {e}", args.model.display())))?;
    let bos = gguftool_eval::chunk_bos(&tok);
    let hp = model.hparams();
    eprintln!(
        "perplexity: {} ({}, {} layers, d {}, vocab {}), {} threads, loaded in {:.2} s",
        args.model.display(),
        hp.arch.name(),
        hp.n_layer,
        hp.n_embd,
        hp.n_vocab,
        model.threads(),
        t_load.elapsed().as_secs_f64()
    );
    let n_ctx = if args.ctx_size == 0 {
        hp.n_ctx_train
    } else {
        args.ctx_size
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let t0 = Instant::now();

    if args.kl_divergence {
        let path = args.kl_divergence_base.as_ref().expect("clap requires it");
        let f = std::fs::File::open(path).map_err(|e| gguftool_gguf::Error::io(path, e))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        eprintln!("kl-divergence: base logits {}", path.display());
        let mut header_done = false;
        let res = gguftool_eval::kl_divergence(&model, &mut r, bos, args.batch_size, &mut |c| {
            if !header_done {
                let _ = writeln!(out, "{}", gguftool_eval::kld::CHUNK_HEADER);
                header_done = true;
            }
            let _ = writeln!(out, "{}", c.line);
            let _ = out.flush();
            eprintln!(
                "kl-divergence: chunk {} done after {:.1} s",
                c.chunk,
                t0.elapsed().as_secs_f64()
            );
        });
        let res = res.map_err(|e| other(format!("{}: {e}", path.display())))?;
        let secs = t0.elapsed().as_secs_f64();
        writeln!(out).ok();
        write!(out, "{}", res.report).ok();
        eprintln!(
            "kl-divergence: {} chunks of {} tokens in {:.2} s = {:.1} tokens/s",
            res.n_chunk,
            res.tokens_processed / res.n_chunk.max(1),
            secs,
            res.tokens_processed as f64 / secs
        );
        return Ok(ExitCode::SUCCESS);
    }

    let path = args.file.as_ref().expect("clap requires -f");
    let bytes = std::fs::read(path).map_err(|e| gguftool_gguf::Error::io(path, e))?;
    let mut text = String::from_utf8(bytes)
        .map_err(|e| other(format!("{}: not UTF-8 ({e})", path.display())))?;
    if text.ends_with('\n') {
        text.pop();
    }
    let tokens = gguftool_eval::tokenize_for_perplexity(&tok, &text).map_err(eval_err)?;
    let params = PplParams {
        n_ctx,
        n_batch: args.batch_size,
        n_chunks: usize::try_from(args.chunks).ok(),
    };
    eprintln!(
        "perplexity: {} tokens; n_ctx {}, batch {}; scoring the second half of each chunk",
        tokens.len(),
        n_ctx,
        args.batch_size.min(n_ctx)
    );
    let mut writer = match &args.kl_divergence_base {
        Some(p) => {
            let f = std::fs::File::create(p).map_err(|e| gguftool_gguf::Error::io(p, e))?;
            eprintln!("perplexity: saving all logits to {}", p.display());
            Some(BufWriter::with_capacity(1 << 20, f))
        }
        None => None,
    };
    let res: EvalResult<_> = gguftool_eval::perplexity(
        &model,
        &tokens,
        bos,
        &params,
        writer.as_mut().map(|w| w as &mut dyn Write),
        &mut |k, ppl| {
            let _ = write!(out, "[{k}]{ppl:.4},");
            let _ = out.flush();
            if k == 1 {
                eprintln!(
                    "perplexity: {:.2} seconds per pass",
                    t0.elapsed().as_secs_f64()
                );
            }
        },
    );
    let res = match res {
        Ok(r) => r,
        Err(e @ gguftool_eval::Error::TooShort { .. }) => {
            return Err(other(format!("{}: {e}", path.display())));
        }
        Err(e) => return Err(eval_err(e)),
    };
    let secs = t0.elapsed().as_secs_f64();
    writeln!(out).ok();
    writeln!(
        out,
        "Final estimate: PPL = {:.4} +/- {:.5}",
        res.ppl, res.uncertainty
    )
    .ok();
    eprintln!(
        "perplexity: {} chunks x {} tokens = {} tokens in {:.2} s = {:.1} tokens/s",
        res.n_chunk,
        n_ctx,
        res.tokens_processed,
        secs,
        res.tokens_processed as f64 / secs
    );
    Ok(ExitCode::SUCCESS)
}
