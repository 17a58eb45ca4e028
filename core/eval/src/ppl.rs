//! Perplexity as `llama-perplexity` computes it.

use crate::nll::{nll, nll_and_record};
use crate::{run_chunk, Error, Result};
use gguftool_model::Model;
use rayon::prelude::*;
use std::io::Write;

/// Parameters (llama-perplexity's flags).
#[derive(Debug, Clone)]
pub struct PplParams {
    /// `-c`: tokens per chunk (default 512).
    pub n_ctx: usize,
    /// `-b`: positions per forward batch (default 2048; capped at n_ctx).
    pub n_batch: usize,
    /// `--chunks`: at most this many chunks (None: all).
    pub n_chunks: Option<usize>,
}

impl Default for PplParams {
    fn default() -> Self {
        Self {
            n_ctx: 512,
            n_batch: 2048,
            n_chunks: None,
        }
    }
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct PplResult {
    /// exp(mean NLL).
    pub ppl: f64,
    /// llama.cpp's "+/-": PPL·√((mean(NLL²) − mean(NLL)²)/(count−1)).
    pub uncertainty: f64,
    /// Tokens scored.
    pub count: usize,
    /// Chunks evaluated.
    pub n_chunk: usize,
    /// Running perplexity after each chunk.
    pub running: Vec<f64>,
    /// Tokens run through the model (n_chunk × n_ctx).
    pub tokens_processed: usize,
}

/// Tokenizes the evaluation text as llama-perplexity does: the whole text,
/// BOS per the model, special tokens not parsed.
///
/// # Errors
/// Tokenizer errors.
pub fn tokenize_for_perplexity(
    tok: &gguftool_tokenizer::Tokenizer,
    text: &str,
) -> Result<Vec<u32>> {
    Ok(tok.tokenize(text, true, false)?)
}

/// Checks the text length and returns the number of chunks.
pub(crate) fn n_chunks(n_tokens: usize, p: &PplParams) -> Result<usize> {
    if p.n_ctx < 4 {
        return Err(Error::Params(format!("context {} is too small", p.n_ctx)));
    }
    if n_tokens < 2 * p.n_ctx {
        return Err(Error::TooShort {
            have: n_tokens,
            need: 2 * p.n_ctx,
            n_ctx: p.n_ctx,
        });
    }
    let max = n_tokens / p.n_ctx;
    Ok(p.n_chunks.map_or(max, |c| c.min(max)))
}

/// Perplexity of `model` on `tokens` (see the crate docs). `bos`: the id
/// written over each chunk's first token ([`crate::chunk_bos`]).
/// `logits_out`: write llama.cpp's `--kl-divergence-base` file there.
/// `on_chunk(k, running_ppl)` is called after chunk k (1-based).
///
/// # Errors
/// Too few tokens, model errors, I/O errors of `logits_out`.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    bos: Option<u32>,
    params: &PplParams,
    mut logits_out: Option<&mut dyn Write>,
    on_chunk: &mut dyn FnMut(usize, f64),
) -> Result<PplResult> {
    let n_chunk = n_chunks(tokens.len(), params)?;
    let n_ctx = params.n_ctx;
    let n_batch = params.n_batch.clamp(1, n_ctx);
    let n_vocab = model.n_vocab();
    let first = n_ctx / 2;
    let nv = 2 * n_vocab.div_ceil(2) + 4;
    if let Some(w) = logits_out.as_deref_mut() {
        w.write_all(b"_logits_")?;
        for v in [n_ctx, n_vocab, n_chunk] {
            w.write_all(&(v as i32).to_le_bytes())?;
        }
        let mut buf = Vec::with_capacity(n_chunk * n_ctx * 4);
        for &t in &tokens[..n_chunk * n_ctx] {
            buf.extend_from_slice(&(t as i32).to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    let mut cache = model.new_cache(n_ctx);
    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut running = Vec::with_capacity(n_chunk);
    let n_score = n_ctx - 1 - first;
    for i in 0..n_chunk {
        let start = i * n_ctx;
        let chunk = &tokens[start..start + n_ctx];
        let logits = run_chunk(model, &mut cache, chunk, bos, n_batch)?;
        let targets = &tokens[start + first + 1..start + n_ctx];
        let vals: Vec<f64> = if let Some(w) = logits_out.as_deref_mut() {
            let mut recs = vec![0u16; n_score * nv];
            let vals: Vec<f64> = recs
                .par_chunks_mut(nv)
                .zip(logits.par_chunks(n_vocab))
                .zip(targets.par_iter())
                .map(|((rec, row), &t)| nll_and_record(row, t as usize, rec))
                .collect();
            let mut bytes = Vec::with_capacity(recs.len() * 2);
            for r in &recs {
                bytes.extend_from_slice(&r.to_le_bytes());
            }
            w.write_all(&bytes)?;
            vals
        } else {
            logits
                .par_chunks(n_vocab)
                .zip(targets.par_iter())
                .map(|(row, &t)| nll(row, t as usize))
                .collect()
        };
        for v in vals {
            sum += v;
            sum2 += v * v;
        }
        count += n_score;
        let r = (sum / count as f64).exp();
        running.push(r);
        on_chunk(i + 1, r);
    }
    if let Some(w) = logits_out {
        w.flush()?;
    }
    let mean = sum / count as f64;
    let ppl = mean.exp();
    let var = sum2 / count as f64 - mean * mean;
    let uncertainty = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(PplResult {
        ppl,
        uncertainty,
        count,
        n_chunk,
        running,
        tokens_processed: n_chunk * n_ctx,
    })
}
