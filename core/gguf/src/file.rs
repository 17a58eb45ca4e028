//! Parsed header types and the zero-copy file handle.

use crate::error::{size_text, Error, Result};
use crate::read::{needs_more, parse_header_prefix};
use crate::validate::TypeResolver;
use memmap2::{Mmap, MmapOptions};
use std::fs::File;
use std::io::Read;
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
        let (file, len) = open_len(&path)?;
        let backing = map_whole(&file, len).map_err(|e| {
            Error::io_at(
                &path,
                format!("mapping the whole file ({})", size_text(len)),
                e,
            )
        })?;
        Self::from_backing(path, backing, types)
    }

    /// Parses `path`'s header from a bounded read of its start, without
    /// mapping the file; tensor data is then read through mappings of at
    /// most [`WINDOW`] bytes at a time (see [`TensorSource`]).
    ///
    /// The header is read in growing steps (first [`HEADER_FIRST_READ`]
    /// bytes, then at least doubling), never past what the parse has shown
    /// the header to need.
    pub fn open_header_only(
        path: impl AsRef<Path>,
        types: &dyn TypeResolver,
    ) -> Result<HeaderOnlyFile> {
        let path = path.as_ref().to_path_buf();
        let (file, len) = open_len(&path)?;
        HeaderOnlyFile::from_file(path, file, len, types)
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

fn open_len(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    Ok((file, len))
}

fn map_whole(file: &File, len: u64) -> std::io::Result<Backing> {
    Ok(if len == 0 {
        Backing::Owned(Vec::new())
    } else {
        // SAFETY: read-only mapping; callers are told not to modify the file while open.
        Backing::Mapped(unsafe { Mmap::map(file) }?)
    })
}

/// Largest mapping [`HeaderOnlyFile`] makes at once (and the chunk size in
/// which [`TensorSource::visit_tensor`] hands out data).
pub const WINDOW: u64 = 32 << 20;
/// Bytes read first when parsing a header from a stream.
pub const HEADER_FIRST_READ: u64 = 1 << 20;
/// Files larger than this are opened by [`open_source`] header-only, with
/// tensor data mapped a window at a time, rather than mapped whole.
pub const WHOLE_MAP_LIMIT: u64 = 1 << 30;

/// Tensor data of a parsed GGUF file, however it is reached: the whole-file
/// mapping of [`GgufFile`] or the windowed mappings of [`HeaderOnlyFile`].
pub trait TensorSource: Send + Sync {
    /// The file's path (or name for in-memory files).
    fn path(&self) -> &Path;
    /// The validated header.
    fn header(&self) -> &GgufHeader;
    /// Length of the file in bytes.
    fn file_len(&self) -> u64;
    /// Hands tensor `i`'s exact data bytes to `f`, in order, in chunks of at
    /// most [`WINDOW`] bytes (nothing for an empty tensor).
    ///
    /// # Errors
    /// A failed mapping or read, naming the tensor, the size and the offset.
    fn visit_tensor(&self, i: usize, f: &mut dyn FnMut(&[u8])) -> Result<()>;
}

impl TensorSource for GgufFile {
    fn path(&self) -> &Path {
        GgufFile::path(self)
    }
    fn header(&self) -> &GgufHeader {
        GgufFile::header(self)
    }
    fn file_len(&self) -> u64 {
        self.len()
    }
    fn visit_tensor(&self, i: usize, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        for chunk in self.tensor_data(i).chunks(WINDOW as usize) {
            f(chunk);
        }
        Ok(())
    }
}

/// A GGUF file opened by [`GgufFile::open_header_only`]: the header parsed
/// from a bounded read, tensor data mapped a window at a time on demand, so
/// address space stays bounded whatever the file's size.
pub struct HeaderOnlyFile {
    path: PathBuf,
    file: File,
    len: u64,
    header: GgufHeader,
}

impl HeaderOnlyFile {
    fn from_file(
        path: PathBuf,
        mut file: File,
        len: u64,
        types: &dyn TypeResolver,
    ) -> Result<Self> {
        let mut buf: Vec<u8> = Vec::new();
        let mut want = HEADER_FIRST_READ.min(len);
        let header = loop {
            let have = buf.len() as u64;
            let what = || format!("reading the header (bytes {have}..{want})");
            // Every size here is at most the file's length and at most twice
            // what the parse has reached, so reservations stay bounded by
            // the header itself.
            buf.try_reserve_exact((want - have) as usize).map_err(|e| {
                Error::io_at(
                    &path,
                    what(),
                    std::io::Error::new(std::io::ErrorKind::OutOfMemory, e),
                )
            })?;
            buf.resize(want as usize, 0);
            file.read_exact(&mut buf[have as usize..])
                .map_err(|e| Error::io_at(&path, what(), e))?;
            match parse_header_prefix(&buf, len, types) {
                Ok(h) => break h,
                Err(e) => match needs_more(&e, want, len) {
                    Some(end) => want = end.max(want.saturating_mul(2)).min(len),
                    None => return Err(Error::Gguf { path, source: e }),
                },
            }
        };
        Ok(Self {
            path,
            file,
            len,
            header,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// Length of the file in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file (never true for a parsed one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl TensorSource for HeaderOnlyFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn header(&self) -> &GgufHeader {
        &self.header
    }
    fn file_len(&self) -> u64 {
        self.len
    }
    fn visit_tensor(&self, i: usize, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        let t = &self.header.tensors[i];
        let start = self.header.data_offset + t.offset;
        let mut done = 0u64;
        while done < t.n_bytes {
            let n = (t.n_bytes - done).min(WINDOW);
            let at = start + done;
            // SAFETY: read-only mapping of a range validated in bounds at
            // open; callers are told not to modify the file while open.
            let map = unsafe {
                MmapOptions::new()
                    .offset(at)
                    .len(n as usize)
                    .map(&self.file)
            }
            .map_err(|e| {
                Error::io_at(
                    &self.path,
                    format!(
                        "tensor {:?}: mapping {} at offset {at}",
                        t.name,
                        size_text(n)
                    ),
                    e,
                )
            })?;
            #[cfg(unix)]
            let _ = map.advise(memmap2::Advice::Sequential);
            f(&map);
            done += n;
        }
        Ok(())
    }
}

/// Opens `path` for reading tensor data: mapped whole ([`GgufFile`]) when it
/// is at most [`WHOLE_MAP_LIMIT`] bytes and the mapping succeeds, otherwise
/// header-only with windowed mappings ([`HeaderOnlyFile`]), so a file larger
/// than the address space allows (`ulimit -v`) can still be verified.
pub fn open_source(
    path: impl AsRef<Path>,
    types: &dyn TypeResolver,
) -> Result<Box<dyn TensorSource>> {
    let path = path.as_ref().to_path_buf();
    let (file, len) = open_len(&path)?;
    if len <= WHOLE_MAP_LIMIT {
        if let Ok(backing) = map_whole(&file, len) {
            return Ok(Box::new(GgufFile::from_backing(path, backing, types)?));
        }
    }
    Ok(Box::new(HeaderOnlyFile::from_file(path, file, len, types)?))
}
