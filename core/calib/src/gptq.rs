//! GPTQ for any format: rounds a weight matrix with the format's own
//! quantizer, feeding the rounding error forward to the columns not yet
//! rounded through the upper Cholesky factor of the damped inverse Hessian.
//!
//! Algorithm: Frantar et al., "GPTQ: Accurate Post-Training Quantization for
//! Generative Pre-trained Transformers" (2022). Formats with a
//! [`BlockGrid`] are rounded as the paper does with groups: each block's
//! parameters are fitted when the block is reached, then its columns are
//! rounded one at a time, each error updating the block's later columns
//! and, after the block, all later columns (the lazy batch update). Formats
//! without one round a whole block at once with their encoder, and its
//! error `E` updates the remaining columns by `E U_SS^{-1} U_S,rest`, the
//! optimal-brain-surgeon update for a set of leading columns. Blocks may be
//! taken in order of decreasing input energy ("act-order"). Dead inputs
//! (`H_ii = 0`) get a unit diagonal and zero weight, and the damping
//! `lambda * mean(diag H)` is raised tenfold until the factorization
//! succeeds, as the reference implementation does. Formats with a row
//! transform (Q2+QuIP) are rounded in the rotated basis with
//! `H' = R H R^T`, which makes QuIP's LDLQ a special case.

use crate::linalg::{cholesky_in_place, inverse_from_cholesky, matmul_nt, upper_cholesky};
use gguftool_quant::format::{BlockGrid, Format, Quantizer};
use gguftool_quant::rows::RowCodec;
use rayon::prelude::*;

/// Rows processed together by one task: the rows of the factor (or of H)
/// that a block touches stay in cache across the tile instead of being
/// streamed again for every weight row.
const ROW_TILE: usize = 16;

/// Rows whose scales [`refit_scales`] refits per matrix product.
const REFIT_CHUNK: usize = 1024;

/// Second moments of a linear layer's input, `H = sum_t x_t x_t^T`
/// (`n x n`, f64, row-major), and the number of rows accumulated.
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    n: usize,
    h: Vec<f64>,
    tokens: u64,
}

impl Hessian {
    /// An empty accumulator for inputs of width `n`.
    pub fn new(n: usize) -> Self {
        Self {
            n,
            h: vec![0.0; n * n],
            tokens: 0,
        }
    }

    /// Wraps an existing `n x n` matrix.
    ///
    /// # Errors
    /// `h.len() != n * n`, or a non-finite entry.
    pub fn from_matrix(n: usize, h: Vec<f64>, tokens: u64) -> Result<Self, GptqError> {
        if h.len() != n * n {
            return Err(GptqError::Shape(format!(
                "Hessian of {} values for n = {n}",
                h.len()
            )));
        }
        if let Some(i) = h.iter().position(|v| !v.is_finite()) {
            return Err(GptqError::Shape(format!("Hessian entry {i} is not finite")));
        }
        Ok(Self { n, h, tokens })
    }

    /// Adds the rows of `x` (`rows x n`, row-major).
    ///
    /// # Errors
    /// `x.len()` is not a multiple of `n`.
    pub fn accumulate(&mut self, x: &[f32]) -> Result<(), GptqError> {
        let n = self.n;
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(GptqError::Shape(format!(
                "{} inputs for width {n}",
                x.len()
            )));
        }
        let rows: Vec<&[f32]> = x.chunks_exact(n).collect();
        self.h.par_chunks_mut(n).enumerate().for_each(|(i, hi)| {
            for r in &rows {
                let xi = r[i] as f64;
                if xi != 0.0 {
                    hi.iter_mut()
                        .zip(r.iter())
                        .for_each(|(h, &xj)| *h += xi * xj as f64);
                }
            }
        });
        self.tokens += rows.len() as u64;
        Ok(())
    }

    /// Adds a lower triangle (row-major, `n (n + 1) / 2` values: row `i`
    /// holds columns `0..=i`) into both triangles, and `rows` to the count.
    ///
    /// # Panics
    /// Never for a triangle of the right length; a shorter one adds a prefix.
    pub fn add_lower(&mut self, lower: &[f64], rows: u64) {
        let n = self.n;
        let mut k = 0;
        for i in 0..n {
            for j in 0..=i {
                let Some(&v) = lower.get(k) else { return };
                self.h[i * n + j] += v;
                if i != j {
                    self.h[j * n + i] += v;
                }
                k += 1;
            }
        }
        self.tokens += rows;
    }

    /// Input width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Rows accumulated.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The matrix, row-major.
    pub fn matrix(&self) -> &[f64] {
        &self.h
    }

    /// `d^T H d` for a vector `d` of length `n`.
    pub fn quadratic_form(&self, d: &[f32]) -> f64 {
        let n = self.n;
        (0..n)
            .map(|i| {
                let hd: f64 = self.h[i * n..(i + 1) * n]
                    .iter()
                    .zip(d)
                    .map(|(h, &x)| h * x as f64)
                    .sum();
                hd * d[i] as f64
            })
            .sum()
    }
}

/// Errors of Hessian-aware rounding.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GptqError {
    /// Shapes that do not fit together.
    #[error("{0}")]
    Shape(String),
    /// The format cannot encode, or refused its input.
    #[error("{0}")]
    Format(String),
    /// The damped Hessian could not be factorized even after raising the damping.
    #[error("Hessian not positive definite even with damping {damp:e} (pivot {pivot})")]
    NotPositiveDefinite {
        /// Last damping tried (relative to the mean diagonal).
        damp: f64,
        /// Column of the failing pivot.
        pivot: usize,
    },
}

/// Options of [`gptq`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    /// Initial damping relative to the mean diagonal of `H` (GPTQ: 0.01).
    pub damp: f64,
    /// Times the damping may be raised tenfold when factorization fails.
    pub max_retries: u32,
    /// Round whole blocks in order of decreasing `sum diag(H)` over the
    /// block (GPTQ's "act-order", at the granularity a block format allows).
    /// Ignored for formats with a row transform: a rotation spreads the
    /// energy evenly, so the order carries no information there.
    pub act_order: bool,
    /// Round column by column inside a block through the format's
    /// [`BlockGrid`] when it has one (false: whole blocks by its encoder).
    pub per_column: bool,
    /// After rounding, rescale each block under the full `H` (closed-form
    /// least squares, block by block) and keep a block's re-encoding only
    /// where it lowers `tr(dW H dW^T)`.
    pub refit_scales: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            damp: 0.01,
            max_retries: 6,
            act_order: true,
            per_column: true,
            refit_scales: true,
        }
    }
}

/// What [`gptq`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqReport {
    /// Damping finally used (relative to the mean diagonal).
    pub damp: f64,
    /// Times the damping was raised.
    pub retries: u32,
    /// Input columns with no signal (`H_ii = 0`), whose weights were zeroed.
    pub dead_columns: usize,
}

/// Rounds `w` (`rows x n`, row-major, original basis) into whole rows of
/// `format` (`rows * row_bytes` bytes) minimising `tr(dW H dW^T)`.
/// `seed` is the row-transform seed for formats that have one.
///
/// # Errors
/// Shapes that do not fit, a format without an encoder, or a Hessian that
/// cannot be factorized.
pub fn gptq(
    format: &dyn Format,
    w: &[f32],
    h: &Hessian,
    seed: Option<u64>,
    opts: GptqOptions,
) -> Result<(Vec<u8>, GptqReport), GptqError> {
    let n = h.n();
    if n == 0 || !w.len().is_multiple_of(n) {
        return Err(GptqError::Shape(format!(
            "{} weights for rows of {n}",
            w.len()
        )));
    }
    let codec = RowCodec::new(format, n, seed).map_err(|e| GptqError::Format(e.to_string()))?;
    let quantizer = format
        .quantizer()
        .ok_or_else(|| GptqError::Format(format!("{} cannot quantize", format.name())))?;

    // Work in the basis the blocks are encoded in.
    let mut w = w.to_vec();
    let mut hm = h.matrix().to_vec();
    if let Some(t) = codec.transform() {
        w.par_chunks_mut(n).for_each(|r| t.forward(r));
        rotate_symmetric(&mut hm, n, |v| t.forward(v));
    }

    // Dead inputs: unit diagonal, zero weight (GPTQ).
    let mut dead_columns = 0;
    for i in 0..n {
        if hm[i * n + i] <= 0.0 {
            hm[i * n + i] = 1.0;
            dead_columns += 1;
            w.chunks_exact_mut(n).for_each(|r| r[i] = 0.0);
        }
    }

    // Act-order: blocks with the most input energy first, so the most
    // compensation goes to where the error costs most.
    let (bs, ts) = (format.block_size(), format.type_size());
    let order = block_order(&hm, n, bs, opts.act_order && codec.transform().is_none());
    let permuted = order.iter().enumerate().any(|(p, &b)| p != b);
    if permuted {
        permute_blocks(&mut w, &mut hm, n, bs, &order);
    }

    let mean_diag = (0..n).map(|i| hm[i * n + i]).sum::<f64>() / n as f64;
    let mut damp = opts.damp;
    let mut retries = 0;
    let u = loop {
        let mut a = hm.clone();
        for i in 0..n {
            a[i * n + i] += damp * mean_diag;
        }
        let factored = cholesky_in_place(&mut a, n)
            .and_then(|()| upper_cholesky(&inverse_from_cholesky(&a, n), n));
        match factored {
            Ok(u) => break u,
            Err(pivot) if retries >= opts.max_retries => {
                return Err(GptqError::NotPositiveDefinite { damp, pivot })
            }
            Err(_) => {
                damp *= 10.0;
                retries += 1;
            }
        }
    };

    let blocks_per_row = n / bs;
    let row_bytes = blocks_per_row * ts;
    let report = GptqReport {
        damp,
        retries,
        dead_columns,
    };
    let w0 = opts.refit_scales.then(|| w.clone());
    let mut out = match format.block_grid().filter(|_| opts.per_column) {
        Some(grid) => round_columns(grid, &mut w, &u, n, bs, ts),
        None => round_blocks(format, quantizer, &mut w, &u, n, bs, ts)?,
    };
    if let Some(w0) = w0 {
        refit_scales(format, &w0, &hm, n, &mut out)?;
    }
    if permuted {
        let mut placed = vec![0u8; out.len()];
        for (src_row, dst_row) in out
            .chunks_exact(row_bytes)
            .zip(placed.chunks_exact_mut(row_bytes))
        {
            for (p, &b) in order.iter().enumerate() {
                dst_row[b * ts..(b + 1) * ts].copy_from_slice(&src_row[p * ts..(p + 1) * ts]);
            }
        }
        out = placed;
    }
    Ok((out, report))
}

/// Refits each block's scale of the rounded rows `out` under `h` (the
/// working basis, undamped): with `r = w - q` and `g = H r`, the best
/// multiplier of block `b`'s values `q_b` alone is
/// `1 + q_b^T g_b / (q_b^T H_bb q_b)`; the rescaled block is re-encoded
/// (grid or encoder, weights `diag H_bb`) and kept only if the exact change
/// `-2 dq^T g_b + dq^T H_bb dq` of the error is negative, so the error
/// never grows. One pass over the blocks of each row (coordinate descent).
fn refit_scales(
    format: &dyn Format,
    w: &[f32],
    h: &[f64],
    n: usize,
    out: &mut [u8],
) -> Result<(), GptqError> {
    let (bs, ts) = (format.block_size(), format.type_size());
    let row_bytes = n / bs * ts;
    let quantizer = format
        .quantizer()
        .ok_or_else(|| GptqError::Format(format!("{} cannot quantize", format.name())))?;
    // Rows in chunks, so the f64 residuals and gradients of a tall matrix
    // (an output head) stay bounded.
    for (wc, dc) in w
        .chunks(n * REFIT_CHUNK)
        .zip(out.chunks_mut(row_bytes * REFIT_CHUNK))
    {
        let rows = wc.len() / n;
        let mut qs = vec![0f32; rows * n];
        qs.par_chunks_mut(n)
            .zip(dc.par_chunks(row_bytes))
            .try_for_each(|(q, d)| format.dequantize(d, q))
            .map_err(|e| GptqError::Format(e.to_string()))?;
        let rs: Vec<f64> = wc.iter().zip(&qs).map(|(&a, &b)| (a - b) as f64).collect();
        // G = R H (H symmetric, so R H^T).
        let mut gs = matmul_nt(&rs, h, rows, n, n);
        qs.par_chunks_mut(n)
            .zip(gs.par_chunks_mut(n))
            .zip(dc.par_chunks_mut(row_bytes))
            .try_for_each(|((q, g), dst)| refit_row(format, quantizer, h, n, q, g, dst))?;
    }
    Ok(())
}

/// One row of [`refit_scales`]: `q` the row's decoded values, `g = H r` its
/// error gradient, `dst` its encoded blocks (updated in place).
fn refit_row(
    format: &dyn Format,
    quantizer: &dyn Quantizer,
    h: &[f64],
    n: usize,
    q: &mut [f32],
    g: &mut [f64],
    dst: &mut [u8],
) -> Result<(), GptqError> {
    let (bs, ts) = (format.block_size(), format.type_size());
    let mut target = vec![0f32; bs];
    let mut imp = vec![0f32; bs];
    let mut enc = vec![0u8; ts];
    let mut dec = vec![0f32; bs];
    let mut dq = vec![0f64; bs];
    for (blk, block) in dst.chunks_exact_mut(ts).enumerate() {
        let b = blk * bs;
        let qb = &q[b..b + bs];
        let hq: Vec<f64> = (0..bs)
            .map(|i| {
                let hi = &h[(b + i) * n + b..(b + i) * n + b + bs];
                hi.iter().zip(qb).map(|(a, &x)| a * x as f64).sum()
            })
            .collect();
        let den: f64 = hq.iter().zip(qb).map(|(a, &x)| a * x as f64).sum();
        let num: f64 = g[b..b + bs]
            .iter()
            .zip(qb)
            .map(|(a, &x)| a * x as f64)
            .sum();
        if den <= 0.0 || num == 0.0 {
            continue;
        }
        let c = 1.0 + num / den;
        target
            .iter_mut()
            .zip(qb)
            .for_each(|(t, &x)| *t = (c * x as f64) as f32);
        imp.iter_mut()
            .enumerate()
            .for_each(|(i, m)| *m = h[(b + i) * n + b + i].max(0.0) as f32);
        quantizer.quantize_blocks(&target, Some(&imp), &mut enc);
        format
            .dequantize(&enc, &mut dec)
            .map_err(|e| GptqError::Format(e.to_string()))?;
        dq.iter_mut()
            .zip(dec.iter().zip(qb))
            .for_each(|(d, (&new, &old))| *d = (new - old) as f64);
        // Change of (r - dq)^T H (r - dq).
        let lin: f64 = dq.iter().zip(&g[b..b + bs]).map(|(a, b)| a * b).sum();
        let quad: f64 = (0..bs)
            .map(|i| {
                let hi = &h[(b + i) * n + b..(b + i) * n + b + bs];
                dq[i] * hi.iter().zip(&dq).map(|(a, d)| a * d).sum::<f64>()
            })
            .sum();
        if quad - 2.0 * lin >= 0.0 {
            continue;
        }
        block.copy_from_slice(&enc);
        q[b..b + bs].copy_from_slice(&dec);
        // g = H r with r -= dq: H symmetric, so subtract dq_k times row
        // b + k (contiguous); only later blocks read g again.
        let rest = b + bs;
        for (k, &d) in dq.iter().enumerate() {
            if d != 0.0 {
                g[rest..]
                    .iter_mut()
                    .zip(&h[(b + k) * n + rest..(b + k + 1) * n])
                    .for_each(|(gi, &hk)| *gi -= d * hk);
            }
        }
    }
    Ok(())
}

/// Rounds block by block with the format's encoder (no feedback inside a
/// block): the block's error updates the later columns at once.
fn round_blocks(
    format: &dyn Format,
    quantizer: &dyn Quantizer,
    w: &mut [f32],
    u: &[f64],
    n: usize,
    bs: usize,
    ts: usize,
) -> Result<Vec<u8>, GptqError> {
    let rows = w.len() / n;
    let blocks_per_row = n / bs;
    let row_bytes = blocks_per_row * ts;
    let mut out = vec![0u8; rows * row_bytes];
    let mut seg = vec![0f32; rows * bs];
    let mut imp = vec![0f32; rows * bs];
    let mut enc = vec![0u8; rows * ts];
    let mut dec = vec![0f32; rows * bs];
    for blk in 0..blocks_per_row {
        let b = blk * bs;
        for (r, s) in seg.chunks_exact_mut(bs).enumerate() {
            s.copy_from_slice(&w[r * n + b..r * n + b + bs]);
        }
        // After feeding the block's error e forward, it still costs
        // e^T (U_SS^T U_SS)^{-1} e; the encoder sees the diagonal of that
        // matrix, the squared row norms of U_SS^{-1}.
        let w_block = block_weights(u, n, b, bs);
        for im in imp.chunks_exact_mut(bs) {
            im.copy_from_slice(&w_block);
        }
        quantizer.quantize_blocks(&seg, Some(&imp), &mut enc);
        format
            .dequantize(&enc, &mut dec)
            .map_err(|e| GptqError::Format(e.to_string()))?;
        for r in 0..rows {
            out[r * row_bytes + blk * ts..r * row_bytes + (blk + 1) * ts]
                .copy_from_slice(&enc[r * ts..(r + 1) * ts]);
        }
        let rest = b + bs;
        if rest == n {
            break;
        }
        // W[:, rest..] -= (W_S - Q_S) U_SS^{-1} U_S,rest, row by row.
        w.par_chunks_mut(n)
            .zip(seg.par_chunks(bs))
            .zip(dec.par_chunks(bs))
            .for_each(|((wr, s), q)| {
                // e' U_SS = e (U_SS upper triangular): forward substitution.
                let mut e = vec![0f64; bs];
                for j in 0..bs {
                    let mut v = (s[j] - q[j]) as f64;
                    for k in 0..j {
                        v -= e[k] * u[(b + k) * n + b + j];
                    }
                    e[j] = v / u[(b + j) * n + b + j];
                }
                update_rest(wr, u, n, b, &e);
            });
    }
    Ok(out)
}

/// GPTQ proper for formats with a [`BlockGrid`]: each row's block
/// parameters are fitted when the block is reached (on the weights updated
/// so far), then its columns are rounded one at a time, each error feeding
/// the block's later columns at once and the later blocks after the block.
fn round_columns(
    grid: &dyn BlockGrid,
    w: &mut [f32],
    u: &[f64],
    n: usize,
    bs: usize,
    ts: usize,
) -> Vec<u8> {
    let blocks_per_row = n / bs;
    let row_bytes = blocks_per_row * ts;
    let rows = w.len() / n;
    let mut out = vec![0u8; rows * row_bytes];
    let weights: Vec<Vec<f32>> = (0..blocks_per_row)
        .map(|blk| block_weights(u, n, blk * bs, bs))
        .collect();
    let np = grid.params_per_block();
    w.par_chunks_mut(n * ROW_TILE)
        .zip(out.par_chunks_mut(row_bytes * ROW_TILE))
        .for_each(|(wt, dt)| {
            let tile = wt.len() / n;
            let mut params = vec![0f32; np];
            let mut codes = vec![0u8; bs];
            let mut e = vec![0f64; bs];
            // Blocks outer, rows inner: U's rows for the block are reused
            // by every row of the tile. Each row sees the same operations
            // in the same order as a row-at-a-time pass.
            for (blk, wb) in weights.iter().enumerate() {
                let b = blk * bs;
                for t in 0..tile {
                    let wr = &mut wt[t * n..(t + 1) * n];
                    grid.fit(&wr[b..b + bs], wb, &mut params);
                    for j in 0..bs {
                        let v = wr[b + j];
                        let (c, q) = grid.round(&params, j, v);
                        codes[j] = c;
                        let urow = &u[(b + j) * n..(b + j + 1) * n];
                        let ej = (v - q) as f64 / urow[b + j];
                        e[j] = ej;
                        if ej != 0.0 {
                            wr[b + j + 1..b + bs]
                                .iter_mut()
                                .zip(&urow[b + j + 1..b + bs])
                                .for_each(|(x, &uk)| *x -= (ej * uk) as f32);
                        }
                    }
                    let off = t * row_bytes + blk * ts;
                    grid.pack(&params, &codes, &mut dt[off..off + ts]);
                    update_rest(wr, u, n, b, &e);
                }
            }
        });
    out
}

/// GPTQ's lazy batch update of one row after the block starting at `b`
/// (`e.len()` columns): `W[rest..] -= e U[b.., rest..]`, where `e` holds the
/// block's errors divided by the diagonal of `U`.
fn update_rest(wr: &mut [f32], u: &[f64], n: usize, b: usize, e: &[f64]) {
    let rest = b + e.len();
    if rest >= n {
        return;
    }
    for (k, &ek) in e.iter().enumerate() {
        if ek == 0.0 {
            continue;
        }
        let urow = &u[(b + k) * n + rest..(b + k + 1) * n];
        wr[rest..]
            .iter_mut()
            .zip(urow)
            .for_each(|(x, &uk)| *x -= (ek * uk) as f32);
    }
}

/// Block processing order: identity, or (act-order) blocks sorted by
/// decreasing `sum diag(H)` over their columns (stable for ties).
fn block_order(h: &[f64], n: usize, bs: usize, act_order: bool) -> Vec<usize> {
    let nb = n / bs;
    let mut order: Vec<usize> = (0..nb).collect();
    if act_order {
        let energy: Vec<f64> = (0..nb)
            .map(|b| (b * bs..(b + 1) * bs).map(|i| h[i * n + i]).sum())
            .collect();
        order.sort_by(|&a, &b| energy[b].total_cmp(&energy[a]));
    }
    order
}

/// Permutes the columns of `w` (rows of `n`) and both sides of `h` so that
/// block `p` of the result is block `order[p]` of the input.
fn permute_blocks(w: &mut [f32], h: &mut [f64], n: usize, bs: usize, order: &[usize]) {
    let col = |i: usize| order[i / bs] * bs + i % bs;
    let mut row = vec![0f32; n];
    for r in w.chunks_exact_mut(n) {
        row.iter_mut().enumerate().for_each(|(i, v)| *v = r[col(i)]);
        r.copy_from_slice(&row);
    }
    let src = h.to_vec();
    for i in 0..n {
        let ci = col(i);
        for j in 0..n {
            h[i * n + j] = src[ci * n + col(j)];
        }
    }
}

/// Diagonal of `(U_SS^T U_SS)^{-1} = U_SS^{-1} U_SS^{-T}` for the block
/// `S = b..b + bs` of the upper factor `u` (`n x n`): the squared row norms
/// of `U_SS^{-1}`, found by back substitution.
fn block_weights(u: &[f64], n: usize, b: usize, bs: usize) -> Vec<f32> {
    // V = U_SS^{-1}, upper triangular: V[i][j] for j >= i.
    let mut v = vec![0f64; bs * bs];
    for i in (0..bs).rev() {
        let uii = u[(b + i) * n + b + i];
        v[i * bs + i] = 1.0 / uii;
        for j in i + 1..bs {
            let mut s = 0.0;
            for k in i + 1..=j {
                s += u[(b + i) * n + b + k] * v[k * bs + j];
            }
            v[i * bs + j] = -s / uii;
        }
    }
    (0..bs)
        .map(|i| {
            v[i * bs + i..(i + 1) * bs]
                .iter()
                .map(|x| x * x)
                .sum::<f64>() as f32
        })
        .collect()
}

/// `H <- R H R^T` for a symmetric `H`, where `apply` computes `R v` in place.
fn rotate_symmetric(h: &mut [f64], n: usize, apply: impl Fn(&mut [f32]) + Sync) {
    let mut v = vec![0f32; n];
    // Rows: (R H)^T = H R^T, so rotate each row of H (H symmetric).
    for i in 0..n {
        v.iter_mut()
            .zip(&h[i * n..(i + 1) * n])
            .for_each(|(a, &b)| *a = b as f32);
        apply(&mut v);
        h[i * n..(i + 1) * n]
            .iter_mut()
            .zip(&v)
            .for_each(|(a, &b)| *a = b as f64);
    }
    // Columns.
    for j in 0..n {
        v.iter_mut()
            .enumerate()
            .for_each(|(i, a)| *a = h[i * n + j] as f32);
        apply(&mut v);
        v.iter()
            .enumerate()
            .for_each(|(i, &a)| h[i * n + j] = a as f64);
    }
}
