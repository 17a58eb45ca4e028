//! The encoder: for each sub-block of 16 an importance-weighted
//! least-squares scale found by a sweep, then one f16 super-scale and 6-bit
//! sub-scales, and the codes re-chosen for the quantized scales.

use crate::layout::{max_scale, pack, type_size, BLOCK, LEVEL_OFFSET, SUB, SUBS};

/// Nearest code for `x` at scale `s > 0`.
#[inline]
fn nearest(x: f32, inv_s: f32) -> u8 {
    ((x * inv_s).floor() + 2.0).clamp(0.0, 3.0) as u8
}

/// Weighted squared error and least-squares rescale for codes chosen at `s`.
fn fit(x: &[f32], w: &[f32], s: f32) -> (f32, f32) {
    let inv = 1.0 / s;
    let (mut xl, mut ll) = (0f32, 0f32);
    for (&v, &wt) in x.iter().zip(w) {
        let l = nearest(v, inv) as f32 - LEVEL_OFFSET;
        xl += wt * v * l;
        ll += wt * l * l;
    }
    let s_ls = if ll > 0.0 { (xl / ll).max(0.0) } else { 0.0 };
    let err: f32 = x
        .iter()
        .zip(w)
        .map(|(&v, &wt)| {
            let l = nearest(v, inv) as f32 - LEVEL_OFFSET;
            wt * (v - s_ls * l).powi(2)
        })
        .sum();
    (err, s_ls)
}

/// The best scale for one sub-block (0 when it is all zero).
fn sub_scale(x: &[f32], w: &[f32]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        return 0.0;
    }
    let mut best = (f32::INFINITY, amax / LEVEL_OFFSET);
    for i in 0..=24 {
        let s = amax / LEVEL_OFFSET * (0.4 + 0.03 * i as f32);
        let (err, s_ls) = fit(x, w, s);
        if err < best.0 && s_ls > 0.0 {
            best = (err, s_ls);
        }
    }
    best.1
}

/// Encodes whole blocks of rotated weights; `importance` weights the error.
pub fn encode<const SB: u32>(src: &[f32], importance: Option<&[f32]>, dst: &mut [u8]) {
    let ones = [1f32; BLOCK];
    for (i, (x, out)) in src
        .chunks_exact(BLOCK)
        .zip(dst.chunks_exact_mut(type_size::<SB>()))
        .enumerate()
    {
        let w = importance.map_or(&ones[..], |imp| &imp[i * BLOCK..(i + 1) * BLOCK]);
        encode_block::<SB>(x, w, out);
    }
}

/// A block's stored scales: the f16 super-scale bits, the 6-bit sub-scales
/// and the resulting step of each sub-block.
#[derive(Debug, Clone, Copy)]
pub struct BlockScales {
    /// f16 bits of `d` (0 when the block is all zero or not finite).
    pub d_bits: u16,
    /// Sub-scales.
    pub scales: [u8; SUBS],
    /// `d * sc` per sub-block.
    pub steps: [f32; SUBS],
}

impl BlockScales {
    /// Nearest code of `x` in sub-block `k` (code 0 when the step is 0).
    #[inline]
    pub fn code(&self, k: usize, x: f32) -> u8 {
        let s = self.steps[k];
        if s > 0.0 {
            nearest(x, 1.0 / s)
        } else {
            0
        }
    }

    /// The value code `c` decodes to in sub-block `k`.
    #[inline]
    pub fn value(&self, k: usize, c: u8) -> f32 {
        self.steps[k] * (c as f32 - LEVEL_OFFSET)
    }
}

/// Chooses the scales of one block of values `x` with error weights `w`.
pub fn block_scales<const SB: u32>(x: &[f32], w: &[f32]) -> BlockScales {
    let s: [f32; SUBS] =
        std::array::from_fn(|k| sub_scale(&x[k * SUB..(k + 1) * SUB], &w[k * SUB..(k + 1) * SUB]));
    let smax = s.iter().fold(0f32, |m, &v| m.max(v));
    let d = half::f16::from_f32(smax / max_scale::<SB>() as f32);
    let df = d.to_f32();
    let mut out = BlockScales {
        d_bits: 0,
        scales: [0; SUBS],
        steps: [0.0; SUBS],
    };
    if df > 0.0 && df.is_finite() {
        out.d_bits = d.to_bits();
        for (k, &sk) in s.iter().enumerate() {
            out.scales[k] = (sk / df).round().clamp(0.0, max_scale::<SB>() as f32) as u8;
            out.steps[k] = df * out.scales[k] as f32;
        }
    }
    out
}

fn encode_block<const SB: u32>(x: &[f32], w: &[f32], out: &mut [u8]) {
    let bs = block_scales::<SB>(x, w);
    let codes: [u8; BLOCK] = std::array::from_fn(|j| bs.code(j / SUB, x[j]));
    pack::<SB>(bs.d_bits, &bs.scales, &codes, out);
}
