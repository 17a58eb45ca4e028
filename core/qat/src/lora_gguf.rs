//! LoRA adapters as a llama.cpp LoRA GGUF: written from a [`CandleModel`]'s
//! adapters, read back, and attached to a model.
//!
//! The layout is llama.cpp's (`convert_lora_to_gguf.py` writes it,
//! `src/llama-adapter.cpp` `llama_adapter_lora_init_impl` reads it, checked
//! against ggml-org/llama.cpp):
//! - metadata `general.architecture` (the base model's, e.g. `llama`;
//!   llama.cpp refuses a mismatch), `general.type = "adapter"`,
//!   `adapter.type = "lora"`, `adapter.lora.alpha` (f32; one value for the
//!   whole file);
//! - per adapted matrix `<name>` (the base tensor's name, e.g.
//!   `blk.0.attn_q.weight`): `<name>.lora_a` with ggml dims
//!   `[n_in, r]` (row-major `A` `[r, n_in]`) and `<name>.lora_b` with dims
//!   `[r, n_out]` (row-major `B` `[n_out, r]`); llama.cpp checks
//!   `base.ne[0] == a.ne[0]`, `base.ne[1] == b.ne[1]`, `a.ne[1] == b.ne[0]`;
//! - llama.cpp computes `W x + s * B (A x)` with
//!   `s = adapter_scale * alpha / r` (`adapter_scale` when `alpha` is 0;
//!   `r = b.ne[0]`), which is [`LoraAdapter`] at adapter scale 1.
//!
//! Tensors are written as F32 (exact). Reading is the runtime's
//! ([`gguftool_model::lora`]), which also decodes F16, BF16 and Q8_0 factors
//! and, like llama.cpp, skips `*_norm.weight` tensors.
//! Output is atomic: a temporary file in the target's directory, renamed on
//! success and removed on failure.
//!
//! The runtime applies a LoRA file ([`gguftool_model::Model::apply_lora`],
//! `gguftool perplexity --lora FILE`) as llama.cpp does (`--lora FILE`), or
//! the adapters are merged ([`crate::lora::merge_lora`]).

use crate::candle_model::{CandleModel, LoraAdapter};
use crate::engine_error::{EngineError, EngineResult};
use crate::lora::adapted;
use candle_core::Tensor;
use gguftool_gguf::value::{Metadata, Value};
use gguftool_gguf::write::{GgufWriter, TensorSpec};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// GGML's F32 type id.
const GGML_F32: u32 = 0;

pub use gguftool_model::lora::{LoraFile, LoraTensors};

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn io(path: &Path, e: std::io::Error) -> EngineError {
    gguftool_gguf::Error::io(path, e).into()
}

/// Writes `model`'s adapters (every matrix with one, in model order) as a
/// llama.cpp LoRA GGUF at `path` (see the module documentation);
/// `name` becomes `general.name` when given. Returns the number of
/// adapters written.
///
/// # Errors
/// No adapter, adapters with different `alpha` (the format has one per
/// file), I/O and container errors (the target is then untouched).
pub fn write_lora_gguf(
    model: &CandleModel,
    path: impl AsRef<Path>,
    name: Option<&str>,
) -> EngineResult<usize> {
    let path = path.as_ref();
    let tmp = temp_path(path);
    let result = (|| -> EngineResult<usize> {
        let f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let (bw, n) = write_lora_gguf_to(model, BufWriter::new(f), name, &Metadata::new())?;
        let f = bw.into_inner().map_err(|e| io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`write_lora_gguf`] into a writer, with `extra` metadata added after the
/// adapter keys (e.g. what the adapters were trained on; a key of `extra`
/// replaces one of the same name). Returns the writer and the number of
/// adapters written.
///
/// # Errors
/// No adapter, adapters with different `alpha` (the format has one per
/// file), writer errors.
pub fn write_lora_gguf_to<W: std::io::Write + std::io::Seek>(
    model: &CandleModel,
    w: W,
    name: Option<&str>,
    extra: &Metadata,
) -> EngineResult<(W, usize)> {
    let lins = adapted(model);
    let Some(first) = lins.first().and_then(|l| l.lora()) else {
        return Err(EngineError::BadInput(
            "the model has no LoRA adapter".into(),
        ));
    };
    let alpha = first.alpha();
    let mut specs = Vec::with_capacity(2 * lins.len());
    let mut data: Vec<Vec<u8>> = Vec::with_capacity(2 * lins.len());
    for l in &lins {
        let ad = l.lora().expect("adapted() lists matrices with an adapter");
        if ad.alpha() != alpha {
            return Err(EngineError::BadInput(format!(
                "LoRA alpha {} on {} differs from {alpha}: a LoRA GGUF has one alpha",
                ad.alpha(),
                l.name()
            )));
        }
        let (n_out, n_in) = l.weight().var().as_tensor().dims2()?;
        let r = ad.rank() as u64;
        for (suffix, t, dims) in [
            ("lora_a", ad.a(), vec![n_in as u64, r]),
            ("lora_b", ad.b(), vec![r, n_out as u64]),
        ] {
            let bytes: Vec<u8> = crate::candle_op::host_f32(t.var().as_tensor())?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            specs.push(TensorSpec {
                name: format!("{}.{suffix}", l.name()),
                ggml_type: GGML_F32,
                dims,
                n_bytes: bytes.len() as u64,
            });
            data.push(bytes);
        }
    }
    let mut md = Metadata::new();
    md.set(
        "general.architecture",
        Value::String(model.hparams().arch.name().to_string()),
    );
    md.set("general.type", Value::String("adapter".into()));
    if let Some(n) = name {
        md.set("general.name", Value::String(n.to_string()));
    }
    md.set("adapter.type", Value::String("lora".into()));
    md.set("adapter.lora.alpha", Value::F32(alpha));
    for (k, v) in extra.entries() {
        md.set(k, v.clone());
    }
    let err = |e: gguftool_gguf::GgufError| EngineError::BadInput(format!("LoRA GGUF: {e}"));
    let mut gw = GgufWriter::begin(w, &md, specs, &gguftool_quant::registry::TYPES).map_err(err)?;
    for d in &data {
        gw.write_tensor_data(d).map_err(err)?;
    }
    Ok((gw.finish().map_err(err)?, lins.len()))
}

/// Reads a llama.cpp LoRA GGUF, every factor decoded to f32: the
/// runtime's reader ([`gguftool_model::lora::read_lora_gguf`]), whose
/// errors it returns as [`EngineError::Model`].
///
/// # Errors
/// As the runtime's reader.
pub fn read_lora_gguf(path: impl AsRef<Path>) -> EngineResult<LoraFile> {
    Ok(gguftool_model::lora::read_lora_gguf(path)?)
}

/// Attaches `file`'s adapters (frozen) to `model`'s matrices of the same
/// names, replacing any there. Returns the number attached.
///
/// # Errors
/// An architecture other than the model's, a name that is no block matrix
/// of the model (the token embedding's adapter is not supported), shapes
/// that do not fit the matrix (as llama.cpp checks them), candle errors.
pub fn apply_lora_file(model: &mut CandleModel, file: &LoraFile) -> EngineResult<usize> {
    let arch = model.hparams().arch.name();
    if file.arch != arch {
        return Err(EngineError::BadInput(format!(
            "LoRA architecture {:?} does not match the model's {arch:?}",
            file.arch
        )));
    }
    let dev = model.device().clone();
    for ad in &file.adapters {
        let lin = model
            .blocks_mut()
            .iter_mut()
            .flat_map(|b| b.linears_mut().iter_mut())
            .find(|l| l.name() == ad.name)
            .ok_or_else(|| {
                EngineError::Unsupported(format!(
                    "LoRA tensor {:?} is not a block matrix of the model",
                    ad.name
                ))
            })?;
        let a = Tensor::from_vec(ad.a.clone(), (ad.rank, ad.n_in), &dev)?;
        let b = Tensor::from_vec(ad.b.clone(), (ad.n_out, ad.rank), &dev)?;
        lin.attach_lora(LoraAdapter::new(&ad.name, a, b, file.alpha, false)?)?;
    }
    Ok(file.adapters.len())
}
