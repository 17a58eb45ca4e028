//! Input Hessians as the recipes' quadratic form: `tr(dW H dW^T)` row by
//! row, for Hessian-aware mixed precision (`convert --format mixed
//! --calibration`).

use crate::gptq::Hessian;
use gguftool_quant::recipe::QuadraticForm;

/// `sum_j a_j b_j` in f64 with four independent accumulators (so the loop
/// vectorizes).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

impl QuadraticForm for Hessian {
    fn width(&self) -> usize {
        self.n()
    }

    /// `d^T H d` over the upper triangle (H is symmetric): half the work of
    /// [`Hessian::quadratic_form`]. A `d` of another length gives 0.
    fn eval(&self, d: &[f32]) -> f64 {
        let n = self.n();
        if d.len() != n {
            return 0.0;
        }
        let h = self.matrix();
        let d: Vec<f64> = d.iter().map(|&x| x as f64).collect();
        (0..n)
            .map(|i| {
                let row = &h[i * n..(i + 1) * n];
                d[i] * (row[i] * d[i] + 2.0 * dot(&row[i + 1..], &d[i + 1..]))
            })
            .sum()
    }

    fn diagonal(&self) -> Vec<f32> {
        let n = self.n();
        (0..n).map(|i| self.matrix()[i * n + i] as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_matches_the_full_quadratic_form() {
        let n = 7;
        let mut h = Hessian::new(n);
        let x: Vec<f32> = (0..5 * n)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        h.accumulate(&x).unwrap();
        let d: Vec<f32> = (0..n).map(|i| (i as f32 - 3.0) * 0.25).collect();
        let (a, b) = (QuadraticForm::eval(&h, &d), h.quadratic_form(&d));
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} {b}");
        assert!(b > 0.0);
        assert_eq!(h.width(), n);
        assert_eq!(h.diagonal()[2], h.matrix()[2 * n + 2] as f32);
        assert_eq!(QuadraticForm::eval(&h, &d[1..]), 0.0);
    }
}
