//! The traits a format plugin implements.
//!
//! A format is a ggml tensor type (standard or gguftool's own) that the
//! toolkit can decode, and optionally encode. Plugins describe themselves
//! with [`Format`], decode with a [`Kernel`], encode with a [`Quantizer`],
//! train with a [`DifferentiableQuantizer`], and register with
//! [`crate::register_format!`].

use crate::activation::{Q8Activations, Q8KActivations, VecDotType};
pub use crate::error::KernelError;
pub use crate::simd::SimdLevel;
use std::cell::RefCell;

thread_local! {
    /// Per-thread scratch for the decode-then-dot fallbacks (grown, never
    /// shrunk, so the fallbacks do not allocate per call).
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with two per-thread f32 buffers of `a` and `b` elements
/// (fresh ones when called re-entrantly).
pub fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let Ok(mut s) = s.try_borrow_mut() else {
            return f(&mut vec![0.0; a], &mut vec![0.0; b]);
        };
        let (x, y) = &mut *s;
        if x.len() < a {
            x.resize(a, 0.0);
        }
        if y.len() < b {
            y.resize(b, 0.0);
        }
        f(&mut x[..a], &mut y[..b])
    })
}

/// Decoding and dot-product kernels of a format, per SIMD level.
///
/// The methods are `unsafe`: kernels index their buffers without checking
/// them against each other. Every caller must uphold the **kernel
/// contract**: `src` holds `n` whole blocks (`n * type_size` bytes), every
/// other buffer holds exactly `n * block_size` elements, and `level` is one
/// of [`Kernel::simd_levels`] that [`crate::simd::supported`] reports for
/// this CPU. The safe entry points ([`Format::dequantize_with`],
/// [`Format::dot_q8_with`], [`crate::kernels::KernelTable`]) check all three.
pub trait Kernel: Sync + Send {
    /// SIMD levels implemented (scalar always).
    fn simd_levels(&self) -> &'static [SimdLevel] {
        &[SimdLevel::Scalar]
    }

    /// The activation block type of the fast dot ([`Kernel::dot_q8_at`] for
    /// [`VecDotType::Q8_0`], [`Kernel::dot_q8k_at`] for [`VecDotType::Q8K`],
    /// [`Kernel::dot_at`] for [`VecDotType::F32`]).
    fn vec_dot_type(&self) -> VecDotType {
        VecDotType::Q8_0
    }

    /// Decodes whole blocks at `level`.
    ///
    /// # Safety
    /// The kernel contract (see [`Kernel`]).
    unsafe fn dequantize_at(&self, level: SimdLevel, src: &[u8], dst: &mut [f32]);

    /// Dot product of whole encoded blocks with `x` at `level`. The default
    /// decodes into per-thread scratch and sums in f32.
    ///
    /// # Safety
    /// The kernel contract (see [`Kernel`]), with `x` as the other buffer.
    unsafe fn dot_at(&self, level: SimdLevel, src: &[u8], x: &[f32]) -> f32 {
        with_scratch(x.len(), 0, |tmp, _| {
            // SAFETY: forwarded contract; tmp has x.len() elements.
            unsafe { self.dequantize_at(level, src, tmp) };
            tmp.iter().zip(x).map(|(a, b)| a * b).sum()
        })
    }

    /// Dot product of whole encoded blocks with 8-bit activations in blocks
    /// of 32. The default decodes both sides to f32.
    ///
    /// # Safety
    /// The kernel contract (see [`Kernel`]), with `x.len()` elements.
    unsafe fn dot_q8_at(&self, level: SimdLevel, src: &[u8], x: &Q8Activations) -> f32 {
        with_scratch(x.len(), x.len(), |w, a| {
            // SAFETY: forwarded contract; w has x.len() elements.
            unsafe { self.dequantize_at(level, src, w) };
            dequantize_q8(x, a);
            w.iter().zip(a.iter()).map(|(p, q)| p * q).sum()
        })
    }

    /// Dot product of whole encoded blocks with 8-bit activations in blocks
    /// of 256. The default decodes both sides to f32.
    ///
    /// # Safety
    /// The kernel contract (see [`Kernel`]), with `x.len()` elements.
    unsafe fn dot_q8k_at(&self, level: SimdLevel, src: &[u8], x: &Q8KActivations) -> f32 {
        with_scratch(x.len(), x.len(), |w, a| {
            // SAFETY: forwarded contract; w has x.len() elements.
            unsafe { self.dequantize_at(level, src, w) };
            for ((o, q), d) in a
                .chunks_exact_mut(crate::activation::Q8K_BLOCK)
                .zip(x.qs().chunks_exact(crate::activation::Q8K_BLOCK))
                .zip(x.d())
            {
                o.iter_mut().zip(q).for_each(|(o, &q)| *o = q as f32 * d);
            }
            w.iter().zip(a.iter()).map(|(p, q)| p * q).sum()
        })
    }
}

fn dequantize_q8(x: &Q8Activations, out: &mut [f32]) {
    for ((o, q), d) in out
        .chunks_exact_mut(crate::activation::Q8_BLOCK)
        .zip(x.qs().chunks_exact(crate::activation::Q8_BLOCK))
        .zip(x.scales())
    {
        o.iter_mut().zip(q).for_each(|(o, &q)| *o = q as f32 * d);
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

    /// Two-phase encoder (block parameters, then each element rounded on
    /// its own), when the format's blocks are per-element roundings onto a
    /// grid fixed by a few parameters. GPTQ uses it to round column by
    /// column inside a block; formats without it are rounded block by block.
    fn block_grid(&self) -> Option<&dyn BlockGrid> {
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
        // SAFETY: lengths checked above; `pick` returns a supported level
        // among the kernel's own.
        unsafe { k.dequantize_at(crate::simd::pick(k.simd_levels(), cap), src, dst) };
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
        // SAFETY: lengths checked above; `pick` returns a supported level.
        Ok(unsafe { k.dot_at(crate::simd::pick(k.simd_levels(), cap), src, x) })
    }

    /// Dot product with 8-bit activations at the active SIMD level.
    fn dot_q8(&self, src: &[u8], x: &Q8Activations) -> Result<f32, KernelError> {
        self.dot_q8_with(crate::simd::active(), src, x)
    }

    /// Dot product with 8-bit activations in blocks of 32 at the highest
    /// implemented level `cap` allows.
    ///
    /// # Errors
    /// `src` is not whole blocks, or `x` does not have as many elements.
    fn dot_q8_with(
        &self,
        cap: SimdLevel,
        src: &[u8],
        x: &Q8Activations,
    ) -> Result<f32, KernelError> {
        check_lengths(self, src.len(), x.len())?;
        let k = self.kernel();
        // SAFETY: lengths checked above (the activation invariant ties its
        // scales and sums to its codes); `pick` returns a supported level.
        Ok(unsafe { k.dot_q8_at(crate::simd::pick(k.simd_levels(), cap), src, x) })
    }

    /// Dot product with 8-bit activations in blocks of 256 at the highest
    /// implemented level `cap` allows.
    ///
    /// # Errors
    /// `src` is not whole blocks, or `x` does not have as many elements.
    fn dot_q8k_with(
        &self,
        cap: SimdLevel,
        src: &[u8],
        x: &Q8KActivations,
    ) -> Result<f32, KernelError> {
        check_lengths(self, src.len(), x.len())?;
        let k = self.kernel();
        // SAFETY: as for `dot_q8_with`.
        Ok(unsafe { k.dot_q8k_at(crate::simd::pick(k.simd_levels(), cap), src, x) })
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
    /// gradient of the loss with respect to the forward output. Both are
    /// written, not accumulated: callers may pass buffers holding anything.
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
    /// The scales that whole encoded blocks `src` store, one per group
    /// into `scales`, such that [`DifferentiableQuantizer::forward`] of the
    /// blocks' decoded weights (in the quantizer's basis) at these scales
    /// gives those weights back: training can start exactly from a file.
    /// Returns `false` (scales untouched) where the format cannot say; the
    /// caller then re-derives them with
    /// [`DifferentiableQuantizer::init_scales`], which reproduces the file
    /// only for some formats.
    fn stored_scales(&self, src: &[u8], scales: &mut [f32]) -> bool {
        let _ = (src, scales);
        false
    }
}

/// A format's encoder split in two phases, so that a caller can round the
/// elements of a block one at a time after its parameters are fixed (GPTQ's
/// column-by-column rounding with error feedback inside a block; Frantar et
/// al. 2022, where the group's scale is chosen when the group is reached).
///
/// Contract: for a block packed by [`BlockGrid::pack`] from `params` and
/// the codes [`BlockGrid::round`] returned, the format's dequantization of
/// element `j` equals the value `round` returned with that code, bit for
/// bit. Every registered implementation is checked by
/// `formats/all/tests/block_grid.rs`.
pub trait BlockGrid: Sync + Send {
    /// Parameters per block (scales, sub-scales, mins), each an f32 holding
    /// the value exactly as the block stores it (after f16 rounding etc.).
    fn params_per_block(&self) -> usize;
    /// Chooses one block's parameters for the values `x` (`block_size`
    /// elements) with error weights `imp` (same length, >= 0), writing
    /// `params_per_block` values into `params`.
    fn fit(&self, x: &[f32], imp: &[f32], params: &mut [f32]);
    /// The nearest code to `v` for element `j` (`0..block_size`) of a block
    /// with `params`, and the value that code decodes to.
    fn round(&self, params: &[f32], j: usize, v: f32) -> (u8, f32);
    /// Writes one block (`type_size` bytes) from its parameters and the
    /// codes of its `block_size` elements.
    fn pack(&self, params: &[f32], codes: &[u8], dst: &mut [u8]);
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
