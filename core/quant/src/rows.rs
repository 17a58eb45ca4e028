//! Whole-row coding of a tensor: block decoding and encoding plus the
//! format's optional row transform, and matrix-vector products that rotate
//! the activation vector once instead of every row.
//!
//! The transform's seed is stored in the file under [`SEED_KEY`], so a file
//! decodes the same everywhere.

use crate::activation::Q8Activations;
use crate::format::{quantize, Format, KernelError, PreparedRowTransform};
use crate::registry;
use gguftool_gguf::error::Error;
use gguftool_gguf::value::{Metadata, Value};
use gguftool_gguf::{GgufFile, TensorInfo};

/// Metadata key holding the seed of every row transform in the file (u64).
pub const SEED_KEY: &str = "gguftool.row_transform.seed";

/// Seed written when the user gives none.
pub const DEFAULT_SEED: u64 = 0x5eed_9e37_79b9_7f4a;

/// The row-transform seed recorded in `md`, if any.
pub fn seed(md: &Metadata) -> Result<Option<u64>, KernelError> {
    match md.get(SEED_KEY) {
        None => Ok(None),
        Some(Value::U64(s)) => Ok(Some(*s)),
        Some(v) => Err(KernelError::Unsupported(format!(
            "metadata {SEED_KEY} must be a u64, found {}",
            v.value_type().name()
        ))),
    }
}

/// The decoder of tensor `index` of `file`: its registered format, its row
/// length and the file's seed.
pub fn tensor_decoder(file: &GgufFile, index: usize) -> gguftool_gguf::Result<RowCodec<'static>> {
    let t = &file.header().tensors[index];
    let fmt = registry::by_type_id(t.ggml_type).ok_or_else(|| Error::Unsupported {
        tensor: t.name.clone(),
        reason: format!("no decoder for {}", t.type_name),
    })?;
    let kernel_err = |source: crate::format::KernelError| Error::Kernel {
        tensor: t.name.clone(),
        source: source.into(),
    };
    let seed = seed(&file.header().metadata).map_err(kernel_err)?;
    RowCodec::new(fmt, t.row_len() as usize, seed).map_err(kernel_err)
}

/// Whether rows of `row_len` can be encoded in `f` (block multiple, and a
/// length its row transform supports).
pub fn fits(f: &dyn Format, row_len: u64) -> bool {
    row_len.is_multiple_of(f.block_size() as u64)
        && f.row_transform()
            .is_none_or(|rt| rt.prepare(row_len as usize, DEFAULT_SEED).is_ok())
}

/// Importance of row `row` of `info`, from a per-column vector that holds
/// one `row_len` slice per matrix (or one slice shared by all).
pub fn row_importance<'a>(info: &TensorInfo, imp: &'a [f32], row: u64) -> &'a [f32] {
    let row_len = info.row_len() as usize;
    let rows_per_mat = info.dims.get(1).copied().unwrap_or(1).max(1);
    let mat = if imp.len() > row_len {
        (row / rows_per_mat) as usize
    } else {
        0
    };
    &imp[mat * row_len..(mat + 1) * row_len]
}

/// Decodes and encodes whole rows of one tensor in its original basis.
pub struct RowCodec<'a> {
    format: &'a dyn Format,
    row_len: usize,
    transform: Option<Box<dyn PreparedRowTransform>>,
}

impl<'a> RowCodec<'a> {
    /// A codec for rows of `row_len` elements of `format`. `seed` is the
    /// file's [`SEED_KEY`]; formats with a row transform need it.
    pub fn new(
        format: &'a dyn Format,
        row_len: usize,
        seed: Option<u64>,
    ) -> Result<Self, KernelError> {
        if row_len == 0 || !row_len.is_multiple_of(format.block_size()) {
            return Err(KernelError::BadLength {
                what: "row",
                len: row_len,
                expected: format!(
                    "a non-zero multiple of the {} block size {}",
                    format.name(),
                    format.block_size()
                ),
            });
        }
        let transform = match format.row_transform() {
            None => None,
            Some(t) => {
                let seed = seed.ok_or_else(|| {
                    KernelError::Unsupported(format!(
                        "{} needs the row-transform seed (metadata {SEED_KEY}), which the file lacks",
                        format.name()
                    ))
                })?;
                Some(t.prepare(row_len, seed).map_err(KernelError::Unsupported)?)
            }
        };
        Ok(Self {
            format,
            row_len,
            transform,
        })
    }

    /// Elements per row.
    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// The format.
    pub fn format(&self) -> &'a dyn Format {
        self.format
    }

    /// The prepared row transform, if the format has one.
    pub fn transform(&self) -> Option<&dyn PreparedRowTransform> {
        self.transform.as_deref()
    }

    /// Encoded bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_len / self.format.block_size() * self.format.type_size()
    }

    fn check_rows(&self, elems: usize) -> Result<usize, KernelError> {
        if !elems.is_multiple_of(self.row_len) {
            return Err(KernelError::BadLength {
                what: "rows",
                len: elems,
                expected: format!("a multiple of the row length {}", self.row_len),
            });
        }
        Ok(elems / self.row_len)
    }

    /// Decodes whole rows into `dst`, in the original basis.
    pub fn decode(&self, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
        self.check_rows(dst.len())?;
        self.format.dequantize(src, dst)?;
        if let Some(t) = &self.transform {
            dst.chunks_exact_mut(self.row_len)
                .for_each(|r| t.inverse(r));
        }
        Ok(())
    }

    /// Encodes whole rows of `src`; `importance` (same length) weights the
    /// error per element in the original basis.
    pub fn encode(
        &self,
        src: &[f32],
        importance: Option<&[f32]>,
        dst: &mut [u8],
    ) -> Result<(), KernelError> {
        self.check_rows(src.len())?;
        let Some(t) = &self.transform else {
            return quantize(self.format, src, importance, dst);
        };
        if let Some(imp) = importance {
            if imp.len() != src.len() || dst.len() != src.len() / self.row_len * self.row_bytes() {
                return Err(KernelError::BadLength {
                    what: "importance or encoded rows",
                    len: imp.len(),
                    expected: format!(
                        "{} elements and {} bytes",
                        src.len(),
                        src.len() / self.row_len * self.row_bytes()
                    ),
                });
            }
            if t.encode_weighted(src, imp, dst) {
                return Ok(());
            }
        }
        let mut rotated = src.to_vec();
        rotated
            .chunks_exact_mut(self.row_len)
            .for_each(|r| t.forward(r));
        let imp = importance.map(|imp| {
            imp.chunks(self.row_len)
                .flat_map(|r| t.importance(r))
                .collect::<Vec<f32>>()
        });
        quantize(self.format, &rotated, imp.as_deref(), dst)
    }

    /// `x` in the basis the blocks are encoded in.
    pub fn rotate_activations(&self, x: &[f32]) -> Vec<f32> {
        let mut v = x.to_vec();
        if let Some(t) = &self.transform {
            t.forward(&mut v);
        }
        v
    }

    /// `y = W x` for the encoded rows `src` (one output per row), with f32
    /// activations; `x` is rotated once when the format has a transform.
    pub fn matvec(&self, src: &[u8], x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
        self.check_matvec(src.len(), x.len(), y.len())?;
        let x = self.rotate_activations(x);
        for (row, out) in src.chunks_exact(self.row_bytes()).zip(y.iter_mut()) {
            *out = self.format.dot(row, &x)?;
        }
        Ok(())
    }

    /// [`RowCodec::matvec`] with the (rotated) activations quantized to 8 bits once.
    pub fn matvec_q8(&self, src: &[u8], x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
        self.check_matvec(src.len(), x.len(), y.len())?;
        let q = Q8Activations::quantize(&self.rotate_activations(x))?;
        for (row, out) in src.chunks_exact(self.row_bytes()).zip(y.iter_mut()) {
            *out = self.format.dot_q8(row, &q)?;
        }
        Ok(())
    }

    fn check_matvec(&self, bytes: usize, x: usize, y: usize) -> Result<(), KernelError> {
        if x != self.row_len {
            return Err(KernelError::BadLength {
                what: "activations",
                len: x,
                expected: format!("the row length {}", self.row_len),
            });
        }
        if bytes != y * self.row_bytes() {
            return Err(KernelError::BadLength {
                what: "encoded rows",
                len: bytes,
                expected: format!("{} bytes for {y} rows", y * self.row_bytes()),
            });
        }
        Ok(())
    }
}
