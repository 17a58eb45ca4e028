//! Kernel tables: a tensor's kernels resolved once (format, SIMD level,
//! activation block type, row transform), as ggml's `type_traits_cpu` and
//! candle's `VecDotType`, so a runtime calls them per row with no lookup,
//! no level dispatch and no allocation per call.
//!
//! Every method checks its inputs and then calls the format's `unsafe`
//! kernels, whose contract it thereby upholds: safe code cannot make a
//! kernel read out of bounds.

use crate::activation::{Activations, VecDotType};
use crate::format::{Format, Kernel, KernelError, SimdLevel};
use crate::rows::RowCodec;
use gguftool_gguf::GgufFile;

/// The kernels of one tensor (one format, one row length, one seed).
pub struct KernelTable<'a> {
    codec: RowCodec<'a>,
    kernel: &'a dyn Kernel,
    level: SimdLevel,
    vec_dot_type: VecDotType,
}

impl<'a> KernelTable<'a> {
    /// Resolves the kernels of `format` for rows of `row_len` elements at
    /// the best level `cap` allows. `seed` is the file's row-transform seed
    /// (`gguftool.row_transform.seed`), needed by formats with a transform.
    ///
    /// # Errors
    /// A row length that is not a multiple of the format's block or of its
    /// activation block, or a transform that cannot be prepared.
    pub fn new(
        format: &'a dyn Format,
        row_len: usize,
        seed: Option<u64>,
        cap: SimdLevel,
    ) -> Result<Self, KernelError> {
        let codec = RowCodec::new(format, row_len, seed)?;
        let kernel = format.kernel();
        let vec_dot_type = kernel.vec_dot_type();
        if !row_len.is_multiple_of(vec_dot_type.block_size()) {
            return Err(KernelError::BadLength {
                what: "row",
                len: row_len,
                expected: format!(
                    "a multiple of the {} activation block {:?} ({})",
                    format.name(),
                    vec_dot_type,
                    vec_dot_type.block_size()
                ),
            });
        }
        let level = crate::simd::pick(kernel.simd_levels(), cap);
        Ok(Self {
            codec,
            kernel,
            level,
            vec_dot_type,
        })
    }

    /// The table of tensor `index` of `file`, at the active SIMD level.
    ///
    /// # Errors
    /// No registered format for the tensor's type, or as [`KernelTable::new`].
    pub fn for_tensor(
        file: &GgufFile,
        index: usize,
    ) -> gguftool_gguf::Result<KernelTable<'static>> {
        let codec = crate::rows::tensor_decoder(file, index)?;
        let t = &file.header().tensors[index];
        let seed = crate::rows::seed(&file.header().metadata).ok().flatten();
        KernelTable::new(codec.format(), codec.row_len(), seed, crate::simd::active()).map_err(
            |source| gguftool_gguf::Error::Kernel {
                tensor: t.name.clone(),
                source: source.into(),
            },
        )
    }

    /// The format.
    pub fn format(&self) -> &'a dyn Format {
        self.codec.format()
    }

    /// The SIMD level the kernels run at.
    pub fn level(&self) -> SimdLevel {
        self.level
    }

    /// The activation block type [`KernelTable::dot`] takes.
    pub fn vec_dot_type(&self) -> VecDotType {
        self.vec_dot_type
    }

    /// Elements per row.
    pub fn row_len(&self) -> usize {
        self.codec.row_len()
    }

    /// Encoded bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.codec.row_bytes()
    }

    /// Decodes whole rows into `dst` (original basis).
    ///
    /// # Errors
    /// Lengths that are not whole rows or do not match each other.
    pub fn dequantize_rows(&self, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
        self.codec.decode(src, dst)
    }

    /// Rotates `x` (one row length) into the basis the blocks are encoded
    /// in, when the format has a row transform, and quantizes it to the
    /// activation block type: do this once per activation vector and reuse
    /// the result for every row.
    ///
    /// # Errors
    /// `x.len()` is not the row length.
    pub fn quantize_activations(&self, x: &[f32]) -> Result<Activations, KernelError> {
        self.check_x(x.len())?;
        match self.codec.transform() {
            Some(t) => {
                let mut v = x.to_vec();
                t.forward(&mut v);
                self.vec_dot_type.quantize(&v)
            }
            None => self.vec_dot_type.quantize(x),
        }
    }

    fn check_x(&self, len: usize) -> Result<(), KernelError> {
        if len != self.row_len() {
            return Err(KernelError::BadLength {
                what: "activations",
                len,
                expected: format!("the row length {}", self.row_len()),
            });
        }
        Ok(())
    }

    fn check_activations(&self, x: &Activations) -> Result<(), KernelError> {
        if x.vec_dot_type() != self.vec_dot_type {
            return Err(KernelError::Unsupported(format!(
                "{} rows take {:?} activations, not {:?}",
                self.format().name(),
                self.vec_dot_type,
                x.vec_dot_type()
            )));
        }
        self.check_x(x.len())
    }

    /// # Safety
    /// `row` is one row (`row_bytes`) and `x` passed `check_activations`.
    #[inline]
    unsafe fn dot_unchecked(&self, row: &[u8], x: &Activations) -> f32 {
        // SAFETY: the caller checked the row length and that `x` is of this
        // table's block type and row length; `level` came from `pick`.
        unsafe {
            match x {
                Activations::F32(v) => self.kernel.dot_at(self.level, row, v),
                Activations::Q8_0(q) => self.kernel.dot_q8_at(self.level, row, q),
                Activations::Q8K(q) => self.kernel.dot_q8k_at(self.level, row, q),
            }
        }
    }

    /// Dot product of one encoded row with activations from
    /// [`KernelTable::quantize_activations`].
    ///
    /// # Errors
    /// A row of the wrong length, or activations of another block type or
    /// length.
    pub fn dot(&self, row: &[u8], x: &Activations) -> Result<f32, KernelError> {
        if row.len() != self.row_bytes() {
            return Err(KernelError::BadLength {
                what: "encoded row",
                len: row.len(),
                expected: format!("{} bytes", self.row_bytes()),
            });
        }
        self.check_activations(x)?;
        // SAFETY: both checked above.
        Ok(unsafe { self.dot_unchecked(row, x) })
    }

    /// The product of several rows with several activation columns:
    /// `out[c * n_rows + r] = row_r . xs[c]`, each row read once for all
    /// columns (batched prefill).
    ///
    /// # Errors
    /// `rows` is not whole rows, `out` is not `n_rows * xs.len()`, or a
    /// column is of the wrong block type or length.
    pub fn matmul(
        &self,
        rows: &[u8],
        xs: &[Activations],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let rb = self.row_bytes();
        if !rows.len().is_multiple_of(rb) {
            return Err(KernelError::BadLength {
                what: "encoded rows",
                len: rows.len(),
                expected: format!("a multiple of the row size {rb}"),
            });
        }
        let n_rows = rows.len() / rb;
        if out.len() != n_rows * xs.len() {
            return Err(KernelError::BadLength {
                what: "output",
                len: out.len(),
                expected: format!("{n_rows} rows x {} columns", xs.len()),
            });
        }
        for x in xs {
            self.check_activations(x)?;
        }
        for (r, row) in rows.chunks_exact(rb).enumerate() {
            for (c, x) in xs.iter().enumerate() {
                // SAFETY: every column checked above; `row` is one row.
                out[c * n_rows + r] = unsafe { self.dot_unchecked(row, x) };
            }
        }
        Ok(())
    }
}
