//! LoRA adapters in llama.cpp's adapter GGUF, applied at run time.
//!
//! The layout is llama.cpp's (`convert_lora_to_gguf.py` writes it,
//! `src/llama-adapter.cpp` reads it):
//! - metadata `general.architecture` (the base model's; a mismatch is
//!   refused), `general.type = "adapter"`, `adapter.type = "lora"`,
//!   `adapter.lora.alpha` (f32, one value per file; 0 when absent);
//! - per adapted matrix `<name>` (the base tensor's name, e.g.
//!   `blk.0.attn_q.weight`): `<name>.lora_a` with ggml dims `[n_in, r]`
//!   (row-major `A`, `r x n_in`) and `<name>.lora_b` with dims `[r, n_out]`
//!   (row-major `B`, `n_out x r`); `*_norm.weight` tensors are skipped and
//!   other suffixes refused, as llama.cpp does;
//! - the adapted product is `W x + s * B (A x)` with
//!   `s = scale * alpha / r`, or `scale` when `alpha` is 0
//!   (`llama_adapter_lora_weight::get_scale`), `scale` being the user's
//!   (`--lora` is 1, `--lora-scaled FNAME:S` is `S`); several adapters on
//!   one matrix add up.
//!
//! Factors of any registered type (F32, F16, BF16, Q8_0 from llama.cpp's
//! converter) are decoded to f32 once, on load.

use crate::error::{Error, Result};
use gguftool_gguf::value::{Metadata, Value};
use gguftool_gguf::GgufFile;
use std::collections::HashMap;
use std::path::Path;

/// One adapter read from a file: `A` (`rank x n_in`) and `B`
/// (`n_out x rank`), row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTensors {
    /// The base matrix's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Rank `r`.
    pub rank: usize,
    /// Input width (`A`'s row length).
    pub n_in: usize,
    /// Output width (`B`'s rows).
    pub n_out: usize,
    /// `A`, `rank * n_in` values.
    pub a: Vec<f32>,
    /// `B`, `n_out * rank` values.
    pub b: Vec<f32>,
}

/// A LoRA GGUF's content.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFile {
    /// `general.architecture`.
    pub arch: String,
    /// `adapter.lora.alpha` (0 when absent, as llama.cpp reads it).
    pub alpha: f32,
    /// The adapters, in file order of their first factor.
    pub adapters: Vec<LoraTensors>,
}

impl LoraFile {
    /// The multiplier of `B (A x)` for an adapter of rank `rank` at user
    /// scale `scale` (llama.cpp's `get_scale`).
    pub fn scale_for(&self, rank: usize, scale: f32) -> f32 {
        if self.alpha != 0.0 {
            scale * self.alpha / rank as f32
        } else {
            scale
        }
    }
}

fn str_key<'a>(md: &'a Metadata, key: &str) -> Option<&'a str> {
    md.get(key).and_then(Value::as_str)
}

/// Reads a llama.cpp LoRA GGUF (see the module documentation), decoding
/// every factor to f32.
///
/// # Errors
/// [`Error::Gguf`] for a malformed container; [`Error::Adapter`] naming the
/// file and the key or tensor for `general.type` other than `adapter`,
/// `adapter.type` other than `lora`, a non-f32 `adapter.lora.alpha`, a
/// tensor with an unexpected suffix, an unpaired factor, factors that are
/// not 2-D, of rank 0 or whose ranks differ, a non-finite value;
/// [`Error::Kernel`] for a type no
/// registered format decodes.
pub fn read_lora_gguf(path: impl AsRef<Path>) -> Result<LoraFile> {
    let path = path.as_ref();
    let file = GgufFile::open(path, &gguftool_quant::registry::TYPES)?;
    let md = &file.header().metadata;
    let bad = |m: String| Err(Error::Adapter(format!("{}: {m}", path.display())));
    match str_key(md, "general.type") {
        Some("adapter") => {}
        Some(gt) => return bad(format!("general.type is {gt:?}, expected \"adapter\"")),
        None => {
            return bad(
                "general.type is missing, expected \"adapter\" (not a LoRA adapter file)".into(),
            )
        }
    }
    let at = str_key(md, "adapter.type").unwrap_or("");
    if at != "lora" {
        return bad(format!("adapter.type is {at:?}, expected \"lora\""));
    }
    let alpha = match md.get("adapter.lora.alpha") {
        None => 0.0,
        Some(Value::F32(a)) if a.is_finite() => *a,
        Some(Value::F32(a)) => return bad(format!("adapter.lora.alpha is {a}")),
        Some(v) => {
            return bad(format!(
                "adapter.lora.alpha is {}, expected f32",
                v.value_type().name()
            ))
        }
    };
    let arch = str_key(md, "general.architecture")
        .unwrap_or("")
        .to_string();

    // Pair the factors by base name, in file order of first appearance.
    let mut order: Vec<String> = Vec::new();
    let mut pairs: HashMap<String, (Option<usize>, Option<usize>)> = HashMap::new();
    for (i, t) in file.header().tensors.iter().enumerate() {
        let (base, is_a) = if let Some(b) = t.name.strip_suffix(".lora_a") {
            (b, true)
        } else if let Some(b) = t.name.strip_suffix(".lora_b") {
            (b, false)
        } else if t.name.ends_with("_norm.weight") {
            continue;
        } else {
            return bad(format!("tensor {:?} has an unexpected suffix", t.name));
        };
        let e = pairs.entry(base.to_string()).or_insert_with(|| {
            order.push(base.to_string());
            (None, None)
        });
        let slot = if is_a { &mut e.0 } else { &mut e.1 };
        if slot.replace(i).is_some() {
            return bad(format!("tensor {:?} appears twice", t.name));
        }
    }
    let mut adapters = Vec::with_capacity(order.len());
    for name in order {
        let (Some(ia), Some(ib)) = pairs[&name] else {
            return bad(format!("LoRA pair for {name:?} is missing one factor"));
        };
        let (ta, tb) = (&file.header().tensors[ia], &file.header().tensors[ib]);
        if ta.dims.len() != 2 || tb.dims.len() != 2 {
            return bad(format!("LoRA factors of {name:?} are not 2-D"));
        }
        let (n_in, r, rb, n_out) = (ta.dims[0], ta.dims[1], tb.dims[0], tb.dims[1]);
        if r != rb || r == 0 {
            return bad(format!(
                "LoRA factors of {name:?}: lora_a {:?} and lora_b {:?} do not chain",
                ta.dims, tb.dims
            ));
        }
        let decode = |i: usize| -> Result<Vec<f32>> {
            let t = &file.header().tensors[i];
            let codec = gguftool_quant::rows::tensor_decoder(&file, i)?;
            let mut out = vec![0f32; t.n_elements as usize];
            codec.decode(file.tensor_data(i), &mut out)?;
            if let Some(k) = out.iter().position(|v| !v.is_finite()) {
                return Err(Error::Adapter(format!(
                    "{}: tensor {:?}: value {k} is not finite",
                    path.display(),
                    t.name
                )));
            }
            Ok(out)
        };
        adapters.push(LoraTensors {
            name,
            rank: r as usize,
            n_in: n_in as usize,
            n_out: n_out as usize,
            a: decode(ia)?,
            b: decode(ib)?,
        });
    }
    Ok(LoraFile {
        arch,
        alpha,
        adapters,
    })
}

/// One adapter attached to a matrix: `out += scale * B (A x)`.
#[derive(Debug, Clone)]
pub(crate) struct LoraDelta {
    pub(crate) rank: usize,
    pub(crate) a: Vec<f32>,
    pub(crate) b: Vec<f32>,
    pub(crate) scale: f32,
}

impl LoraDelta {
    /// Adds `scale * B (A x_t)` to `out_t` for every row `x_t` of `x`
    /// (`n_tok x n_in`) and `out_t` of `out` (`n_tok x n_out`).
    pub(crate) fn add_to(&self, x: &[f32], n_in: usize, out: &mut [f32], n_out: usize) {
        use rayon::prelude::*;
        out.par_chunks_mut(n_out)
            .zip(x.par_chunks(n_in))
            .for_each(|(o, xt)| {
                let u: Vec<f32> = self
                    .a
                    .chunks_exact(n_in)
                    .map(|ar| ar.iter().zip(xt).map(|(a, b)| a * b).sum::<f32>() * self.scale)
                    .collect();
                for (oi, br) in o.iter_mut().zip(self.b.chunks_exact(self.rank)) {
                    *oi += br.iter().zip(&u).map(|(b, u)| b * u).sum::<f32>();
                }
            });
    }
}
