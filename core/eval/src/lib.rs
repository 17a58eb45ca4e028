//! Evaluation with llama.cpp's methods (`tools/perplexity/perplexity.cpp`
//! at 0c1e570): [`perplexity`] (chunks of `n_ctx` tokens, BOS written over
//! each chunk's first token when the model adds BOS, the second half of
//! each chunk scored), the `--kl-divergence-base` logits file
//! ([`perplexity`] with a writer) and [`kl_divergence`] against such a file
//! (ours or llama.cpp's), with llama.cpp's statistics and output lines.
#![warn(missing_docs)]

pub mod generate;
pub mod kld;
mod nll;
pub mod ppl;
pub mod sample;

pub use generate::{generate, GenStats, Stop};
pub use kld::{kl_divergence, KldChunk, KldResult};
pub use ppl::{perplexity, tokenize_for_perplexity, PplParams, PplResult};
pub use sample::{argmax, Sampler, SamplerParams};

use gguftool_model::Model;

/// Errors of the evaluations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is too short for two chunks (llama.cpp's minimum).
    #[error("the text tokenizes to {have} tokens; a context of {n_ctx} needs at least {need}")]
    TooShort {
        /// Tokens in the text.
        have: usize,
        /// Tokens needed (2 x n_ctx).
        need: usize,
        /// The context.
        n_ctx: usize,
    },
    /// Bad parameters.
    #[error("{0}")]
    Params(String),
    /// A logits file that cannot be used.
    #[error("logits file: {0}")]
    LogitsFile(String),
    /// I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The model.
    #[error(transparent)]
    Model(#[from] gguftool_model::Error),
    /// The tokenizer.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] gguftool_tokenizer::Error),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The BOS id to write over each chunk's first token, when the model's
/// tokenizer adds BOS (`llama_vocab_get_add_bos`).
pub fn chunk_bos(tok: &gguftool_tokenizer::Tokenizer) -> Option<u32> {
    if tok.vocab().add_bos() {
        tok.vocab().specials().bos
    } else {
        None
    }
}

/// `tokens` cut into whole chunks of `n_ctx` (a tail shorter than
/// `n_ctx` dropped), each chunk's first token replaced by `bos` when set:
/// the sequences `llama-perplexity` scores, as the QAT stages train on
/// them. `n_ctx` 0 gives no chunks.
pub fn bos_chunks(tokens: &[u32], n_ctx: usize, bos: Option<u32>) -> Vec<Vec<u32>> {
    if n_ctx == 0 {
        return Vec::new();
    }
    tokens
        .chunks_exact(n_ctx)
        .map(|c| {
            let mut v = c.to_vec();
            if let Some(b) = bos {
                v[0] = b;
            }
            v
        })
        .collect()
}

/// Runs one chunk (cache cleared, BOS written over the first token when
/// `bos` is set) in batches of `n_batch` and returns the logits of
/// positions `n_ctx/2 ..` (row-major, `n_ctx - n_ctx/2` rows).
pub(crate) fn run_chunk(
    model: &Model,
    cache: &mut gguftool_model::KvCache,
    chunk: &[u32],
    bos: Option<u32>,
    n_batch: usize,
) -> Result<Vec<f32>> {
    let n_ctx = chunk.len();
    let first = n_ctx / 2;
    let mut toks = chunk.to_vec();
    if let Some(b) = bos {
        toks[0] = b;
    }
    cache.clear();
    let mut logits = Vec::with_capacity((n_ctx - first) * model.n_vocab());
    let mut start = 0;
    while start < n_ctx {
        let end = (start + n_batch).min(n_ctx);
        let want = if end <= first {
            gguftool_model::Logits::None
        } else {
            gguftool_model::Logits::From(first.saturating_sub(start))
        };
        let out = model.forward(cache, &toks[start..end], want, &mut gguftool_model::NoHooks)?;
        logits.extend_from_slice(&out);
        start = end;
    }
    Ok(logits)
}

#[cfg(test)]
mod chunk_tests {
    use super::bos_chunks;

    #[test]
    fn bos_chunks_cut_whole_chunks_and_overwrite_the_first_token() {
        let ids: Vec<u32> = (10..21).collect();
        assert_eq!(
            bos_chunks(&ids, 4, Some(1)),
            vec![vec![1, 11, 12, 13], vec![1, 15, 16, 17]]
        );
        assert_eq!(
            bos_chunks(&ids, 5, None),
            vec![(10..15).collect::<Vec<u32>>(), (15..20).collect()]
        );
        assert!(bos_chunks(&ids, 12, Some(1)).is_empty());
        assert!(bos_chunks(&ids, 0, Some(1)).is_empty());
    }
}
