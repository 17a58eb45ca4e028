//! Activation blocks for integer dot products, as ggml's `vec_dot_type`s:
//! [`Q8Activations`] (blocks of 32, like ggml's Q8_0/Q8_1) for the 32- and
//! 64-element formats, [`Q8KActivations`] (blocks of 256, like ggml's Q8_K)
//! for the K-quants, and plain f32 for the float types.
//!
//! Fields are private: values are built only by the quantizers or by the
//! validating constructors, so kernels may rely on the invariants stated on
//! each type (lengths agree) without checking them again.

use crate::error::KernelError;

/// Elements per [`Q8Activations`] block.
pub const Q8_BLOCK: usize = 32;
/// Elements per [`Q8KActivations`] block (ggml's `QK_K`).
pub const Q8K_BLOCK: usize = 256;
/// Elements per partial sum of a [`Q8KActivations`] block.
pub const Q8K_SUB: usize = 16;

/// The activation block type a format's dot kernel consumes (ggml's
/// `vec_dot_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VecDotType {
    /// f32 values (float weight types).
    F32,
    /// int8 codes in blocks of 32 with an f32 scale and the code sum.
    Q8_0,
    /// int8 codes in blocks of 256 with an f32 scale and sums per 16.
    Q8K,
}

impl VecDotType {
    /// Elements per activation block.
    pub fn block_size(self) -> usize {
        match self {
            VecDotType::F32 => 1,
            VecDotType::Q8_0 => Q8_BLOCK,
            VecDotType::Q8K => Q8K_BLOCK,
        }
    }

    /// Quantizes `x` to this block type.
    ///
    /// # Errors
    /// `x.len()` is not a multiple of [`VecDotType::block_size`].
    pub fn quantize(self, x: &[f32]) -> Result<Activations, KernelError> {
        Ok(match self {
            VecDotType::F32 => Activations::F32(x.to_vec()),
            VecDotType::Q8_0 => Activations::Q8_0(Q8Activations::quantize(x)?),
            VecDotType::Q8K => Activations::Q8K(Q8KActivations::quantize(x)?),
        })
    }
}

/// One activation vector in the block type of some format's kernels.
#[derive(Debug, Clone, PartialEq)]
pub enum Activations {
    /// Plain values.
    F32(Vec<f32>),
    /// Blocks of 32.
    Q8_0(Q8Activations),
    /// Blocks of 256.
    Q8K(Q8KActivations),
}

impl Activations {
    /// The block type.
    pub fn vec_dot_type(&self) -> VecDotType {
        match self {
            Activations::F32(_) => VecDotType::F32,
            Activations::Q8_0(_) => VecDotType::Q8_0,
            Activations::Q8K(_) => VecDotType::Q8K,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Activations::F32(v) => v.len(),
            Activations::Q8_0(q) => q.len(),
            Activations::Q8K(q) => q.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn check_multiple(x: usize, block: usize, what: &'static str) -> Result<usize, KernelError> {
    if !x.is_multiple_of(block) {
        return Err(KernelError::BadLength {
            what,
            len: x,
            expected: format!("a multiple of {block}"),
        });
    }
    Ok(x / block)
}

/// A vector quantized to int8 in blocks of 32, with an f32 scale and the sum
/// of the codes per block (the sum lets kernels fold in a grid offset or a
/// min, as ggml's Q8_1 does).
///
/// Invariant: `qs.len() == 32 * scales.len() == 32 * sums.len()`, and each
/// sum is the sum of its block's codes.
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Activations {
    qs: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

impl Q8Activations {
    /// Quantizes `x` with absmax scaling, rounding to nearest like ggml's
    /// `quantize_row_q8_0_ref` (the scale is kept in f32, not f16).
    ///
    /// # Errors
    /// `x.len()` is not a multiple of 32.
    pub fn quantize(x: &[f32]) -> Result<Self, KernelError> {
        let n = check_multiple(x.len(), Q8_BLOCK, "activations")?;
        let mut qs = vec![0i8; n * Q8_BLOCK];
        let mut scales = Vec::with_capacity(n);
        let mut sums = Vec::with_capacity(n);
        for (xb, qb) in x.chunks_exact(Q8_BLOCK).zip(qs.chunks_exact_mut(Q8_BLOCK)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in qb.iter_mut().zip(xb) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            scales.push(d);
            sums.push(sum);
        }
        Ok(Self { qs, scales, sums })
    }

    /// Builds blocks from codes and one scale per 32 codes; the sums are
    /// computed.
    ///
    /// # Errors
    /// `qs.len()` is not `32 * scales.len()`.
    pub fn from_parts(qs: Vec<i8>, scales: Vec<f32>) -> Result<Self, KernelError> {
        if qs.len() != scales.len() * Q8_BLOCK {
            return Err(KernelError::BadLength {
                what: "activation codes",
                len: qs.len(),
                expected: format!("32 per scale ({} scales)", scales.len()),
            });
        }
        let sums = qs
            .chunks_exact(Q8_BLOCK)
            .map(|b| b.iter().map(|&q| q as i32).sum())
            .collect();
        Ok(Self { qs, scales, sums })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.qs.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }

    /// Number of blocks of 32.
    pub fn n_blocks(&self) -> usize {
        self.scales.len()
    }

    /// The codes, 32 per block.
    pub fn qs(&self) -> &[i8] {
        &self.qs
    }

    /// The scale of each block: element = code * scale.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The sum of the codes of each block.
    pub fn sums(&self) -> &[i32] {
        &self.sums
    }

    /// Blocks `start .. start + n` as a new vector (for kernels that work on
    /// a row's slice of a longer activation vector).
    ///
    /// # Errors
    /// The range runs past the end.
    pub fn blocks(&self, start: usize, n: usize) -> Result<Self, KernelError> {
        let end = start.checked_add(n).filter(|&e| e <= self.n_blocks());
        let Some(end) = end else {
            return Err(KernelError::BadLength {
                what: "activation blocks",
                len: self.n_blocks(),
                expected: format!("at least {start} + {n}"),
            });
        };
        Ok(Self {
            qs: self.qs[start * Q8_BLOCK..end * Q8_BLOCK].to_vec(),
            scales: self.scales[start..end].to_vec(),
            sums: self.sums[start..end].to_vec(),
        })
    }

    /// The dequantized values (for reference implementations).
    pub fn dequantized(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(Q8_BLOCK)
            .zip(&self.scales)
            .flat_map(|(q, d)| q.iter().map(move |&v| v as f32 * d))
            .collect()
    }
}

/// A vector quantized to int8 in blocks of 256, like ggml's `block_q8_K`:
/// an f32 scale per block and the sum of each 16 codes.
///
/// Invariant: `qs.len() == 256 * d.len() == 16 * bsums.len()`, and each
/// partial sum is the sum of its 16 codes.
#[derive(Debug, Clone, PartialEq)]
pub struct Q8KActivations {
    qs: Vec<i8>,
    d: Vec<f32>,
    bsums: Vec<i16>,
}

impl Q8KActivations {
    /// Quantizes `x` as ggml's `quantize_row_q8_K_ref`: the scale maps the
    /// element of largest magnitude to -127 (so `d` has the opposite sign
    /// of that element; codes are clamped to 127).
    ///
    /// # Errors
    /// `x.len()` is not a multiple of 256.
    pub fn quantize(x: &[f32]) -> Result<Self, KernelError> {
        let n = check_multiple(x.len(), Q8K_BLOCK, "activations")?;
        let mut qs = vec![0i8; n * Q8K_BLOCK];
        let mut d = Vec::with_capacity(n);
        for (xb, qb) in x
            .chunks_exact(Q8K_BLOCK)
            .zip(qs.chunks_exact_mut(Q8K_BLOCK))
        {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in xb {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                d.push(0.0);
                continue;
            }
            let iscale = -127.0 / max;
            for (q, &v) in qb.iter_mut().zip(xb) {
                *q = ((iscale * v).round() as i32).min(127) as i8;
            }
            d.push(1.0 / iscale);
        }
        Ok(Self::with_sums(qs, d))
    }

    fn with_sums(qs: Vec<i8>, d: Vec<f32>) -> Self {
        let bsums = qs
            .chunks_exact(Q8K_SUB)
            .map(|b| b.iter().map(|&q| q as i16).sum())
            .collect();
        Self { qs, d, bsums }
    }

    /// Builds blocks from codes and one scale per 256 codes; the partial sums
    /// are computed.
    ///
    /// # Errors
    /// `qs.len()` is not `256 * d.len()`.
    pub fn from_parts(qs: Vec<i8>, d: Vec<f32>) -> Result<Self, KernelError> {
        if qs.len() != d.len() * Q8K_BLOCK {
            return Err(KernelError::BadLength {
                what: "activation codes",
                len: qs.len(),
                expected: format!("256 per scale ({} scales)", d.len()),
            });
        }
        Ok(Self::with_sums(qs, d))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.qs.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }

    /// Number of blocks of 256.
    pub fn n_blocks(&self) -> usize {
        self.d.len()
    }

    /// The codes, 256 per block.
    pub fn qs(&self) -> &[i8] {
        &self.qs
    }

    /// The scale of each block: element = code * d.
    pub fn d(&self) -> &[f32] {
        &self.d
    }

    /// The sum of each 16 codes (16 per block).
    pub fn bsums(&self) -> &[i16] {
        &self.bsums
    }

    /// The dequantized values (for reference implementations).
    pub fn dequantized(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(Q8K_BLOCK)
            .zip(&self.d)
            .flat_map(|(q, d)| q.iter().map(move |&v| v as f32 * d))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_validate_lengths() {
        assert!(Q8Activations::quantize(&[0.0; 31]).is_err());
        assert!(Q8Activations::from_parts(vec![1; 64], vec![1.0]).is_err());
        assert!(Q8KActivations::quantize(&[0.0; 255]).is_err());
        assert!(Q8KActivations::from_parts(vec![1; 256], vec![]).is_err());
        let q = Q8Activations::from_parts(vec![2; 64], vec![0.5, 1.0]).unwrap();
        assert_eq!(q.sums(), &[64, 64]);
        assert!(q.blocks(1, 2).is_err());
        assert_eq!(q.blocks(1, 1).unwrap().scales(), &[1.0]);
    }

    #[test]
    fn q8k_matches_ggml_reference_rules() {
        let mut x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        x[3] = -20.0; // largest magnitude: always maps to -127, d takes its sign
        x[256..].iter_mut().for_each(|v| *v = 0.0);
        let q = Q8KActivations::quantize(&x).unwrap();
        assert_eq!(q.qs()[3], -127);
        assert!((q.d()[0] - 20.0 / 127.0).abs() < 1e-6);
        assert_eq!(q.d()[1], 0.0);
        let back = q.dequantized();
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= 20.0 / 127.0 * 0.5 + 1e-5, "{a} vs {b}");
        }
        for (j, s) in q.bsums().iter().enumerate() {
            let want: i16 = q.qs()[j * 16..j * 16 + 16].iter().map(|&v| v as i16).sum();
            assert_eq!(*s, want);
        }
    }
}
