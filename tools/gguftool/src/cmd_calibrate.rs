//! `gguftool imatrix` (llama-imatrix's GGUF importance matrix) and
//! `gguftool calibrate` (input Hessians for GPTQ, optionally the imatrix of
//! the same pass): calibration text run through our runtime in
//! llama-imatrix's chunks, statistics taken by model hooks.

use crate::CliError;
use gguftool_calib::collect::{run_chunks, ChunkParams, HessianHooks, ImatrixHooks, Tee};
use gguftool_calib::imatrix_write::ImatrixCollector;
use gguftool_convert::output::AtomicOutput;
use gguftool_model::{Hooks, Model};
use gguftool_tokenizer::Tokenizer;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Options shared by both commands (llama-imatrix's flag names).
#[derive(clap::Args)]
pub struct RunArgs {
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx_size: usize,
    /// Positions per forward batch.
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
    batch_size: usize,
    /// At most this many chunks per text (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    chunks: i64,
    /// Threads (default: available cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Overwrite existing outputs.
    #[arg(long)]
    force: bool,
}

/// Arguments of `gguftool imatrix`.
#[derive(clap::Args)]
pub struct ImatrixArgs {
    /// GGUF model file (any registered tensor type).
    model: PathBuf,
    /// Calibration text.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Output imatrix (llama.cpp's GGUF format).
    #[arg(short = 'o', long = "output", default_value = "imatrix.gguf")]
    output: PathBuf,
    /// Also collect the output head's input (`output.weight`).
    #[arg(long)]
    process_output: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// Arguments of `gguftool calibrate`.
#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// GGUF model file (any registered tensor type).
    model: PathBuf,
    /// Calibration text, optionally with a weight (`brown.txt:2`); repeat
    /// for a mixed-domain set.
    #[arg(
        short = 'f',
        long = "file",
        required = true,
        value_name = "TEXT[:WEIGHT]"
    )]
    files: Vec<String>,
    /// Output calibration file (input Hessians; docs/FORMATS.md).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Also write llama.cpp's imatrix from the same pass.
    #[arg(long, value_name = "FILE")]
    imatrix_out: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

fn failed(msg: String) -> CliError {
    CliError::Failed(gguftool_gguf::Error::Other(msg))
}

fn usage(msg: String) -> CliError {
    CliError::Usage(msg)
}

/// A text and its weight from `PATH[:WEIGHT]` (a suffix that is not a
/// positive number is part of the path).
fn text_arg(s: &str) -> Result<(PathBuf, f32), CliError> {
    if let Some((p, w)) = s.rsplit_once(':') {
        if let Ok(w) = w.parse::<f32>() {
            if !(w.is_finite() && w > 0.0) {
                return Err(usage(format!(
                    "-f {s}: the weight must be a positive number"
                )));
            }
            return Ok((PathBuf::from(p), w));
        }
    }
    Ok((PathBuf::from(s), 1.0))
}

struct Loaded {
    model: Model,
    tok: Tokenizer,
    bos: Option<u32>,
}

fn load(path: &Path, run: &RunArgs) -> Result<Loaded, CliError> {
    let threads = run.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 {
        return Err(usage("-t must be at least 1".into()));
    }
    if run.ctx_size < 8 {
        return Err(usage(format!(
            "-c {}: the context must be at least 8 tokens",
            run.ctx_size
        )));
    }
    if run.batch_size == 0 {
        return Err(usage("-b 0: a batch needs at least one position".into()));
    }
    if run.chunks == 0 || run.chunks < -1 {
        return Err(usage(format!(
            "--chunks {}: at least 1 (or -1: every chunk)",
            run.chunks
        )));
    }
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    let model = Model::open(path, threads).map_err(|e| match e {
        gguftool_model::Error::Gguf(g) => CliError::Failed(g),
        e => failed(format!("{}: {e}", path.display())),
    })?;
    let tok = Tokenizer::from_metadata(model.metadata())
        .map_err(|e| failed(format!("{}: tokenizer: {e}", path.display())))?;
    let bos = gguftool_eval::chunk_bos(&tok);
    Ok(Loaded { model, tok, bos })
}

fn tokens_of(l: &Loaded, path: &Path, n_ctx: usize) -> Result<Vec<u32>, CliError> {
    let bytes =
        std::fs::read(path).map_err(|e| CliError::Failed(gguftool_gguf::Error::io(path, e)))?;
    let mut text = String::from_utf8(bytes)
        .map_err(|e| failed(format!("{}: not UTF-8 ({e})", path.display())))?;
    if text.ends_with('\n') {
        text.pop();
    }
    let tokens = l
        .tok
        .tokenize(&text, true, false)
        .map_err(|e| failed(format!("{}: {e}", path.display())))?;
    if tokens.len() < n_ctx {
        return Err(failed(format!(
            "{}: {} tokens, fewer than one chunk of {n_ctx} (-c)",
            path.display(),
            tokens.len()
        )));
    }
    Ok(tokens)
}

/// Runs one text with progress on a terminal; returns chunks run.
fn run_text(
    l: &Loaded,
    tokens: &[u32],
    run: &RunArgs,
    hooks: &mut dyn Hooks,
    label: &str,
) -> Result<usize, CliError> {
    let p = ChunkParams {
        n_ctx: run.ctx_size,
        n_batch: run.batch_size,
        n_chunks: usize::try_from(run.chunks).ok(),
    };
    let pb = crate::progress::count_bar(0, label);
    let t0 = Instant::now();
    let n = run_chunks(&l.model, tokens, l.bos, p, hooks, &mut |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })
    .map_err(|e| failed(e.to_string()))?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{label}: {n} chunks of {} tokens in {secs:.1} s ({:.0} tokens/s)",
        p.n_ctx,
        (n * p.n_ctx) as f64 / secs.max(1e-9)
    );
    Ok(n)
}

fn write_atomic(
    path: &Path,
    force: bool,
    write: impl FnOnce(
        std::io::BufWriter<std::fs::File>,
    ) -> Result<std::io::BufWriter<std::fs::File>, String>,
) -> Result<(), CliError> {
    let out = AtomicOutput::create(path, force).map_err(CliError::Failed)?;
    let w = out.writer().map_err(CliError::Failed)?;
    let mut w = write(w).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    w.flush()
        .and_then(|_| w.stream_position().map(|_| ()))
        .map_err(|e| CliError::Failed(gguftool_gguf::Error::io(path, e)))?;
    drop(w);
    out.commit().map_err(CliError::Failed)
}

fn imatrix_file(c: &ImatrixCollector, path: &Path, force: bool) -> Result<(), CliError> {
    write_atomic(path, force, |w| c.write(w).map_err(|e| e.to_string()))?;
    eprintln!("imatrix: {} entries written to {}", c.len(), path.display());
    Ok(())
}

pub fn run_imatrix(a: ImatrixArgs) -> Result<ExitCode, CliError> {
    crate::input::refuse_same_file(&a.model, &a.output)?;
    let l = load(&a.model, &a.run)?;
    let tokens = tokens_of(&l, &a.file, a.run.ctx_size)?;
    let mut c = ImatrixCollector::new(a.run.ctx_size as u32);
    c.datasets.push(a.file.display().to_string());
    let output = a
        .process_output
        .then(|| l.model.output().name().to_string());
    let mut hooks = ImatrixHooks::new(&mut c, output);
    let n = run_text(&l, &tokens, &a.run, &mut hooks, "imatrix")?;
    if let Some(e) = hooks.take_error() {
        return Err(failed(e.to_string()));
    }
    c.chunk_count = n as u32;
    imatrix_file(&c, &a.output, a.run.force)?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_calibrate(a: CalibrateArgs) -> Result<ExitCode, CliError> {
    let texts: Vec<(PathBuf, f32)> = a
        .files
        .iter()
        .map(|s| text_arg(s))
        .collect::<Result<_, _>>()?;
    crate::input::refuse_same_file(&a.model, &a.output)?;
    if let Some(im) = &a.imatrix_out {
        crate::input::refuse_same_file(&a.model, im)?;
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        if gguftool_convert::same_file(&a.output, im) || abs(&a.output) == abs(im) {
            return Err(usage(format!(
                "--imatrix-out {}: the same file as -o; give the imatrix a path of its own",
                crate::escape::escape_for_terminal(&im.display().to_string())
            )));
        }
    }
    let l = load(&a.model, &a.run)?;
    for p in [Some(&a.output), a.imatrix_out.as_ref()]
        .into_iter()
        .flatten()
    {
        if p.exists() && !a.run.force {
            return Err(CliError::Failed(gguftool_gguf::Error::OutputExists(
                p.clone(),
            )));
        }
    }
    let mut hess = HessianHooks::new(l.model.output().name());
    let mut im = ImatrixCollector::new(a.run.ctx_size as u32);
    let mut datasets = Vec::new();
    let mut chunks = 0;
    for (path, w) in &texts {
        let tokens = tokens_of(&l, path, a.run.ctx_size)?;
        hess.set_weight(*w);
        let label = format!("calibrate {}", path.display());
        let n = if a.imatrix_out.is_some() {
            let mut ih = ImatrixHooks::new(&mut im, None);
            let n = run_text(&l, &tokens, &a.run, &mut Tee(&mut hess, &mut ih), &label)?;
            if let Some(e) = ih.take_error() {
                return Err(failed(e.to_string()));
            }
            n
        } else {
            run_text(&l, &tokens, &a.run, &mut hess, &label)?
        };
        chunks += n;
        datasets.push(format!("{}:{w}", path.display()));
        im.datasets.push(path.display().to_string());
    }
    let cal = hess.into_calibration(datasets);
    write_atomic(&a.output, a.run.force, |w| {
        cal.write(w).map_err(|e| e.to_string())
    })?;
    eprintln!(
        "calibrate: {} input sites ({} matrices) written to {}",
        cal.inputs.len(),
        cal.inputs.iter().map(|i| i.consumers.len()).sum::<usize>(),
        a.output.display()
    );
    if let Some(p) = &a.imatrix_out {
        im.chunk_count = chunks as u32;
        imatrix_file(&im, p, a.run.force)?;
    }
    Ok(ExitCode::SUCCESS)
}
