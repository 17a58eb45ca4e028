//! Parsing the GGUF header (metadata and tensor infos) from a byte slice.
//!
//! Every count is checked against the bytes that remain before anything is
//! allocated, so memory use is proportional to the metadata actually
//! present, never to what a count claims.

use super::validate;
use super::value::{Array, Metadata, StrArray, Value, ValueType};
use super::{GgufHeader, TensorInfo};
use crate::error::{GgufError, GgufResult};
use std::collections::HashSet;

/// The four magic bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Longest metadata key accepted, in bytes.
pub const MAX_KEY_LEN: u64 = 65_535;
/// Longest tensor name accepted (llama.cpp's `GGML_MAX_NAME` minus the NUL).
pub const MAX_TENSOR_NAME_LEN: u64 = 63;
/// Deepest array nesting accepted.
pub const MAX_ARRAY_DEPTH: u32 = 8;
/// Most dimensions a tensor may have.
pub const MAX_DIMS: u32 = 4;

/// A bounds-checked little-endian cursor that knows where it is.
///
/// `bytes` may be only the start of a file of `len` bytes: counts are checked
/// against the whole file, reads against the bytes at hand (a read past them
/// but within the file fails as [`GgufError::Truncated`] ending within `len`,
/// which [`parse_header_prefix`]'s callers answer by reading more).
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    len: u64,
}

impl<'a> Cursor<'a> {
    fn prefix(bytes: &'a [u8], len: u64) -> Self {
        Self {
            bytes,
            pos: 0,
            len: len.max(bytes.len() as u64),
        }
    }

    pub(crate) fn pos(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes left in the file.
    pub(crate) fn remaining(&self) -> u64 {
        self.len - self.pos as u64
    }

    /// Bytes left in the buffer (what may be reserved against).
    fn available(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> GgufResult<&'a [u8]> {
        if n > self.available() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos(),
                needed: n,
                available: if n > self.remaining() {
                    self.remaining()
                } else {
                    self.available()
                },
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> GgufResult<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub(crate) fn u32(&mut self, what: &dyn Fn() -> String) -> GgufResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &dyn Fn() -> String) -> GgufResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a count and checks that `count * min_size` bytes remain.
    fn count(&mut self, min_size: u64, what: &dyn Fn() -> String) -> GgufResult<u64> {
        let offset = self.pos();
        let count = self.u64(what)?;
        let max = self.remaining() / min_size.max(1);
        if count > max {
            return Err(GgufError::CountTooLarge {
                what: what(),
                offset,
                count,
                max,
                available: self.remaining(),
            });
        }
        Ok(count)
    }

    /// Skips a length-prefixed string, returning its length (no UTF-8 check).
    fn take_len_prefixed(&mut self, what: &dyn Fn() -> String) -> GgufResult<usize> {
        let len = self.u64(&|| format!("{} length", what()))?;
        Ok(self.take(len, what)?.len())
    }

    /// Reads a length-prefixed UTF-8 string of at most `limit` bytes,
    /// borrowed from the input.
    fn str(&mut self, limit: u64, what: &dyn Fn() -> String) -> GgufResult<&'a str> {
        let offset = self.pos();
        let len = self.u64(&|| format!("{} length", what()))?;
        if len > limit {
            return Err(GgufError::StringTooLong {
                what: what(),
                offset,
                len,
                limit,
            });
        }
        let data_offset = self.pos();
        let raw = self.take(len, what)?;
        std::str::from_utf8(raw).map_err(|_| GgufError::InvalidUtf8 {
            what: what(),
            offset: data_offset,
        })
    }
}

/// Capacity to reserve for `count` elements of `elem_bytes` bytes each in
/// memory, when `remaining` bytes of input are left: never more than those
/// bytes can justify in memory (the count itself was only checked against the
/// minimum *encoded* size). Collections grow past this as elements are parsed.
pub(crate) fn bounded_capacity(count: u64, elem_bytes: usize, remaining: u64) -> usize {
    let by_bytes = remaining / (elem_bytes.max(1) as u64);
    count.min(by_bytes).min(usize::MAX as u64) as usize
}

/// Parses and validates a complete GGUF header from `bytes`, which must be
/// the whole file (tensor data ranges are checked against its length).
/// Private tensor type ids are resolved through `types`.
pub fn parse_header(bytes: &[u8], types: &dyn validate::TypeResolver) -> GgufResult<GgufHeader> {
    parse_header_prefix(bytes, bytes.len() as u64, types)
}

/// [`parse_header`] on the first bytes of a file of `file_len` bytes.
///
/// Counts and tensor data ranges are checked against `file_len`; memory is
/// reserved only against the bytes given. When the header runs past them the
/// error is [`GgufError::Truncated`] with `offset + needed <= file_len`
/// (see [`needs_more`]): read at least that far and call again.
pub fn parse_header_prefix(
    bytes: &[u8],
    file_len: u64,
    types: &dyn validate::TypeResolver,
) -> GgufResult<GgufHeader> {
    let file_len = file_len.max(bytes.len() as u64);
    let mut c = Cursor::prefix(bytes, file_len);
    let magic: [u8; 4] = c.array(&|| "magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(GgufError::BigEndian { raw: v })
        }
        v => return Err(GgufError::UnsupportedVersion { version: v }),
    }
    let n_tensors_offset = c.pos();
    let n_tensors_raw = c.u64(&|| "tensor count".into())?;
    let n_kv = c.count(13, &|| "metadata count".into())?;

    let metadata = read_metadata(&mut c, n_kv)?;
    // Tensor infos need at least 24 bytes each; check only now, once the
    // metadata has consumed its share of the file.
    let max_tensors = c.remaining() / 24;
    if n_tensors_raw > max_tensors {
        return Err(GgufError::CountTooLarge {
            what: "tensor count".into(),
            offset: n_tensors_offset,
            count: n_tensors_raw,
            max: max_tensors,
            available: c.remaining(),
        });
    }
    let alignment = validate::alignment(&metadata)?;
    let tensors = read_tensor_infos(&mut c, n_tensors_raw, types)?;
    let infos_end = c.pos();
    let data_offset = infos_end.div_ceil(alignment) * alignment;
    let header = GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
        infos_end,
        data_offset,
    };
    validate::tensor_layout(&header, file_len)?;
    Ok(header)
}

/// For an error from [`parse_header_prefix`] given `have` bytes of a file of
/// `file_len` bytes: `Some(end)` when the header continues past the bytes
/// given, and the parse needs at least the first `end` bytes of the file.
pub fn needs_more(err: &GgufError, have: u64, file_len: u64) -> Option<u64> {
    match err {
        GgufError::Truncated { offset, needed, .. } => {
            let end = offset.checked_add(*needed)?;
            (end > have && end <= file_len).then_some(end)
        }
        _ => None,
    }
}

fn read_metadata(c: &mut Cursor<'_>, n_kv: u64) -> GgufResult<Metadata> {
    let cap = bounded_capacity(n_kv, Metadata::ENTRY_BYTES + 8, c.available());
    let mut md = Metadata::with_capacity(cap, 0);
    for i in 0..n_kv {
        let key_offset = c.pos();
        let key = c.str(MAX_KEY_LEN, &|| format!("metadata[{i}] key"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { offset: key_offset });
        }
        let what = || format!("metadata key {key:?}");
        let type_offset = c.pos();
        let raw = c.u32(&|| format!("{} value type", what()))?;
        let vt = ValueType::from_u32(raw).ok_or_else(|| GgufError::UnknownValueType {
            what: what(),
            offset: type_offset,
            raw,
        })?;
        let value = read_value(c, vt, &what, 0)?;
        md.push_unchecked(key, value);
    }
    // Duplicates are found through the key-sorted index (no hash set of
    // keys); the offset is recovered by walking the keys again.
    md.finish_index();
    if let Some(dup) = md.first_duplicate() {
        let mut w = Cursor::prefix(c.bytes, c.len);
        w.pos = 24;
        for _ in 0..dup {
            let _ = w.str(MAX_KEY_LEN, &String::new)?;
            let raw = w.u32(&String::new)?;
            let vt = ValueType::from_u32(raw).unwrap_or(ValueType::U8);
            read_value(&mut w, vt, &String::new, 0)?;
        }
        let offset = w.pos();
        let key = w.str(MAX_KEY_LEN, &String::new)?.to_string();
        return Err(GgufError::DuplicateKey { key, offset });
    }
    Ok(md)
}

fn read_scalar_bool(c: &mut Cursor<'_>, what: &dyn Fn() -> String) -> GgufResult<bool> {
    let offset = c.pos();
    let [b] = c.array::<1>(what)?;
    match b {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool {
            what: what(),
            offset,
            value,
        }),
    }
}

fn read_value(
    c: &mut Cursor<'_>,
    vt: ValueType,
    what: &dyn Fn() -> String,
    depth: u32,
) -> GgufResult<Value> {
    Ok(match vt {
        ValueType::U8 => Value::U8(u8::from_le_bytes(c.array(what)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(c.array(what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(what)?)),
        ValueType::Bool => Value::Bool(read_scalar_bool(c, what)?),
        ValueType::String => Value::String(c.str(u64::MAX, what)?.to_string()),
        ValueType::Array => Value::Array(read_array(c, what, depth + 1)?),
    })
}

fn read_fixed<T, const N: usize>(
    c: &mut Cursor<'_>,
    count: u64,
    what: &dyn Fn() -> String,
    conv: fn([u8; N]) -> T,
) -> GgufResult<Vec<T>> {
    let raw = c.take(count * N as u64, what)?;
    Ok(raw
        .chunks_exact(N)
        .map(|ch| {
            let mut a = [0u8; N];
            a.copy_from_slice(ch);
            conv(a)
        })
        .collect())
}

fn read_array(c: &mut Cursor<'_>, what: &dyn Fn() -> String, depth: u32) -> GgufResult<Array> {
    let start = c.pos();
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep {
            what: what(),
            offset: start,
            limit: MAX_ARRAY_DEPTH,
        });
    }
    let raw = c.u32(&|| format!("{} array element type", what()))?;
    let et = ValueType::from_u32(raw).ok_or_else(|| GgufError::UnknownValueType {
        what: format!("{} array element", what()),
        offset: start,
        raw,
    })?;
    let n = c.count(et.min_encoded_size(), &|| {
        format!("{} array length", what())
    })?;
    let elem = |i: u64| format!("{}[{i}]", what());
    Ok(match et {
        ValueType::U8 => Array::U8(read_fixed(c, n, what, u8::from_le_bytes)?),
        ValueType::I8 => Array::I8(read_fixed(c, n, what, i8::from_le_bytes)?),
        ValueType::U16 => Array::U16(read_fixed(c, n, what, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(read_fixed(c, n, what, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(read_fixed(c, n, what, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(read_fixed(c, n, what, i32::from_le_bytes)?),
        ValueType::F32 => Array::F32(read_fixed(c, n, what, f32::from_le_bytes)?),
        ValueType::U64 => Array::U64(read_fixed(c, n, what, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(read_fixed(c, n, what, i64::from_le_bytes)?),
        ValueType::F64 => Array::F64(read_fixed(c, n, what, f64::from_le_bytes)?),
        ValueType::Bool => {
            // 1 byte each, as encoded (reserved against the bytes at hand).
            let mut v = Vec::with_capacity(bounded_capacity(n, 1, c.available()));
            for i in 0..n {
                v.push(read_scalar_bool(c, &|| elem(i))?);
            }
            Array::Bool(v)
        }
        ValueType::String => Array::String(read_str_array(c, n, &elem)?),
        ValueType::Array => {
            let cap = bounded_capacity(n, std::mem::size_of::<Array>(), c.available());
            let mut v = Vec::with_capacity(cap);
            for i in 0..n {
                v.push(read_array(c, &|| elem(i), depth + 1)?);
            }
            Array::Array(v)
        }
    })
}

/// Reads `n` strings into one [`StrArray`]: a first pass checks the lengths
/// and sums them, so the text buffer and offsets are allocated once, at
/// exactly their final size (offsets: 8 bytes per element, the minimum
/// encoded size; text: the bytes themselves).
fn read_str_array(
    c: &mut Cursor<'_>,
    n: u64,
    elem: &dyn Fn(u64) -> String,
) -> GgufResult<StrArray> {
    let mut probe = Cursor {
        bytes: c.bytes,
        pos: c.pos,
        len: c.len,
    };
    let mut text = 0usize;
    for i in 0..n {
        let s = probe.take_len_prefixed(&|| elem(i))?;
        text += s;
    }
    let mut out = StrArray::with_capacity(n as usize, text);
    for i in 0..n {
        out.push(c.str(u64::MAX, &|| elem(i))?);
    }
    Ok(out)
}

fn read_tensor_infos(
    c: &mut Cursor<'_>,
    n: u64,
    types: &dyn validate::TypeResolver,
) -> GgufResult<Vec<TensorInfo>> {
    let cap = bounded_capacity(n, std::mem::size_of::<TensorInfo>() + 64, c.available());
    let mut tensors = Vec::with_capacity(cap);
    let mut seen: HashSet<&str> = HashSet::with_capacity(cap);
    for i in 0..n {
        let info_offset = c.pos();
        let name = c.str(MAX_TENSOR_NAME_LEN, &|| format!("tensor[{i}] name"))?;
        if name.is_empty() {
            return Err(GgufError::EmptyTensorName {
                offset: info_offset,
            });
        }
        if !seen.insert(name) {
            return Err(GgufError::DuplicateTensor {
                tensor: name.to_string(),
                offset: info_offset,
            });
        }
        let what = |field: &str| format!("tensor {name:?} {field}");
        let dims_offset = c.pos();
        let n_dims = c.u32(&|| what("n_dims"))?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                tensor: name.to_string(),
                offset: dims_offset,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| what(&format!("ne[{d}]")))?);
        }
        let type_offset = c.pos();
        let ggml_type = c.u32(&|| what("type"))?;
        let offset = c.u64(&|| what("data offset"))?;
        let geometry = validate::tensor_type(name, ggml_type, type_offset, types)?;
        let (n_elements, n_bytes) = validate::tensor_size(name, &dims, &geometry, dims_offset)?;
        tensors.push(TensorInfo {
            name: name.to_string(),
            dims,
            ggml_type,
            type_name: geometry.name,
            offset,
            n_elements,
            n_bytes,
            info_offset,
        });
    }
    Ok(tensors)
}
