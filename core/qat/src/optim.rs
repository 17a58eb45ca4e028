//! AdamW, the warm-up + cosine learning-rate schedule and global-norm
//! gradient clipping.

/// AdamW state for one parameter vector.
#[derive(Debug, Clone)]
pub struct AdamW {
    m: Vec<f32>,
    v: Vec<f32>,
    t: u32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator guard.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl AdamW {
    /// State for `n` parameters (betas 0.9 / 0.999, eps 1e-8).
    pub fn new(n: usize, weight_decay: f32) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// One step: `p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            let update = (*m / c1) / ((*v / c2).sqrt() + self.eps);
            *p -= lr * (update + self.weight_decay * *p);
        }
    }
}

/// Linear warm-up to the peak, then cosine decay to zero at `total` steps.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Peak learning rate.
    pub peak: f32,
    /// Warm-up steps.
    pub warmup: usize,
    /// Total steps.
    pub total: usize,
}

impl Schedule {
    /// Learning rate at `step` (0-based).
    pub fn lr(&self, step: usize) -> f32 {
        if step < self.warmup {
            return self.peak * (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f32 / span as f32).min(1.0);
        0.5 * self.peak * (1.0 + (std::f32::consts::PI * progress).cos())
    }
}

/// Scales every gradient so the global L2 norm is at most `max`; returns the norm before.
pub fn clip_global_norm(grads: &mut [&mut [f32]], max: f32) -> f32 {
    let norm = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&g| (g as f64).powi(2))
        .sum::<f64>()
        .sqrt() as f32;
    if norm > max && norm > 0.0 {
        let k = max / norm;
        grads
            .iter_mut()
            .for_each(|g| g.iter_mut().for_each(|v| *v *= k));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_first_step_moves_by_lr_against_the_gradient_sign() {
        let mut opt = AdamW::new(2, 0.0);
        let mut p = [1.0f32, -1.0];
        opt.step(&mut p, &[0.5, -3.0], 0.1);
        assert!(
            (p[0] - 0.9).abs() < 1e-5 && (p[1] + 0.9).abs() < 1e-5,
            "{p:?}"
        );
    }

    #[test]
    fn adamw_decays_weights_without_gradient() {
        let mut opt = AdamW::new(1, 0.1);
        let mut p = [2.0f32];
        opt.step(&mut p, &[0.0], 0.5);
        assert!((p[0] - 1.9).abs() < 1e-6);
    }

    #[test]
    fn adamw_minimizes_a_quadratic() {
        let mut opt = AdamW::new(3, 0.0);
        let target = [3.0f32, -1.0, 0.5];
        let mut p = [0.0f32; 3];
        for _ in 0..2000 {
            let g: Vec<f32> = p.iter().zip(&target).map(|(a, b)| 2.0 * (a - b)).collect();
            opt.step(&mut p, &g, 0.01);
        }
        for (a, b) in p.iter().zip(&target) {
            assert!((a - b).abs() < 1e-2, "{p:?}");
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let s = Schedule {
            peak: 1.0,
            warmup: 4,
            total: 14,
        };
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert_eq!(s.lr(4), 1.0);
        assert!((s.lr(9) - 0.5).abs() < 1e-6);
        assert!(s.lr(14).abs() < 1e-6);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let (mut a, mut b) = (vec![3.0f32], vec![4.0f32]);
        let n = clip_global_norm(&mut [&mut a, &mut b], 1.0);
        assert_eq!(n, 5.0);
        assert!((a[0] - 0.6).abs() < 1e-6 && (b[0] - 0.8).abs() < 1e-6);
    }
}
