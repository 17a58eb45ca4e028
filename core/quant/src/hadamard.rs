//! Randomized Hadamard rotations for incoherence processing (QuIP's
//! formats and QAT's `incoherence` option). The rotation: random signs, a normalized fast Walsh-Hadamard
//! transform on each block of `p` elements (`p` the largest power of two
//! dividing the row length, at most [`MAX_HADAMARD`]), then, when the row
//! holds `m > 1` such blocks, a seeded random `m x m` orthogonal matrix
//! mixing the blocks (`R (x) I_p`), so every output mixes the whole row.
//!
//! `U = (R (x) I_p) * blockdiag(H_p / sqrt(p)) * diag(signs)` is orthogonal;
//! cost per row `O(n log p + n m)`. Mixing is skipped when `m` exceeds
//! [`MAX_MIX`] (block-diagonal Hadamard only).

/// Largest Hadamard block used.
pub const MAX_HADAMARD: usize = 1 << 16;
/// Largest number of Hadamard blocks mixed by the dense orthogonal factor.
pub const MAX_MIX: usize = 64;

pub use crate::rng::SplitMix64;

/// In-place unnormalized fast Walsh-Hadamard transform (length a power of two).
pub fn fwht(x: &mut [f32]) {
    let n = x.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                let (s, d) = (*u + *v, *u - *v);
                *u = s;
                *v = d;
            }
        }
        h *= 2;
    }
}

/// The randomized orthogonal rotation for one row length and seed.
#[derive(Debug, Clone)]
pub struct Rotation {
    n: usize,
    p: usize,
    m: usize,
    signs: Vec<f32>,
    /// Row-major `m x m` orthogonal matrix, when `1 < m <= MAX_MIX`.
    mix: Option<Vec<f32>>,
}

impl Rotation {
    /// The rotation of rows of `n` elements for `seed`; `None` when `n` is 0.
    pub fn new(n: usize, seed: u64) -> Option<Self> {
        if n == 0 {
            return None;
        }
        let p = (1usize << n.trailing_zeros()).min(MAX_HADAMARD);
        let m = n / p;
        let mut rng = SplitMix64::new(seed ^ (n as u64).wrapping_mul(0xd6e8_feb8_6659_fd93));
        let mut signs = Vec::with_capacity(n);
        while signs.len() < n {
            let bits = rng.next_u64();
            for k in 0..64.min(n - signs.len()) {
                signs.push(if bits >> k & 1 == 1 { -1.0 } else { 1.0 });
            }
        }
        let mix = (m > 1 && m <= MAX_MIX).then(|| random_orthogonal(m, &mut rng));
        Some(Self {
            n,
            p,
            m,
            signs,
            mix,
        })
    }

    /// Row length.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false (a rotation has at least one element).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Hadamard block length.
    pub fn hadamard_len(&self) -> usize {
        self.p
    }

    /// Whether the blocks are mixed by the dense orthogonal factor.
    pub fn mixes_blocks(&self) -> bool {
        self.mix.is_some()
    }

    fn hadamard_blocks(&self, x: &mut [f32]) {
        let norm = 1.0 / (self.p as f32).sqrt();
        for b in x.chunks_exact_mut(self.p) {
            fwht(b);
            b.iter_mut().for_each(|v| *v *= norm);
        }
    }

    /// Applies `R (x) I_p` (or its transpose).
    fn mix_blocks(&self, x: &mut [f32], transpose: bool) {
        let Some(r) = &self.mix else { return };
        let (m, p) = (self.m, self.p);
        let mut col = vec![0f32; m];
        for pos in 0..p {
            for (b, c) in col.iter_mut().enumerate() {
                *c = x[b * p + pos];
            }
            for a in 0..m {
                let mut s = 0f32;
                for (b, c) in col.iter().enumerate() {
                    let rab = if transpose {
                        r[b * m + a]
                    } else {
                        r[a * m + b]
                    };
                    s += rab * c;
                }
                x[a * p + pos] = s;
            }
        }
    }

    /// `x <- U x` (the row length must match).
    pub fn forward(&self, x: &mut [f32]) {
        assert_eq!(x.len(), self.n, "rotation length");
        x.iter_mut().zip(&self.signs).for_each(|(v, s)| *v *= s);
        self.hadamard_blocks(x);
        self.mix_blocks(x, false);
    }

    /// `x <- U^T x`, the inverse of [`Rotation::forward`].
    pub fn inverse(&self, x: &mut [f32]) {
        assert_eq!(x.len(), self.n, "rotation length");
        self.mix_blocks(x, true);
        self.hadamard_blocks(x);
        x.iter_mut().zip(&self.signs).for_each(|(v, s)| *v *= s);
    }

    /// Diagonal of `U diag(imp) U^T`: entry `(a, r)` is
    /// `sum_b R[a][b]^2 * mean(imp over Hadamard block b)`.
    pub fn rotated_importance(&self, imp: &[f32]) -> Vec<f32> {
        let means: Vec<f32> = imp
            .chunks_exact(self.p)
            .map(|b| b.iter().sum::<f32>() / self.p as f32)
            .collect();
        let per_block: Vec<f32> = match &self.mix {
            None => means,
            Some(r) => (0..self.m)
                .map(|a| {
                    (0..self.m)
                        .map(|b| r[a * self.m + b].powi(2) * means[b])
                        .sum()
                })
                .collect(),
        };
        per_block
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v, self.p))
            .collect()
    }
}

/// A random `m x m` orthogonal matrix: Gram-Schmidt (in f64) on Gaussian rows.
fn random_orthogonal(m: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(m);
    while q.len() < m {
        let mut v: Vec<f64> = (0..m).map(|_| rng.next_normal()).collect();
        // Twice for numerical orthogonality.
        for _ in 0..2 {
            for u in &q {
                let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
            }
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-6 {
            v.iter_mut().for_each(|a| *a /= norm);
            q.push(v);
        }
    }
    q.into_iter().flatten().map(|v| v as f32).collect()
}
