//! Typed errors for everything that reads, validates or writes GGUF.
//!
//! Every variant names the field, key or tensor involved and, where the
//! problem sits in the file, the byte offset at which it was found.

use std::path::PathBuf;

/// Errors raised while parsing or validating a GGUF byte stream.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GgufError {
    /// The file ends before a field is complete.
    #[error("truncated file: {what} at byte offset {offset} needs {needed} bytes but only {available} remain")]
    Truncated {
        /// The field being read.
        what: String,
        /// Offset where the field starts.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("bad magic at byte offset 0: expected \"GGUF\", found {found:02x?}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A big-endian GGUF file (only little-endian is supported).
    #[error("unsupported byte order at byte offset 4: big-endian GGUF (version field {raw:#010x}) is not supported")]
    BigEndian {
        /// The version field as read little-endian.
        raw: u32,
    },
    /// A version other than 2 or 3.
    #[error("unsupported GGUF version {version} at byte offset 4 (supported: 2, 3)")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// A declared count cannot fit in the bytes that remain.
    #[error("{what} at byte offset {offset} declares {count} entries, but the {available} remaining bytes can hold at most {max}")]
    CountTooLarge {
        /// The counted field.
        what: String,
        /// Offset of the count.
        offset: u64,
        /// The declared count.
        count: u64,
        /// Upper bound given the remaining bytes.
        max: u64,
        /// Bytes remaining.
        available: u64,
    },
    /// A metadata value type id outside 0..=12.
    #[error("unknown metadata value type {raw} for {what} at byte offset {offset}")]
    UnknownValueType {
        /// The key or element being read.
        what: String,
        /// Offset of the type id.
        offset: u64,
        /// The raw type id.
        raw: u32,
    },
    /// A string that is not valid UTF-8.
    #[error("invalid UTF-8 in {what} at byte offset {offset}")]
    InvalidUtf8 {
        /// The field being read.
        what: String,
        /// Offset of the string bytes.
        offset: u64,
    },
    /// A bool stored as something other than 0 or 1.
    #[error("invalid bool {value} in {what} at byte offset {offset} (must be 0 or 1)")]
    InvalidBool {
        /// The key or element being read.
        what: String,
        /// Offset of the byte.
        offset: u64,
        /// The byte found.
        value: u8,
    },
    /// A key or tensor name longer than the limit.
    #[error("{what} at byte offset {offset} is {len} bytes long; the limit is {limit}")]
    StringTooLong {
        /// The field being read.
        what: String,
        /// Offset of the length.
        offset: u64,
        /// Declared length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A metadata key that is empty.
    #[error("empty metadata key at byte offset {offset}")]
    EmptyKey {
        /// Offset of the key.
        offset: u64,
    },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key {key:?} at byte offset {offset}")]
    DuplicateKey {
        /// The key.
        key: String,
        /// Offset of the second occurrence.
        offset: u64,
    },
    /// Arrays nested deeper than the limit.
    #[error("{what} at byte offset {offset}: arrays nested deeper than {limit} levels")]
    NestingTooDeep {
        /// The key being read.
        what: String,
        /// Offset of the nested array.
        offset: u64,
        /// The depth limit.
        limit: u32,
    },
    /// `general.alignment` is not a u32 power of two.
    #[error("invalid general.alignment: {reason}")]
    BadAlignment {
        /// What is wrong.
        reason: String,
    },
    /// Two tensors share a name.
    #[error("duplicate tensor name {tensor:?} at byte offset {offset}")]
    DuplicateTensor {
        /// The name.
        tensor: String,
        /// Offset of the second tensor info.
        offset: u64,
    },
    /// A tensor name is empty.
    #[error("empty tensor name at byte offset {offset}")]
    EmptyTensorName {
        /// Offset of the tensor info.
        offset: u64,
    },
    /// A tensor type id that is not known.
    #[error("tensor {tensor:?}: unknown ggml type id {raw} at byte offset {offset}")]
    UnknownTensorType {
        /// The tensor.
        tensor: String,
        /// Offset of the type id.
        offset: u64,
        /// The raw id.
        raw: u32,
    },
    /// A tensor type id that llama.cpp has removed.
    #[error("tensor {tensor:?}: ggml type id {raw} ({name}) was removed from llama.cpp and cannot be read, at byte offset {offset}")]
    RemovedTensorType {
        /// The tensor.
        tensor: String,
        /// Offset of the type id.
        offset: u64,
        /// The raw id.
        raw: u32,
        /// The historical name.
        name: &'static str,
    },
    /// More than four dimensions.
    #[error("tensor {tensor:?}: {n_dims} dimensions at byte offset {offset} (at most 4)")]
    TooManyDims {
        /// The tensor.
        tensor: String,
        /// Offset of n_dims.
        offset: u64,
        /// Declared dimension count.
        n_dims: u32,
    },
    /// A dimension, element count or byte size that overflows.
    #[error("tensor {tensor:?}: shape {dims:?} overflows (element count or byte size exceeds 2^63-1), at byte offset {offset}")]
    ShapeOverflow {
        /// The tensor.
        tensor: String,
        /// Offset of the dims.
        offset: u64,
        /// The dims.
        dims: Vec<u64>,
    },
    /// The row length is not a multiple of the type's block size.
    #[error("tensor {tensor:?}: row length ne[0]={ne0} is not a multiple of the {type_name} block size {block}")]
    RowNotBlockMultiple {
        /// The tensor.
        tensor: String,
        /// Row length.
        ne0: u64,
        /// Type name.
        type_name: String,
        /// Block size.
        block: u64,
    },
    /// A tensor's data offset is not aligned.
    #[error(
        "tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        /// The tensor.
        tensor: String,
        /// Offset relative to the data section.
        offset: u64,
        /// The alignment.
        alignment: u64,
    },
    /// A tensor's data extends beyond the end of the file.
    #[error("tensor {tensor:?}: data [{start}, {end}) lies outside the file of {file_len} bytes")]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Absolute start.
        start: u64,
        /// Absolute end (exclusive); saturated on overflow.
        end: u64,
        /// File size.
        file_len: u64,
    },
    /// Two tensors' data ranges overlap.
    #[error("tensor {tensor:?}: data overlaps tensor {other:?}")]
    TensorOverlap {
        /// The tensor.
        tensor: String,
        /// The tensor it overlaps.
        other: String,
    },
    /// A writer was given inconsistent input.
    #[error("write error: {0}")]
    Write(String),
}

/// Errors from the file-level API: I/O, parsing, integrity and conversion.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is malformed.
    #[error("{path}: {source}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// The parse or validation error.
        #[source]
        source: GgufError,
    },
    /// An operating-system I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An I/O failure while mapping or reading one part of a file, naming
    /// that part (e.g. `tensor "x": mapping 32.0 MiB at offset 4096`).
    #[error("{path}: {what} failed: {source}")]
    IoAt {
        /// The file.
        path: PathBuf,
        /// What was being mapped or read.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The output file exists and overwriting was not allowed.
    #[error("{0}: output exists")]
    OutputExists(PathBuf),
    /// A tensor type has no registered format that can do what was asked.
    #[error("tensor {tensor:?}: {reason}")]
    Unsupported {
        /// The tensor.
        tensor: String,
        /// Why.
        reason: String,
    },
    /// A format's encoder or decoder refused its input.
    #[error("tensor {tensor:?}: {source}")]
    Kernel {
        /// The tensor.
        tensor: String,
        /// The kernel error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Anything else, with a message.
    #[error("{0}")]
    Other(String),
}

/// Result alias for parse-level functions.
pub type GgufResult<T> = std::result::Result<T, GgufError>;
/// Result alias for file-level functions.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps an I/O error with the path and the part of the file concerned.
    pub fn io_at(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        Error::IoAt {
            path: path.into(),
            what: what.into(),
            source,
        }
    }
}

/// A byte count for messages: `512 bytes`, `32.0 MiB`, `1.5 GiB`.
pub fn size_text(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if n >= GIB {
        format!("{:.1} GiB", n as f64 / GIB as f64)
    } else if n >= MIB {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    } else {
        format!("{n} bytes")
    }
}
