//! The only place that knows GGUF: reads `tokenizer.*` metadata into a
//! [`VocabData`]. Key names and accepted types follow llama.cpp's loader.

use crate::error::{Error, Result};
use crate::vocab_data::{SpecialIds, VocabData};
use gguftool_gguf::validate::TypeResolver;
use gguftool_gguf::{Array, GgufFile, Metadata, Value};
use std::path::Path;

const TOKENS: &str = "tokenizer.ggml.tokens";
const SCORES: &str = "tokenizer.ggml.scores";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";

/// Opens a GGUF file and reads its tokenizer metadata; private tensor type
/// ids are resolved through `types` (e.g. `gguftool_quant::registry::TYPES`).
pub fn read_file(path: &Path, types: &dyn TypeResolver) -> Result<VocabData> {
    let file = GgufFile::open(path, types).map_err(|e| Error::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    from_metadata(&file.header().metadata)
}

/// Converts GGUF metadata into [`VocabData`].
pub fn from_metadata(md: &Metadata) -> Result<VocabData> {
    let model = get_str(md, "tokenizer.ggml.model")?
        .ok_or(Error::MissingKey {
            key: "tokenizer.ggml.model",
        })?
        .to_string();
    let pre = get_str(md, "tokenizer.ggml.pre")?.map(str::to_string);

    let tokens = match md.get(TOKENS) {
        None => return Err(Error::MissingKey { key: TOKENS }),
        Some(Value::Array(Array::String(v))) => v.iter().map(str::to_string).collect(),
        Some(other) => return Err(wrong(TOKENS, "array of string", other)),
    };
    let scores = match md.get(SCORES) {
        None => None,
        Some(Value::Array(Array::F32(v))) => Some(v.clone()),
        Some(Value::Array(Array::I32(v))) => Some(v.iter().map(|&x| x as f32).collect()),
        Some(other) => return Err(wrong(SCORES, "array of f32 or i32", other)),
    };
    let token_types = match md.get(TOKEN_TYPE) {
        None => None,
        Some(Value::Array(Array::I32(v))) => Some(v.clone()),
        Some(other) => return Err(wrong(TOKEN_TYPE, "array of i32", other)),
    };
    let merges = match md.get(MERGES) {
        None => None,
        Some(Value::Array(Array::String(v))) => Some(v.iter().map(str::to_string).collect()),
        Some(other) => return Err(wrong(MERGES, "array of string", other)),
    };

    let mut ids = SpecialIds {
        bos: get_id(md, "tokenizer.ggml.bos_token_id")?,
        eos: get_id(md, "tokenizer.ggml.eos_token_id")?,
        eot: get_id(md, "tokenizer.ggml.eot_token_id")?,
        eom: get_id(md, "tokenizer.ggml.eom_token_id")?,
        unk: get_id(md, "tokenizer.ggml.unknown_token_id")?,
        sep: get_id(md, "tokenizer.ggml.seperator_token_id")?,
        pad: get_id(md, "tokenizer.ggml.padding_token_id")?,
        mask: get_id(md, "tokenizer.ggml.mask_token_id")?,
        fim_pre: get_id(md, "tokenizer.ggml.fim_pre_token_id")?,
        fim_suf: get_id(md, "tokenizer.ggml.fim_suf_token_id")?,
        fim_mid: get_id(md, "tokenizer.ggml.fim_mid_token_id")?,
        fim_pad: get_id(md, "tokenizer.ggml.fim_pad_token_id")?,
        fim_rep: get_id(md, "tokenizer.ggml.fim_rep_token_id")?,
        fim_sep: get_id(md, "tokenizer.ggml.fim_sep_token_id")?,
    };
    // Deprecated names, read after the new ones as llama.cpp does.
    if let Some(v) = get_id(md, "tokenizer.ggml.prefix_token_id")? {
        ids.fim_pre = Some(v);
    }
    if let Some(v) = get_id(md, "tokenizer.ggml.suffix_token_id")? {
        ids.fim_suf = Some(v);
    }
    if let Some(v) = get_id(md, "tokenizer.ggml.middle_token_id")? {
        ids.fim_mid = Some(v);
    }

    Ok(VocabData {
        model,
        pre,
        tokens,
        scores,
        token_types,
        merges,
        ids,
        add_bos: get_bool(md, "tokenizer.ggml.add_bos_token")?,
        add_eos: get_bool(md, "tokenizer.ggml.add_eos_token")?,
        add_space_prefix: get_bool(md, "tokenizer.ggml.add_space_prefix")?,
        general_name: get_str(md, "general.name")?.map(str::to_string),
    })
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("array of {}", a.elem_type().name()),
        other => other.value_type().name().to_string(),
    }
}

fn wrong(key: &'static str, expected: &'static str, found: &Value) -> Error {
    Error::WrongType {
        key,
        expected,
        found: type_name(found),
    }
}

fn get_str<'a>(md: &'a Metadata, key: &'static str) -> Result<Option<&'a str>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| wrong(key, "string", v)),
    }
}

fn get_bool(md: &Metadata, key: &'static str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong(key, "bool", v)),
    }
}

fn get_id(md: &Metadata, key: &'static str) -> Result<Option<u32>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => match v.as_int().and_then(|i| u32::try_from(i).ok()) {
            Some(id) => Ok(Some(id)),
            None => Err(wrong(key, "integer in 0..=4294967295", v)),
        },
    }
}
