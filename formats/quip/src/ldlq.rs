//! LDLQ (QuIP's adaptive rounding with linear feedback) for rows encoded in
//! the rotated basis, when an importance (the diagonal of the input second
//! moments `E[x x^T]`, e.g. from an imatrix) is known.
//!
//! In the rotated basis the proxy Hessian `H = U diag(imp) U^T` is dense, so
//! weighting each rotated element by its own importance loses most of the
//! information (for a full Hadamard rotation the diagonal is constant).
//! LDLQ keeps it: with `H = (A + I) D (A + I)^T`, `A` strictly upper
//! triangular, element `k` is rounded after adding
//! `sum_{j<k} (w_j - q_j) A[j][k]`, which minimises `(w - q) H (w - q)^T`
//! far better than independent rounding. Scales are chosen per block from
//! the values with the feedback of earlier blocks applied.

use crate::encode::{block_scales, BlockScales};
use crate::layout::{pack, type_size, BLOCK, SUB};
use crate::rotation::Rotation;

/// Relative diagonal damping added to `H` (as in GPTQ/QuIP).
pub const DAMP: f64 = 0.01;

/// The feedback matrix for one row length, rotation and importance.
pub struct Feedback {
    n: usize,
    /// `A^T` row-major: row `k` holds `A[j][k]` for `j < k` (contiguous).
    at: Vec<f32>,
    /// Diagonal of `H` (the rotated importance), weighting scale choice.
    diag: Vec<f32>,
}

impl Feedback {
    /// Builds `H = U diag(imp) U^T + damping`, then its `U D U^T`
    /// factorization (an `L D L^T` of the reversed matrix). `O(n^3)`.
    pub fn new(rot: &Rotation, imp: &[f32]) -> Self {
        let n = rot.len();
        // a = U diag(sqrt(imp)), stored row-major (row i = output coordinate).
        let mut a = vec![0f64; n * n];
        let mut col = vec![0f32; n];
        for (j, &v) in imp.iter().enumerate() {
            col.iter_mut().for_each(|c| *c = 0.0);
            col[j] = v.max(0.0).sqrt();
            rot.forward(&mut col);
            for (i, &c) in col.iter().enumerate() {
                a[i * n + j] = c as f64;
            }
        }
        // h = a a^T (symmetric).
        let mut h = vec![0f64; n * n];
        for i in 0..n {
            let ri = &a[i * n..(i + 1) * n];
            for k in 0..=i {
                let rk = &a[k * n..(k + 1) * n];
                let d: f64 = ri.iter().zip(rk).map(|(x, y)| x * y).sum();
                h[i * n + k] = d;
                h[k * n + i] = d;
            }
        }
        drop(a);
        let mean_diag = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
        let damp = DAMP * mean_diag.max(f64::MIN_POSITIVE);
        let diag: Vec<f32> = (0..n).map(|i| (h[i * n + i] + damp) as f32).collect();
        for i in 0..n {
            h[i * n + i] += damp;
        }
        Self {
            n,
            at: udu_unit_upper_transposed(&mut h, n),
            diag,
        }
    }

    /// Row length.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for an empty row (never built).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Encodes one rotated row `x` with feedback into whole blocks.
    pub fn encode_row<const SB: u32>(&self, x: &[f32], out: &mut [u8]) {
        let n = self.n;
        let mut err = vec![0f32; n];
        let mut v = [0f32; BLOCK];
        for (b, dst) in out.chunks_exact_mut(type_size::<SB>()).enumerate() {
            let k0 = b * BLOCK;
            // Feedback from earlier blocks.
            for (t, vt) in v.iter_mut().enumerate() {
                let k = k0 + t;
                let row = &self.at[k * n..k * n + k0];
                *vt = x[k] + row.iter().zip(&err[..k0]).map(|(a, e)| a * e).sum::<f32>();
            }
            let bs: BlockScales = block_scales::<SB>(&v, &self.diag[k0..k0 + BLOCK]);
            let mut codes = [0u8; BLOCK];
            for t in 0..BLOCK {
                let k = k0 + t;
                // Feedback from this block's earlier elements.
                let within: f32 = (k0..k).map(|j| self.at[k * n + j] * err[j]).sum();
                let vk = v[t] + within;
                codes[t] = bs.code(t / SUB, vk);
                err[k] = x[k] - bs.value(t / SUB, codes[t]);
            }
            pack::<SB>(bs.d_bits, &bs.scales, &codes, dst);
        }
    }
}

/// Factorizes symmetric positive definite `h` (n x n, row-major, destroyed)
/// as `(A + I) D (A + I)^T` with `A` strictly upper triangular and returns
/// `A^T` row-major as f32. Done as `L D L^T` of the reversed matrix.
fn udu_unit_upper_transposed(h: &mut [f64], n: usize) -> Vec<f32> {
    // Reverse: r[i][j] = h[n-1-i][n-1-j].
    let mut r = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            r[i * n + j] = h[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    // In-place L D L^T (Cholesky without square roots), lower part of r.
    let mut d = vec![0f64; n];
    for j in 0..n {
        let mut dj = r[j * n + j];
        for k in 0..j {
            dj -= r[j * n + k] * r[j * n + k] * d[k];
        }
        d[j] = if dj > 1e-300 { dj } else { 1e-300 };
        // Column j below the diagonal: work on rows i > j.
        let (head, tail) = r.split_at_mut((j + 1) * n);
        let rowj = &head[j * n..j * n + j];
        let scaled: Vec<f64> = rowj.iter().zip(&d[..j]).map(|(l, dk)| l * dk).collect();
        for row in tail.chunks_exact_mut(n) {
            let s: f64 = row[..j].iter().zip(&scaled).map(|(a, b)| a * b).sum();
            row[j] = (row[j] - s) / d[j];
        }
    }
    // With P the reversal, H = (P L P) (P D P) (P L P)^T and P L P is unit
    // upper triangular: A[a][b] = L[n-1-a][n-1-b] for a < b. Return A^T.
    let mut at = vec![0f32; n * n];
    for k in 0..n {
        for j in 0..k {
            at[k * n + j] = r[(n - 1 - j) * n + (n - 1 - k)] as f32;
        }
    }
    at
}
