//! Weights over kernel tables, the KV cache and the forward pass.

use crate::error::{Error, Result};
use crate::gemm;
use crate::hparams::{Arch, Hparams, RopeKind};
use crate::lora::{LoraDelta, LoraFile};
use crate::ops;
use gguftool_gguf::{GgufFile, Metadata};
use gguftool_quant::activation::Activations;
use gguftool_quant::kernels::KernelTable;
use rayon::prelude::*;
use std::path::Path;

/// Observes activations during a forward pass (calibration: imatrix,
/// Hessians); called on the thread running the forward, hence `Send`.
/// Every method has an empty default.
pub trait Hooks: Send {
    /// The input of linear `tensor` (its GGUF name, e.g.
    /// `blk.3.attn_q.weight`) in layer `layer`: `x` is `n_tokens` rows of
    /// `n_in` f32 values (what the kernels quantize). Linears sharing an
    /// input (q/k/v, gate/up) are each reported.
    fn linear_input(
        &mut self,
        layer: usize,
        tensor: &str,
        x: &[f32],
        n_tokens: usize,
        n_in: usize,
    ) {
        let _ = (layer, tensor, x, n_tokens, n_in);
    }

    /// The final hidden state after `output_norm`, i.e. the input of the
    /// output head (`output.weight`, or `token_embd.weight` when tied):
    /// `n_tokens` rows of `n_embd`.
    fn final_hidden(&mut self, x: &[f32], n_tokens: usize, n_embd: usize) {
        let _ = (x, n_tokens, n_embd);
    }
}

/// Hooks that observe nothing.
pub struct NoHooks;

impl Hooks for NoHooks {}

/// Which positions of a batch get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (prefill only).
    None,
    /// The last position.
    Last,
    /// Positions `i..` of the batch.
    From(usize),
    /// Every position.
    All,
}

/// How weight matrices are multiplied with a batch of positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulPath {
    /// `KernelTable::matmul` for decode and row-transformed formats; for
    /// batches of at least [`DECODE_ONCE_MIN_BATCH`] positions on other
    /// formats, each row decoded once per batch and multiplied in f32 with
    /// the kernels' (8-bit) activations decoded to f32.
    Auto,
    /// Always `KernelTable::matmul`.
    Kernels,
    /// Reference: no activation quantization at all; every product is the
    /// decoded weight rows (original basis) times the f32 activations, as
    /// llama.cpp computes F32 weights. For measuring what 8-bit
    /// activations cost, and for exact-f32 forwards.
    ReferenceF32,
}

/// Smallest batch [`MatmulPath::Auto`] decodes rows once for.
pub const DECODE_ONCE_MIN_BATCH: usize = 4;

/// A weight matrix in its stored type with its kernel table.
pub struct Linear {
    name: String,
    index: usize,
    table: KernelTable<'static>,
    n_in: usize,
    n_out: usize,
    lora: Vec<LoraDelta>,
}

impl Linear {
    /// The tensor name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Input width.
    pub fn n_in(&self) -> usize {
        self.n_in
    }

    /// Output width.
    pub fn n_out(&self) -> usize {
        self.n_out
    }

    /// The kernel table.
    pub fn table(&self) -> &KernelTable<'static> {
        &self.table
    }

    /// Activations of two tables can be shared when they quantize alike:
    /// the same block type and no row transform (or the same format's).
    fn shares_input_with(&self, other: &Linear) -> bool {
        let a = &self.table;
        let b = &other.table;
        if a.vec_dot_type() != b.vec_dot_type() {
            return false;
        }
        match (a.format().row_transform(), b.format().row_transform()) {
            (None, None) => true,
            (Some(_), Some(_)) => a.format().name() == b.format().name(),
            _ => false,
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    bo: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    b_gate: Option<Vec<f32>>,
    b_up: Option<Vec<f32>>,
    b_down: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
}

/// The KV cache of one sequence, f32.
pub struct KvCache {
    capacity: usize,
    len: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity in positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// A loaded model: hyperparameters and weights memory-mapped in their
/// stored types.
pub struct Model {
    hp: Hparams,
    layers: Vec<Layer>,
    token_embd: KernelTable<'static>,
    token_embd_index: usize,
    output_norm: Vec<f32>,
    output: Linear,
    pool: rayon::ThreadPool,
    matmul_path: MatmulPath,
    // Last: the tables above borrow nothing from it, but the byte slices
    // the forward reads come from it.
    file: GgufFile,
}

struct Loader<'f> {
    file: &'f GgufFile,
}

impl Loader<'_> {
    fn find(&self, name: &str, expected: &[u64]) -> Result<Option<usize>> {
        let Some(i) = self.file.header().tensor_index(name) else {
            return Ok(None);
        };
        let t = &self.file.header().tensors[i];
        if t.dims != expected {
            return Err(Error::BadShape {
                name: name.into(),
                found: t.dims.clone(),
                expected: expected.to_vec(),
            });
        }
        Ok(Some(i))
    }

    fn require(&self, name: &str, expected: &[u64]) -> Result<usize> {
        self.find(name, expected)?
            .ok_or_else(|| Error::MissingTensor {
                name: name.into(),
                expected: expected.to_vec(),
            })
    }

    fn linear_at(&self, name: &str, index: usize) -> Result<Linear> {
        let t = &self.file.header().tensors[index];
        let table = KernelTable::for_tensor(self.file, index)?;
        Ok(Linear {
            name: name.into(),
            index,
            table,
            n_in: t.dims[0] as usize,
            n_out: t.dims[1] as usize,
            lora: Vec::new(),
        })
    }

    fn linear(&self, name: &str, n_in: usize, n_out: usize) -> Result<Linear> {
        let i = self.require(name, &[n_in as u64, n_out as u64])?;
        self.linear_at(name, i)
    }

    fn vector_at(&self, index: usize) -> Result<Vec<f32>> {
        let t = &self.file.header().tensors[index];
        // A row codec, not a kernel table: vectors need no dot kernel (and
        // may be shorter than an activation block).
        let codec = gguftool_quant::rows::tensor_decoder(self.file, index)?;
        let mut out = vec![0.0f32; t.n_elements as usize];
        codec.decode(self.file.tensor_data(index), &mut out)?;
        Ok(out)
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let i = self.require(name, &[n as u64])?;
        self.vector_at(i)
    }

    fn opt_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        self.find(name, &[n as u64])?
            .map(|i| self.vector_at(i))
            .transpose()
    }
}

impl Model {
    /// Opens `path` (any registered tensor type) with a pool of `threads`
    /// threads (0: rayon's default).
    ///
    /// # Errors
    /// As [`Model::from_file`], plus I/O and container errors.
    pub fn open(path: impl AsRef<Path>, threads: usize) -> Result<Self> {
        let file = gguftool_quant::registry::open(path)?;
        Self::from_file(file, threads)
    }

    /// Builds the model over an open file.
    ///
    /// # Errors
    /// Unknown architecture, missing keys, missing or misshapen tensors,
    /// tensor types without kernels.
    pub fn from_file(file: GgufFile, threads: usize) -> Result<Self> {
        let n_vocab_tensor = file
            .header()
            .tensor_index("token_embd.weight")
            .and_then(|i| file.header().tensors[i].dims.get(1).map(|&d| d as usize));
        let hp = Hparams::from_metadata(&file.header().metadata, n_vocab_tensor)?;
        let ld = Loader { file: &file };
        let d = hp.n_embd;
        let nv = hp.n_vocab;
        if ld.file.header().tensor_index("rope_freqs.weight").is_some() {
            return Err(Error::Unsupported(
                "rope_freqs.weight (RoPE frequency factors)".into(),
            ));
        }
        let token_embd_index = ld.require("token_embd.weight", &[d as u64, nv as u64])?;
        let token_embd = KernelTable::for_tensor(&file, token_embd_index)?;
        let mut layers = Vec::with_capacity(hp.n_layer);
        let gemma = hp.arch == Arch::Gemma3;
        for il in 0..hp.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let nq = hp.n_head[il] * hp.head_dim_k;
            let nk = hp.n_head_kv[il] * hp.head_dim_k;
            let nvv = hp.n_head_kv[il] * hp.head_dim_v;
            let no = hp.n_head[il] * hp.head_dim_v;
            let ff = hp.n_ff[il];
            let layer = Layer {
                attn_norm: ld.vector(&n("attn_norm.weight"), d)?,
                wq: ld.linear(&n("attn_q.weight"), d, nq)?,
                wk: ld.linear(&n("attn_k.weight"), d, nk)?,
                wv: ld.linear(&n("attn_v.weight"), d, nvv)?,
                wo: ld.linear(&n("attn_output.weight"), no, d)?,
                bq: ld.opt_vector(&n("attn_q.bias"), nq)?,
                bk: ld.opt_vector(&n("attn_k.bias"), nk)?,
                bv: ld.opt_vector(&n("attn_v.bias"), nvv)?,
                bo: ld.opt_vector(&n("attn_output.bias"), d)?,
                q_norm: if gemma {
                    Some(ld.vector(&n("attn_q_norm.weight"), hp.head_dim_k)?)
                } else {
                    None
                },
                k_norm: if gemma {
                    Some(ld.vector(&n("attn_k_norm.weight"), hp.head_dim_k)?)
                } else {
                    None
                },
                post_attn_norm: if gemma {
                    Some(ld.vector(&n("post_attention_norm.weight"), d)?)
                } else {
                    None
                },
                ffn_norm: ld.vector(&n("ffn_norm.weight"), d)?,
                gate: ld.linear(&n("ffn_gate.weight"), d, ff)?,
                up: ld.linear(&n("ffn_up.weight"), d, ff)?,
                down: ld.linear(&n("ffn_down.weight"), ff, d)?,
                b_gate: ld.opt_vector(&n("ffn_gate.bias"), ff)?,
                b_up: ld.opt_vector(&n("ffn_up.bias"), ff)?,
                b_down: ld.opt_vector(&n("ffn_down.bias"), d)?,
                post_ffn_norm: if gemma {
                    Some(ld.vector(&n("post_ffw_norm.weight"), d)?)
                } else {
                    None
                },
            };
            layers.push(layer);
        }
        let output_norm = ld.vector("output_norm.weight", d)?;
        let output = match ld.find("output.weight", &[d as u64, nv as u64])? {
            Some(i) => ld.linear_at("output.weight", i)?,
            None => ld.linear_at("token_embd.weight", token_embd_index)?,
        };
        let mut b = rayon::ThreadPoolBuilder::new();
        if threads > 0 {
            b = b.num_threads(threads);
        }
        let pool = b.build().map_err(|e| Error::Pool(e.to_string()))?;
        Ok(Self {
            hp,
            layers,
            token_embd,
            token_embd_index,
            output_norm,
            output,
            pool,
            matmul_path: MatmulPath::Auto,
            file,
        })
    }

    /// Chooses how batches are multiplied (default [`MatmulPath::Auto`]).
    pub fn set_matmul_path(&mut self, p: MatmulPath) {
        self.matmul_path = p;
    }

    /// Attaches `file`'s adapters at user scale `scale` (llama.cpp's
    /// `--lora` is 1, `--lora-scaled FNAME:S` is `S`) to the matrices of the
    /// same names: every later forward computes `W x + s * B (A x)`.
    /// Adapters add up over several calls. Returns how many were attached.
    ///
    /// # Errors
    /// [`Error::Adapter`] for an architecture other than the model's, a
    /// tensor the model has no matrix of that name for (an adapter of the
    /// token embedding is not supported), factors whose shapes do not fit
    /// the matrix (as llama.cpp checks them), or a non-finite `scale`. The
    /// model is unchanged on error.
    pub fn apply_lora(&mut self, file: &LoraFile, scale: f32) -> Result<usize> {
        let arch = self.hp.arch.name();
        if file.arch != arch {
            return Err(Error::Adapter(format!(
                "architecture {:?} does not match the model's {arch:?}",
                file.arch
            )));
        }
        if !scale.is_finite() {
            return Err(Error::Adapter(format!("scale {scale} is not finite")));
        }
        // Check everything first, so a bad adapter leaves the model as it was.
        for ad in &file.adapters {
            let lin = self.linears().find(|l| l.name == ad.name).ok_or_else(|| {
                Error::Adapter(format!("tensor {:?} is no matrix of the model", ad.name))
            })?;
            if ad.n_in != lin.n_in || ad.n_out != lin.n_out {
                return Err(Error::Adapter(format!(
                    "{:?}: factors are {} -> {} (rank {}), the matrix is {} -> {}",
                    ad.name, ad.n_in, ad.n_out, ad.rank, lin.n_in, lin.n_out
                )));
            }
            if ad.a.len() != ad.rank * ad.n_in || ad.b.len() != ad.n_out * ad.rank {
                return Err(Error::Adapter(format!("{:?}: factor sizes", ad.name)));
            }
        }
        for ad in &file.adapters {
            let delta = LoraDelta {
                rank: ad.rank,
                a: ad.a.clone(),
                b: ad.b.clone(),
                scale: file.scale_for(ad.rank, scale),
            };
            if let Some(lin) = self.linears_mut().find(|l| l.name == ad.name) {
                lin.lora.push(delta);
            }
        }
        Ok(file.adapters.len())
    }

    fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down])
            .chain(
                // The output head, unless it is the tied token embedding.
                std::iter::once(&self.output).filter(|o| o.name == "output.weight"),
            )
    }

    fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                [
                    &mut l.wq,
                    &mut l.wk,
                    &mut l.wv,
                    &mut l.wo,
                    &mut l.gate,
                    &mut l.up,
                    &mut l.down,
                ]
            })
            .chain(std::iter::once(&mut self.output).filter(|o| o.name == "output.weight"))
    }

    /// The hyperparameters.
    pub fn hparams(&self) -> &Hparams {
        &self.hp
    }

    /// The file's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.file.header().metadata
    }

    /// The open file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Vocabulary size (columns of the logits).
    pub fn n_vocab(&self) -> usize {
        self.hp.n_vocab
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The output head.
    pub fn output(&self) -> &Linear {
        &self.output
    }

    /// An empty KV cache for `n_ctx` positions.
    pub fn new_cache(&self, n_ctx: usize) -> KvCache {
        let kd = self.hp.head_dim_k;
        let vd = self.hp.head_dim_v;
        KvCache {
            capacity: n_ctx,
            len: 0,
            k: (0..self.hp.n_layer)
                .map(|il| vec![0.0; n_ctx * self.hp.n_head_kv[il] * kd])
                .collect(),
            v: (0..self.hp.n_layer)
                .map(|il| vec![0.0; n_ctx * self.hp.n_head_kv[il] * vd])
                .collect(),
        }
    }

    /// Runs `tokens` at positions `cache.len()..` (a batched prefill, or a
    /// decode of one token), appending their keys and values to `cache`,
    /// and returns the logits of the positions `logits` asks for, row-major
    /// (`n_rows x n_vocab`).
    ///
    /// # Errors
    /// A token outside the vocabulary, a full cache, kernel errors.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits: Logits,
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<f32>> {
        if cache.len + tokens.len() > cache.capacity {
            return Err(Error::ContextFull {
                used: cache.len,
                batch: tokens.len(),
                capacity: cache.capacity,
            });
        }
        for &t in tokens {
            if t as usize >= self.hp.n_vocab {
                return Err(Error::BadToken {
                    id: t,
                    n_vocab: self.hp.n_vocab,
                });
            }
        }
        self.pool
            .install(|| self.forward_inner(cache, tokens, logits, hooks))
    }

    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let d = self.hp.n_embd;
        let rb = self.token_embd.row_bytes();
        let data = self.file.tensor_data(self.token_embd_index);
        let mut x = vec![0.0f32; tokens.len() * d];
        x.par_chunks_mut(d)
            .zip(tokens.par_iter())
            .try_for_each(|(row, &t)| {
                let t = t as usize;
                self.token_embd
                    .dequantize_rows(&data[t * rb..(t + 1) * rb], row)
            })?;
        if self.hp.arch == Arch::Gemma3 {
            let s = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }
        Ok(x)
    }

    /// Quantizes each row of `x` for `lin`.
    fn quantize(&self, lin: &Linear, x: &[f32]) -> Result<Vec<Activations>> {
        if self.matmul_path == MatmulPath::ReferenceF32 {
            return Ok(x
                .chunks(lin.n_in)
                .map(|r| Activations::F32(r.to_vec()))
                .collect());
        }
        x.par_chunks(lin.n_in)
            .map(|row| lin.table.quantize_activations(row).map_err(Error::from))
            .collect()
    }

    /// `out[t * n_out + r] = W_r · x_t`, rows split over the pool.
    fn apply(&self, lin: &Linear, acts: &[Activations]) -> Result<Vec<f32>> {
        let n_out = lin.n_out;
        let n_tok = acts.len();
        let rb = lin.table.row_bytes();
        let data = self.file.tensor_data(lin.index);
        let decode_once = self.matmul_path == MatmulPath::ReferenceF32
            || (self.matmul_path == MatmulPath::Auto
                && n_tok >= DECODE_ONCE_MIN_BATCH
                && lin.table.format().row_transform().is_none());
        let xs: Vec<Vec<f32>> = if decode_once {
            acts.par_iter().map(gemm::activation_values).collect()
        } else {
            Vec::new()
        };
        let run = |r0: usize, r1: usize, local: &mut [f32]| -> Result<()> {
            if decode_once {
                let decode = |rows: std::ops::Range<usize>, dst: &mut [f32]| {
                    lin.table
                        .dequantize_rows(&data[(r0 + rows.start) * rb..(r0 + rows.end) * rb], dst)
                };
                gemm::decoded_rows_matmul(&decode, r1 - r0, lin.n_in, &xs, local)?;
            } else {
                lin.table.matmul(&data[r0 * rb..r1 * rb], acts, local)?;
            }
            Ok(())
        };
        let mut out = vec![0.0f32; n_tok * n_out];
        let threads = rayon::current_num_threads();
        if threads <= 1 {
            run(0, n_out, &mut out)?;
            return Ok(out);
        }
        let n_tasks = (threads * 4).min(n_out).max(1);
        let per = n_out.div_ceil(n_tasks);
        let parts: Vec<(usize, Vec<f32>)> = (0..n_out.div_ceil(per))
            .into_par_iter()
            .map(|ti| {
                let r0 = ti * per;
                let r1 = (r0 + per).min(n_out);
                let mut local = vec![0.0f32; (r1 - r0) * n_tok];
                run(r0, r1, &mut local).map(|()| (r0, local))
            })
            .collect::<Result<_>>()?;
        for (r0, local) in parts {
            let nr = local.len() / n_tok.max(1);
            for t in 0..n_tok {
                out[t * n_out + r0..t * n_out + r0 + nr]
                    .copy_from_slice(&local[t * nr..(t + 1) * nr]);
            }
        }
        Ok(out)
    }

    /// Applies several linears sharing input `x`, quantizing it once per
    /// distinct activation type.
    fn apply_group(&self, lins: &[&Linear], x: &[f32]) -> Result<Vec<Vec<f32>>> {
        let mut cached: Vec<(usize, Vec<Activations>)> = Vec::new();
        let mut outs = Vec::with_capacity(lins.len());
        for (i, lin) in lins.iter().enumerate() {
            let pos = cached
                .iter()
                .position(|(j, _)| lins[*j].shares_input_with(lin));
            let k = match pos {
                Some(k) => k,
                None => {
                    cached.push((i, self.quantize(lin, x)?));
                    cached.len() - 1
                }
            };
            let mut out = self.apply(lin, &cached[k].1)?;
            add_lora(lin, x, &mut out);
            outs.push(out);
        }
        Ok(outs)
    }

    fn forward_inner(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        want: Logits,
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<f32>> {
        let hp = &self.hp;
        let d = hp.n_embd;
        let n = tokens.len();
        let p0 = cache.len;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut x = self.embed(tokens)?;
        let eps = hp.rms_eps;
        let kd = hp.head_dim_k;
        let vd = hp.head_dim_v;
        for (il, l) in self.layers.iter().enumerate() {
            // Attention.
            let mut h = x.clone();
            h.par_chunks_mut(d)
                .for_each(|r| ops::rms_norm(r, &l.attn_norm, eps));
            for lin in [&l.wq, &l.wk, &l.wv] {
                hooks.linear_input(il, &lin.name, &h, n, d);
            }
            let mut qkv = self.apply_group(&[&l.wq, &l.wk, &l.wv], &h)?;
            let mut v = qkv.pop().expect("three outputs");
            let mut k = qkv.pop().expect("three outputs");
            let mut q = qkv.pop().expect("three outputs");
            add_bias(&mut q, l.bq.as_deref());
            add_bias(&mut k, l.bk.as_deref());
            add_bias(&mut v, l.bv.as_deref());
            let nh = hp.n_head[il];
            let nkv = hp.n_head_kv[il];
            if let Some(w) = &l.q_norm {
                q.par_chunks_mut(kd).for_each(|r| ops::rms_norm(r, w, eps));
            }
            if let Some(w) = &l.k_norm {
                k.par_chunks_mut(kd).for_each(|r| ops::rms_norm(r, w, eps));
            }
            let (base, fscale) = hp.rope_for_layer(il);
            let n_rot = hp.n_rot;
            let kind = hp.rope_kind;
            let rope = |buf: &mut [f32], heads: usize| {
                buf.par_chunks_mut(heads * kd).enumerate().for_each_init(
                    Vec::new,
                    |cs, (t, row)| {
                        ops::rope_cache(p0 + t, n_rot, base, fscale, cs);
                        for head in row.chunks_exact_mut(kd) {
                            match kind {
                                RopeKind::Norm => ops::rope_norm(&mut head[..n_rot], cs),
                                RopeKind::Neox => ops::rope_neox(&mut head[..n_rot], cs),
                            }
                        }
                    },
                );
            };
            rope(&mut q, nh);
            rope(&mut k, nkv);
            let kw = nkv * kd;
            let vw = nkv * vd;
            cache.k[il][p0 * kw..(p0 + n) * kw].copy_from_slice(&k);
            cache.v[il][p0 * vw..(p0 + n) * vw].copy_from_slice(&v);
            let kc = &cache.k[il];
            let vc = &cache.v[il];
            let group = nh / nkv;
            let scale = hp.attn_scale;
            let n_swa = if hp.swa_layers[il] { hp.n_swa } else { 0 };
            let mut attn = vec![0.0f32; n * nh * vd];
            attn.par_chunks_mut(vd).enumerate().for_each_init(
                Vec::new,
                |scores: &mut Vec<f32>, (idx, o)| {
                    let t = idx / nh;
                    let hh = idx % nh;
                    let g = hh / group;
                    let pos = p0 + t;
                    let qh = &q[(t * nh + hh) * kd..(t * nh + hh + 1) * kd];
                    // Keys at j <= pos, minus those a window hides
                    // (llama.cpp: hidden iff pos - j >= n_swa).
                    let j0 = if n_swa > 0 {
                        (pos + 1).saturating_sub(n_swa)
                    } else {
                        0
                    };
                    scores.clear();
                    let mut mx = f32::NEG_INFINITY;
                    for j in j0..=pos {
                        let kh = &kc[j * kw + g * kd..j * kw + (g + 1) * kd];
                        let s = dot(qh, kh) * scale;
                        mx = mx.max(s);
                        scores.push(s);
                    }
                    let mut sum = 0.0f32;
                    for s in scores.iter_mut() {
                        *s = (*s - mx).exp();
                        sum += *s;
                    }
                    let inv = 1.0 / sum;
                    o.iter_mut().for_each(|v| *v = 0.0);
                    for (jj, &p) in scores.iter().enumerate() {
                        let j = j0 + jj;
                        let vh = &vc[j * vw + g * vd..j * vw + (g + 1) * vd];
                        for (ov, &vv) in o.iter_mut().zip(vh) {
                            *ov += p * vv;
                        }
                    }
                    o.iter_mut().for_each(|v| *v *= inv);
                },
            );
            hooks.linear_input(il, &l.wo.name, &attn, n, nh * vd);
            let acts = self.quantize(&l.wo, &attn)?;
            let mut o = self.apply(&l.wo, &acts)?;
            add_lora(&l.wo, &attn, &mut o);
            add_bias(&mut o, l.bo.as_deref());
            if let Some(w) = &l.post_attn_norm {
                o.par_chunks_mut(d).for_each(|r| ops::rms_norm(r, w, eps));
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            // Feed-forward.
            let mut h = x.clone();
            h.par_chunks_mut(d)
                .for_each(|r| ops::rms_norm(r, &l.ffn_norm, eps));
            for lin in [&l.gate, &l.up] {
                hooks.linear_input(il, &lin.name, &h, n, d);
            }
            let mut gu = self.apply_group(&[&l.gate, &l.up], &h)?;
            let mut up = gu.pop().expect("two outputs");
            let mut gate = gu.pop().expect("two outputs");
            add_bias(&mut gate, l.b_gate.as_deref());
            add_bias(&mut up, l.b_up.as_deref());
            let gemma = hp.arch == Arch::Gemma3;
            gate.par_iter_mut().zip(up.par_iter()).for_each(|(g, &u)| {
                *g = if gemma {
                    ops::gelu_ggml(*g) * u
                } else {
                    ops::silu(*g) * u
                };
            });
            let ff = l.down.n_in;
            hooks.linear_input(il, &l.down.name, &gate, n, ff);
            let acts = self.quantize(&l.down, &gate)?;
            let mut dn = self.apply(&l.down, &acts)?;
            add_lora(&l.down, &gate, &mut dn);
            add_bias(&mut dn, l.b_down.as_deref());
            if let Some(w) = &l.post_ffn_norm {
                dn.par_chunks_mut(d).for_each(|r| ops::rms_norm(r, w, eps));
            }
            x.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
        }
        cache.len = p0 + n;

        x.par_chunks_mut(d)
            .for_each(|r| ops::rms_norm(r, &self.output_norm, eps));
        hooks.final_hidden(&x, n, d);
        let from = match want {
            Logits::None => return Ok(Vec::new()),
            Logits::Last => n - 1,
            Logits::From(i) => i.min(n),
            Logits::All => 0,
        };
        if from >= n {
            return Ok(Vec::new());
        }
        let acts = self.quantize(&self.output, &x[from * d..])?;
        let mut out = self.apply(&self.output, &acts)?;
        add_lora(&self.output, &x[from * d..], &mut out);
        if let Some(c) = hp.final_logit_softcap.filter(|&c| c > 0.0) {
            out.par_iter_mut().for_each(|v| *v = (*v / c).tanh() * c);
        }
        Ok(out)
    }
}

/// Adds every adapter of `lin` to its products `out` (`n_tok x n_out`) of
/// the f32 inputs `x` (`n_tok x n_in`).
fn add_lora(lin: &Linear, x: &[f32], out: &mut [f32]) {
    for d in &lin.lora {
        d.add_to(x, lin.n_in, out, lin.n_out);
    }
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(v, &bb)| *v += bb);
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn s<T: Send + Sync>() {}
    s::<Model>();
}
