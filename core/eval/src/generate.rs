//! Text generation: one batched prefill of the prompt, then one decode per
//! sampled token, until an end-of-generation token, `n_predict` tokens or a
//! full cache.

use crate::sample::Sampler;
use crate::{Error, Result};
use gguftool_model::{KvCache, Logits, Model, NoHooks};
use std::time::{Duration, Instant};

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// An end-of-generation token was sampled (not emitted).
    Eog(u32),
    /// `n_predict` tokens were emitted.
    Length,
    /// The cache is full.
    ContextFull,
    /// The token callback asked to stop.
    Callback,
}

/// Timings and counts of a generation, as llama.cpp's `llama_perf` lines.
#[derive(Debug, Clone)]
pub struct GenStats {
    /// Prompt tokens (one batch).
    pub n_prompt: usize,
    /// Time of the prefill forward.
    pub prompt_time: Duration,
    /// Single-token decode forwards.
    pub n_decode: usize,
    /// Time of those forwards.
    pub decode_time: Duration,
    /// Time spent sampling.
    pub sample_time: Duration,
    /// Tokens emitted.
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop: Stop,
}

/// Generates after `prompt` into an empty `cache`: `on_token` sees each
/// emitted token and returns false to stop.
///
/// # Errors
/// An empty prompt or one longer than the cache ([`Error::Params`]), model errors.
pub fn generate(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    n_predict: usize,
    sampler: &mut Sampler,
    is_eog: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<GenStats> {
    if prompt.is_empty() {
        return Err(Error::Params("the prompt is empty".into()));
    }
    if prompt.len() > cache.capacity() - cache.len() {
        return Err(Error::Params(format!(
            "the prompt is {} tokens, longer than the context of {} (raise -c)",
            prompt.len(),
            cache.capacity() - cache.len()
        )));
    }
    let t = Instant::now();
    let mut logits = model.forward(cache, prompt, Logits::Last, &mut NoHooks)?;
    let mut st = GenStats {
        n_prompt: prompt.len(),
        prompt_time: t.elapsed(),
        n_decode: 0,
        decode_time: Duration::ZERO,
        sample_time: Duration::ZERO,
        tokens: Vec::new(),
        stop: Stop::Length,
    };
    while st.tokens.len() < n_predict {
        let t = Instant::now();
        let tok = sampler.sample(&logits);
        st.sample_time += t.elapsed();
        if is_eog(tok) {
            st.stop = Stop::Eog(tok);
            break;
        }
        st.tokens.push(tok);
        if !on_token(tok) {
            st.stop = Stop::Callback;
            break;
        }
        if st.tokens.len() == n_predict {
            break;
        }
        if cache.len() == cache.capacity() {
            st.stop = Stop::ContextFull;
            break;
        }
        let t = Instant::now();
        logits = model.forward(cache, &[tok], Logits::Last, &mut NoHooks)?;
        st.decode_time += t.elapsed();
        st.n_decode += 1;
    }
    Ok(st)
}
