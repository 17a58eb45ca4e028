//! Parsed header types and the zero-copy file handle.

use crate::error::{Error, Result};
use crate::validate::TypeResolver;
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub use crate::read::parse_header;
pub use crate::value::{Array, Metadata, StrArray, Value, ValueType};

/// One tensor's description from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dimensions, innermost (row length) first, as stored.
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ggml_type: u32,
    /// Name of the type.
    pub type_name: &'static str,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Number of elements.
    pub n_elements: u64,
    /// Exact data size in bytes (padding excluded).
    pub n_bytes: u64,
    /// Byte offset in the file where this tensor's info record starts.
    pub info_offset: u64,
}

impl TensorInfo {
    /// Row length (`ne[0]`), 1 for scalars.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (elements / row length).
    pub fn n_rows(&self) -> u64 {
        self.n_elements.checked_div(self.row_len()).unwrap_or(0)
    }

    /// Stored bits per weight (0 for empty tensors).
    pub fn bits_per_weight(&self) -> f64 {
        if self.n_elements == 0 {
            0.0
        } else {
            self.n_bytes as f64 * 8.0 / self.n_elements as f64
        }
    }
}

/// A parsed, validated GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Metadata,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment.
    pub alignment: u64,
    /// Byte offset where the tensor-info section ends.
    pub infos_end: u64,
    /// Byte offset where the data section starts.
    pub data_offset: u64,
}

impl GgufHeader {
    /// True when tensors are stored in info order, each at the next aligned
    /// offset: the layout llama.cpp's loader requires.
    pub fn is_canonical_layout(&self) -> bool {
        let mut expect = 0u64;
        for t in &self.tensors {
            if t.offset != expect {
                return false;
            }
            expect = (t.offset + t.n_bytes).div_ceil(self.alignment) * self.alignment;
        }
        true
    }

    /// Index of the tensor called `name`.
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }
}

enum Backing {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

/// An open GGUF file: validated header plus zero-copy access to tensor data.
pub struct GgufFile {
    path: PathBuf,
    backing: Backing,
    header: GgufHeader,
}

impl GgufFile {
    /// Memory-maps and validates `path`.
    ///
    /// The file must not be modified while it is open (the usual caveat of
    /// memory mapping).
    /// Private tensor type ids are resolved through `types`.
    pub fn open(path: impl AsRef<Path>, types: &dyn TypeResolver) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let backing = if len == 0 {
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: read-only mapping; callers are told not to modify the file while open.
            Backing::Mapped(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?)
        };
        Self::from_backing(path, backing, types)
    }

    /// Validates an in-memory file.
    pub fn from_bytes(
        name: impl Into<PathBuf>,
        bytes: Vec<u8>,
        types: &dyn TypeResolver,
    ) -> Result<Self> {
        Self::from_backing(name.into(), Backing::Owned(bytes), types)
    }

    fn from_backing(path: PathBuf, backing: Backing, types: &dyn TypeResolver) -> Result<Self> {
        let bytes: &[u8] = match &backing {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        };
        let header = parse_header(bytes, types).map_err(|source| Error::Gguf {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            backing,
            header,
        })
    }

    /// The file's path (or name for in-memory files).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// Length of the file in bytes.
    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// True for an empty file (never true for a parsed one).
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }

    /// The exact data bytes of tensor `i` (validated in bounds at open).
    pub fn tensor_data(&self, i: usize) -> &[u8] {
        let t = &self.header.tensors[i];
        if t.n_bytes == 0 {
            return &[];
        }
        let start = (self.header.data_offset + t.offset) as usize;
        &self.bytes()[start..start + t.n_bytes as usize]
    }
}
