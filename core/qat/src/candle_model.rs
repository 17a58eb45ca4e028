//! The runtime's `llama` and `gemma3` forward written in candle ops, for
//! training: weights dequantized to f32 from a GGUF file (through each
//! tensor's format kernel, original basis), every block matrix optionally
//! wrapped in a format's fake quantization ([`FakeQuant`]) with trainable
//! scales and, optionally, trainable latent weights.
//!
//! The arithmetic follows `core/model` (and so llama.cpp; `RUNTIME.md`):
//! RMSNorm `x / sqrt(mean(x^2) + eps) * w` with the weights as stored
//! (Gemma's converter already added its 1), RoPE with adjacent pairs
//! (`llama`) or halves (`gemma3`, NEOX) from the runtime's own f32 tables,
//! per-layer RoPE bases for sliding-window layers, GQA with a causal mask
//! and Gemma's window (key `j` hidden from query `i` iff `i - j >= n_swa`),
//! QK-norm and post-norms (gemma3), SwiGLU (llama) or GeGLU with ggml's
//! f16-table GELU (gemma3; its backward is the tanh GELU's derivative),
//! the `sqrt(n_embd)` embedding scale (gemma3), tied or separate output
//! head and the optional final logit softcap. Hyperparameters come from
//! the runtime ([`gguftool_model::Hparams`]), weights from a loaded
//! [`Model`] (whose loader has checked every name and shape).
//!
//! Shapes: activations `[batch, seq, n_embd]`, token ids `[batch, seq]`
//! (u32), logits `[batch, seq, n_vocab]`; every sequence starts at
//! position 0.

use crate::candle_op::{host_f32, FakeQuant};
use crate::engine_error::{EngineError, EngineResult};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var, D};
use gguftool_gguf::GgufFile;
use gguftool_model::{Arch, Hparams, Model, RopeKind};
use std::path::Path;

/// `x W^T` for `x` `[.., k]` and a matrix `w` `[n, k]`: the leading
/// dimensions of `x` folded into rows, one 2-D product against the
/// transposed view of `w`, the result `[.., n]`. candle's
/// `broadcast_matmul` would instead copy `w` once per leading index
/// (`broadcast_as(..).contiguous()`), and autograd keeps those copies and
/// their gradients until the backward pass: for a batch of 4 sequences,
/// four copies of every matrix.
///
/// # Errors
/// A last dimension of `x` other than `k`, a `w` that is not 2-D, candle
/// errors.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> EngineResult<Tensor> {
    let dims = x.dims();
    let bad = || {
        EngineError::BadInput(format!(
            "matmul of {dims:?} by the transpose of {:?}",
            w.dims()
        ))
    };
    let (Some(&k), &[n, wk]) = (dims.last(), w.dims()) else {
        return Err(bad());
    };
    if k != wk {
        return Err(bad());
    }
    let rows = dims[..dims.len() - 1].iter().product::<usize>();
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(n);
    Ok(x.reshape((rows, k))?.matmul(&w.t()?)?.reshape(out)?)
}

/// Relative squared error up to which [`QLinear::quantize_decoded`] takes
/// re-derived scales as reproducing a decoded matrix: a scale off by 1 %
/// on every group; the f16 rounding of stored scales is 0.05 %, ternary's
/// absmean re-derived on decoded weights is off by the share of zeros
/// (tens of percent).
pub const REDERIVED_TOLERANCE: f64 = 1e-4;

/// A tensor the engine may train: a candle [`Var`] and whether it is
/// trained (frozen ones enter the graph detached, so no gradient is kept
/// for them).
#[derive(Debug, Clone)]
pub struct Parameter {
    name: String,
    var: Var,
    trainable: bool,
}

impl Parameter {
    pub(crate) fn new(name: String, t: Tensor, trainable: bool) -> EngineResult<Self> {
        Ok(Self {
            name,
            var: Var::from_tensor(&t)?,
            trainable,
        })
    }

    /// The GGUF tensor name (scales: the matrix name plus `.scales`,
    /// which no GGUF file holds).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value as it enters the graph (detached when frozen).
    pub fn tensor(&self) -> Tensor {
        if self.trainable {
            self.var.as_tensor().clone()
        } else {
            self.var.as_tensor().detach()
        }
    }

    /// The variable (for optimizers and gradient lookup).
    pub fn var(&self) -> &Var {
        &self.var
    }

    /// Whether it is trained.
    pub fn trainable(&self) -> bool {
        self.trainable
    }

    /// Marks it trained or frozen.
    pub fn set_trainable(&mut self, t: bool) {
        self.trainable = t;
    }
}

/// A low-rank adapter on one matrix (LoRA, Hu et al. 2021): the layer
/// computes `y = x W^T + scale * (x A^T) B^T` with `A` `[rank, n_in]`,
/// `B` `[n_out, rank]` and `scale = alpha / rank` (`1` when `alpha` is 0),
/// exactly as llama.cpp's `build_lora_mm` applies a LoRA GGUF (at adapter
/// scale 1). Built and attached by [`crate::lora`].
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    a: Parameter,
    b: Parameter,
    alpha: f32,
}

impl LoraAdapter {
    /// An adapter from `a` `[rank, n_in]` and `b` `[n_out, rank]` (f32)
    /// for the matrix `name`, trainable or frozen.
    ///
    /// # Errors
    /// [`EngineError::BadInput`] when the shapes do not chain, the rank is 0,
    /// a tensor is not f32 or `alpha` is not finite.
    pub fn new(
        name: &str,
        a: Tensor,
        b: Tensor,
        alpha: f32,
        trainable: bool,
    ) -> EngineResult<Self> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r == 0 || r != rb {
            return Err(EngineError::BadInput(format!(
                "LoRA {name}: A {:?} and B {:?} do not chain",
                a.dims(),
                b.dims()
            )));
        }
        if a.dtype() != DType::F32 || b.dtype() != DType::F32 || !alpha.is_finite() {
            return Err(EngineError::BadInput(format!(
                "LoRA {name}: f32 factors and a finite alpha required"
            )));
        }
        Ok(Self {
            a: Parameter::new(format!("{name}.lora_a"), a, trainable)?,
            b: Parameter::new(format!("{name}.lora_b"), b, trainable)?,
            alpha,
        })
    }

    /// `A` `[rank, n_in]` (named `<matrix>.lora_a`).
    pub fn a(&self) -> &Parameter {
        &self.a
    }

    /// `B` `[n_out, rank]` (named `<matrix>.lora_b`).
    pub fn b(&self) -> &Parameter {
        &self.b
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.a.var.dims()[0]
    }

    /// `alpha` as given.
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// The multiplier of `B A`: `alpha / rank`, or 1 when `alpha` is 0
    /// (llama.cpp's `get_scale` at adapter scale 1).
    pub fn scale(&self) -> f32 {
        if self.alpha == 0.0 {
            1.0
        } else {
            self.alpha / self.rank() as f32
        }
    }

    /// Trains (or freezes) both factors.
    pub fn set_trainable(&mut self, t: bool) {
        self.a.trainable = t;
        self.b.trainable = t;
    }

    /// `scale * (x A^T) B^T` for `x` `[.., n_in]`.
    ///
    /// # Errors
    /// A last dimension other than `n_in`, candle errors.
    pub fn forward(&self, x: &Tensor) -> EngineResult<Tensor> {
        let xa = matmul_t(x, &self.a.tensor())?;
        Ok((matmul_t(&xa, &self.b.tensor())? * self.scale() as f64)?)
    }

    /// The dense update `scale * B A` `[n_out, n_in]`.
    ///
    /// # Errors
    /// candle errors.
    pub fn delta_weight(&self) -> EngineResult<Tensor> {
        Ok((self.b.tensor().matmul(&self.a.tensor())? * self.scale() as f64)?)
    }
}

/// A weight matrix `[n_out, n_in]` (GGUF rows), with an optional bias, an
/// optional fake quantization and an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct QLinear {
    name: String,
    weight: Parameter,
    bias: Option<Tensor>,
    quant: Option<(FakeQuant, Parameter)>,
    lora: Option<LoraAdapter>,
}

impl QLinear {
    /// The GGUF tensor name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The latent (or full-precision) weights.
    pub fn weight(&self) -> &Parameter {
        &self.weight
    }

    /// The fake quantization and its scales, when quantized.
    pub fn quant(&self) -> Option<(&FakeQuant, &Parameter)> {
        self.quant.as_ref().map(|(f, s)| (f, s))
    }

    /// Wraps the matrix in `fq`'s fake quantization with scales from the
    /// format's `init_scales` (trainable); the latent weights are trained
    /// when `learn_weights`. `importance`: per input column, or `None`.
    ///
    /// # Errors
    /// Rows that do not fit the format's groups or blocks.
    pub fn quantize(
        &mut self,
        fq: FakeQuant,
        importance: Option<&[f32]>,
        learn_weights: bool,
    ) -> EngineResult<()> {
        let s = fq.init_scales(self.weight.var.as_tensor(), importance)?;
        self.quantize_with_scales(fq, s, learn_weights)
    }

    /// [`QLinear::quantize`] for a matrix decoded from a quantized file
    /// whose blocks store `stored` scales ([`FakeQuant::stored_scales`]):
    /// the format's `init_scales` (under `importance`, per input column)
    /// re-derived from the decoded weights when
    /// their fake quantization reproduces the weights (squared error at
    /// most [`REDERIVED_TOLERANCE`] of theirs, or no more than the stored
    /// scales'), else the stored scales. Re-derived scales
    /// are preferred because at the stored ones every decoded weight sits
    /// exactly on a grid level, where the LSQ and EWGS scale gradients
    /// (`round(w/s) - w/s`) vanish and scales-only training cannot move;
    /// the stored ones serve formats whose rule does not reproduce its own
    /// output (ternary's absmean: the mean magnitude of decoded weights is
    /// not their step).
    ///
    /// # Errors
    /// Rows that do not fit the format, `stored` of the wrong shape, candle
    /// errors.
    pub fn quantize_decoded(
        &mut self,
        fq: FakeQuant,
        stored: Option<Tensor>,
        importance: Option<&[f32]>,
        learn_weights: bool,
    ) -> EngineResult<()> {
        let w = self.weight.var.as_tensor();
        let derived = fq.init_scales(w, importance)?;
        let err = |s: &Tensor| -> EngineResult<f64> {
            Ok((fq.apply(w, s)? - w)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64)
        };
        let s = match stored {
            Some(st) => {
                fq.check_shapes(w.dims(), st.dims())?;
                let norm = w.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                let e = err(&derived)?;
                if e <= REDERIVED_TOLERANCE * norm || e <= err(&st)? {
                    derived
                } else {
                    st
                }
            }
            None => derived,
        };
        self.quantize_with_scales(fq, s, learn_weights)
    }

    /// [`QLinear::quantize`] with the given scales (trainable).
    ///
    /// # Errors
    /// Scales whose shape does not fit the matrix and the format.
    pub fn quantize_with_scales(
        &mut self,
        fq: FakeQuant,
        scales: Tensor,
        learn_weights: bool,
    ) -> EngineResult<()> {
        fq.check_shapes(self.weight.var.dims(), scales.dims())?;
        let name = format!("{}.scales", self.name);
        self.quant = Some((fq, Parameter::new(name, scales, true)?));
        self.weight.trainable = learn_weights;
        Ok(())
    }

    /// Trains (or freezes) the scales (when quantized) and the latent
    /// weights (only when quantized: full-precision matrices stay frozen).
    pub fn set_trainable(&mut self, scales: bool, weights: bool) {
        match &mut self.quant {
            Some((_, s)) => {
                s.trainable = scales;
                self.weight.trainable = weights;
            }
            None => self.weight.trainable = false,
        }
    }

    /// The LoRA adapter, when attached.
    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    /// Mutable access to the LoRA adapter (to train or freeze it).
    pub fn lora_mut(&mut self) -> Option<&mut LoraAdapter> {
        self.lora.as_mut()
    }

    /// Attaches `adapter` (replacing any), after checking its shapes
    /// against the matrix.
    ///
    /// # Errors
    /// [`EngineError::BadInput`] when `A` is not `[rank, n_in]` or `B` not
    /// `[n_out, rank]`.
    pub fn attach_lora(&mut self, adapter: LoraAdapter) -> EngineResult<()> {
        let (n_out, n_in) = self.weight.var.dims2()?;
        let (a, b) = (adapter.a.var.dims(), adapter.b.var.dims());
        if a[1] != n_in || b[0] != n_out {
            return Err(EngineError::BadInput(format!(
                "LoRA for {} ([{n_out}, {n_in}]): A {a:?}, B {b:?}",
                self.name
            )));
        }
        self.lora = Some(adapter);
        Ok(())
    }

    /// Removes and returns the LoRA adapter.
    pub fn take_lora(&mut self) -> Option<LoraAdapter> {
        self.lora.take()
    }

    /// [`QLinear::quantize`] from another starting point: `latent`
    /// (`[n_out, n_in]`, e.g. GPTQ-rounded weights decoded) replaces the
    /// latent weights when given, and the initial scales are the format's
    /// `init_scales` of the (new) latent weights under `importance`, or,
    /// when `stored` holds the scales `latent` was decoded with, chosen as
    /// [`QLinear::quantize_decoded`] chooses.
    ///
    /// # Errors
    /// A `latent` of another shape, rows that do not fit the format,
    /// `stored` of the wrong shape.
    pub fn quantize_from(
        &mut self,
        fq: FakeQuant,
        latent: Option<Tensor>,
        stored: Option<Tensor>,
        importance: Option<&[f32]>,
        learn_weights: bool,
    ) -> EngineResult<()> {
        if let Some(w) = latent {
            if w.dims() != self.weight.var.as_tensor().dims() {
                return Err(EngineError::BadInput(format!(
                    "{}: initial weights of shape {:?}, matrix {:?}",
                    self.name,
                    w.dims(),
                    self.weight.var.as_tensor().dims()
                )));
            }
            self.weight = Parameter::new(self.name.clone(), w, learn_weights)?;
        }
        self.quantize_decoded(fq, stored, importance, learn_weights)
    }

    /// Removes the fake quantization (full-precision weights again, frozen).
    pub fn dequantize(&mut self) {
        self.quant = None;
        self.weight.trainable = false;
    }

    /// Freezes the latent weights, the scales (the fake quantization
    /// stays) and the LoRA adapter.
    pub fn freeze(&mut self) {
        self.weight.trainable = false;
        if let Some((_, s)) = &mut self.quant {
            s.trainable = false;
        }
        if let Some(l) = &mut self.lora {
            l.set_trainable(false);
        }
    }

    /// The weights as the forward uses them (fake-quantized when quantized).
    ///
    /// # Errors
    /// candle errors.
    pub fn effective_weight(&self) -> EngineResult<Tensor> {
        match &self.quant {
            None => Ok(self.weight.tensor()),
            Some((fq, s)) => fq.apply(&self.weight.tensor(), &s.tensor()),
        }
    }

    /// `x W^T (+ b) (+ LoRA)` for `x` `[.., n_in]`.
    ///
    /// # Errors
    /// A last dimension other than `n_in`, candle errors.
    pub fn forward(&self, x: &Tensor) -> EngineResult<Tensor> {
        let w = self.effective_weight()?;
        let y = matmul_t(x, &w)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        Ok(match &self.lora {
            Some(l) => (y + l.forward(x)?)?,
            None => y,
        })
    }

    /// The trained matrix encoded with its format (`None` when not
    /// quantized): whole rows of blocks, GGUF tensor-data order.
    ///
    /// # Errors
    /// As [`FakeQuant::export`].
    pub fn export(&self) -> EngineResult<Option<Vec<u8>>> {
        match &self.quant {
            None => Ok(None),
            Some((fq, s)) => fq
                .export(self.weight.var.as_tensor(), s.var.as_tensor())
                .map(Some),
        }
    }

    /// The trainable parameters (scales first, then latent weights, then
    /// the LoRA factors `A`, `B`).
    pub fn parameters(&self) -> Vec<&Parameter> {
        let mut v = Vec::new();
        if let Some((_, s)) = &self.quant {
            if s.trainable {
                v.push(s);
            }
        }
        if self.weight.trainable {
            v.push(&self.weight);
        }
        if let Some(l) = &self.lora {
            v.extend([&l.a, &l.b].into_iter().filter(|p| p.trainable));
        }
        v
    }
}

/// The per-layer constants of a block.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// Architecture (activation and norms differ).
    pub arch: Arch,
    /// Model width.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Key (and query) head size.
    pub head_dim_k: usize,
    /// Value head size.
    pub head_dim_v: usize,
    /// Rotated dimensions per head.
    pub n_rot: usize,
    /// RoPE pairing.
    pub rope_kind: RopeKind,
    /// RoPE base of this layer.
    pub rope_base: f32,
    /// RoPE frequency scale of this layer.
    pub rope_scale: f32,
    /// Sliding window (0: full causal attention).
    pub n_swa: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Score scale.
    pub attn_scale: f32,
}

impl BlockConfig {
    /// The constants of layer `il`.
    ///
    /// # Errors
    /// `il` out of range.
    pub fn from_hparams(hp: &Hparams, il: usize) -> EngineResult<Self> {
        if il >= hp.n_layer {
            return Err(EngineError::BadInput(format!(
                "layer {il} of {}",
                hp.n_layer
            )));
        }
        let (rope_base, rope_scale) = hp.rope_for_layer(il);
        Ok(Self {
            arch: hp.arch,
            n_embd: hp.n_embd,
            n_head: hp.n_head[il],
            n_head_kv: hp.n_head_kv[il],
            head_dim_k: hp.head_dim_k,
            head_dim_v: hp.head_dim_v,
            n_rot: hp.n_rot,
            rope_kind: hp.rope_kind,
            rope_base,
            rope_scale,
            n_swa: if hp.swa_layers[il] { hp.n_swa } else { 0 },
            eps: hp.rms_eps,
            attn_scale: hp.attn_scale,
        })
    }
}

/// One transformer block in candle ops.
#[derive(Debug, Clone)]
pub struct Block {
    /// Constants.
    pub config: BlockConfig,
    attn_norm: Parameter,
    q_norm: Option<Parameter>,
    k_norm: Option<Parameter>,
    post_attn_norm: Option<Parameter>,
    ffn_norm: Parameter,
    post_ffn_norm: Option<Parameter>,
    /// q, k, v, output, gate, up, down.
    linears: [QLinear; 7],
}

/// Names of a block's matrices, in [`Block::linears`] order.
pub const BLOCK_MATRICES: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> EngineResult<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let r = (ms + eps as f64)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&r)?.broadcast_mul(w)?)
}

/// cos and sin tables `[seq, n_rot/2]` from the runtime's RoPE cache.
fn rope_tables(
    seq: usize,
    n_rot: usize,
    base: f32,
    scale: f32,
    dev: &Device,
) -> EngineResult<(Tensor, Tensor)> {
    let half = n_rot / 2;
    let mut cos = Vec::with_capacity(seq * half);
    let mut sin = Vec::with_capacity(seq * half);
    let mut cs = Vec::new();
    for p in 0..seq {
        gguftool_model::ops::rope_cache(p, n_rot, base, scale, &mut cs);
        for &(c, s) in &cs {
            cos.push(c);
            sin.push(s);
        }
    }
    Ok((
        Tensor::from_vec(cos, (seq, half), dev)?,
        Tensor::from_vec(sin, (seq, half), dev)?,
    ))
}

/// Rotates `x` `[b, t, h, hd]` (its first `n_rot` dims per head).
fn rope(
    x: &Tensor,
    kind: RopeKind,
    n_rot: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> EngineResult<Tensor> {
    let (b, t, h, hd) = x.dims4()?;
    let half = n_rot / 2;
    let xr = x.narrow(3, 0, n_rot)?;
    let rotated = match kind {
        RopeKind::Norm => {
            let xr = xr.reshape((b, t, h, half, 2))?;
            let a = xr.narrow(4, 0, 1)?;
            let bb = xr.narrow(4, 1, 1)?;
            let c = cos.reshape((t, 1, half, 1))?;
            let s = sin.reshape((t, 1, half, 1))?;
            let o0 = (a.broadcast_mul(&c)? - bb.broadcast_mul(&s)?)?;
            let o1 = (a.broadcast_mul(&s)? + bb.broadcast_mul(&c)?)?;
            Tensor::cat(&[o0, o1], 4)?.reshape((b, t, h, n_rot))?
        }
        RopeKind::Neox => {
            let a = xr.narrow(3, 0, half)?;
            let bb = xr.narrow(3, half, half)?;
            let c = cos.reshape((t, 1, half))?;
            let s = sin.reshape((t, 1, half))?;
            let o0 = (a.broadcast_mul(&c)? - bb.broadcast_mul(&s)?)?;
            let o1 = (a.broadcast_mul(&s)? + bb.broadcast_mul(&c)?)?;
            Tensor::cat(&[o0, o1], 3)?
        }
    };
    if n_rot == hd {
        Ok(rotated)
    } else {
        Ok(Tensor::cat(&[rotated, x.narrow(3, n_rot, hd - n_rot)?], 3)?)
    }
}

/// The additive mask `[t, t]`: 0 where query `i` sees key `j`, -inf
/// elsewhere (`j > i`, or `i - j >= n_swa` when `n_swa > 0`).
fn attention_mask(t: usize, n_swa: usize, dev: &Device) -> EngineResult<Tensor> {
    let mut m = vec![0f32; t * t];
    for i in 0..t {
        for j in 0..t {
            if j > i || (n_swa > 0 && i - j >= n_swa) {
                m[i * t + j] = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Tensor::from_vec(m, (t, t), dev)?)
}

/// ggml's CPU GELU (f16 table, [`gguftool_model::ops::gelu_ggml`]) forward,
/// the tanh GELU's derivative backward.
struct GgmlGelu;

fn gelu_tanh_grad(x: f32) -> f32 {
    const C: f32 = 0.797_884_6;
    const A: f32 = 0.044715;
    let u = C * x * (1.0 + A * x * x);
    let th = u.tanh();
    0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * C * (1.0 + 3.0 * A * x * x)
}

impl CustomOp1 for GgmlGelu {
    fn name(&self) -> &'static str {
        "gguftool-ggml-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("gelu: f32 only");
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("gelu: contiguous input only");
        };
        let out = v[a..b]
            .iter()
            .map(|&x| gguftool_model::ops::gelu_ggml(x))
            .collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let d: Vec<f32> = xv.into_iter().map(gelu_tanh_grad).collect();
        let d = Tensor::from_vec(d, x.shape(), x.device())?;
        Ok(Some(g.mul(&d)?))
    }
}

fn gelu(x: &Tensor) -> EngineResult<Tensor> {
    let x = x.contiguous()?;
    if x.device().is_cpu() {
        Ok(x.apply_op1(GgmlGelu)?)
    } else {
        let cpu = Device::Cpu;
        Ok(x.to_device(&cpu)?
            .apply_op1(GgmlGelu)?
            .to_device(x.device())?)
    }
}

impl Block {
    /// The matrices: q, k, v, output, gate, up, down ([`BLOCK_MATRICES`]).
    pub fn linears(&self) -> &[QLinear; 7] {
        &self.linears
    }

    /// Mutable access to the matrices (to quantize them).
    pub fn linears_mut(&mut self) -> &mut [QLinear; 7] {
        &mut self.linears
    }

    /// The norm gains (attention, QK, post-attention, FFN, post-FFN; those
    /// the architecture has).
    pub fn norms(&self) -> Vec<&Parameter> {
        [
            Some(&self.attn_norm),
            self.q_norm.as_ref(),
            self.k_norm.as_ref(),
            self.post_attn_norm.as_ref(),
            Some(&self.ffn_norm),
            self.post_ffn_norm.as_ref(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Trains (or freezes) every norm gain.
    pub fn set_norms_trainable(&mut self, t: bool) {
        for p in [
            Some(&mut self.attn_norm),
            self.q_norm.as_mut(),
            self.k_norm.as_mut(),
            self.post_attn_norm.as_mut(),
            Some(&mut self.ffn_norm),
            self.post_ffn_norm.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            p.trainable = t;
        }
    }

    /// Every trainable parameter: quantizer scales, latent weights, norms.
    pub fn parameters(&self) -> Vec<&Parameter> {
        let mut v: Vec<&Parameter> = self.linears.iter().flat_map(|l| l.parameters()).collect();
        v.extend(self.norms().into_iter().filter(|p| p.trainable));
        v
    }

    /// Wraps every matrix in `fq` (see [`QLinear::quantize`]).
    ///
    /// # Errors
    /// A matrix whose rows do not fit the format.
    pub fn quantize(&mut self, fq: FakeQuant, learn_weights: bool) -> EngineResult<()> {
        for l in self.linears.iter_mut() {
            l.quantize(fq, None, learn_weights)?;
        }
        Ok(())
    }

    /// The block's output for `x` `[batch, seq, n_embd]`.
    ///
    /// # Errors
    /// Shapes that do not match, candle errors.
    pub fn forward(&self, x: &Tensor) -> EngineResult<Tensor> {
        let c = &self.config;
        let (b, t, d) = x.dims3()?;
        if d != c.n_embd {
            return Err(EngineError::BadInput(format!(
                "block input of width {d}, model width {}",
                c.n_embd
            )));
        }
        let dev = x.device();
        let [wq, wk, wv, wo, gate, up, down] = &self.linears;
        let (kd, vd, nh, nkv) = (c.head_dim_k, c.head_dim_v, c.n_head, c.n_head_kv);

        let h = rms_norm(x, &self.attn_norm.tensor(), c.eps)?;
        let mut q = wq.forward(&h)?.reshape((b, t, nh, kd))?;
        let mut k = wk.forward(&h)?.reshape((b, t, nkv, kd))?;
        let v = wv.forward(&h)?.reshape((b, t, nkv, vd))?;
        if let Some(w) = &self.q_norm {
            q = rms_norm(&q, &w.tensor(), c.eps)?;
        }
        if let Some(w) = &self.k_norm {
            k = rms_norm(&k, &w.tensor(), c.eps)?;
        }
        let (cos, sin) = rope_tables(t, c.n_rot, c.rope_base, c.rope_scale, dev)?;
        let q = rope(&q, c.rope_kind, c.n_rot, &cos, &sin)?
            .transpose(1, 2)?
            .contiguous()?;
        let k = rope(&k, c.rope_kind, c.n_rot, &cos, &sin)?;
        // GQA: query head hh reads KV head hh / (nh / nkv).
        let group = nh / nkv;
        let expand = |x: Tensor, hd: usize| -> EngineResult<Tensor> {
            let x = x.transpose(1, 2)?; // [b, nkv, t, hd]
            Ok(x.unsqueeze(2)?
                .broadcast_as((b, nkv, group, t, hd))?
                .contiguous()?
                .reshape((b, nh, t, hd))?)
        };
        let k = expand(k, kd)?;
        let v = expand(v, vd)?;
        let scores = (q.matmul(&k.t()?)? * c.attn_scale as f64)?
            .broadcast_add(&attention_mask(t, c.n_swa, dev)?)?;
        let mx = scores.max_keepdim(D::Minus1)?.detach();
        let e = scores.broadcast_sub(&mx)?.exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let attn = p
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, nh * vd))?;
        let mut o = wo.forward(&attn)?;
        if let Some(w) = &self.post_attn_norm {
            o = rms_norm(&o, &w.tensor(), c.eps)?;
        }
        let x = (x + o)?;

        let h = rms_norm(&x, &self.ffn_norm.tensor(), c.eps)?;
        let g = gate.forward(&h)?;
        let u = up.forward(&h)?;
        let act = match c.arch {
            Arch::Gemma3 => gelu(&g)?,
            Arch::Llama => g.silu()?,
        };
        let mut dn = down.forward(&(act * u)?)?;
        if let Some(w) = &self.post_ffn_norm {
            dn = rms_norm(&dn, &w.tensor(), c.eps)?;
        }
        Ok((x + dn)?)
    }
}

/// A whole model in candle ops (see the module documentation).
#[derive(Debug, Clone)]
pub struct CandleModel {
    hp: Hparams,
    device: Device,
    /// `[n_vocab, n_embd]`, frozen.
    token_embd: Tensor,
    /// `[n_vocab, n_embd]`, frozen; `None` when tied to the embedding.
    output: Option<Tensor>,
    output_norm: Parameter,
    blocks: Vec<Block>,
}

/// Decodes tensor `name` to f32 (original basis) as a candle tensor of
/// shape `dims` reversed (GGUF dims are row length first).
fn load(file: &GgufFile, name: &str, dev: &Device) -> EngineResult<Option<Tensor>> {
    let Some(i) = file.header().tensor_index(name) else {
        return Ok(None);
    };
    let t = &file.header().tensors[i];
    let codec = gguftool_quant::rows::tensor_decoder(file, i)?;
    let mut out = vec![0f32; t.n_elements as usize];
    codec.decode(file.tensor_data(i), &mut out)?;
    let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
    Ok(Some(Tensor::from_vec(out, shape, dev)?))
}

fn require(file: &GgufFile, name: &str, dev: &Device) -> EngineResult<Tensor> {
    load(file, name, dev)?.ok_or_else(|| EngineError::BadInput(format!("tensor `{name}` missing")))
}

impl CandleModel {
    /// Loads `path` through the runtime (which checks hyperparameters,
    /// names and shapes) and decodes its weights to f32 on `device`.
    ///
    /// # Errors
    /// As [`Model::open`] and [`CandleModel::from_model`].
    pub fn open(path: impl AsRef<Path>, device: &Device) -> EngineResult<Self> {
        let m = Model::open(path, 1)?;
        Self::from_model(&m, device)
    }

    /// The candle copy of a loaded runtime model: its hyperparameters and
    /// its file's weights decoded to f32, all full precision and frozen.
    ///
    /// # Errors
    /// Tensors the decoder cannot read, candle errors.
    pub fn from_model(model: &Model, device: &Device) -> EngineResult<Self> {
        let hp = model.hparams().clone();
        let f = model.file();
        let dev = device;
        let req = |name: &str| -> EngineResult<Parameter> {
            Parameter::new(name.to_string(), require(f, name, dev)?, false)
        };
        let mut blocks = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let opt = |s: &str| -> EngineResult<Option<Parameter>> {
                load(f, &n(s), dev)?
                    .map(|t| Parameter::new(n(s), t, false))
                    .transpose()
            };
            let lin = |s: &str| -> EngineResult<QLinear> {
                Ok(QLinear {
                    name: n(&format!("{s}.weight")),
                    weight: req(&n(&format!("{s}.weight")))?,
                    bias: load(f, &n(&format!("{s}.bias")), dev)?,
                    quant: None,
                    lora: None,
                })
            };
            let linears = [
                lin("attn_q")?,
                lin("attn_k")?,
                lin("attn_v")?,
                lin("attn_output")?,
                lin("ffn_gate")?,
                lin("ffn_up")?,
                lin("ffn_down")?,
            ];
            let gemma = hp.arch == Arch::Gemma3;
            let g = |s: &str| -> EngineResult<Option<Parameter>> {
                if gemma {
                    opt(s)
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                config: BlockConfig::from_hparams(&hp, il)?,
                attn_norm: req(&n("attn_norm.weight"))?,
                q_norm: g("attn_q_norm.weight")?,
                k_norm: g("attn_k_norm.weight")?,
                post_attn_norm: g("post_attention_norm.weight")?,
                ffn_norm: req(&n("ffn_norm.weight"))?,
                post_ffn_norm: g("post_ffw_norm.weight")?,
                linears,
            });
        }
        Ok(Self {
            token_embd: require(f, "token_embd.weight", dev)?,
            output: load(f, "output.weight", dev)?,
            output_norm: req("output_norm.weight")?,
            blocks,
            device: device.clone(),
            hp,
        })
    }

    /// [`CandleModel::from_model`] on the CPU.
    ///
    /// # Errors
    /// As [`CandleModel::from_model`].
    pub fn from_model_cpu(model: &Model) -> EngineResult<Self> {
        Self::from_model(model, &Device::Cpu)
    }

    /// The hyperparameters (the runtime's).
    pub fn hparams(&self) -> &Hparams {
        &self.hp
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Mutable access to the blocks.
    pub fn blocks_mut(&mut self) -> &mut [Block] {
        &mut self.blocks
    }

    /// The final norm gain.
    pub fn output_norm(&self) -> &Parameter {
        &self.output_norm
    }

    /// Trains (or freezes) the final norm gain.
    pub fn set_output_norm_trainable(&mut self, t: bool) {
        self.output_norm.trainable = t;
    }

    /// The output matrix `[n_vocab, n_embd]` (the embedding when tied).
    pub fn output_weight(&self) -> &Tensor {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// The token embedding `[n_vocab, n_embd]`.
    pub fn token_embd(&self) -> &Tensor {
        &self.token_embd
    }

    /// Whether the output head is the token embedding (no `output.weight`).
    pub fn tied_output(&self) -> bool {
        self.output.is_none()
    }

    /// Replaces the token embedding (frozen; also the output head when
    /// tied), e.g. by its quantized values as a file will hold them.
    ///
    /// # Errors
    /// A tensor that is not f32 `[n_vocab, n_embd]` on the model's device.
    pub fn set_token_embd(&mut self, t: Tensor) -> EngineResult<()> {
        self.check_vocab_matrix("token_embd.weight", &t)?;
        self.token_embd = t;
        Ok(())
    }

    /// Replaces the separate output matrix (frozen), e.g. by its quantized
    /// values as a file will hold them.
    ///
    /// # Errors
    /// A tied model (no separate output matrix: see
    /// [`CandleModel::set_token_embd`]), a tensor that is not f32
    /// `[n_vocab, n_embd]` on the model's device.
    pub fn set_output_weight(&mut self, t: Tensor) -> EngineResult<()> {
        if self.output.is_none() {
            return Err(EngineError::BadInput(
                "the output head is tied to the token embedding".into(),
            ));
        }
        self.check_vocab_matrix("output.weight", &t)?;
        self.output = Some(t);
        Ok(())
    }

    /// [`CandleModel::set_token_embd`] or [`CandleModel::set_output_weight`]
    /// by GGUF name (`token_embd.weight`, `output.weight`) from row-major
    /// values `[n_vocab, n_embd]`.
    ///
    /// # Errors
    /// Another name, values of another count, as the setters.
    pub fn set_vocab_matrix(&mut self, name: &str, values: Vec<f32>) -> EngineResult<()> {
        let (nv, d) = (self.hp.n_vocab, self.hp.n_embd);
        if values.len() != nv * d {
            return Err(EngineError::BadInput(format!(
                "{name}: {} values for [{nv}, {d}]",
                values.len()
            )));
        }
        let t = Tensor::from_vec(values, (nv, d), &self.device)?;
        match name {
            "token_embd.weight" => self.set_token_embd(t),
            "output.weight" => self.set_output_weight(t),
            _ => Err(EngineError::BadInput(format!(
                "{name} is neither token_embd.weight nor output.weight"
            ))),
        }
    }

    fn check_vocab_matrix(&self, name: &str, t: &Tensor) -> EngineResult<()> {
        let want = [self.hp.n_vocab, self.hp.n_embd];
        if t.dims() != want || t.dtype() != DType::F32 || !t.device().same_device(&self.device) {
            return Err(EngineError::BadInput(format!(
                "{name}: {:?} {:?}, expected f32 {want:?} on the model's device",
                t.dtype(),
                t.dims()
            )));
        }
        Ok(())
    }

    /// Token ids `[batch, seq]` (u32) from equal-length sequences.
    ///
    /// # Errors
    /// No sequences, empty or unequal lengths, ids outside the vocabulary.
    pub fn token_tensor(&self, seqs: &[&[u32]]) -> EngineResult<Tensor> {
        let t = seqs.first().map_or(0, |s| s.len());
        if t == 0 || seqs.iter().any(|s| s.len() != t) {
            return Err(EngineError::BadInput(
                "token sequences must be non-empty and of equal length".into(),
            ));
        }
        let mut ids = Vec::with_capacity(seqs.len() * t);
        for s in seqs {
            for &id in *s {
                if id as usize >= self.hp.n_vocab {
                    return Err(EngineError::BadInput(format!(
                        "token id {id} is outside the vocabulary of {}",
                        self.hp.n_vocab
                    )));
                }
                ids.push(id);
            }
        }
        Ok(Tensor::from_vec(ids, (seqs.len(), t), &self.device)?)
    }

    /// The embeddings `[batch, seq, n_embd]` of `tokens` `[batch, seq]`
    /// (scaled by `sqrt(n_embd)` for gemma3).
    ///
    /// # Errors
    /// Not a `[batch, seq]` u32 tensor, ids outside the vocabulary.
    pub fn embed(&self, tokens: &Tensor) -> EngineResult<Tensor> {
        let (b, t) = tokens.dims2()?;
        if tokens.dtype() != DType::U32 {
            return Err(EngineError::BadInput("token ids must be u32".into()));
        }
        let flat = tokens.flatten_all()?;
        if flat
            .to_vec1::<u32>()?
            .iter()
            .any(|&i| i as usize >= self.hp.n_vocab)
        {
            return Err(EngineError::BadInput(format!(
                "token id outside the vocabulary of {}",
                self.hp.n_vocab
            )));
        }
        let x = self
            .token_embd
            .index_select(&flat, 0)?
            .reshape((b, t, self.hp.n_embd))?;
        Ok(match self.hp.arch {
            Arch::Gemma3 => (x * (self.hp.n_embd as f32).sqrt() as f64)?,
            Arch::Llama => x,
        })
    }

    /// Logits `[batch, seq, n_vocab]` of final hidden states `x`
    /// `[batch, seq, n_embd]` (final norm, output head, softcap).
    ///
    /// # Errors
    /// candle errors.
    pub fn head(&self, x: &Tensor) -> EngineResult<Tensor> {
        self.project(&self.final_norm(x)?)
    }

    /// The final RMSNorm of hidden states `x` `[.., n_embd]` (the first
    /// half of [`CandleModel::head`]).
    ///
    /// # Errors
    /// candle errors.
    pub fn final_norm(&self, x: &Tensor) -> EngineResult<Tensor> {
        rms_norm(x, &self.output_norm.tensor(), self.hp.rms_eps)
    }

    /// Logits `[.., n_vocab]` of normalised final hidden states `h`
    /// `[.., n_embd]`: the output matrix and the softcap (the second half
    /// of [`CandleModel::head`]).
    ///
    /// # Errors
    /// candle errors.
    pub fn project(&self, h: &Tensor) -> EngineResult<Tensor> {
        let mut y = matmul_t(h, self.output_weight())?;
        if let Some(c) = self.hp.final_logit_softcap.filter(|&c| c > 0.0) {
            y = ((y / c as f64)?.tanh()? * c as f64)?;
        }
        Ok(y)
    }

    /// Final hidden states `[batch, seq, n_embd]` (before the final norm)
    /// for `tokens` `[batch, seq]` (u32): embedding and every block.
    ///
    /// # Errors
    /// As [`CandleModel::embed`], candle errors.
    pub fn hidden(&self, tokens: &Tensor) -> EngineResult<Tensor> {
        let mut x = self.embed(tokens)?;
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        Ok(x)
    }

    /// Logits `[batch, seq, n_vocab]` for `tokens` `[batch, seq]` (u32).
    ///
    /// # Errors
    /// As [`CandleModel::embed`], candle errors.
    pub fn forward(&self, tokens: &Tensor) -> EngineResult<Tensor> {
        self.head(&self.hidden(tokens)?)
    }

    /// Full-sequence logits of one sequence, row-major `seq x n_vocab`
    /// (the layout of the runtime's `Logits::All`).
    ///
    /// # Errors
    /// As [`CandleModel::token_tensor`] and [`CandleModel::forward`].
    pub fn logits(&self, tokens: &[u32]) -> EngineResult<Vec<f32>> {
        let t = self.token_tensor(&[tokens])?;
        host_f32(&self.forward(&t)?)
    }
}
