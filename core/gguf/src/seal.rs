//! Sealing as a layer on the writer: [`SealingWriter`] wraps a
//! [`GgufWriter`], adds the integrity manifest (`crate::integrity`) with
//! placeholder values of fixed size, hashes each tensor's bytes as they
//! stream through, and patches the manifest through the writer's generic
//! deferred values at finish. [`OutputWriter`] picks plain or sealed output
//! from [`WriteOptions`].

use crate::error::{GgufError, GgufResult};
use crate::integrity::{self as ig, Sha256};
use crate::validate;
use crate::value::{Metadata, StrArray, Value};
use crate::write::{GgufWriter, TensorSpec, WRITE_VERSION};
use sha2::Digest;
use std::io::{Seek, Write};

/// Options for [`OutputWriter::begin`] and [`rewrite`].
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

/// A [`GgufWriter`] that embeds a version-2 integrity manifest.
pub struct SealingWriter<W: Write + Seek> {
    inner: GgufWriter<W>,
    /// The metadata as written (caller keys' deferred values are updated at
    /// finish before the per-key digests are computed).
    metadata: Metadata,
    hasher: Sha256,
    digests: Vec<[u8; 32]>,
    caller_deferred: Vec<String>,
}

impl<W: Write + Seek> SealingWriter<W> {
    /// Writes the header of a sealed file; `deferred` are the caller's own
    /// deferred string keys (see [`GgufWriter::begin_deferred`]).
    pub fn begin_deferred(
        w: W,
        metadata: &Metadata,
        tensors: Vec<TensorSpec>,
        types: &dyn validate::TypeResolver,
        deferred: &[&str],
    ) -> GgufResult<Self> {
        let mut md = metadata.clone();
        md.remove_where(ig::is_integrity_key);
        let n_plain = md.len();
        let n = tensors.len();
        let placeholders = |count: usize, len: usize| -> Value {
            let text = "0".repeat(len);
            Value::Array(crate::value::Array::String(
                std::iter::repeat_n(text.as_str(), count).collect(),
            ))
        };
        md.set(ig::KEY_VERSION, Value::U32(ig::MANIFEST_VERSION));
        md.set(ig::KEY_GGUF_VERSION, Value::U32(WRITE_VERSION));
        md.set(ig::KEY_TENSOR_COUNT, Value::U64(n as u64));
        md.set(
            ig::KEY_METADATA_COUNT,
            Value::U64((n_plain + ig::V2_KEYS.len()) as u64),
        );
        md.set(ig::KEY_FILE_SIZE, Value::U64(0));
        md.set(
            ig::KEY_METADATA,
            placeholders(n_plain, ig::METADATA_ENTRY_LEN),
        );
        let infos: StrArray = tensors
            .iter()
            .map(|t| ig::tensor_info_entry(&t.name, t.ggml_type, &t.dims))
            .collect();
        md.set(
            ig::KEY_TENSOR_INFO,
            Value::Array(crate::value::Array::String(infos)),
        );
        md.set(ig::KEY_TENSOR_SHA256, placeholders(n, 64));
        md.set(ig::KEY_MANIFEST_SHA256, Value::String("0".repeat(64)));
        let mut all_deferred: Vec<&str> = deferred.to_vec();
        all_deferred.extend([
            ig::KEY_FILE_SIZE,
            ig::KEY_METADATA,
            ig::KEY_TENSOR_SHA256,
            ig::KEY_MANIFEST_SHA256,
        ]);
        let inner = GgufWriter::begin_deferred(w, &md, tensors, types, &all_deferred)?;
        let mut me = Self {
            inner,
            metadata: md,
            hasher: Sha256::default(),
            digests: Vec::with_capacity(n),
            caller_deferred: deferred.iter().map(|s| s.to_string()).collect(),
        };
        me.record_empty();
        Ok(me)
    }

    /// Records digests for tensors the writer skipped (empty ones).
    fn record_empty(&mut self) {
        while self.digests.len() < self.inner.current_tensor() {
            let h = std::mem::take(&mut self.hasher);
            self.digests.push(h.finalize().into());
        }
    }

    /// Bytes of the header.
    pub fn header_len(&self) -> u64 {
        self.inner.header_len()
    }

    /// Index of the tensor whose data is expected next.
    pub fn current_tensor(&self) -> usize {
        self.inner.current_tensor()
    }

    /// Appends bytes of the current tensor, hashing them on the way.
    pub fn write_tensor_data(&mut self, mut data: &[u8]) -> GgufResult<()> {
        while !data.is_empty() {
            let left = self.inner.current_remaining();
            if left == 0 {
                return Err(GgufError::Write("more tensor data than declared".into()));
            }
            let take = (left.min(data.len() as u64)) as usize;
            self.hasher.update(&data[..take]);
            self.inner.write_tensor_data(&data[..take])?;
            self.record_empty();
            data = &data[take..];
        }
        Ok(())
    }

    /// Finishes: fills in the caller's deferred strings, then the manifest.
    pub fn finish_deferred(mut self, values: &[(&str, &str)]) -> GgufResult<W> {
        let n = self.inner.specs().len();
        if self.digests.len() != n {
            // Let the writer name the incomplete tensor.
            return self.inner.finish();
        }
        let mut patches: Vec<(&str, Value)> = Vec::new();
        for (k, v) in values {
            if !self.caller_deferred.iter().any(|d| d == k) {
                return Err(GgufError::Write(format!("{k} was not deferred")));
            }
            self.metadata.set(k, Value::String(v.to_string()));
            patches.push((k, Value::String(v.to_string())));
        }
        let entries = Value::Array(crate::value::Array::String(ig::metadata_entries(
            &self.metadata,
        )));
        let digests = Value::Array(crate::value::Array::String(
            self.digests.iter().map(|d| ig::hex(d)).collect(),
        ));
        let size = Value::U64(self.inner.file_len());
        self.metadata.set(ig::KEY_FILE_SIZE, size.clone());
        self.metadata.set(ig::KEY_METADATA, entries.clone());
        self.metadata.set(ig::KEY_TENSOR_SHA256, digests.clone());
        let manifest = Value::String(ig::hex(&ig::manifest_digest(&self.metadata)));
        patches.push((ig::KEY_FILE_SIZE, size));
        patches.push((ig::KEY_METADATA, entries));
        patches.push((ig::KEY_TENSOR_SHA256, digests));
        patches.push((ig::KEY_MANIFEST_SHA256, manifest));
        self.inner.finish_patched(&patches)
    }
}

/// Plain or sealed output, as [`WriteOptions::seal`] says.
pub enum OutputWriter<W: Write + Seek> {
    /// Metadata written exactly as given.
    Plain(GgufWriter<W>),
    /// With an integrity manifest (boxed: it carries the metadata and hasher).
    Sealed(Box<SealingWriter<W>>),
}

impl<W: Write + Seek> OutputWriter<W> {
    /// Writes the header and returns a writer ready for tensor data.
    pub fn begin(
        w: W,
        metadata: &Metadata,
        tensors: Vec<TensorSpec>,
        opts: WriteOptions,
    ) -> GgufResult<Self> {
        Self::begin_deferred(w, metadata, tensors, opts, &[])
    }

    /// Like [`OutputWriter::begin`], with deferred string values filled in
    /// by [`OutputWriter::finish_deferred`] (covered by the manifest's
    /// metadata digests when sealing).
    pub fn begin_deferred(
        w: W,
        metadata: &Metadata,
        tensors: Vec<TensorSpec>,
        opts: WriteOptions,
        deferred: &[&str],
    ) -> GgufResult<Self> {
        Ok(if opts.seal {
            Self::Sealed(Box::new(SealingWriter::begin_deferred(
                w, metadata, tensors, opts.types, deferred,
            )?))
        } else {
            Self::Plain(GgufWriter::begin_deferred(
                w, metadata, tensors, opts.types, deferred,
            )?)
        })
    }

    /// Bytes of the header (metadata, tensor infos and padding).
    pub fn header_len(&self) -> u64 {
        match self {
            Self::Plain(w) => w.header_len(),
            Self::Sealed(w) => w.header_len(),
        }
    }

    /// Index of the tensor whose data is expected next.
    pub fn current_tensor(&self) -> usize {
        match self {
            Self::Plain(w) => w.current_tensor(),
            Self::Sealed(w) => w.current_tensor(),
        }
    }

    /// Appends bytes of the current tensor.
    pub fn write_tensor_data(&mut self, data: &[u8]) -> GgufResult<()> {
        match self {
            Self::Plain(w) => w.write_tensor_data(data),
            Self::Sealed(w) => w.write_tensor_data(data),
        }
    }

    /// Checks every tensor was written, patches, flushes, returns the writer.
    pub fn finish(self) -> GgufResult<W> {
        self.finish_deferred(&[])
    }

    /// [`OutputWriter::finish`], first filling in the deferred string values.
    pub fn finish_deferred(self, values: &[(&str, &str)]) -> GgufResult<W> {
        match self {
            Self::Plain(w) => w.finish_deferred(values),
            Self::Sealed(w) => (*w).finish_deferred(values),
        }
    }
}

/// Writes `file` again: its metadata and every tensor's bytes, in the
/// canonical layout (sealed if `opts.seal`).
pub fn rewrite<W: Write + Seek>(file: &crate::GgufFile, w: W, opts: WriteOptions) -> GgufResult<W> {
    let h = file.header();
    let specs = h.tensors.iter().map(TensorSpec::from).collect();
    let mut writer = OutputWriter::begin(w, &h.metadata, specs, opts)?;
    for i in 0..h.tensors.len() {
        writer.write_tensor_data(file.tensor_data(i))?;
    }
    writer.finish()
}
