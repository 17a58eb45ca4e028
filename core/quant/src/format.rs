//! The traits a format plugin implements.
//!
//! A format is a ggml tensor type (standard or gguftool's own) that the
//! toolkit can decode, and optionally encode. Plugins describe themselves
//! with [`Format`], decode with a [`Kernel`], encode with a [`Quantizer`],
//! train with a [`DifferentiableQuantizer`], and register with
//! [`crate::register_format!`].

use crate::activation::Q8Activations;

/// A SIMD instruction-set level a kernel can run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum SimdLevel {
    /// Portable reference code.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
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

/// Decoding and dot-product kernels of a format, per SIMD level.
///
/// Implementations must be sound for any `level`: run SIMD code only when
/// [`crate::simd::supported`] says the CPU has it, else fall back.
pub trait Kernel: Sync + Send {
    /// SIMD levels implemented (scalar always).
    fn simd_levels(&self) -> &'static [SimdLevel] {
        &[SimdLevel::Scalar]
    }

    /// Decodes whole blocks at `level`; lengths are checked by the caller.
    fn dequantize_at(&self, level: SimdLevel, src: &[u8], dst: &mut [f32]);

    /// Dot product of whole encoded blocks with `x` at `level`; lengths are
    /// checked by the caller. The default decodes and sums in f32.
    fn dot_at(&self, level: SimdLevel, src: &[u8], x: &[f32]) -> f32 {
        let mut tmp = vec![0f32; x.len()];
        self.dequantize_at(level, src, &mut tmp);
        tmp.iter().zip(x).map(|(a, b)| a * b).sum()
    }

    /// Dot product of whole encoded blocks with 8-bit activations (the fast
    /// path for matvec). The default decodes both sides to f32.
    fn dot_q8_at(&self, level: SimdLevel, src: &[u8], x: &Q8Activations) -> f32 {
        self.dot_at(level, src, &x.dequantized())
    }
}

/// A tensor type the toolkit understands: geometry plus its kernels and,
/// optionally, an encoder and a differentiable (QAT) quantizer.
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
    /// Decoding and dot kernels.
    fn kernel(&self) -> &dyn Kernel;

    /// Encoder, when the format can quantize.
    fn quantizer(&self) -> Option<&dyn Quantizer> {
        None
    }

    /// Fake-quant forward and STE backward, when the format supports QAT.
    fn differentiable(&self) -> Option<&dyn DifferentiableQuantizer> {
        None
    }

    /// The whole-row basis change applied before block encoding, if any
    /// (e.g. a randomized Hadamard rotation). Blocks of such a format hold
    /// rotated values: [`Format::dequantize`] returns them in the rotated
    /// basis, and [`crate::rows::RowCodec`] decodes rows to the original one.
    fn row_transform(&self) -> Option<&dyn RowTransform> {
        None
    }

    /// Whether encoding a full-precision model's weights directly
    /// (post-training) is a sensible use of the format. Formats meant for
    /// weights trained for them (ternary) return false, and the
    /// mixed-precision allocator leaves them out of its default candidates.
    fn suits_post_training(&self) -> bool {
        true
    }

    /// Stored bits per weight, scales included.
    fn bits_per_weight(&self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }

    /// SIMD levels this format's kernels implement.
    fn simd_levels(&self) -> &'static [SimdLevel] {
        self.kernel().simd_levels()
    }

    /// Decodes `src` (whole blocks) into `dst` at the active SIMD level.
    fn dequantize(&self, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
        self.dequantize_with(crate::simd::active(), src, dst)
    }

    /// Decodes at the highest implemented level not above `cap`.
    fn dequantize_with(
        &self,
        cap: SimdLevel,
        src: &[u8],
        dst: &mut [f32],
    ) -> Result<(), KernelError> {
        check_lengths(self, src.len(), dst.len())?;
        let k = self.kernel();
        k.dequantize_at(crate::simd::pick(k.simd_levels(), cap), src, dst);
        Ok(())
    }

    /// Dot product of encoded blocks with `x` at the active SIMD level.
    fn dot(&self, src: &[u8], x: &[f32]) -> Result<f32, KernelError> {
        self.dot_with(crate::simd::active(), src, x)
    }

    /// Dot product at the highest implemented level not above `cap`.
    fn dot_with(&self, cap: SimdLevel, src: &[u8], x: &[f32]) -> Result<f32, KernelError> {
        check_lengths(self, src.len(), x.len())?;
        let k = self.kernel();
        Ok(k.dot_at(crate::simd::pick(k.simd_levels(), cap), src, x))
    }

    /// Dot product with 8-bit activations at the active SIMD level.
    fn dot_q8(&self, src: &[u8], x: &Q8Activations) -> Result<f32, KernelError> {
        self.dot_q8_with(crate::simd::active(), src, x)
    }

    /// Dot product with 8-bit activations at the highest implemented level
    /// not above `cap`. The row length must be a multiple of 32.
    fn dot_q8_with(
        &self,
        cap: SimdLevel,
        src: &[u8],
        x: &Q8Activations,
    ) -> Result<f32, KernelError> {
        check_lengths(self, src.len(), x.len())?;
        let k = self.kernel();
        Ok(k.dot_q8_at(crate::simd::pick(k.simd_levels(), cap), src, x))
    }
}

/// An orthogonal basis change of whole rows, chosen by a row length and a
/// seed stored in the file (see [`crate::rows`]).
pub trait RowTransform: Sync + Send {
    /// Builds the transform for rows of `row_len` elements, or explains why
    /// that length is not supported.
    fn prepare(&self, row_len: usize, seed: u64) -> Result<Box<dyn PreparedRowTransform>, String>;
}

/// A [`RowTransform`] fixed to one row length and seed.
pub trait PreparedRowTransform: Sync + Send {
    /// Rotates `row` in place into the basis the blocks are encoded in.
    fn forward(&self, row: &mut [f32]);
    /// Undoes [`PreparedRowTransform::forward`].
    fn inverse(&self, row: &mut [f32]);
    /// Per-element importance in the rotated basis for a diagonal importance
    /// `imp` in the original one: the diagonal of `U diag(imp) U^T`.
    fn importance(&self, imp: &[f32]) -> Vec<f32>;

    /// Encodes whole rows given in the original basis, with `importance`
    /// (per element, original basis), when the format can use the full
    /// rotated importance rather than its diagonal (e.g. error feedback).
    /// Returns false to let the caller rotate and encode block by block.
    fn encode_weighted(&self, rows: &[f32], importance: &[f32], dst: &mut [u8]) -> bool {
        let _ = (rows, importance, dst);
        false
    }
}

/// Straight-through estimator variants for the backward pass of rounding.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ste {
    /// Gradient passes through rounding and clamping unchanged.
    Standard,
    /// Passes through only where |w| is within `clip` times the grid's reach.
    Clipped {
        /// Fraction of the grid's reach (1.0 = the clamping edge).
        clip: f32,
    },
    /// LSQ: pass-through inside the grid, zero outside, plus a scale gradient
    /// scaled by 1/sqrt(group size * max level).
    LearnedStepSize,
    /// EWGS: element-wise gradient scaling by the rounding residual, with LSQ's scale gradient.
    Ewgs {
        /// Scaling strength.
        lambda: f32,
    },
}

/// Fake quantization for quantization-aware training.
pub trait DifferentiableQuantizer: Sync + Send {
    /// Weights per learnable scale.
    fn group_size(&self) -> usize;
    /// Initial scales (one per group), as the encoder would choose them.
    fn init_scales(&self, w: &[f32], importance: Option<&[f32]>, scales: &mut [f32]);
    /// Fake-quant forward: the values the encoded weights decode to.
    fn forward(&self, w: &[f32], scales: &[f32], out: &mut [f32]);
    /// Backward: gradients for the latent weights and the scales, given the
    /// gradient of the loss with respect to the forward output.
    fn backward(
        &self,
        w: &[f32],
        scales: &[f32],
        grad_out: &[f32],
        ste: Ste,
        grad_w: &mut [f32],
        grad_scales: &mut [f32],
    );
    /// Encodes `w` with the given (trained) scales into whole blocks.
    fn export(&self, w: &[f32], scales: &[f32], dst: &mut [u8]);
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
