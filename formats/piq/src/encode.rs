//! Encoder: per block, the scale that minimises the (importance-weighted)
//! squared error, found by a candidate sweep plus least-squares refinement.

use crate::layout::{pack_codes, PiqSpec, BLOCK};
use half::f16;

/// Candidates: the block's absmax is mapped to `reach * (1 + SWEEP_STEP * t)`
/// for `t` in `SWEEP_LO..=SWEEP_HI` (shrinking the grid clips outliers).
const SWEEP_LO: i32 = 0;
const SWEEP_HI: i32 = 6;
/// Relative spacing of the candidates.
const SWEEP_STEP: f32 = 0.15;
/// Least-squares refinements after the sweep.
const REFINE: usize = 2;

/// Nearest code for `v` (already divided by the step).
#[inline(always)]
pub(crate) fn nearest_code(spec: &PiqSpec, v: f32) -> u8 {
    let max = (spec.n_codes() - 1) as f32;
    (v + spec.offset + 0.5).floor().clamp(0.0, max) as u8
}

/// Nearest level for `v`, in the float domain (vectorizes well).
#[inline(always)]
fn nearest_level(offset: f32, max_code: f32, v: f32) -> f32 {
    (v + offset + 0.5).floor().clamp(0.0, max_code) - offset
}

/// For codes chosen with step `1/inv`, returns (sum w x l, sum w l^2).
#[inline(always)]
fn fit(spec: &PiqSpec, x: &[f32; BLOCK], w: &[f32; BLOCK], inv: f32) -> (f32, f32) {
    let max_code = (spec.n_codes() - 1) as f32;
    let (mut sxl, mut sll) = ([0f32; 8], [0f32; 8]);
    for j in 0..BLOCK {
        let l = nearest_level(spec.offset, max_code, x[j] * inv);
        sxl[j % 8] += w[j] * x[j] * l;
        sll[j % 8] += w[j] * l * l;
    }
    (sxl.iter().sum(), sll.iter().sum())
}

/// Chooses the step for one block (may be negative for asymmetric grids).
#[inline(always)]
fn best_step(spec: &PiqSpec, x: &[f32; BLOCK], w: &[f32; BLOCK]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        return 0.0;
    }
    // Largest level magnitude on each side of zero.
    let reach_pos = spec.level((spec.n_codes() - 1) as u8);
    let reach_neg = -spec.level(0);
    let symmetric = reach_pos == reach_neg;
    let (mut best_gain, mut best_step) = (-1f32, 0f32);
    // Asymmetric grids: map the largest-magnitude weight to the long side of
    // the grid (a negative step if it is positive) and to the short side.
    let xm = x
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let long = -xm.signum();
    let both = [
        (long, reach_neg.max(reach_pos)),
        (-long, reach_neg.min(reach_pos)),
    ];
    let tries: &[(f32, f32)] = if symmetric {
        &[(1.0, reach_pos)]
    } else {
        &both
    };
    for &(sign, reach) in tries {
        for t in SWEEP_LO..=SWEEP_HI {
            let inv = sign * reach * (1.0 + SWEEP_STEP * t as f32) / amax;
            let (sxl, sll) = fit(spec, x, w, inv);
            if sll > 0.0 && sxl * sxl / sll > best_gain {
                best_gain = sxl * sxl / sll;
                best_step = sxl / sll;
            }
        }
    }
    // Lloyd refinement: re-assign with the least-squares step, refit.
    for _ in 0..REFINE {
        if best_step == 0.0 {
            break;
        }
        let (sxl, sll) = fit(spec, x, w, 1.0 / best_step);
        if sll > 0.0 && sxl * sxl / sll > best_gain {
            best_gain = sxl * sxl / sll;
            best_step = sxl / sll;
        } else {
            break;
        }
    }
    best_step
}

/// The step the encoder would choose for one block (before f16 rounding).
pub fn best_step_for(spec: &PiqSpec, x: &[f32], w: &[f32]) -> f32 {
    let x: &[f32; BLOCK] = x.try_into().expect("a block of 32");
    let w: &[f32; BLOCK] = w.try_into().expect("a block of 32");
    best_step(spec, x, w)
}

/// Encodes one block of 32 weights into `out` (`spec.type_size()` bytes).
#[inline(always)]
pub fn encode_block(spec: &PiqSpec, x: &[f32; BLOCK], w: &[f32; BLOCK], out: &mut [u8]) {
    let step = best_step(spec, x, w);
    let alpha = f16::from_f32(step / spec.pi_over_k());
    // Decode exactly as the kernels will, then assign codes for that step.
    let step = alpha.to_f32() * spec.pi_over_k();
    let inv = if step == 0.0 || !step.is_finite() {
        0.0
    } else {
        1.0 / step
    };
    let mut codes = [0u8; BLOCK];
    for j in 0..BLOCK {
        codes[j] = nearest_code(spec, x[j] * inv);
    }
    out[..2].copy_from_slice(&alpha.to_bits().to_le_bytes());
    pack_codes(spec, &codes, &mut out[2..]);
}

#[inline(always)]
fn encode_all(spec: &PiqSpec, src: &[f32], importance: Option<&[f32]>, dst: &mut [u8]) {
    let ts = spec.type_size();
    let ones = [1f32; BLOCK];
    for (i, (x, out)) in src
        .chunks_exact(BLOCK)
        .zip(dst.chunks_exact_mut(ts))
        .enumerate()
    {
        let x: &[f32; BLOCK] = x.try_into().expect("chunk of BLOCK");
        let w: &[f32; BLOCK] = match importance {
            Some(imp) => imp[i * BLOCK..(i + 1) * BLOCK]
                .try_into()
                .expect("chunk of BLOCK"),
            None => &ones,
        };
        encode_block(spec, x, w, out);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn encode_all_avx2(spec: &PiqSpec, src: &[f32], importance: Option<&[f32]>, dst: &mut [u8]) {
    encode_all(spec, src, importance, dst)
}

/// Encodes whole blocks; `importance`, when given, has one weight per element.
/// Uses an AVX2-compiled copy of the same code when the CPU has it (the
/// arithmetic is identical, so the output is too).
pub fn encode(spec: &PiqSpec, src: &[f32], importance: Option<&[f32]>, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if gguftool_quant::simd::supported(gguftool_quant::format::SimdLevel::Avx2) {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { encode_all_avx2(spec, src, importance, dst) };
    }
    encode_all(spec, src, importance, dst)
}
