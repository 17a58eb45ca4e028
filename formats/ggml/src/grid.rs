//! Two-phase encoders ([`BlockGrid`]) for the standard types with an
//! encoder: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K..Q6_K, TQ1_0 and
//! TQ2_0 (IQ4_XS has no encoder here, so no grid).
//!
//! `fit` chooses a block's parameters with the very code the encoder uses
//! (the `*_fit` functions of [`crate::encode`], [`crate::legacy`] and
//! [`crate::ternary`]), on the importance-weighted path where the type has
//! one, as [`Quantizer::quantize_blocks`](gguftool_quant::format::Quantizer)
//! does when given importance. For K-quants a block is the 256-element
//! super-block. Parameters are exact f32 integers: f16 bits of the scales,
//! the sub-block scale and min codes as stored (Q3_K and Q6_K sub-scales
//! signed, as the decoder multiplies them).
//!
//! `round` gives the code whose decoded value (computed by the decoders'
//! own value functions, so bit for bit) is nearest, among the quotient the
//! encoders round and its two neighbours. The encoders do not always store
//! that code, so their blocks can differ from the grid's, never for the
//! worse per element (the grid's code is nearest for the same parameters):
//!
//! * Q4_0, Q5_0, Q4_1, Q5_1 with importance (ggml's `make_qx_quants` /
//!   `make_qkx2_quants`): the codes are those of the best candidate inverse
//!   scale of the search, not re-derived from the least-squares scale that
//!   is stored (ggml does the same), nor from its f16 rounding;
//! * IQ4_NL, Q8_0, TQ1_0, TQ2_0: the codes are re-derived from the scale
//!   before its f16 rounding;
//! * Q2_K..Q6_K: the codes are re-derived from the stored parameters by
//!   rounding a quotient, so they are nearest except at near-ties (the f32
//!   quotient and the decoded distances can disagree by an ulp) and in
//!   groups whose scale is zero, where the search's levels stay (every code
//!   decodes to the same value there).
//!
//! `formats/all/tests/block_grid.rs` checks the decode and that the grid's
//! weighted error is no worse than the encoder's.

use crate::encode::{
    best_index_iq4nl, high_bits, iq4_nl_weighted_fit, k4_weighted_fit, k4_write_params,
    legacy_affine_fit, legacy_symmetric_fit, nearest_int, pack_2bit, pack_nibbles,
    q2_k_weighted_fit, q2_k_write_params, q3_k_pack_levels, q3_k_weighted_fit, q3_k_write_params,
    q4_k_pack, q5_k_pack, q6_k_fit, q6_k_pack_levels, q6_k_write_params, K4Params, Q2kParams,
    Q3kParams, Q6kParams,
};
use crate::half_bits::{f16_to_f32, f32_to_f16};
use crate::kquants::{k4_value, q2_k_value, q3_k_value, q6_k_value, QK_K};
use crate::legacy::{affine_value, iq4_nl_value, q8_0_scale, q8_0_value, symmetric_value, QK};
use crate::ternary::{pack_tq1_0, pack_tq2_0, ternary_scale, ternary_value};
use gguftool_quant::format::BlockGrid;

/// The grid of one standard type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grid {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Iq4Nl,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Tq1_0,
    Tq2_0,
}

impl Grid {
    /// The grid of the type `id`, for the types that have one.
    pub(crate) fn for_type(id: u32) -> Option<&'static dyn BlockGrid> {
        let g: &'static Grid = match id {
            2 => &Grid::Q4_0,
            3 => &Grid::Q4_1,
            6 => &Grid::Q5_0,
            7 => &Grid::Q5_1,
            8 => &Grid::Q8_0,
            20 => &Grid::Iq4Nl,
            10 => &Grid::Q2K,
            11 => &Grid::Q3K,
            12 => &Grid::Q4K,
            13 => &Grid::Q5K,
            14 => &Grid::Q6K,
            34 => &Grid::Tq1_0,
            35 => &Grid::Tq2_0,
            _ => return None,
        };
        Some(g)
    }
}

/// A parameter holding f16 bits (an exact f32 integer).
#[inline]
fn from_bits(h: u16) -> f32 {
    h as f32
}

/// The f16 bits a parameter holds (saturating for out-of-contract values).
#[inline]
fn bits(p: f32) -> u16 {
    p as u16
}

/// The value of the f16 a parameter holds.
#[inline]
fn half(p: f32) -> f32 {
    f16_to_f32(bits(p))
}

/// The level in `lo..=hi` whose decoded value is nearest `v`: `est` (the
/// quotient the encoders round) rounded as they do, then its neighbours;
/// ties and NaN keep the rounded estimate.
#[inline]
fn nearest(v: f32, est: f32, lo: i32, hi: i32, value: impl Fn(i32) -> f32) -> (i32, f32) {
    // Clamped first: `nearest_int` is only exact for |f| <= 2^22.
    let c0 = nearest_int(est.clamp(lo as f32 - 1.0, hi as f32 + 1.0)).clamp(lo, hi);
    let mut best = (c0, value(c0));
    let mut err = (v - best.1).abs();
    for c in [c0 - 1, c0 + 1] {
        if (lo..=hi).contains(&c) {
            let y = value(c);
            let e = (v - y).abs();
            if e < err {
                (best, err) = ((c, y), e);
            }
        }
    }
    best
}

/// Codes of a block, clamped to `max` and padded with zeros, so packing
/// never overflows or reads out of bounds.
fn codes_of<const N: usize>(codes: &[u8], max: u8) -> [u8; N] {
    let mut l = [0u8; N];
    for (o, &c) in l.iter_mut().zip(codes) {
        *o = c.min(max);
    }
    l
}

fn q2_k_params(p: &[f32]) -> Q2kParams {
    Q2kParams {
        d: bits(p[0]),
        dmin: bits(p[1]),
        sc: std::array::from_fn(|k| (p[2 + k] as u8).min(15) | ((p[18 + k] as u8).min(15) << 4)),
    }
}

fn q3_k_params(p: &[f32]) -> Q3kParams {
    Q3kParams {
        d: bits(p[0]),
        ls: std::array::from_fn(|k| (p[1 + k].clamp(-32.0, 31.0) as i8 + 32) as u8),
    }
}

fn k4_params(p: &[f32]) -> K4Params {
    K4Params {
        d: bits(p[0]),
        dmin: bits(p[1]),
        sc: std::array::from_fn(|k| (p[2 + k] as u8).min(63)),
        mn: std::array::from_fn(|k| (p[10 + k] as u8).min(63)),
    }
}

fn q6_k_params(p: &[f32]) -> Q6kParams {
    Q6kParams {
        d: bits(p[0]),
        sc: std::array::from_fn(|k| p[1 + k] as i8),
    }
}

impl BlockGrid for Grid {
    fn params_per_block(&self) -> usize {
        match self {
            Grid::Q4_0 | Grid::Q5_0 | Grid::Q8_0 | Grid::Iq4Nl | Grid::Tq1_0 | Grid::Tq2_0 => 1,
            Grid::Q4_1 | Grid::Q5_1 => 2,
            // d, dmin, 16 scales, 16 mins.
            Grid::Q2K => 34,
            // d, 16 signed sub-scales.
            Grid::Q3K | Grid::Q6K => 17,
            // d, dmin, 8 scales, 8 mins.
            Grid::Q4K | Grid::Q5K => 18,
        }
    }

    fn fit(&self, x: &[f32], imp: &[f32], params: &mut [f32]) {
        match self {
            Grid::Q4_0 | Grid::Q5_0 => {
                let nmax = if *self == Grid::Q4_0 { 8 } else { 16 };
                let d = legacy_symmetric_fit(x, imp, nmax, &mut [0i8; QK]);
                params[0] = from_bits(f32_to_f16(d));
            }
            Grid::Q4_1 | Grid::Q5_1 => {
                let nmax = if *self == Grid::Q4_1 { 15 } else { 31 };
                let (d, the_min) = legacy_affine_fit(x, imp, nmax, &mut [0u8; QK]);
                params[0] = from_bits(f32_to_f16(d));
                params[1] = from_bits(f32_to_f16(-the_min));
            }
            Grid::Q8_0 => params[0] = from_bits(f32_to_f16(q8_0_scale(x))),
            Grid::Iq4Nl => {
                let d = iq4_nl_weighted_fit(x, imp, &mut [0u8; QK]);
                params[0] = from_bits(f32_to_f16(d));
            }
            Grid::Tq1_0 | Grid::Tq2_0 => params[0] = from_bits(f32_to_f16(ternary_scale(x))),
            Grid::Q2K => {
                let p = q2_k_weighted_fit(x, imp, &mut [0u8; QK_K]);
                params[0] = from_bits(p.d);
                params[1] = from_bits(p.dmin);
                for (k, &s) in p.sc.iter().enumerate() {
                    params[2 + k] = (s & 0x0f) as f32;
                    params[18 + k] = (s >> 4) as f32;
                }
            }
            Grid::Q3K => {
                let p = q3_k_weighted_fit(x, imp, &mut [0i8; QK_K]);
                params[0] = from_bits(p.d);
                for (o, &l) in params[1..17].iter_mut().zip(&p.ls) {
                    *o = (l as i32 - 32) as f32;
                }
            }
            Grid::Q4K | Grid::Q5K => {
                let nmax = if *self == Grid::Q4K { 15 } else { 31 };
                let p = k4_weighted_fit(x, imp, nmax, &mut [0u8; QK_K]);
                params[0] = from_bits(p.d);
                params[1] = from_bits(p.dmin);
                for (k, (&s, &m)) in p.sc.iter().zip(&p.mn).enumerate() {
                    params[2 + k] = s as f32;
                    params[10 + k] = m as f32;
                }
            }
            Grid::Q6K => {
                // ggml writes an all-zero block (d = 0, scales 0) when every
                // group is below its threshold.
                let p = q6_k_fit(x, Some(imp), &mut [0i8; QK_K])
                    .unwrap_or(Q6kParams { d: 0, sc: [0; 16] });
                params[0] = from_bits(p.d);
                for (o, &s) in params[1..17].iter_mut().zip(&p.sc) {
                    *o = s as f32;
                }
            }
        }
    }

    fn round(&self, params: &[f32], j: usize, v: f32) -> (u8, f32) {
        match self {
            Grid::Q4_0 | Grid::Q5_0 => {
                let off = if *self == Grid::Q4_0 { 8 } else { 16 };
                let d = half(params[0]);
                let (q, y) = nearest(v, v / d + off as f32, 0, 2 * off - 1, |q| {
                    symmetric_value(d, q as u8, off as i8)
                });
                (q as u8, y)
            }
            Grid::Q4_1 | Grid::Q5_1 => {
                let max = if *self == Grid::Q4_1 { 15 } else { 31 };
                let (d, m) = (half(params[0]), half(params[1]));
                let (q, y) = nearest(v, (v - m) / d, 0, max, |q| affine_value(d, m, q as u8));
                (q as u8, y)
            }
            Grid::Q8_0 => {
                let d = half(params[0]);
                let (q, y) = nearest(v, v / d, -128, 127, |q| q8_0_value(d, q as i8 as u8));
                (q as i8 as u8, y)
            }
            Grid::Iq4Nl => {
                let d = half(params[0]);
                let est = best_index_iq4nl(v / d) as f32;
                let (q, y) = nearest(v, est, 0, 15, |q| iq4_nl_value(d, q as u8));
                (q as u8, y)
            }
            Grid::Tq1_0 | Grid::Tq2_0 => {
                let d = half(params[0]);
                let (t, y) = nearest(v, v / d, -1, 1, |t| ternary_value(d, t as i8));
                ((t + 1) as u8, y)
            }
            Grid::Q2K => {
                let g = (j / 16) % 16;
                let (d, dmin) = (half(params[0]), half(params[1]));
                let sc = (params[2 + g] as u8).min(15) | ((params[18 + g] as u8).min(15) << 4);
                let dl = d * (sc & 0x0f) as f32;
                let ml = dmin * (sc >> 4) as f32;
                let (q, y) = nearest(v, (v + ml) / dl, 0, 3, |q| q2_k_value(d, dmin, sc, q as u8));
                (q as u8, y)
            }
            Grid::Q3K => {
                let d = half(params[0]);
                let s = params[1 + (j / 16) % 16].clamp(-32.0, 31.0) as i8;
                let (q, y) = nearest(v, v / (d * s as f32), -4, 3, |q| q3_k_value(d, s, q as i8));
                ((q + 4) as u8, y)
            }
            Grid::Q4K | Grid::Q5K => {
                let max = if *self == Grid::Q4K { 15 } else { 31 };
                let g = (j / 32) % 8;
                let (d, dmin) = (half(params[0]), half(params[1]));
                let (sc, mn) = (
                    (params[2 + g] as u8).min(63),
                    (params[10 + g] as u8).min(63),
                );
                let est = (v + dmin * mn as f32) / (d * sc as f32);
                let (q, y) = nearest(v, est, 0, max, |q| k4_value(d, dmin, sc, mn, q as u8));
                (q as u8, y)
            }
            Grid::Q6K => {
                let d = half(params[0]);
                let s = params[1 + (j / 16) % 16] as i8;
                let (q, y) = nearest(v, v / (d * s as f32), -32, 31, |q| {
                    q6_k_value(d, s, q as i8)
                });
                ((q + 32) as u8, y)
            }
        }
    }

    fn pack(&self, params: &[f32], codes: &[u8], dst: &mut [u8]) {
        match self {
            Grid::Q4_0 | Grid::Iq4Nl => {
                dst[..2].copy_from_slice(&bits(params[0]).to_le_bytes());
                pack_nibbles(&codes_of::<QK>(codes, 15), &mut dst[2..]);
            }
            Grid::Q5_0 => {
                let l = codes_of::<QK>(codes, 31);
                dst[..2].copy_from_slice(&bits(params[0]).to_le_bytes());
                high_bits(&l, &mut dst[2..]);
                pack_nibbles(&l, &mut dst[6..]);
            }
            Grid::Q4_1 | Grid::Q5_1 => {
                dst[..2].copy_from_slice(&bits(params[0]).to_le_bytes());
                dst[2..4].copy_from_slice(&bits(params[1]).to_le_bytes());
                if *self == Grid::Q4_1 {
                    pack_nibbles(&codes_of::<QK>(codes, 15), &mut dst[4..]);
                } else {
                    let l = codes_of::<QK>(codes, 31);
                    high_bits(&l, &mut dst[4..]);
                    pack_nibbles(&l, &mut dst[8..]);
                }
            }
            Grid::Q8_0 => {
                dst[..2].copy_from_slice(&bits(params[0]).to_le_bytes());
                dst[2..2 + QK].copy_from_slice(&codes_of::<QK>(codes, u8::MAX));
            }
            Grid::Tq1_0 => pack_tq1_0(&codes_of::<QK_K>(codes, 2), bits(params[0]), dst),
            Grid::Tq2_0 => pack_tq2_0(&codes_of::<QK_K>(codes, 2), bits(params[0]), dst),
            Grid::Q2K => {
                q2_k_write_params(&q2_k_params(params), dst);
                pack_2bit(&codes_of::<QK_K>(codes, 3), &mut dst[16..80]);
            }
            Grid::Q3K => {
                q3_k_write_params(&q3_k_params(params), dst);
                q3_k_pack_levels(&codes_of::<QK_K>(codes, 7), dst);
            }
            Grid::Q4K => {
                k4_write_params(&k4_params(params), dst);
                q4_k_pack(&codes_of::<QK_K>(codes, 15), &mut dst[16..144]);
            }
            Grid::Q5K => {
                k4_write_params(&k4_params(params), dst);
                let (qh, qs) = dst[16..176].split_at_mut(32);
                q5_k_pack(&codes_of::<QK_K>(codes, 31), qh, qs);
            }
            Grid::Q6K => {
                q6_k_write_params(&q6_k_params(params), dst);
                q6_k_pack_levels(&codes_of::<QK_K>(codes, 63), dst);
            }
        }
    }
}
