//! The traits a format plugin implements.
//!
//! A format is a ggml tensor type (standard or gguftool's own) that the
//! toolkit can decode, and optionally encode. Plugins describe themselves
//! with [`Format`] and register with [`crate::register_format!`].

/// A SIMD instruction-set level a kernel can run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum SimdLevel {
    /// Portable reference code.
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512F/BW.
    Avx512,
}

impl SimdLevel {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }
}

/// Errors a kernel raises on inputs of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A buffer length does not match the block geometry.
    #[error("{what}: length {len} does not match {expected}")]
    BadLength {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        len: usize,
        /// What was expected.
        expected: String,
    },
    /// The format cannot encode this input.
    #[error("{0}")]
    Unsupported(String),
}

/// A tensor type the toolkit understands.
pub trait Format: Sync + Send {
    /// Lower-case name used on the command line (e.g. `q8_0`, `piq3`).
    fn name(&self) -> &'static str;
    /// ggml type id stored in tensor infos.
    fn type_id(&self) -> u32;
    /// Elements per block.
    fn block_size(&self) -> usize;
    /// Bytes per block.
    fn type_size(&self) -> usize;
    /// One-line description.
    fn description(&self) -> &'static str;

    /// Stored bits per weight, scales included.
    fn bits_per_weight(&self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }

    /// SIMD levels this format's kernels implement (scalar always).
    fn simd_levels(&self) -> &'static [SimdLevel] {
        &[SimdLevel::Scalar]
    }

    /// Decodes whole blocks; `src.len() / type_size() * block_size() == dst.len()`
    /// is guaranteed by [`Format::dequantize`].
    fn dequantize_blocks(&self, src: &[u8], dst: &mut [f32]);

    /// Encoder, when the format can quantize.
    fn quantizer(&self) -> Option<&dyn Quantizer> {
        None
    }

    /// Decodes `src` (whole blocks) into `dst`, checking lengths.
    fn dequantize(&self, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
        check_lengths(self, src.len(), dst.len())?;
        self.dequantize_blocks(src, dst);
        Ok(())
    }
}

/// Encoding side of a format.
pub trait Quantizer: Sync + Send {
    /// Encodes whole blocks of `src` into `dst`; lengths are checked by
    /// [`quantize`]. `importance` (same length as `src`) weights the error.
    fn quantize_blocks(&self, src: &[f32], importance: Option<&[f32]>, dst: &mut [u8]);
}

fn check_lengths<F: Format + ?Sized>(f: &F, bytes: usize, elems: usize) -> Result<(), KernelError> {
    let (bs, ts) = (f.block_size(), f.type_size());
    if !bytes.is_multiple_of(ts) {
        return Err(KernelError::BadLength {
            what: "encoded buffer",
            len: bytes,
            expected: format!("a multiple of {ts} bytes ({} blocks)", f.name()),
        });
    }
    if bytes / ts * bs != elems {
        return Err(KernelError::BadLength {
            what: "decoded buffer",
            len: elems,
            expected: format!("{} elements for {} blocks", bytes / ts * bs, bytes / ts),
        });
    }
    Ok(())
}

/// Encodes `src` into `dst` with `format`'s quantizer, checking lengths.
pub fn quantize(
    format: &dyn Format,
    src: &[f32],
    importance: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let q = format
        .quantizer()
        .ok_or_else(|| KernelError::Unsupported(format!("{} cannot quantize", format.name())))?;
    check_lengths(format, dst.len(), src.len())?;
    if let Some(imp) = importance {
        if imp.len() != src.len() {
            return Err(KernelError::BadLength {
                what: "importance",
                len: imp.len(),
                expected: format!("{} elements", src.len()),
            });
        }
    }
    q.quantize_blocks(src, importance, dst);
    Ok(())
}
