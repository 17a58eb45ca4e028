//! The quantization policy: which format each tensor of a model gets, like
//! llama-quantize's rules plus explicit overrides, and the provenance
//! metadata a converted file records.

use crate::pipeline::{Plan, PlannedTensor};
use gguftool_calib::imatrix::Imatrix;
use gguftool_gguf::error::{Error, Result};
use gguftool_gguf::ggml_type::{ids, llama_ftype};
use gguftool_gguf::value::{Array, Metadata, Value};
use gguftool_gguf::{GgufFile, TensorInfo};
use gguftool_quant::format::Format;
use gguftool_quant::registry;
use gguftool_quant::rows::fits;
use regex::Regex;
use std::sync::Arc;

/// Name llama.cpp gives the output projection.
pub const OUTPUT_TENSOR: &str = "output.weight";
/// Name llama.cpp gives the token embedding.
pub const TOKEN_EMBEDDING: &str = "token_embd.weight";
/// Metadata key recording the SHA-256 of the source file.
pub const KEY_SOURCE_SHA256: &str = "gguftool.convert.source_sha256";

/// ggml integer types (copied unchanged).
const INTEGER_TYPES: [u32; 4] = [24, 25, 26, 27];

/// What the user asked for.
pub struct QuantPolicy {
    /// Format for every 2-D+ float tensor not otherwise matched.
    pub format: &'static dyn Format,
    /// Allow input that is already quantized (decoded, then re-encoded).
    pub allow_requantize: bool,
    /// Tensors whose names match stay exactly as they are.
    pub keep: Vec<Regex>,
    /// Per-tensor overrides; the first match wins.
    pub tensor_types: Vec<(Regex, &'static dyn Format)>,
    /// Format for `output.weight`, and for `token_embd.weight` when the model
    /// has no `output.weight` (tied embeddings). Like llama-quantize, which
    /// keeps the output projection at 6 bits, callers default this to q8_0.
    pub output_tensor_type: &'static dyn Format,
    /// Format for `token_embd.weight` (overrides the tied-embedding rule).
    pub token_embedding_type: Option<&'static dyn Format>,
    /// Used when a row length does not fit the chosen format's block.
    pub fallback: &'static dyn Format,
    /// Importance matrix weighting the encoders.
    pub imatrix: Option<Arc<Imatrix>>,
}

/// Looks up a registered format by name, with a clear error.
pub fn format_by_name(name: &str) -> Result<&'static dyn Format> {
    registry::by_name(name).ok_or_else(|| {
        let mut names: Vec<&str> = registry::all().iter().map(|f| f.name()).collect();
        names.sort_unstable();
        Error::Other(format!(
            "unknown format {name:?} (registered: {})",
            names.join(", ")
        ))
    })
}

fn is_float_input(id: u32) -> bool {
    id == ids::F32 || id == ids::F16 || id == ids::BF16
}

fn registered(id: u32) -> Result<&'static dyn Format> {
    registry::by_type_id(id).ok_or_else(|| Error::Other(format!("type id {id} is not registered")))
}

impl QuantPolicy {
    fn wanted(&self, t: &TensorInfo, tied_embedding: bool) -> &'static dyn Format {
        if let Some((_, f)) = self
            .tensor_types
            .iter()
            .find(|(re, _)| re.is_match(&t.name))
        {
            return *f;
        }
        match t.name.as_str() {
            OUTPUT_TENSOR => self.output_tensor_type,
            // A tied embedding is also the output projection.
            TOKEN_EMBEDDING if tied_embedding => {
                self.token_embedding_type.unwrap_or(self.output_tensor_type)
            }
            TOKEN_EMBEDDING => self.token_embedding_type.unwrap_or(self.format),
            _ => self.format,
        }
    }

    fn plan_tensor(&self, t: &TensorInfo, i: usize, tied_embedding: bool) -> Result<PlannedTensor> {
        if INTEGER_TYPES.contains(&t.ggml_type) || self.keep.iter().any(|re| re.is_match(&t.name)) {
            return Ok(crate::copy(t, i));
        }
        // Norms, biases and other vectors stay f32.
        let (mut target, mut note) = if t.dims.len() <= 1 {
            (registered(ids::F32)?, None)
        } else {
            (self.wanted(t, tied_embedding), None)
        };
        if target.type_id() == t.ggml_type {
            return Ok(crate::copy(t, i));
        }
        if !is_float_input(t.ggml_type) && !self.allow_requantize {
            return Err(Error::Unsupported {
                tensor: t.name.clone(),
                reason: format!(
                    "already quantized ({}); pass --allow-requantize to decode and re-encode it",
                    t.type_name
                ),
            });
        }
        if !fits(target, t.row_len()) {
            let fallback = if fits(self.fallback, t.row_len()) {
                self.fallback
            } else {
                registered(ids::F16)?
            };
            note = Some(format!(
                "row length {} does not fit {} (blocks of {}); using {}",
                t.row_len(),
                target.name(),
                target.block_size(),
                fallback.name()
            ));
            target = fallback;
        }
        let mut pt = crate::transcode(t, i, target)?;
        pt.note = note;
        if target.block_size() > 1 {
            if let Some(m) = &self.imatrix {
                let row_len = t.row_len() as usize;
                let n_mats = (t.n_rows() / t.dims.get(1).copied().unwrap_or(1).max(1)) as usize;
                pt.importance = m
                    .for_tensor(&t.name, row_len, n_mats)
                    .map_err(|e| Error::Other(format!("imatrix: {e}")))?
                    .map(|v| Arc::new(v.to_vec()));
            }
        }
        Ok(pt)
    }
}

/// Provenance recorded in a converted file.
pub struct Provenance {
    /// SHA-256 (hex) of the whole source file, or a 64-character
    /// placeholder filled in while writing (see `convert::execute_with_source_hash`).
    pub source_sha256: String,
    /// SHA-256 (hex) and datasets of the importance matrix, if one was used.
    pub imatrix: Option<(String, Vec<String>)>,
}

/// Builds the conversion plan for `src` under `policy`.
pub fn plan(src: &GgufFile, policy: &QuantPolicy, provenance: &Provenance) -> Result<Plan> {
    let h = src.header();
    let tied = h.tensor_index(OUTPUT_TENSOR).is_none();
    let tensors = h
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| policy.plan_tensor(t, i, tied))
        .collect::<Result<Vec<_>>>()?;
    let metadata = converted_metadata(&h.metadata, &tensors, policy.format, provenance);
    Ok(Plan { metadata, tensors })
}

/// Copies `md` and records what the conversion did.
fn converted_metadata(
    md: &Metadata,
    tensors: &[PlannedTensor],
    main: &dyn Format,
    provenance: &Provenance,
) -> Metadata {
    let mut md = md.clone();
    match llama_ftype(main.type_id()) {
        Some(ft) => md.set("general.file_type", Value::U32(ft)),
        // llama.cpp has no file type for gguftool's own formats.
        None => md.remove_where(|k| k == "general.file_type"),
    }
    let any_quantized = tensors
        .iter()
        .any(|t| !is_float_input(t.spec.ggml_type) && !INTEGER_TYPES.contains(&t.spec.ggml_type));
    if any_quantized {
        md.set("general.quantization_version", Value::U32(2));
    }
    let mut custom: Vec<String> = tensors
        .iter()
        .filter(|t| gguftool_gguf::ggml_type::ggml_type(t.spec.ggml_type).is_none())
        .filter_map(|t| registry::by_type_id(t.spec.ggml_type).map(|f| f.name().to_string()))
        .collect();
    custom.sort();
    custom.dedup();
    md.remove_where(|k| k.starts_with("gguftool.convert."));
    let transforms = tensors.iter().any(|t| {
        registry::by_type_id(t.spec.ggml_type).is_some_and(|f| f.row_transform().is_some())
    });
    if transforms && md.get(gguftool_quant::rows::SEED_KEY).is_none() {
        md.set(
            gguftool_quant::rows::SEED_KEY,
            Value::U64(gguftool_quant::rows::DEFAULT_SEED),
        );
    }
    md.set(
        "gguftool.formats",
        Value::Array(Array::String(custom.into())),
    );
    md.set("gguftool.convert.format", Value::String(main.name().into()));
    md.set(
        KEY_SOURCE_SHA256,
        Value::String(provenance.source_sha256.clone()),
    );
    if let Some((sha, datasets)) = &provenance.imatrix {
        md.set(
            "gguftool.convert.imatrix_sha256",
            Value::String(sha.clone()),
        );
        md.set(
            "gguftool.convert.imatrix_datasets",
            Value::Array(Array::String(datasets.clone().into())),
        );
    }
    md
}
