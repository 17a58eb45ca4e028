//! LoRA-QAT: rank-`r` adapters (Hu et al. 2021, "LoRA: Low-Rank
//! Adaptation of Large Language Models", arXiv 2106.09685) on chosen
//! matrices of a [`CandleModel`] whose base stays frozen: fake-quantized
//! (after [`crate::blockwise`] or [`crate::candle_model::QLinear::quantize`])
//! or already quantized in the file (the candle model decodes it to f32).
//! The adapters are trained by [`crate::e2e::distill`] (`learn_lora`), then
//! written as a llama.cpp LoRA GGUF ([`crate::lora_gguf`]) or merged into
//! the base and re-encoded ([`merge_lora`]).
//!
//! Each adapted layer computes `y = x W^T + (alpha / r) * (x A^T) B^T`
//! ([`LoraAdapter`]) with `A` `[r, n_in]` initialised uniform in
//! `+-1/sqrt(n_in)` (PEFT's `kaiming_uniform_(a = sqrt(5))`) and `B`
//! `[n_out, r]` zero, so an untrained adapter leaves the model unchanged.
//!
//! `QUALITY.md` 3b rates LoRA-QAT the worst value on this hardware (a few
//! hundred thousand tokens; merging into 2-bit weights re-quantizes and
//! loses most of the gain); it is here for completeness and for higher
//! bit widths.

use crate::blockwise::ExportedTensor;
pub use crate::candle_model::LoraAdapter;
use crate::candle_model::{CandleModel, QLinear, BLOCK_MATRICES};
use crate::candle_op::host_f32;
use crate::engine_error::{EngineError, EngineResult};
use candle_core::Tensor;
use gguftool_quant::format::Format;
use gguftool_quant::hadamard::SplitMix64;

/// Which matrices get adapters, and their size.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` (>= 1).
    pub rank: usize,
    /// `alpha` (the update is scaled by `alpha / r`; finite, != 0).
    pub alpha: f32,
    /// Name patterns: a matrix is adapted when a pattern matches its GGUF
    /// name without `.weight` (`blk.3.attn_q`) or its role (`attn_q`);
    /// `*` matches any run of characters (`ffn_*`, `blk.1.*`, `*`).
    pub targets: Vec<String>,
    /// Seed of `A`'s initialisation.
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: BLOCK_MATRICES.iter().map(|s| s.to_string()).collect(),
            seed: 0x10a,
        }
    }
}

/// Whether glob `pat` (`*` = any run, possibly empty) matches all of `s`.
pub fn glob_match(pat: &str, s: &str) -> bool {
    let (p, s) = (pat.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = si;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether `cfg`'s patterns select the matrix `name` (a GGUF tensor name
/// `blk.N.<role>.weight`).
pub fn is_target(cfg: &LoraConfig, name: &str) -> bool {
    let stem = name.strip_suffix(".weight").unwrap_or(name);
    let role = stem.splitn(3, '.').nth(2).unwrap_or(stem);
    cfg.targets
        .iter()
        .any(|p| glob_match(p, stem) || glob_match(p, role))
}

/// A fresh adapter for `linear` (`A` uniform, `B` zero; trainable).
///
/// # Errors
/// A rank of 0, a non-finite or zero `alpha`, candle errors.
pub fn new_adapter(
    linear: &QLinear,
    rank: usize,
    alpha: f32,
    seed: u64,
) -> EngineResult<LoraAdapter> {
    if rank == 0 || !alpha.is_finite() || alpha == 0.0 {
        return Err(EngineError::BadInput(format!(
            "LoRA rank {rank}, alpha {alpha}: rank must be >= 1 and alpha finite and non-zero"
        )));
    }
    let (n_out, n_in) = linear.weight().var().as_tensor().dims2()?;
    let dev = linear.weight().var().device().clone();
    let bound = 1.0 / (n_in as f64).sqrt();
    let mut rng = SplitMix64::new(seed);
    let a: Vec<f32> = (0..rank * n_in)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            ((2.0 * u - 1.0) * bound) as f32
        })
        .collect();
    let a = Tensor::from_vec(a, (rank, n_in), &dev)?;
    let b = Tensor::zeros((n_out, rank), candle_core::DType::F32, &dev)?;
    LoraAdapter::new(linear.name(), a, b, alpha, true)
}

/// Attaches a fresh adapter ([`new_adapter`]) to every block matrix of
/// `model` that `cfg` selects (replacing any adapter there); returns their
/// names in model order. Each matrix's `A` has its own seed derived from
/// `cfg.seed`.
///
/// # Errors
/// No matrix selected, a rank of 0, a bad `alpha`, candle errors.
pub fn attach_lora(model: &mut CandleModel, cfg: &LoraConfig) -> EngineResult<Vec<String>> {
    let mut names = Vec::new();
    let mut k = 0u64;
    for b in model.blocks_mut() {
        for l in b.linears_mut() {
            k += 1;
            if !is_target(cfg, l.name()) {
                continue;
            }
            let seed = cfg.seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let ad = new_adapter(l, cfg.rank, cfg.alpha, seed)?;
            l.attach_lora(ad)?;
            names.push(l.name().to_string());
        }
    }
    if names.is_empty() {
        return Err(EngineError::BadInput(format!(
            "no block matrix matches the LoRA targets {:?}",
            cfg.targets
        )));
    }
    Ok(names)
}

/// The matrices of `model` that carry an adapter, in model order.
pub fn adapted(model: &CandleModel) -> Vec<&QLinear> {
    model
        .blocks()
        .iter()
        .flat_map(|b| b.linears().iter())
        .filter(|l| l.lora().is_some())
        .collect()
}

/// The merged weights of `linear`: its effective (fake-quantized when
/// quantized) weights plus its adapter's `scale * B A`, `[n_out, n_in]`
/// f32 (the effective weights alone without an adapter).
///
/// # Errors
/// candle errors.
pub fn merged_weight(linear: &QLinear) -> EngineResult<Tensor> {
    let w = linear.effective_weight()?.detach();
    Ok(match linear.lora() {
        Some(l) => (w + l.delta_weight()?.detach())?,
        None => w,
    })
}

/// GGML's F32 type id.
const GGML_F32: u32 = 0;

/// Merges every adapter of `model` into its matrix ([`merged_weight`]) and
/// encodes the result, in model order:
/// - `encode = None`: a fake-quantized matrix with its own format at its
///   trained scales (the format's `DifferentiableQuantizer::export`, the
///   same grid the training saw); a full-precision one as F32;
/// - `encode = Some(f)`: every merged matrix with `f`'s encoder (scales
///   refit to the merged weights, no importance).
///
/// # Errors
/// `f` without an encoder or rows it cannot hold, candle errors.
pub fn merge_lora(
    model: &CandleModel,
    encode: Option<&'static dyn Format>,
) -> EngineResult<Vec<ExportedTensor>> {
    merge_lora_each(model, &|_| encode)
}

/// [`merge_lora`] with the encoder chosen per matrix: `encode(linear)` as
/// `merge_lora`'s `encode` for that matrix (e.g. the type the matrix has in
/// the quantized file the adapters were trained on).
///
/// # Errors
/// As [`merge_lora`].
pub fn merge_lora_each(
    model: &CandleModel,
    encode: &dyn Fn(&QLinear) -> Option<&'static dyn Format>,
) -> EngineResult<Vec<ExportedTensor>> {
    let mut out = Vec::new();
    for l in adapted(model) {
        let merged = merged_weight(l)?;
        let (type_id, bytes) = match (encode(l), l.quant()) {
            (None, Some((fq, s))) => (
                fq.format().type_id(),
                fq.export(&merged, s.var().as_tensor())?,
            ),
            (None, None) => (
                GGML_F32,
                host_f32(&merged)?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            (Some(f), _) => {
                let (_, n_in) = merged.dims2()?;
                if !gguftool_quant::rows::fits(f, n_in as u64) || f.row_transform().is_some() {
                    return Err(EngineError::Unsupported(format!(
                        "{} cannot encode rows of {n_in} here",
                        f.name()
                    )));
                }
                let v = host_f32(&merged)?;
                let mut dst = vec![0u8; v.len() / f.block_size() * f.type_size()];
                gguftool_quant::format::quantize(f, &v, None, &mut dst)?;
                (f.type_id(), dst)
            }
        };
        out.push(ExportedTensor {
            name: l.name().to_string(),
            type_id,
            bytes,
        });
    }
    Ok(out)
}
