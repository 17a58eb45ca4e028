//! Elementwise operations with ggml's numerics.

use half::f16;

/// RMSNorm of each row of `x` (rows of `w.len()`), in place, times `w`:
/// the sum of squares is accumulated in f64 as ggml does
/// (`ggml_compute_forward_rms_norm_f32`), the scale is f32.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    for row in x.chunks_exact_mut(n) {
        let mut sum = 0.0f64;
        for &v in row.iter() {
            sum += (v * v) as f64;
        }
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, &g) in row.iter_mut().zip(w) {
            *v = (*v * scale) * g;
        }
    }
}

/// ggml's tanh GELU on f32 (`ggml_gelu_f32`).
fn gelu_f32(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const GELU_COEF_A: f32 = 0.044715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// ggml's CPU GELU with `GGML_GELU_FP16`: x <= -10 gives 0, x >= 10 gives
/// x, otherwise x is rounded to f16 and the f16 table value
/// (f16(gelu(f16 x))) is returned.
pub fn gelu_ggml(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        let h = f16::from_f32(x).to_f32();
        f16::from_f32(gelu_f32(h)).to_f32()
    }
}

/// SiLU (`ggml_silu_f32`).
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// RoPE tables for one position: cos and sin of θ_i = pos·scale·base^(−2i/n_rot)
/// for i < n_rot/2, θ built iteratively in f32 as ggml does.
pub fn rope_cache(pos: usize, n_rot: usize, base: f32, freq_scale: f32, out: &mut Vec<(f32, f32)>) {
    out.clear();
    let theta_scale = base.powf(-2.0 / n_rot as f32);
    let mut theta_extrap = pos as f32;
    for _ in 0..n_rot / 2 {
        let theta = theta_extrap * freq_scale;
        out.push((theta.cos(), theta.sin()));
        theta_extrap *= theta_scale;
    }
}

/// Rotates one head in place with adjacent pairs (NORM).
pub fn rope_norm(x: &mut [f32], cs: &[(f32, f32)]) {
    for (i, &(c, s)) in cs.iter().enumerate() {
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

/// Rotates one head in place with halves (NEOX): pairs (i, i + n_rot/2).
pub fn rope_neox(x: &mut [f32], cs: &[(f32, f32)]) {
    let half = cs.len();
    for (i, &(c, s)) in cs.iter().enumerate() {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c - b * s;
        x[i + half] = a * s + b * c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_table_edges() {
        assert_eq!(gelu_ggml(-10.0), 0.0);
        assert_eq!(gelu_ggml(12.0), 12.0);
        assert!((gelu_ggml(1.0) - 0.8412).abs() < 1e-3);
    }

    #[test]
    fn rms_norm_unit() {
        let mut x = vec![3.0f32, 4.0];
        rms_norm(&mut x, &[1.0, 1.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / r).abs() < 1e-6 && (x[1] - 4.0 / r).abs() < 1e-6);
    }
}
