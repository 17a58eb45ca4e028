//! Streaming GGUF v3 writer.
//!
//! The header is written first (tensor offsets are known from the tensor
//! specs), then tensor data is streamed in info order, each tensor padded to
//! the alignment, as llama.cpp and gguf-py do. When sealing, the integrity
//! manifest is written with placeholder digests that are patched in place
//! once the data has been hashed, so the header never changes size.

use crate::error::{GgufError, GgufResult};
use crate::integrity::{self, Sha256};
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

/// Writes `file` again: its metadata and every tensor's bytes, in the
/// canonical layout (sealed if `opts.seal`).
pub fn rewrite<W: Write + Seek>(file: &crate::GgufFile, w: W, opts: WriteOptions) -> GgufResult<W> {
    let h = file.header();
    let specs = h.tensors.iter().map(TensorSpec::from).collect();
    let mut writer = GgufWriter::begin(w, &h.metadata, specs, opts)?;
    for i in 0..h.tensors.len() {
        writer.write_tensor_data(file.tensor_data(i))?;
    }
    writer.finish()
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
        if k.is_empty() || k.len() as u64 > read::MAX_KEY_LEN || !keys.insert(k.as_str()) {
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

/// Options for [`GgufWriter::begin`].
#[derive(Clone, Copy)]
pub struct WriteOptions {
    /// Embed an integrity manifest, replacing every key under
    /// `gguftool.integrity.`. Without it, metadata is written exactly as given.
    pub seal: bool,
    /// Resolves private tensor type ids when checking the tensor specs.
    pub types: &'static dyn validate::TypeResolver,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            seal: false,
            types: &validate::StandardTypes,
        }
    }
}

impl std::fmt::Debug for WriteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteOptions")
            .field("seal", &self.seal)
            .finish()
    }
}

/// Streams a GGUF file: header first, then each tensor's data in order.
pub struct GgufWriter<W: Write + Seek> {
    w: W,
    alignment: u64,
    specs: Vec<TensorSpec>,
    current: usize,
    written: u64,
    header_len: u64,
    /// (key, absolute offset, length) of patchable string values.
    string_pos: Vec<(String, u64, usize)>,
    /// The metadata as written (for recomputing the digest after patches).
    metadata: Metadata,
    seal: Option<SealState>,
}

struct SealState {
    /// Absolute file offset of the hex text of each tensor's digest.
    digest_pos: Vec<u64>,
    hasher: Sha256,
    digests: Vec<[u8; 32]>,
}

impl<W: Write + Seek> GgufWriter<W> {
    /// Writes the header for `metadata` and `tensors` and returns a writer
    /// ready for the first tensor's data.
    pub fn begin(
        w: W,
        metadata: &Metadata,
        tensors: Vec<TensorSpec>,
        opts: WriteOptions,
    ) -> GgufResult<Self> {
        Self::begin_deferred(w, metadata, tensors, opts, &[])
    }

    /// Like [`GgufWriter::begin`], but the string values of `deferred` keys
    /// are placeholders whose final text (of the same length) is given to
    /// [`GgufWriter::finish_deferred`]; the manifest's metadata digest covers
    /// the final text.
    pub fn begin_deferred(
        mut w: W,
        metadata: &Metadata,
        tensors: Vec<TensorSpec>,
        opts: WriteOptions,
        deferred: &[&str],
    ) -> GgufResult<Self> {
        let alignment = validate::alignment(metadata)?;
        check_writable(metadata, &tensors, opts.types)?;
        let mut md = metadata.clone();
        let mut digest_rel = Vec::new();
        if opts.seal {
            md.remove_where(integrity::is_integrity_key);
            let placeholders = integrity::seal_entries(&md, &tensors);
            for (k, v) in placeholders {
                md.set(&k, v);
            }
        }
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&WRITE_VERSION.to_le_bytes());
        buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(md.len() as u64).to_le_bytes());
        let mut string_pos = Vec::new();
        for (k, v) in md.entries() {
            let patchable = deferred.contains(&k.as_str())
                || (opts.seal && k == integrity::KEY_METADATA_SHA256);
            if let (true, Value::String(text)) = (patchable, v) {
                // key string, type id, then the value's length and text.
                let pos = buf.len() as u64 + 8 + k.len() as u64 + 4 + 8;
                string_pos.push((k.clone(), pos, text.len()));
            }
            if opts.seal && k == integrity::KEY_TENSOR_SHA256 {
                // Record where each placeholder's hex text lands.
                let start = buf.len() as u64;
                encode_kv(&mut buf, k, v);
                // key string + type id + elem type + count, then per element: len + 64 bytes.
                let base = start + 8 + k.len() as u64 + 4 + 4 + 8;
                for i in 0..tensors.len() as u64 {
                    digest_rel.push(base + i * 72 + 8);
                }
            } else {
                encode_kv(&mut buf, k, v);
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
        let seal = opts.seal.then(|| SealState {
            digest_pos: digest_rel,
            hasher: Sha256::default(),
            digests: Vec::with_capacity(tensors.len()),
        });
        let mut me = Self {
            w,
            alignment,
            specs: tensors,
            current: 0,
            written: 0,
            header_len: buf.len() as u64,
            string_pos,
            metadata: md,
            seal,
        };
        me.skip_empty_tensors()?;
        Ok(me)
    }

    /// Bytes of the header (metadata, tensor infos and padding).
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Index of the tensor whose data is expected next.
    pub fn current_tensor(&self) -> usize {
        self.current
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
            if let Some(s) = &mut self.seal {
                sha2::Digest::update(&mut s.hasher, &data[..take]);
            }
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
        if let Some(s) = &mut self.seal {
            let h = std::mem::take(&mut s.hasher);
            s.digests.push(sha2::Digest::finalize(h).into());
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

    /// Checks every tensor was written, patches the manifest, flushes, and
    /// returns the inner writer.
    pub fn finish(self) -> GgufResult<W> {
        self.finish_deferred(&[])
    }

    /// [`GgufWriter::finish`], first filling in the deferred string values.
    pub fn finish_deferred(mut self, values: &[(&str, &str)]) -> GgufResult<W> {
        if self.current != self.specs.len() {
            return Err(GgufError::Write(format!(
                "tensor {:?} incomplete: {} of {} bytes written",
                self.specs[self.current].name, self.written, self.specs[self.current].n_bytes
            )));
        }
        let end = self.w.stream_position().map_err(io_err)?;
        let mut patches: Vec<(u64, String)> = Vec::new();
        for (key, text) in values {
            let (_, pos, len) = self
                .string_pos
                .iter()
                .find(|(k, _, _)| k == key)
                .ok_or_else(|| GgufError::Write(format!("{key} was not deferred")))?;
            if text.len() != *len {
                return Err(GgufError::Write(format!(
                    "{key}: deferred value must be {len} bytes"
                )));
            }
            patches.push((*pos, text.to_string()));
            self.metadata.set(key, Value::String(text.to_string()));
        }
        if let Some(s) = &self.seal {
            for (pos, d) in s.digest_pos.iter().zip(&s.digests) {
                patches.push((*pos, integrity::hex(d)));
            }
            if !values.is_empty() {
                let md_pos = self
                    .string_pos
                    .iter()
                    .find(|(k, _, _)| k == integrity::KEY_METADATA_SHA256)
                    .map(|(_, p, _)| *p)
                    .ok_or_else(|| GgufError::Write("manifest metadata digest not found".into()))?;
                patches.push((
                    md_pos,
                    integrity::hex(&integrity::metadata_digest(&self.metadata)),
                ));
            }
        }
        for (pos, text) in patches {
            self.w.seek(SeekFrom::Start(pos)).map_err(io_err)?;
            self.w.write_all(text.as_bytes()).map_err(io_err)?;
        }
        self.w.seek(SeekFrom::Start(end)).map_err(io_err)?;
        self.w.flush().map_err(io_err)?;
        Ok(self.w)
    }
}

fn io_err(e: std::io::Error) -> GgufError {
    GgufError::Write(e.to_string())
}
