//! Collecting calibration statistics from a forward pass: model hooks that
//! accumulate llama-imatrix's squared-input sums ([`ImatrixHooks`]) or the
//! full second moments `X^T X` of every distinct linear input
//! ([`HessianHooks`]), and the driver that runs calibration text through the
//! model in llama-imatrix's chunks ([`run_chunks`]).

use crate::calib_file::{CalibInput, Calibration};
use crate::gptq::Hessian;
use crate::imatrix_write::{CollectError, ImatrixCollector};
use gguftool_model::{Hooks, KvCache, Logits, Model};
use rayon::prelude::*;

/// Collects llama-imatrix's statistics: for every linear whose weight name
/// starts with `blk.` (and the output head with `process_output`), the sum
/// of squared inputs per column and the rows seen. Linears sharing an input
/// each get their own entry with the same data, as llama.cpp writes them.
pub struct ImatrixHooks<'a> {
    collector: &'a mut ImatrixCollector,
    output: Option<String>,
    error: Option<CollectError>,
}

impl<'a> ImatrixHooks<'a> {
    /// Hooks adding into `collector`; `output` names the output head's
    /// weight to collect too (llama-imatrix `--process-output`).
    pub fn new(collector: &'a mut ImatrixCollector, output: Option<String>) -> Self {
        Self {
            collector,
            output,
            error: None,
        }
    }

    /// The first shape error met, if any.
    pub fn take_error(&mut self) -> Option<CollectError> {
        self.error.take()
    }
}

impl Hooks for ImatrixHooks<'_> {
    fn linear_input(&mut self, _layer: usize, tensor: &str, x: &[f32], _n: usize, n_in: usize) {
        if tensor.starts_with("blk.") && self.error.is_none() {
            if let Err(e) = self.collector.add(tensor, n_in, 0, 1, x) {
                self.error = Some(e);
            }
        }
    }

    fn final_hidden(&mut self, x: &[f32], _n: usize, n_embd: usize) {
        if let (Some(name), None) = (&self.output, &self.error) {
            if let Err(e) = self.collector.add(name, n_embd, 0, 1, x) {
                self.error = Some(e);
            }
        }
    }
}

/// Accumulates `X^T X` per distinct linear input. Linears handed the same
/// input buffer in a row (q/k/v, gate/up) share one site, named after the
/// first; the output head's input (the final hidden state) is a site whose
/// consumer is `output` (`output.weight`, or `token_embd.weight` when tied).
pub struct HessianHooks {
    sites: Vec<Site>,
    output: String,
    /// (pointer, length, layer) of the last input seen, and its site.
    last: Option<(usize, usize, usize, usize)>,
    /// Weight of the text being run (rows are scaled by its square root).
    weight: f32,
}

struct Site {
    consumers: Vec<String>,
    hessian: Hessian,
}

impl HessianHooks {
    /// Hooks for a model whose output head weight is named `output`.
    pub fn new(output: impl Into<String>) -> Self {
        Self {
            sites: Vec::new(),
            output: output.into(),
            last: None,
            weight: 1.0,
        }
    }

    /// Sets the weight of the text about to run (its rows count `w` times).
    pub fn set_weight(&mut self, w: f32) {
        self.weight = w;
    }

    fn site(&mut self, tensor: &str, n: usize) -> usize {
        match self
            .sites
            .iter()
            .position(|s| s.consumers.iter().any(|c| c == tensor))
        {
            Some(i) => i,
            None => {
                self.sites.push(Site {
                    consumers: vec![tensor.to_string()],
                    hessian: Hessian::new(n),
                });
                self.sites.len() - 1
            }
        }
    }

    fn accumulate(&mut self, site: usize, x: &[f32], n: usize) {
        let w = self.weight;
        let h = &mut self.sites[site].hessian;
        if h.n() != n {
            return; // a width change would be a model bug; nothing to add to
        }
        accumulate_xtx(h, x, n, w);
    }

    /// The collected set, with the given dataset descriptions.
    pub fn into_calibration(self, datasets: Vec<String>) -> Calibration {
        Calibration {
            datasets,
            inputs: self
                .sites
                .into_iter()
                .filter(|s| s.hessian.tokens() > 0)
                .map(|s| CalibInput {
                    site: s.consumers[0].clone(),
                    consumers: s.consumers,
                    hessian: s.hessian,
                })
                .collect(),
        }
    }
}

impl Hooks for HessianHooks {
    fn linear_input(&mut self, layer: usize, tensor: &str, x: &[f32], _n: usize, n_in: usize) {
        let key = (x.as_ptr() as usize, x.len(), layer);
        if let Some((p, l, ly, site)) = self.last {
            if (p, l, ly) == key {
                // The same input again: another consumer of the same site.
                if !self.sites[site].consumers.iter().any(|c| c == tensor) {
                    self.sites[site].consumers.push(tensor.to_string());
                }
                return;
            }
        }
        let site = self.site(tensor, n_in);
        self.last = Some((key.0, key.1, key.2, site));
        self.accumulate(site, x, n_in);
    }

    fn final_hidden(&mut self, x: &[f32], _n: usize, n_embd: usize) {
        self.last = None;
        let out = self.output.clone();
        let site = self.site(&out, n_embd);
        self.accumulate(site, x, n_embd);
    }
}

/// `H += w * X^T X` for `X` of `rows x n` (f32 products per batch, added
/// into the f64 accumulator).
pub fn accumulate_xtx(h: &mut Hessian, x: &[f32], n: usize, w: f32) {
    let rows = x.len() / n;
    if rows == 0 {
        return;
    }
    // Columns as contiguous vectors, so every entry is one dot product.
    let mut xt = vec![0f32; n * rows];
    for (t, r) in x.chunks_exact(n).enumerate() {
        for (j, &v) in r.iter().enumerate() {
            xt[j * rows + t] = v;
        }
    }
    let xt = &xt;
    let add: Vec<f64> = (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let ci = &xt[i * rows..(i + 1) * rows];
            (0..=i).map(move |j| {
                let cj = &xt[j * rows..(j + 1) * rows];
                dot8(ci, cj) as f64 * w as f64
            })
        })
        .collect();
    h.add_lower(&add, rows as u64);
}

/// f32 dot product in eight independent lanes (vectorizes).
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// How calibration text is cut and run (llama-imatrix's method).
#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    /// Tokens per chunk (`-c`).
    pub n_ctx: usize,
    /// Positions per forward batch (`-b`, capped at `n_ctx`).
    pub n_batch: usize,
    /// At most this many chunks (`--chunks`).
    pub n_chunks: Option<usize>,
}

/// Runs `tokens` through `model` in chunks of `n_ctx` (cache cleared per
/// chunk, `bos` written over each chunk's first token when set), with
/// `hooks` observing every batch; `on_chunk(done, total)` after each.
/// Returns the number of chunks run.
///
/// # Errors
/// Fewer tokens than one chunk, or model errors.
pub fn run_chunks(
    model: &Model,
    tokens: &[u32],
    bos: Option<u32>,
    p: ChunkParams,
    hooks: &mut dyn Hooks,
    on_chunk: &mut dyn FnMut(usize, usize),
) -> Result<usize, gguftool_model::Error> {
    let n_ctx = p.n_ctx.max(1);
    let avail = tokens.len() / n_ctx;
    let n_chunk = p.n_chunks.map_or(avail, |c| c.min(avail));
    let n_batch = p.n_batch.clamp(1, n_ctx);
    let mut cache: KvCache = model.new_cache(n_ctx);
    for i in 0..n_chunk {
        let mut chunk = tokens[i * n_ctx..(i + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        cache.clear();
        for b in chunk.chunks(n_batch) {
            model.forward(&mut cache, b, Logits::None, hooks)?;
        }
        on_chunk(i + 1, n_chunk);
    }
    Ok(n_chunk)
}

/// Two hooks observing the same pass.
pub struct Tee<'a>(pub &'a mut dyn Hooks, pub &'a mut dyn Hooks);

impl Hooks for Tee<'_> {
    fn linear_input(&mut self, layer: usize, tensor: &str, x: &[f32], n: usize, n_in: usize) {
        self.0.linear_input(layer, tensor, x, n, n_in);
        self.1.linear_input(layer, tensor, x, n, n_in);
    }

    fn final_hidden(&mut self, x: &[f32], n: usize, n_embd: usize) {
        self.0.final_hidden(x, n, n_embd);
        self.1.final_hidden(x, n, n_embd);
    }
}
