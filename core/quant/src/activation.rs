//! 8-bit activations for integer dot products: blocks of 32 with an f32
//! scale and the sum of the codes (so kernels can fold in a grid offset).

/// Elements per activation block.
pub const Q8_BLOCK: usize = 32;

/// A vector quantized to int8 in blocks of 32.
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Activations {
    /// Codes, one per element.
    pub qs: Vec<i8>,
    /// Scale per block: element = qs * scale.
    pub scales: Vec<f32>,
    /// Sum of the codes per block.
    pub sums: Vec<i32>,
}

impl Q8Activations {
    /// Quantizes `x` (length a multiple of 32) with absmax scaling, rounding
    /// to nearest like ggml's Q8_0 reference.
    pub fn quantize(x: &[f32]) -> Self {
        let n = x.len() / Q8_BLOCK;
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
        Self { qs, scales, sums }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.qs.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
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
