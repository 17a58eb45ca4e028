//! Ternary encoders: BitNet b1.58's absmean scale, and the scale and
//! support that minimise the importance-weighted squared error.

use crate::layout::{pack, BLOCK, TYPE_SIZE};
use half::f16;

/// How the per-block scale is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRule {
    /// BitNet b1.58: `gamma = mean(|w|)`, `t = clamp(round(w / gamma), -1, 1)`.
    AbsMean,
    /// The support (largest-magnitude weights) and scale minimising
    /// `sum imp * (w - d t)^2`, found exactly over every support size.
    Mse,
}

/// BitNet's epsilon guarding the division.
const EPS: f32 = 1e-8;

/// Ternary digits of `x` at scale `d` by rounding (clamped to one level).
pub fn round_trits(x: &[f32], d: f32) -> [i8; BLOCK] {
    let inv = 1.0 / (d + EPS);
    std::array::from_fn(|j| (x[j] * inv).round().clamp(-1.0, 1.0) as i8)
}

/// The absmean scale of a block.
pub fn absmean(x: &[f32]) -> f32 {
    x.iter().map(|v| v.abs()).sum::<f32>() / x.len() as f32
}

/// The MSE-optimal scale and digits: for the top-`k` weights by magnitude
/// as the support, the best scale is `sum_S imp |w| / sum_S imp` and the
/// error falls by `(sum_S imp |w|)^2 / sum_S imp`; every `k` is tried.
pub fn mse_optimal(x: &[f32], imp: &[f32]) -> (f32, [i8; BLOCK]) {
    let mut order: [usize; BLOCK] = std::array::from_fn(|j| j);
    order.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()));
    let (mut sw, mut swx) = (0f64, 0f64);
    let (mut best_gain, mut best_k, mut best_d) = (0f64, 0usize, 0f64);
    for (k, &j) in order.iter().enumerate() {
        sw += imp[j] as f64;
        swx += (imp[j] * x[j].abs()) as f64;
        if sw > 0.0 {
            let gain = swx * swx / sw;
            if gain > best_gain {
                (best_gain, best_k, best_d) = (gain, k + 1, swx / sw);
            }
        }
    }
    let mut t = [0i8; BLOCK];
    for &j in &order[..best_k] {
        t[j] = if x[j] < 0.0 { -1 } else { 1 };
    }
    (best_d as f32, t)
}

/// Encodes whole blocks with `rule`; `importance` weights the MSE rule.
pub fn encode(rule: ScaleRule, src: &[f32], importance: Option<&[f32]>, dst: &mut [u8]) {
    let ones = [1f32; BLOCK];
    for (i, (x, out)) in src
        .chunks_exact(BLOCK)
        .zip(dst.chunks_exact_mut(TYPE_SIZE))
        .enumerate()
    {
        let (d, t) = match rule {
            ScaleRule::AbsMean => {
                let g = absmean(x);
                (g, round_trits(x, g))
            }
            ScaleRule::Mse => {
                let imp = importance.map_or(&ones[..], |m| &m[i * BLOCK..(i + 1) * BLOCK]);
                mse_optimal(x, imp)
            }
        };
        let d = f16::from_f32(d);
        if d.to_f32().is_finite() {
            pack(d, &t, out);
        } else {
            pack(f16::ZERO, &[0; BLOCK], out);
        }
    }
}
