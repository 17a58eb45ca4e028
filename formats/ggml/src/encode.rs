//! Encoders for Q4_1, Q5_0, Q5_1, IQ4_NL and the K-quants Q2_K..Q6_K.
//!
//! Without importance every encoder reproduces llama.cpp's deterministic
//! reference quantizer (`quantize_row_*_ref` in ggml-quants.c, which is also
//! what `llama-quantize` writes when given no imatrix), operation by
//! operation in f32, so the bytes are identical; Q4_1, Q5_0 and Q5_1 also
//! equal gguf-py 0.19's `quants.quantize`. With importance the `*_weighted`
//! encoders follow ggml's imatrix-aware `quantize_qX_K(.., quant_weights)`:
//! a weighted search for the scale (and min) of every sub-block and a
//! weighted fit of the super-block scales. One difference: for the 32-element
//! legacy types ggml takes the variance term of the weights over the whole
//! row, these encoders over the block (they see one block at a time).

// Index loops mirror ggml's loops so the two can be read side by side.
#![allow(clippy::needless_range_loop)]

use crate::half_bits::{f16_to_f32, f32_to_f16};
use crate::kquants::{scale_min_k4, QK_K};
use crate::legacy::{IQ4NL_LEVELS, QK};

/// Groups whose largest magnitude is below this are all-zero (ggml's
/// `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, by ggml's magic-number trick (valid for
/// |f| <= 2^22; same bits as ggml's `nearest_int` for any input).
#[inline]
pub(crate) fn nearest_int(f: f32) -> i32 {
    let v = f + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Writes `v` as f16 at `b[0..2]` and returns the stored value as f32.
#[inline]
fn put_f16(b: &mut [u8], v: f32) -> f32 {
    let h = f32_to_f16(v);
    b[..2].copy_from_slice(&h.to_le_bytes());
    f16_to_f32(h)
}

/// Per-element weight `imp * sqrt(sigma2 + x^2)` used by every ggml
/// imatrix quantizer.
#[inline]
fn imatrix_weights(x: &[f32], imp: &[f32], sigma2: f32, w: &mut [f32]) {
    for ((w, &v), &q) in w.iter_mut().zip(x).zip(imp) {
        *w = q * (sigma2 + v * v).sqrt();
    }
}

fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s
}

// ---------------------------------------------------------------------------
// Scale searches (ggml's make_*_quants), f32 arithmetic in ggml's order.

/// Symmetric levels in `-nmax..nmax` (stored `+ nmax`), weights `qw` or
/// `x^2`, with a search over 18 nearby inverse scales (ggml's
/// `make_qx_quants` with rmse_type 1).
fn make_qx_quants(x: &[f32], nmax: i32, l_out: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let w = |i: usize| match qw {
        Some(q) => q[i],
        None => x[i] * x[i],
    };
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for (i, &v) in x.iter().enumerate() {
        let l = clamp(nearest_int(iscale * v));
        l_out[i] = (l + nmax) as i8;
        let wi = w(i);
        sumlx += wi * v * l as f32;
        suml2 += wi * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for (i, &v) in x.iter().enumerate() {
            let l = clamp(nearest_int(iscale * v));
            let wi = w(i);
            sumlx += wi * v * l as f32;
            suml2 += wi * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                l_out[i] = (nmax + clamp(nearest_int(iscale * v))) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q3_K's per-group search: levels in `-nmax..nmax` (stored `+ nmax`),
/// weights `x^2`, refined one element at a time (ggml's `make_q3_quants`
/// with do_rmse).
fn make_q3_quants(x: &[f32], nmax: i32, l_out: &mut [i8]) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for (i, &v) in x.iter().enumerate() {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (i, &v) in x.iter().enumerate() {
            let w = v * v;
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * v * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_out[i] as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for l in l_out.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Scale and min for levels `0..=nmax` minimising the weighted error over
/// `nstep + 1` candidate inverse scales (ggml's `make_qkx2_quants`, and
/// `make_qkx3_quants` which differs only for NaN input). Returns
/// `(scale, -min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut aux = [0u8; 32];
    let aux = &mut aux[..n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l_out.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Weighted fit of non-negative values `x` to levels `0..=nmax` (ggml's
/// `make_qp_quants`, used for the super-block scales of the weighted
/// K-quants).
fn make_qp_quants(x: &[f32], nmax: i32, l_out: &mut [u8], qw: &[f32]) -> f32 {
    let mut max = 0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (l, &v) in l_out.iter_mut().zip(x) {
        *l = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..x.len() {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..x.len() {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..x.len() {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let w = qw[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..x.len() {
            let w = qw[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l_out[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------
// Legacy 32-element types.

fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Packs 32 levels into nibbles (low: elements 0..16, high: 16..32).
pub(crate) fn pack_nibbles(l: &[u8], qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = (l[j] & 0x0f) | ((l[j + QK / 2] & 0x0f) << 4);
    }
}

/// The fifth bits of 32 levels, bit `i` for element `i`.
pub(crate) fn high_bits(l: &[u8], qh: &mut [u8]) {
    let mut h = 0u32;
    for (i, &v) in l.iter().enumerate() {
        h |= (((v >> 4) & 1) as u32) << i;
    }
    qh[..4].copy_from_slice(&h.to_le_bytes());
}

/// Encodes a Q4_1 block (ggml reference = gguf-py).
pub fn quant_q4_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    put_f16(b, d);
    put_f16(&mut b[2..], min);
    let mut l = [0u8; QK];
    for (l, &v) in l.iter_mut().zip(x) {
        *l = (((v - min) * id + 0.5).trunc() as u8).min(15);
    }
    pack_nibbles(&l, &mut b[4..]);
}

/// Encodes a Q5_0 block (ggml reference = gguf-py).
pub fn quant_q5_0(x: &[f32], b: &mut [u8]) {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    put_f16(b, d);
    let mut l = [0u8; QK];
    for (l, &v) in l.iter_mut().zip(x) {
        *l = ((v * id + 16.5).trunc() as u8).min(31);
    }
    high_bits(&l, &mut b[2..]);
    pack_nibbles(&l, &mut b[6..]);
}

/// Encodes a Q5_1 block (ggml reference = gguf-py).
pub fn quant_q5_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    put_f16(b, d);
    put_f16(&mut b[2..], min);
    let mut l = [0u8; QK];
    for (l, &v) in l.iter_mut().zip(x) {
        *l = (((v - min) * id + 0.5).trunc() as u8).min(31);
    }
    high_bits(&l, &mut b[4..]);
    pack_nibbles(&l, &mut b[8..]);
}

/// Weights of a legacy block: the variance term over the block.
fn legacy_weights(x: &[f32], imp: &[f32]) -> [f32; QK] {
    let sigma2 = sum_sq(x) / QK as f32;
    let mut w = [0f32; QK];
    imatrix_weights(x, imp, sigma2, &mut w);
    w
}

/// Scale (before f16 rounding) of an importance-weighted Q4_0 (`nmax` 8)
/// or Q5_0 (`nmax` 16) block, and the levels of its search (stored
/// `+ nmax`); shared by the encoders and the block grid.
pub(crate) fn legacy_symmetric_fit(x: &[f32], imp: &[f32], nmax: i32, l: &mut [i8; QK]) -> f32 {
    let w = legacy_weights(x, imp);
    make_qx_quants(x, nmax, l, Some(&w))
}

/// `(scale, -min)` (before f16 rounding) of an importance-weighted Q4_1
/// (`nmax` 15) or Q5_1 (`nmax` 31) block, and the levels of its search;
/// shared by the encoders and the block grid.
pub(crate) fn legacy_affine_fit(x: &[f32], imp: &[f32], nmax: i32, l: &mut [u8; QK]) -> (f32, f32) {
    let w = legacy_weights(x, imp);
    make_qkx_quants(x, &w, nmax, l, -0.9, 0.05, 36, false)
}

/// Importance-weighted Q4_0 block (ggml's `quantize_row_q4_0_impl`).
pub fn quant_q4_0_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let mut l = [0i8; QK];
    let d = legacy_symmetric_fit(x, imp, 8, &mut l);
    put_f16(b, d);
    pack_nibbles(&l.map(|v| v as u8), &mut b[2..]);
}

/// Importance-weighted Q4_1 block (ggml's `quantize_row_q4_1_impl`).
pub fn quant_q4_1_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK];
    let (d, the_min) = legacy_affine_fit(x, imp, 15, &mut l);
    put_f16(b, d);
    put_f16(&mut b[2..], -the_min);
    pack_nibbles(&l, &mut b[4..]);
}

/// Importance-weighted Q5_0 block (ggml's `quantize_row_q5_0_impl`).
pub fn quant_q5_0_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let mut l = [0i8; QK];
    let d = legacy_symmetric_fit(x, imp, 16, &mut l);
    put_f16(b, d);
    let l = l.map(|v| v as u8);
    high_bits(&l, &mut b[2..]);
    pack_nibbles(&l, &mut b[6..]);
}

/// Importance-weighted Q5_1 block (ggml's `quantize_row_q5_1_impl`).
pub fn quant_q5_1_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK];
    let (d, the_min) = legacy_affine_fit(x, imp, 31, &mut l);
    put_f16(b, d);
    put_f16(&mut b[2..], -the_min);
    high_bits(&l, &mut b[4..]);
    pack_nibbles(&l, &mut b[8..]);
}

/// Index of the IQ4_NL level nearest `x` (ggml's `best_index_int8`; ties
/// go up).
pub(crate) fn best_index_iq4nl(x: f32) -> u8 {
    let v = &IQ4NL_LEVELS;
    if x <= v[0] as f32 {
        return 0;
    }
    if x >= v[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < v[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (v[mu - 1] as f32) < v[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// IQ4_NL block scale search (ggml's `quantize_row_iq4_nl_impl` for one
/// block of 32): `ntry` -1 is the reference quantizer, 7 the weighted one.
/// Returns the scale before f16 rounding; `l` gets the levels of the first
/// pass (the ones the reference quantizer stores).
fn iq4_nl_scale(x: &[f32], weight: &[f32], ntry: i32, l: &mut [u8; QK]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let v0 = IQ4NL_LEVELS[0] as f32;
    if amax < GROUP_MAX_EPS {
        // ggml leaves the levels of an all-zero block unset (stale stack
        // contents); any level decodes to 0 with d = 0, so write zeros.
        l.iter_mut().for_each(|v| *v = 0);
        0.0
    } else {
        let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
        let id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for j in 0..QK {
            let li = best_index_iq4nl(id * x[j]);
            l[j] = li;
            let q = IQ4NL_LEVELS[li as usize] as f32;
            sumqx += weight[j] * q * x[j];
            sumq2 += weight[j] * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            let id = (itry as f32 + v0) / max;
            let (mut sumqx, mut sumq2) = (0f32, 0f32);
            for j in 0..QK {
                let q = IQ4NL_LEVELS[best_index_iq4nl(id * x[j]) as usize] as f32;
                sumqx += weight[j] * q * x[j];
                sumq2 += weight[j] * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        d
    }
}

/// Writes an IQ4_NL block with the scale [`iq4_nl_scale`] found; the
/// weighted search (`ntry > 0`) re-derives the levels from it first.
fn iq4_nl_write(x: &[f32], scale: f32, ntry: i32, l: &mut [u8; QK], b: &mut [u8]) {
    put_f16(b, scale);
    if ntry > 0 {
        let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        for j in 0..QK {
            l[j] = best_index_iq4nl(id * x[j]);
        }
    }
    pack_nibbles(l, &mut b[2..]);
}

/// Encodes an IQ4_NL block like ggml's `quantize_row_iq4_nl_ref` (weights
/// `x^2`, no scale search).
pub fn quant_iq4_nl(x: &[f32], b: &mut [u8]) {
    let mut w = [0f32; QK];
    for (w, &v) in w.iter_mut().zip(x) {
        *w = v * v;
    }
    let mut l = [0u8; QK];
    let scale = iq4_nl_scale(x, &w, -1, &mut l);
    iq4_nl_write(x, scale, -1, &mut l, b);
}

/// Scale (before f16 rounding) of an importance-weighted IQ4_NL block;
/// shared by the encoder and the block grid.
pub(crate) fn iq4_nl_weighted_fit(x: &[f32], imp: &[f32], l: &mut [u8; QK]) -> f32 {
    let mut sigma2 = sum_sq(x);
    sigma2 *= 2.0 / QK as f32;
    let mut w = [0f32; QK];
    imatrix_weights(x, imp, sigma2, &mut w);
    iq4_nl_scale(x, &w, 7, l)
}

/// Importance-weighted IQ4_NL block (ggml's `quantize_iq4_nl` with
/// quant_weights: 15 candidate scales).
pub fn quant_iq4_nl_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK];
    let scale = iq4_nl_weighted_fit(x, imp, &mut l);
    iq4_nl_write(x, scale, 7, &mut l, b);
}

// ---------------------------------------------------------------------------
// K-quants.
//
// Each type's encoders are split in two: a fit (`*_fit`) choosing the
// super-block's parameters as stored, shared with the block grid
// ([`crate::grid`]), and a writer that re-derives the levels from the stored
// parameters and packs them (as ggml does).

/// Packs 256 two-bit levels as Q2_K/Q3_K do (four 32-element groups per
/// byte lane, 128 elements per 32 bytes).
pub(crate) fn pack_2bit(l: &[u8], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] =
                l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// A Q2_K super-block's parameters as stored: the f16 bits of `d` and
/// `dmin`, and per 16 elements a byte with the 4-bit scale (low nibble) and
/// 4-bit min (high nibble).
pub(crate) struct Q2kParams {
    /// f16 bits of the super-block scale.
    pub d: u16,
    /// f16 bits of the super-block min scale.
    pub dmin: u16,
    /// Scale (low nibble) and min (high nibble) of each 16 elements.
    pub sc: [u8; 16],
}

/// Writes Q2_K's parameters (`scales` at 0..16, `d`, `dmin` at 80..84).
pub(crate) fn q2_k_write_params(p: &Q2kParams, b: &mut [u8]) {
    b[..16].copy_from_slice(&p.sc);
    b[80..82].copy_from_slice(&p.d.to_le_bytes());
    b[82..84].copy_from_slice(&p.dmin.to_le_bytes());
}

/// Re-derives Q2_K levels from the stored parameters, then writes the block.
fn q2_k_write(x: &[f32], p: &Q2kParams, l: &mut [u8; QK_K], b: &mut [u8]) {
    let (d, dmin) = (f16_to_f32(p.d), f16_to_f32(p.dmin));
    for j in 0..QK_K / 16 {
        let dl = d * (p.sc[j] & 0x0f) as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * (p.sc[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + ml) / dl).clamp(0, 3) as u8;
        }
    }
    q2_k_write_params(p, b);
    pack_2bit(l, &mut b[16..80]);
}

/// Q2_K's parameters as ggml's `quantize_row_q2_K_ref` chooses them.
fn q2_k_ref_fit(x: &[f32], l: &mut [u8; QK_K]) -> Q2kParams {
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let w: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
        let (s, m) = make_qkx_quants(xs, &w, 3, &mut l[16 * j..16 * j + 16], -0.5, 0.1, 15, true);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let mut sc = [0u8; 16];
    let d = if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        f32_to_f16(max_scale / 15.0)
    } else {
        f32_to_f16(0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for j in 0..16 {
            sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        f32_to_f16(max_min / 15.0)
    } else {
        f32_to_f16(0.0)
    };
    Q2kParams { d, dmin, sc }
}

/// Encodes a Q2_K block like ggml's `quantize_row_q2_K_ref`.
pub fn quant_q2_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let p = q2_k_ref_fit(x, &mut l);
    q2_k_write(x, &p, &mut l, b);
}

/// Q2_K's parameters as ggml's `quantize_row_q2_K_impl` chooses them with
/// importance; `l` gets the levels of the sub-block searches.
pub(crate) fn q2_k_weighted_fit(x: &[f32], imp: &[f32], l: &mut [u8; QK_K]) -> Q2kParams {
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    let mut sw = [0f32; 16];
    let sigma2 = sum_sq(x) / QK_K as f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let mut w = [0f32; 16];
        imatrix_weights(xs, &imp[16 * j..16 * j + 16], sigma2, &mut w);
        for &v in &w {
            sw[j] += v;
        }
        let (s, m) = make_qkx_quants(
            xs,
            &w,
            3,
            &mut l[16 * j..16 * j + 16],
            -0.9,
            0.05,
            36,
            false,
        );
        scales[j] = s;
        mins[j] = m;
    }
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    let dm = make_qp_quants(&scales, 15, &mut ls, &sw);
    let mm = make_qp_quants(&mins, 15, &mut lm, &sw);
    Q2kParams {
        d: f32_to_f16(dm),
        dmin: f32_to_f16(mm),
        sc: std::array::from_fn(|j| ls[j] | (lm[j] << 4)),
    }
}

/// Importance-weighted Q2_K block (ggml's `quantize_row_q2_K_impl`).
pub fn quant_q2_k_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let p = q2_k_weighted_fit(x, imp, &mut l);
    q2_k_write(x, &p, &mut l, b);
}

/// A Q3_K super-block's parameters as stored: the f16 bits of `d` and the
/// sixteen 6-bit sub-scale codes (sub-scale = code - 32).
pub(crate) struct Q3kParams {
    /// f16 bits of the super-block scale.
    pub d: u16,
    /// 6-bit sub-scale codes, offset by 32.
    pub ls: [u8; 16],
}

/// Writes Q3_K's parameters (scales at 96..108, `d` at 108..110).
pub(crate) fn q3_k_write_params(p: &Q3kParams, b: &mut [u8]) {
    let s = &mut b[96..108];
    s.iter_mut().for_each(|v| *v = 0);
    for (j, &l) in p.ls.iter().enumerate() {
        if j < 8 {
            s[j] = l & 0x0f;
        } else {
            s[j - 8] |= (l & 0x0f) << 4;
        }
        s[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
    }
    b[108..110].copy_from_slice(&p.d.to_le_bytes());
}

/// Writes Q3_K's 256 levels (`0..8`, value + 4): hmask and qs.
pub(crate) fn q3_k_pack_levels(l: &[u8], b: &mut [u8]) {
    let mut lu = [0u8; QK_K];
    let hmask = &mut b[..32];
    hmask.iter_mut().for_each(|v| *v = 0);
    for j in 0..QK_K {
        let mut v = l[j];
        if v > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            v -= 4;
        }
        lu[j] = v;
    }
    pack_2bit(&lu, &mut b[32..96]);
}

/// Re-derives Q3_K levels from the stored parameters, then writes the block.
fn q3_k_write(x: &[f32], p: &Q3kParams, l: &mut [i8; QK_K], b: &mut [u8]) {
    let d_all = f16_to_f32(p.d);
    for j in 0..16 {
        let sc = p.ls[j] as i32 - 32;
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
        }
    }
    q3_k_write_params(p, b);
    q3_k_pack_levels(&l.map(|v| v as u8), b);
}

/// Q3_K's parameters as ggml's `quantize_row_q3_K_ref` chooses them.
fn q3_k_ref_fit(x: &[f32], l: &mut [i8; QK_K]) -> Q3kParams {
    let mut scales = [0f32; 16];
    let mut max_scale = 0f32;
    let mut amax = 0f32;
    for j in 0..16 {
        scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut l[16 * j..16 * j + 16]);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        Q3kParams {
            d: f32_to_f16(1.0 / iscale),
            ls: std::array::from_fn(|j| {
                ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8
            }),
        }
    } else {
        // All-zero scale codes (ggml stores zero bytes, not code 32).
        Q3kParams {
            d: f32_to_f16(0.0),
            ls: [0; 16],
        }
    }
}

/// Encodes a Q3_K block like ggml's `quantize_row_q3_K_ref`.
pub fn quant_q3_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let p = q3_k_ref_fit(x, &mut l);
    q3_k_write(x, &p, &mut l, b);
}

/// Q3_K's parameters as ggml's `quantize_row_q3_K_impl` chooses them with
/// importance; `l` gets the levels of the sub-block searches.
pub(crate) fn q3_k_weighted_fit(x: &[f32], imp: &[f32], l: &mut [i8; QK_K]) -> Q3kParams {
    let mut scales = [0f32; 16];
    let mut sw = [0f32; 16];
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let mut w = [0f32; 16];
        imatrix_weights(xs, &imp[16 * j..16 * j + 16], sigma2, &mut w);
        let mut sumw = 0f32;
        for &v in &w {
            sumw += v;
        }
        sw[j] = sumw;
        scales[j] = make_qx_quants(xs, 4, &mut l[16 * j..16 * j + 16], Some(&w));
    }
    let mut ls = [0i8; 16];
    let d_block = make_qx_quants(&scales, 32, &mut ls, Some(&sw));
    Q3kParams {
        d: f32_to_f16(d_block),
        ls: ls.map(|v| v as u8),
    }
}

/// Importance-weighted Q3_K block (ggml's `quantize_row_q3_K_impl`).
pub fn quant_q3_k_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let p = q3_k_weighted_fit(x, imp, &mut l);
    q3_k_write(x, &p, &mut l, b);
}

/// A Q4_K/Q5_K super-block's parameters as stored: the f16 bits of `d` and
/// `dmin`, and the 6-bit scale and min of each 32 elements.
pub(crate) struct K4Params {
    /// f16 bits of the super-block scale.
    pub d: u16,
    /// f16 bits of the super-block min scale.
    pub dmin: u16,
    /// 6-bit sub-block scales.
    pub sc: [u8; 8],
    /// 6-bit sub-block mins.
    pub mn: [u8; 8],
}

/// Writes Q4_K/Q5_K's parameters (`d`, `dmin`, then the 12 bytes of 6-bit
/// scales and mins) at `b[0..16]`.
pub(crate) fn k4_write_params(p: &K4Params, b: &mut [u8]) {
    b[..2].copy_from_slice(&p.d.to_le_bytes());
    b[2..4].copy_from_slice(&p.dmin.to_le_bytes());
    let s = &mut b[4..16];
    s.iter_mut().for_each(|v| *v = 0);
    let (ls, lm) = (&p.sc, &p.mn);
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// Q4_K/Q5_K's parameters as ggml's reference quantizers choose them.
fn k4_ref_fit(x: &[f32], nmax: i32, rmin: f32, nstep: i32, l: &mut [u8; QK_K]) -> K4Params {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let av_x = (sum_sq(xs) / 32.0).sqrt();
        let w: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        let (s, m) = make_qkx_quants(
            xs,
            &w,
            nmax,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    K4Params {
        d: f32_to_f16(max_scale / 63.0),
        dmin: f32_to_f16(max_min / 63.0),
        sc: std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63)),
        mn: std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63)),
    }
}

/// Q4_K (`nmax` 15) or Q5_K (`nmax` 31) parameters as ggml's
/// `quantize_row_q4_K_impl`/`q5_K_impl` choose them with importance; `l`
/// gets the levels of the sub-block searches.
pub(crate) fn k4_weighted_fit(x: &[f32], imp: &[f32], nmax: i32, l: &mut [u8; QK_K]) -> K4Params {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut sw = [0f32; 8];
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut w = [0f32; 32];
        imatrix_weights(xs, &imp[32 * j..32 * j + 32], sigma2, &mut w);
        let mut sumw = 0f32;
        for &v in &w {
            sumw += v;
        }
        sw[j] = sumw;
        let (s, m) = make_qkx_quants(
            xs,
            &w,
            nmax,
            &mut l[32 * j..32 * j + 32],
            -0.9,
            0.05,
            36,
            false,
        );
        scales[j] = s;
        mins[j] = m;
    }
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d_block = make_qp_quants(&scales, 63, &mut ls, &sw);
    let m_block = make_qp_quants(&mins, 63, &mut lm, &sw);
    K4Params {
        d: f32_to_f16(d_block),
        dmin: f32_to_f16(m_block),
        sc: ls.map(|v| v.min(63)),
        mn: lm.map(|v| v.min(63)),
    }
}

/// Writes a Q4_K/Q5_K block's parameters and re-derives its levels from
/// them.
fn k4_write(x: &[f32], nmax: i32, p: &K4Params, l: &mut [u8; QK_K], b: &mut [u8]) {
    k4_write_params(p, b);
    let d = f16_to_f32(p.d);
    let dmin = f16_to_f32(p.dmin);
    let (sc, mn) = scale_min_k4(&b[4..16]);
    for j in 0..8 {
        let dl = d * sc[j] as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin * mn[j] as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
}

/// Packs Q4_K's 256 levels (`0..16`) into `qs` (128 bytes).
pub(crate) fn q4_k_pack(l: &[u8], qs: &mut [u8]) {
    for (c, q) in qs.chunks_exact_mut(32).enumerate() {
        for k in 0..32 {
            q[k] = l[64 * c + k] | (l[64 * c + k + 32] << 4);
        }
    }
}

/// Packs Q5_K's 256 levels (`0..32`) into `qh` (32 bytes) and `qs` (128).
pub(crate) fn q5_k_pack(l: &[u8], qh: &mut [u8], qs: &mut [u8]) {
    qh[..32].iter_mut().for_each(|v| *v = 0);
    for (c, q) in qs.chunks_exact_mut(32).enumerate() {
        for k in 0..32 {
            let (mut l1, mut l2) = (l[64 * c + k], l[64 * c + k + 32]);
            if l1 > 15 {
                l1 -= 16;
                qh[k] |= 1 << (2 * c);
            }
            if l2 > 15 {
                l2 -= 16;
                qh[k] |= 2 << (2 * c);
            }
            q[k] = l1 | (l2 << 4);
        }
    }
}

/// Encodes a Q4_K block like ggml's `quantize_row_q4_K_ref`.
pub fn quant_q4_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let p = k4_ref_fit(x, 15, -1.0, 20, &mut l);
    k4_write(x, 15, &p, &mut l, b);
    q4_k_pack(&l, &mut b[16..144]);
}

/// Importance-weighted Q4_K block (ggml's `quantize_row_q4_K_impl`).
pub fn quant_q4_k_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let p = k4_weighted_fit(x, imp, 15, &mut l);
    k4_write(x, 15, &p, &mut l, b);
    q4_k_pack(&l, &mut b[16..144]);
}

/// Encodes a Q5_K block like ggml's `quantize_row_q5_K_ref`.
pub fn quant_q5_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let p = k4_ref_fit(x, 31, -0.5, 15, &mut l);
    k4_write(x, 31, &p, &mut l, b);
    let (qh, qs) = b[16..176].split_at_mut(32);
    q5_k_pack(&l, qh, qs);
}

/// Importance-weighted Q5_K block (ggml's `quantize_row_q5_K_impl`).
pub fn quant_q5_k_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let p = k4_weighted_fit(x, imp, 31, &mut l);
    k4_write(x, 31, &p, &mut l, b);
    let (qh, qs) = b[16..176].split_at_mut(32);
    q5_k_pack(&l, qh, qs);
}

/// A Q6_K super-block's parameters as stored: the f16 bits of `d` and the
/// signed 8-bit scale of each 16 elements.
pub(crate) struct Q6kParams {
    /// f16 bits of the super-block scale.
    pub d: u16,
    /// Sub-block scales.
    pub sc: [i8; 16],
}

/// Q6_K's parameters as ggml's `quantize_row_q6_K_ref` (`imp` None) or
/// `quantize_row_q6_K_impl` (the importance weights each group's scale
/// search) choose them; `l` gets the levels of the group searches. None
/// for a block ggml writes as all zero bytes (every group below
/// [`GROUP_MAX_EPS`]).
pub(crate) fn q6_k_fit(x: &[f32], imp: Option<&[f32]>, l: &mut [i8; QK_K]) -> Option<Q6kParams> {
    let mut scales = [0f32; 16];
    let mut max_scale = 0f32;
    let mut max_abs_scale = 0f32;
    for ib in 0..16 {
        let r = 16 * ib..16 * ib + 16;
        let s = make_qx_quants(&x[r.clone()], 32, &mut l[r.clone()], imp.map(|q| &q[r]));
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        return None;
    }
    let iscale = -128.0 / max_scale;
    Some(Q6kParams {
        d: f32_to_f16(1.0 / iscale),
        sc: std::array::from_fn(|ib| nearest_int(iscale * scales[ib]).min(127) as i8),
    })
}

/// Writes Q6_K's parameters (scales at 192..208, `d` at 208..210).
pub(crate) fn q6_k_write_params(p: &Q6kParams, b: &mut [u8]) {
    for (o, &s) in b[192..208].iter_mut().zip(&p.sc) {
        *o = s as u8;
    }
    b[208..210].copy_from_slice(&p.d.to_le_bytes());
}

/// Packs Q6_K's 256 levels (`0..64`, value + 32) into `ql` and `qh`.
pub(crate) fn q6_k_pack_levels(l: &[u8], b: &mut [u8]) {
    let (ql, rest) = b.split_at_mut(128);
    let qh = &mut rest[..64];
    for h in 0..2 {
        let (j, ql, qh) = (
            128 * h,
            &mut ql[64 * h..64 * h + 64],
            &mut qh[32 * h..32 * h + 32],
        );
        for k in 0..32 {
            let q = |o: usize| l[j + k + o];
            ql[k] = (q(0) & 0x0f) | ((q(64) & 0x0f) << 4);
            ql[k + 32] = (q(32) & 0x0f) | ((q(96) & 0x0f) << 4);
            qh[k] = (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
        }
    }
}

/// Q6_K from per-16 scales found by `make_qx_quants` with weights `qw`.
fn q6_k_encode(x: &[f32], imp: Option<&[f32]>, b: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let Some(p) = q6_k_fit(x, imp, &mut l) else {
        b[..210].iter_mut().for_each(|v| *v = 0);
        return;
    };
    let d = f16_to_f32(p.d);
    q6_k_write_params(&p, b);
    for j in 0..16 {
        let dl = d * p.sc[j] as f32;
        if dl == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dl).clamp(-32, 31) + 32) as i8;
        }
    }
    q6_k_pack_levels(&l.map(|v| v as u8), b);
}

/// Encodes a Q6_K block like ggml's `quantize_row_q6_K_ref`.
pub fn quant_q6_k(x: &[f32], b: &mut [u8]) {
    q6_k_encode(x, None, b);
}

/// Importance-weighted Q6_K block (ggml's `quantize_row_q6_K_impl`: the
/// importance itself weights each group's scale search).
pub fn quant_q6_k_weighted(x: &[f32], imp: &[f32], b: &mut [u8]) {
    q6_k_encode(x, Some(imp), b);
}
