//! Hyperparameters read from GGUF metadata with llama.cpp's keys and
//! defaults (`llama-model.cpp`, `load_hparams`).

use crate::error::{Error, Result};
use gguftool_gguf::{Array, Metadata, Value};

/// The architectures this runtime runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama` (Llama, SmolLM2, Mistral shapes).
    Llama,
    /// `gemma3`.
    Gemma3,
}

/// Names accepted in `general.architecture`.
pub const SUPPORTED: &[&str] = &["llama", "gemma3"];

impl Arch {
    /// Parses `general.architecture`.
    ///
    /// # Errors
    /// [`Error::UnknownArch`] naming the value and the supported list.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "llama" => Ok(Arch::Llama),
            "gemma3" => Ok(Arch::Gemma3),
            other => Err(Error::UnknownArch {
                arch: other.to_string(),
                supported: SUPPORTED.join(", "),
            }),
        }
    }

    /// The key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// RoPE pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    /// Adjacent pairs (x[2i], x[2i+1]) (`LLAMA_ROPE_TYPE_NORM`).
    Norm,
    /// Halves (x[i], x[i+n_rot/2]) (`LLAMA_ROPE_TYPE_NEOX`).
    Neox,
}

/// The hyperparameters of a model.
#[derive(Debug, Clone)]
pub struct Hparams {
    /// Architecture.
    pub arch: Arch,
    /// `context_length` (training context).
    pub n_ctx_train: usize,
    /// `embedding_length`.
    pub n_embd: usize,
    /// `block_count`.
    pub n_layer: usize,
    /// `feed_forward_length`, per layer.
    pub n_ff: Vec<usize>,
    /// `attention.head_count`, per layer.
    pub n_head: Vec<usize>,
    /// `attention.head_count_kv` (default: head_count), per layer.
    pub n_head_kv: Vec<usize>,
    /// `attention.key_length` (default n_embd/n_head).
    pub head_dim_k: usize,
    /// `attention.value_length` (default n_embd/n_head).
    pub head_dim_v: usize,
    /// `rope.dimension_count` (default head_dim_k).
    pub n_rot: usize,
    /// RoPE pairing of the architecture.
    pub rope_kind: RopeKind,
    /// `rope.freq_base` (default 10000).
    pub rope_freq_base: f32,
    /// 1/`rope.scaling.factor` (or 1/`rope.scale_linear`), default 1.
    pub rope_freq_scale: f32,
    /// `rope.freq_base_swa` (default 10000) for sliding-window layers.
    pub rope_freq_base_swa: f32,
    /// Frequency scale of sliding-window layers (1).
    pub rope_freq_scale_swa: f32,
    /// `attention.layer_norm_rms_epsilon`.
    pub rms_eps: f32,
    /// `attention.sliding_window` (0: none).
    pub n_swa: usize,
    /// Per layer: sliding-window attention.
    pub swa_layers: Vec<bool>,
    /// Scale applied to scores (kq_scale times Gemma's attention scale).
    pub attn_scale: f32,
    /// `final_logit_softcapping` (gemma3 only; None when absent).
    pub final_logit_softcap: Option<f32>,
    /// Vocabulary size.
    pub n_vocab: usize,
}

fn get<'a>(md: &'a Metadata, key: &str) -> Option<&'a Value> {
    md.get(key)
}

fn as_f32(key: &str, v: &Value) -> Result<f32> {
    Ok(match *v {
        Value::F32(x) => x,
        Value::F64(x) => x as f32,
        _ => match v.as_int() {
            Some(i) => i as f32,
            None => {
                return Err(Error::BadKey {
                    key: key.into(),
                    msg: format!("expected a number, found {:?}", v.value_type()),
                })
            }
        },
    })
}

fn as_usize(key: &str, v: &Value) -> Result<usize> {
    v.as_int()
        .and_then(|i| usize::try_from(i).ok())
        .ok_or_else(|| Error::BadKey {
            key: key.into(),
            msg: format!("expected a non-negative integer, found {v:?}"),
        })
}

fn req_usize(md: &Metadata, key: &str) -> Result<usize> {
    let v = get(md, key).ok_or_else(|| Error::MissingKey(key.into()))?;
    as_usize(key, v)
}

fn opt_usize(md: &Metadata, key: &str) -> Result<Option<usize>> {
    get(md, key).map(|v| as_usize(key, v)).transpose()
}

fn opt_f32(md: &Metadata, key: &str) -> Result<Option<f32>> {
    get(md, key).map(|v| as_f32(key, v)).transpose()
}

/// A scalar or a per-layer array (llama.cpp's `get_key_or_arr`).
fn key_or_arr(md: &Metadata, key: &str, n_layer: usize) -> Result<Option<Vec<usize>>> {
    let Some(v) = get(md, key) else {
        return Ok(None);
    };
    if let Some(a) = v.as_array() {
        if a.len() != n_layer {
            return Err(Error::BadKey {
                key: key.into(),
                msg: format!("array of {} values for {n_layer} layers", a.len()),
            });
        }
        let mut out = Vec::with_capacity(n_layer);
        for i in 0..a.len() {
            let e = a.get(i).expect("index in range");
            out.push(as_usize(key, &e)?);
        }
        return Ok(Some(out));
    }
    Ok(Some(vec![as_usize(key, v)?; n_layer]))
}

impl Hparams {
    /// Reads the hyperparameters. `n_vocab_tensor` is the row count of
    /// `token_embd.weight`, used when the file has no token list.
    ///
    /// # Errors
    /// Unknown architecture, missing required keys, unusable values.
    pub fn from_metadata(md: &Metadata, n_vocab_tensor: Option<usize>) -> Result<Self> {
        let arch_s = get(md, "general.architecture")
            .ok_or_else(|| Error::MissingKey("general.architecture".into()))?
            .as_str()
            .ok_or_else(|| Error::BadKey {
                key: "general.architecture".into(),
                msg: "not a string".into(),
            })?;
        let arch = Arch::parse(arch_s)?;
        let a = arch.name();
        let k = |s: &str| format!("{a}.{s}");

        let n_ctx_train = req_usize(md, &k("context_length"))?;
        let n_embd = req_usize(md, &k("embedding_length"))?;
        let n_layer = req_usize(md, &k("block_count"))?;
        if n_layer == 0 || n_layer > 512 {
            return Err(Error::BadKey {
                key: k("block_count"),
                msg: format!("{n_layer} layers (llama.cpp allows 1..=512)"),
            });
        }
        let n_ff = key_or_arr(md, &k("feed_forward_length"), n_layer)?
            .ok_or_else(|| Error::MissingKey(k("feed_forward_length")))?;
        let n_head = key_or_arr(md, &k("attention.head_count"), n_layer)?
            .ok_or_else(|| Error::MissingKey(k("attention.head_count")))?;
        let n_head_kv =
            key_or_arr(md, &k("attention.head_count_kv"), n_layer)?.unwrap_or(n_head.clone());
        for il in 0..n_layer {
            if n_head[il] == 0 || n_head_kv[il] == 0 || !n_head[il].is_multiple_of(n_head_kv[il]) {
                return Err(Error::BadKey {
                    key: k("attention.head_count_kv"),
                    msg: format!(
                        "layer {il}: {} heads over {} KV heads",
                        n_head[il], n_head_kv[il]
                    ),
                });
            }
        }
        let h0 = n_head[0];
        let head_dim_k = opt_usize(md, &k("attention.key_length"))?.unwrap_or(n_embd / h0);
        let head_dim_v = opt_usize(md, &k("attention.value_length"))?.unwrap_or(n_embd / h0);
        let n_rot = opt_usize(md, &k("rope.dimension_count"))?.unwrap_or(head_dim_k);
        if arch == Arch::Llama && n_rot != head_dim_k {
            return Err(Error::BadKey {
                key: k("rope.dimension_count"),
                msg: format!("invalid n_rot {n_rot}, expected {head_dim_k}"),
            });
        }
        if n_rot > head_dim_k || !n_rot.is_multiple_of(2) {
            return Err(Error::BadKey {
                key: k("rope.dimension_count"),
                msg: format!("{n_rot} for heads of {head_dim_k}"),
            });
        }
        for key in ["attention.key_length_swa", "attention.value_length_swa"] {
            if let Some(v) = opt_usize(md, &k(key))? {
                let want = if key.contains("key") {
                    head_dim_k
                } else {
                    head_dim_v
                };
                if v != want {
                    return Err(Error::Unsupported(format!(
                        "{} = {v} differs from the full-attention head size {want}",
                        k(key)
                    )));
                }
            }
        }
        if let Some(v) = opt_usize(md, &k("rope.dimension_count_swa"))? {
            if v != n_rot {
                return Err(Error::Unsupported(format!(
                    "{} = {v} differs from rope.dimension_count {n_rot}",
                    k("rope.dimension_count_swa")
                )));
            }
        }
        let rope_freq_base = opt_f32(md, &k("rope.freq_base"))?.unwrap_or(10000.0);
        let scaling = match get(md, &k("rope.scaling.type")) {
            None => "linear".to_string(),
            Some(v) => v
                .as_str()
                .ok_or_else(|| Error::BadKey {
                    key: k("rope.scaling.type"),
                    msg: "not a string".into(),
                })?
                .to_string(),
        };
        let factor = match opt_f32(md, &k("rope.scaling.factor"))? {
            Some(f) => f,
            None => opt_f32(md, &k("rope.scale_linear"))?.unwrap_or(0.0),
        };
        let rope_freq_scale = if factor == 0.0 { 1.0 } else { 1.0 / factor };
        match scaling.as_str() {
            "none" | "linear" => {}
            other => {
                if rope_freq_scale != 1.0 {
                    return Err(Error::Unsupported(format!(
                        "{} = {other} (only none and linear are implemented)",
                        k("rope.scaling.type")
                    )));
                }
            }
        }
        let rms_eps = opt_f32(md, &k("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| Error::MissingKey(k("attention.layer_norm_rms_epsilon")))?;

        let mut n_swa = 0;
        let mut swa_layers = vec![false; n_layer];
        let mut rope_freq_base_swa = 10000.0;
        let mut final_logit_softcap = None;
        let rope_kind;
        let attn_scale;
        match arch {
            Arch::Llama => {
                rope_kind = RopeKind::Norm;
                attn_scale = 1.0 / (head_dim_k as f32).sqrt();
            }
            Arch::Gemma3 => {
                rope_kind = RopeKind::Neox;
                n_swa = opt_usize(md, &k("attention.sliding_window"))?.unwrap_or(0);
                rope_freq_base_swa = opt_f32(md, &k("rope.freq_base_swa"))?.unwrap_or(10000.0);
                match get(md, &k("attention.sliding_window_pattern")) {
                    Some(Value::Array(Array::Bool(b))) => {
                        if b.len() != n_layer {
                            return Err(Error::BadKey {
                                key: k("attention.sliding_window_pattern"),
                                msg: format!("{} values for {n_layer} layers", b.len()),
                            });
                        }
                        swa_layers.clone_from(b);
                    }
                    Some(v) => {
                        let p = as_usize(&k("attention.sliding_window_pattern"), v)?;
                        set_swa_period(&mut swa_layers, p);
                    }
                    None => set_swa_period(&mut swa_layers, 6),
                }
                if n_swa == 0 {
                    swa_layers.iter_mut().for_each(|s| *s = false);
                }
                final_logit_softcap = opt_f32(md, &k("final_logit_softcapping"))?;
                // gemma3.cpp: 1/sqrt(head_dim), except the 27B (62 layers).
                attn_scale = if n_layer == 62 {
                    1.0 / ((n_embd / h0) as f32).sqrt()
                } else {
                    1.0 / (head_dim_k as f32).sqrt()
                };
            }
        }

        let n_vocab = match get(md, "tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(t) => t.len(),
            None => match opt_usize(md, &k("vocab_size"))? {
                Some(n) => n,
                None => n_vocab_tensor.ok_or_else(|| Error::MissingKey(k("vocab_size")))?,
            },
        };

        Ok(Self {
            arch,
            n_ctx_train,
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            n_rot,
            rope_kind,
            rope_freq_base,
            rope_freq_scale,
            rope_freq_base_swa,
            rope_freq_scale_swa: 1.0,
            rms_eps,
            n_swa,
            swa_layers,
            attn_scale,
            final_logit_softcap,
            n_vocab,
        })
    }

    /// RoPE base and frequency scale of layer `il`.
    pub fn rope_for_layer(&self, il: usize) -> (f32, f32) {
        if self.swa_layers[il] {
            (self.rope_freq_base_swa, self.rope_freq_scale_swa)
        } else {
            (self.rope_freq_base, self.rope_freq_scale)
        }
    }
}

/// llama.cpp's `set_swa_pattern(period)`: layer il is SWA iff
/// `period == 0 || il % period < period - 1`.
fn set_swa_period(swa: &mut [bool], period: usize) {
    for (il, s) in swa.iter_mut().enumerate() {
        *s = period == 0 || il % period < period - 1;
    }
}
