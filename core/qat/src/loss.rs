//! Losses on logits: task cross-entropy and knowledge distillation (KL
//! between temperature-softened teacher and student, times T^2), with their
//! gradients with respect to the student's logits.

/// Softmax of `z / t`.
pub fn softmax(z: &[f32], t: f32) -> Vec<f32> {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = z.iter().map(|&v| (((v - m) / t) as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

/// Cross-entropy `-log softmax(z)[label]`; adds its gradient times `w` to `grad`.
pub fn cross_entropy(z: &[f32], label: usize, w: f32, grad: &mut [f32]) -> f32 {
    let p = softmax(z, 1.0);
    for (g, (i, &pi)) in grad.iter_mut().zip(p.iter().enumerate()) {
        *g += w * (pi - if i == label { 1.0 } else { 0.0 });
    }
    -(p[label].max(1e-30)).ln()
}

/// Distillation loss `T^2 * KL(softmax(teacher/T) || softmax(student/T))`;
/// adds its gradient times `w` to `grad` (`T * (p_s - p_t)` per logit).
pub fn distillation(student: &[f32], teacher: &[f32], t: f32, w: f32, grad: &mut [f32]) -> f32 {
    let (ps, pt) = (softmax(student, t), softmax(teacher, t));
    let mut kl = 0f64;
    for ((g, &s), &q) in grad.iter_mut().zip(&ps).zip(&pt) {
        *g += w * t * (s - q);
        if q > 0.0 {
            kl += q as f64 * ((q as f64).ln() - (s.max(1e-30) as f64).ln());
        }
    }
    (t as f64 * t as f64 * kl) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(f: impl Fn(&[f32]) -> f32, z: &[f32], i: usize) -> f32 {
        let h = 1e-3;
        let (mut a, mut b) = (z.to_vec(), z.to_vec());
        a[i] += h;
        b[i] -= h;
        (f(&a) - f(&b)) / (2.0 * h)
    }

    #[test]
    fn gradients_match_finite_differences() {
        let z = [0.3f32, -1.2, 2.0, 0.1];
        let teacher = [1.0f32, 0.0, 0.5, -0.5];
        for t in [1.0f32, 2.0, 4.0] {
            let mut g = vec![0f32; 4];
            distillation(&z, &teacher, t, 1.0, &mut g);
            for (i, gi) in g.iter().enumerate() {
                let want = fd(|s| distillation(s, &teacher, t, 1.0, &mut [0.0; 4]), &z, i);
                assert!((gi - want).abs() < 2e-3, "T={t} i={i}: {gi} vs {want}");
            }
        }
        let mut g = vec![0f32; 4];
        cross_entropy(&z, 2, 1.0, &mut g);
        for (i, gi) in g.iter().enumerate() {
            let want = fd(|s| cross_entropy(s, 2, 1.0, &mut [0.0; 4]), &z, i);
            assert!((gi - want).abs() < 2e-3, "i={i}");
        }
    }

    #[test]
    fn distillation_is_zero_for_equal_logits() {
        let z = [0.5f32, 1.5, -2.0];
        let mut g = vec![0f32; 3];
        assert!(distillation(&z, &z, 3.0, 1.0, &mut g).abs() < 1e-6);
        assert!(g.iter().all(|v| v.abs() < 1e-6));
    }
}
