//! Input Hessians as the recipes' quadratic form: `tr(D H D^T)` per token
//! for a batch of rows, for Hessian-aware mixed precision (`convert --format mixed
//! --calibration`).

use crate::gptq::Hessian;
use gguftool_model::gemm::dot;
use gguftool_quant::recipe::QuadraticForm;

/// Rows evaluated together, so that each row of `H` is read once per tile.
const TILE: usize = 16;

impl QuadraticForm for Hessian {
    fn width(&self) -> usize {
        self.n()
    }

    /// `sum_r d_r^T H d_r / tokens` over the upper triangle (H is
    /// symmetric), tiles of rows against each row of `H` in f32
    /// (vectorized), sums in f64; 0 for a length that is not a multiple of
    /// `n`.
    fn eval_rows(&self, d: &[f32]) -> f64 {
        let n = self.n();
        if n == 0 || !d.len().is_multiple_of(n) {
            return 0.0;
        }
        let h = self.matrix();
        let mut row = vec![0f32; n];
        let mut total = 0f64;
        for tile in d.chunks(TILE * n) {
            for i in 0..n {
                let hi = &mut row[..n - i];
                hi.iter_mut()
                    .zip(&h[i * n + i..(i + 1) * n])
                    .for_each(|(a, &b)| *a = b as f32);
                for dr in tile.chunks_exact(n) {
                    let di = dr[i] as f64;
                    if di != 0.0 {
                        let off = dot(&hi[1..], &dr[i + 1..]) as f64;
                        total += di * (hi[0] as f64 * di + 2.0 * off);
                    }
                }
            }
        }
        total / self.tokens().max(1) as f64
    }

    /// `diag(H) / tokens`.
    fn diagonal(&self) -> Vec<f32> {
        let n = self.n();
        let t = self.tokens().max(1) as f64;
        (0..n)
            .map(|i| (self.matrix()[i * n + i] / t) as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_rows_matches_the_full_quadratic_form() {
        let n = 37;
        let mut h = Hessian::new(n);
        let x: Vec<f32> = (0..50 * n)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0 + (i % n) as f32 * 0.01)
            .collect();
        h.accumulate(&x).unwrap();
        // More rows than a tile, so tiles are summed too.
        let rows = TILE + 3;
        let d: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.25)
            .collect();
        // Per token: the Hessian holds 50 rows.
        let want: f64 = d.chunks(n).map(|r| h.quadratic_form(r)).sum::<f64>() / 50.0;
        let got = h.eval_rows(&d);
        assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} {want}");
        assert!(want > 0.0);
        assert_eq!(h.width(), n);
        assert_eq!(h.diagonal()[2], (h.matrix()[2 * n + 2] / 50.0) as f32);
        assert_eq!(h.eval_rows(&d[1..]), 0.0);
    }
}
