//! Prefill product for kernels without a batched path: each weight row is
//! decoded once per batch (`KernelTable::dequantize_rows`) and multiplied
//! with every position's activations as the kernels see them (the 8-bit
//! activations decoded to f32), instead of decoding the row once per
//! position as the per-dot fallback does. The arithmetic is the fallback's
//! (decoded weight times decoded activation, summed in f32), in another
//! summation order. Not a per-type kernel: it works on any format without
//! a row transform.

use gguftool_quant::activation::Activations;

/// The f32 values a kernel multiplies for `a`.
pub fn activation_values(a: &Activations) -> Vec<f32> {
    match a {
        Activations::F32(v) => v.clone(),
        Activations::Q8_0(q) => q.dequantized(),
        Activations::Q8K(q) => q.dequantized(),
    }
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let ca = a.chunks_exact(L);
    let cb = b.chunks_exact(L);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    // Without hardware FMA, mul_add is a slow libm call: plain multiply-add.
    const L: usize = 8;
    let mut acc = [0.0f32; L];
    let ca = a.chunks_exact(L);
    let cb = b.chunks_exact(L);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// A dot product of equal-length f32 slices, vectorized where possible.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Decodes a range of rows into a buffer.
pub type RowDecoder<'a> =
    dyn Fn(std::ops::Range<usize>, &mut [f32]) -> Result<(), gguftool_quant::KernelError> + 'a;

/// `out[t * n_rows + r] = decode(row r) · xs[t]`, rows decoded in tiles.
///
/// # Errors
/// As `decode`.
pub fn decoded_rows_matmul(
    decode: &RowDecoder<'_>,
    n_rows: usize,
    n_in: usize,
    xs: &[Vec<f32>],
    out: &mut [f32],
) -> Result<(), gguftool_quant::KernelError> {
    const TILE: usize = 16;
    let mut w = vec![0.0f32; TILE * n_in];
    let mut r0 = 0;
    while r0 < n_rows {
        let r1 = (r0 + TILE).min(n_rows);
        let wt = &mut w[..(r1 - r0) * n_in];
        decode(r0..r1, wt)?;
        for (t, x) in xs.iter().enumerate() {
            let o = &mut out[t * n_rows + r0..t * n_rows + r1];
            for (ov, row) in o.iter_mut().zip(wt.chunks_exact(n_in)) {
                *ov = dot(row, x);
            }
        }
        r0 = r1;
    }
    Ok(())
}
