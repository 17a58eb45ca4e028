//! Streaming GGUF v3 writer.
//!
//! The header is written first (tensor offsets are known from the tensor
//! specs), then tensor data is streamed in info order, each tensor padded to
//! the alignment, as llama.cpp and gguf-py do. Values of *deferred* keys are
//! placeholders patched in place at [`GgufWriter::finish_patched`] with a
//! value of the same type and encoded size, so the header never changes
//! size. This module knows nothing about integrity manifests: sealing
//! (`crate::seal`) is a layer on these deferred values.

use crate::error::{GgufError, GgufResult};
use crate::read::{self, MAGIC};
use crate::validate;
use crate::value::{Array, Metadata, Value};
use std::io::{Seek, SeekFrom, Write};

/// Version written by [`GgufWriter`].
pub const WRITE_VERSION: u32 = 3;

/// What the writer needs to know about one tensor up front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name.
    pub name: String,
    /// ggml type id.
    pub ggml_type: u32,
    /// Dimensions, row length first.
    pub dims: Vec<u64>,
    /// Exact data size in bytes.
    pub n_bytes: u64,
}

impl From<&crate::TensorInfo> for TensorSpec {
    fn from(t: &crate::TensorInfo) -> Self {
        TensorSpec {
            name: t.name.clone(),
            ggml_type: t.ggml_type,
            dims: t.dims.clone(),
            n_bytes: t.n_bytes,
        }
    }
}

/// Appends the GGUF encoding of a string.
pub fn encode_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => le!(v),
        Array::U16(v) => le!(v),
        Array::I16(v) => le!(v),
        Array::U32(v) => le!(v),
        Array::I32(v) => le!(v),
        Array::F32(v) => le!(v),
        Array::U64(v) => le!(v),
        Array::I64(v) => le!(v),
        Array::F64(v) => le!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        Array::String(v) => v.iter().for_each(|s| encode_string(out, s)),
        Array::Array(v) => v.iter().for_each(|a| encode_array(out, a)),
    }
}

/// Appends the GGUF encoding of a value (without its type id).
pub fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => encode_string(out, s),
        Value::Array(a) => encode_array(out, a),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Appends one key/value pair as stored in a file.
pub fn encode_kv(out: &mut Vec<u8>, key: &str, v: &Value) {
    encode_string(out, key);
    out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
    encode_value(out, v);
}

/// Appends a tensor info record (name, dims, type, offset).
pub fn encode_tensor_info(
    out: &mut Vec<u8>,
    name: &str,
    ggml_type: u32,
    dims: &[u64],
    offset: u64,
) {
    encode_string(out, name);
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&ggml_type.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
}

fn array_depth(a: &Array) -> u32 {
    match a {
        Array::Array(v) => 1 + v.iter().map(array_depth).max().unwrap_or(0),
        _ => 1,
    }
}

/// Refuses input the reader would reject, so the writer never produces an
/// invalid file.
fn check_writable(
    md: &Metadata,
    tensors: &[TensorSpec],
    types: &dyn validate::TypeResolver,
) -> GgufResult<()> {
    let bad = |m: String| Err(GgufError::Write(m));
    let mut keys = std::collections::HashSet::new();
    for (k, v) in md.entries() {
        if k.is_empty() || k.len() as u64 > read::MAX_KEY_LEN || !keys.insert(k) {
            return bad(format!("metadata key {k:?} is empty, too long or repeated"));
        }
        if let Value::Array(a) = v {
            if array_depth(a) > read::MAX_ARRAY_DEPTH {
                return bad(format!("metadata key {k:?}: arrays nested too deep"));
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        if t.name.is_empty()
            || t.name.len() as u64 > read::MAX_TENSOR_NAME_LEN
            || !names.insert(t.name.as_str())
        {
            return bad(format!(
                "tensor name {:?} is empty, too long or repeated",
                t.name
            ));
        }
        if t.dims.len() as u32 > read::MAX_DIMS {
            return bad(format!(
                "tensor {:?} has more than {} dims",
                t.name,
                read::MAX_DIMS
            ));
        }
        let geometry = validate::tensor_type(&t.name, t.ggml_type, 0, types)?;
        let (_, n_bytes) = validate::tensor_size(&t.name, &t.dims, &geometry, 0)?;
        if n_bytes != t.n_bytes {
            return bad(format!(
                "tensor {:?}: {} bytes declared, shape needs {n_bytes}",
                t.name, t.n_bytes
            ));
        }
    }
    Ok(())
}

fn pad_len(pos: u64, alignment: u64) -> u64 {
    pos.div_ceil(alignment) * alignment - pos
}

/// Where a deferred value sits in the header.
struct DeferredSlot {
    key: String,
    /// Absolute offset of the value's encoding (after its type id).
    pos: u64,
    /// Its encoded length and type.
    len: usize,
    value_type: crate::value::ValueType,
}

/// Streams a GGUF file: header first, then each tensor's data in order.
pub struct GgufWriter<W: Write + Seek> {
    w: W,
    alignment: u64,
    specs: Vec<TensorSpec>,
    current: usize,
    written: u64,
    header_len: u64,
    deferred: Vec<DeferredSlot>,
}

impl<W: Write + Seek> GgufWriter<W> {
    /// Writes the header for `metadata` and `tensors` and returns a writer
    /// ready for the first tensor's data. Metadata is written exactly as
    /// given; private tensor type ids are resolved through `types`.
    pub fn begin(
        w: W,
        metadata: &Metadata,
        tensors: Vec<TensorSpec>,
        types: &dyn validate::TypeResolver,
    ) -> GgufResult<Self> {
        Self::begin_deferred(w, metadata, tensors, types, &[])
    }

    /// Like [`GgufWriter::begin`], but the values of `deferred` keys are
    /// placeholders whose final values (same type, same encoded size) are
    /// given to [`GgufWriter::finish_patched`] or, for strings,
    /// [`GgufWriter::finish_deferred`].
    pub fn begin_deferred(
        mut w: W,
        metadata: &Metadata,
        tensors: Vec<TensorSpec>,
        types: &dyn validate::TypeResolver,
        deferred: &[&str],
    ) -> GgufResult<Self> {
        let alignment = validate::alignment(metadata)?;
        check_writable(metadata, &tensors, types)?;
        for key in deferred {
            if metadata.get(key).is_none() {
                return Err(GgufError::Write(format!(
                    "deferred key {key:?} is not in the metadata"
                )));
            }
        }
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&WRITE_VERSION.to_le_bytes());
        buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        let mut slots = Vec::new();
        for (k, v) in metadata.entries() {
            encode_string(&mut buf, k);
            buf.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            let pos = buf.len();
            encode_value(&mut buf, v);
            if deferred.contains(&k) {
                slots.push(DeferredSlot {
                    key: k.to_string(),
                    pos: pos as u64,
                    len: buf.len() - pos,
                    value_type: v.value_type(),
                });
            }
        }
        let mut offset = 0u64;
        for t in &tensors {
            encode_tensor_info(&mut buf, &t.name, t.ggml_type, &t.dims, offset);
            offset = offset
                .checked_add(t.n_bytes)
                .map(|e| e + pad_len(e, alignment))
                .ok_or_else(|| GgufError::Write(format!("tensor {:?}: size overflow", t.name)))?;
        }
        let pad = pad_len(buf.len() as u64, alignment);
        buf.resize(buf.len() + pad as usize, 0);
        w.write_all(&buf).map_err(io_err)?;
        let mut me = Self {
            w,
            alignment,
            specs: tensors,
            current: 0,
            written: 0,
            header_len: buf.len() as u64,
            deferred: slots,
        };
        me.skip_empty_tensors()?;
        Ok(me)
    }

    /// Bytes of the header (metadata, tensor infos and padding).
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Size of the finished file: header plus every tensor padded to the
    /// alignment.
    pub fn file_len(&self) -> u64 {
        self.header_len
            + self
                .specs
                .iter()
                .map(|t| t.n_bytes + pad_len(t.n_bytes, self.alignment))
                .sum::<u64>()
    }

    /// The tensor specs, in order.
    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// Index of the tensor whose data is expected next (the number of
    /// tensors when all are complete).
    pub fn current_tensor(&self) -> usize {
        self.current
    }

    /// Bytes still expected for the current tensor (0 when all are done).
    pub fn current_remaining(&self) -> u64 {
        self.specs
            .get(self.current)
            .map_or(0, |s| s.n_bytes - self.written)
    }

    /// Appends bytes of the current tensor; moves on automatically when the
    /// tensor is complete.
    pub fn write_tensor_data(&mut self, mut data: &[u8]) -> GgufResult<()> {
        while !data.is_empty() {
            let Some(spec) = self.specs.get(self.current) else {
                return Err(GgufError::Write("more tensor data than declared".into()));
            };
            let want = (spec.n_bytes - self.written) as usize;
            let take = want.min(data.len());
            self.w.write_all(&data[..take]).map_err(io_err)?;
            self.written += take as u64;
            data = &data[take..];
            if self.written == spec.n_bytes {
                self.end_tensor()?;
                self.skip_empty_tensors()?;
            }
        }
        Ok(())
    }

    fn end_tensor(&mut self) -> GgufResult<()> {
        let n = self.specs[self.current].n_bytes;
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut pad = pad_len(n, self.alignment) as usize;
        while pad > 0 {
            let k = pad.min(ZEROS.len());
            self.w.write_all(&ZEROS[..k]).map_err(io_err)?;
            pad -= k;
        }
        self.current += 1;
        self.written = 0;
        Ok(())
    }

    fn skip_empty_tensors(&mut self) -> GgufResult<()> {
        while self.specs.get(self.current).is_some_and(|s| s.n_bytes == 0) {
            self.end_tensor()?;
        }
        Ok(())
    }

    /// Checks every tensor was written, flushes, and returns the inner writer.
    pub fn finish(self) -> GgufResult<W> {
        self.finish_patched(&[])
    }

    /// [`GgufWriter::finish`], first filling in deferred string values.
    pub fn finish_deferred(self, values: &[(&str, &str)]) -> GgufResult<W> {
        let values: Vec<(&str, Value)> = values
            .iter()
            .map(|(k, v)| (*k, Value::String(v.to_string())))
            .collect();
        self.finish_patched(&values)
    }

    /// [`GgufWriter::finish`], first patching the deferred values: each must
    /// have the placeholder's type and encoded size.
    pub fn finish_patched(mut self, values: &[(&str, Value)]) -> GgufResult<W> {
        if self.current != self.specs.len() {
            return Err(GgufError::Write(format!(
                "tensor {:?} incomplete: {} of {} bytes written",
                self.specs[self.current].name, self.written, self.specs[self.current].n_bytes
            )));
        }
        let end = self.w.stream_position().map_err(io_err)?;
        let mut buf = Vec::new();
        for (key, value) in values {
            let slot = self
                .deferred
                .iter()
                .find(|s| s.key == *key)
                .ok_or_else(|| GgufError::Write(format!("{key} was not deferred")))?;
            buf.clear();
            encode_value(&mut buf, value);
            if value.value_type() != slot.value_type || buf.len() != slot.len {
                return Err(GgufError::Write(format!(
                    "{key}: deferred value must be a {} of {} encoded bytes",
                    slot.value_type.name(),
                    slot.len
                )));
            }
            self.w.seek(SeekFrom::Start(slot.pos)).map_err(io_err)?;
            self.w.write_all(&buf).map_err(io_err)?;
        }
        self.w.seek(SeekFrom::Start(end)).map_err(io_err)?;
        self.w.flush().map_err(io_err)?;
        Ok(self.w)
    }
}

fn io_err(e: std::io::Error) -> GgufError {
    GgufError::Write(e.to_string())
}
