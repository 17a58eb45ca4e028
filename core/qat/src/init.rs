//! Starting points of block-wise training ([`crate::blockwise::Hooks::init`]):
//!
//! - GPTQ ([`gptq_start`]): each matrix with a Hessian in the calibration
//!   file is rounded by `gguftool_calib::gptq` (the same rounding as
//!   `convert --calibration`), the rounding is decoded, and the decoded
//!   weights become the latent weights; the initial scales are the format's
//!   `init_scales` of those decoded weights under `diag(H)` where they
//!   reproduce the decoded weights (relative squared error at most
//!   `REDERIVED_TOLERANCE`, or no worse than the stored scales), else the
//!   scales the GPTQ bytes store (`FakeQuant::stored_scales`; e.g.
//!   ternary, whose absmean rule does not reproduce its own output), so
//!   the start is the GPTQ rounding ([`QLinear::quantize_decoded`]).
//! - importance ([`importance_start`]): the full-precision weights, scales
//!   from `init_scales` under a per-column importance (an imatrix).

use crate::blockwise::LinearInit;
use crate::candle_model::QLinear;
use crate::candle_op::{host_f32, FakeQuant};
use crate::engine_error::{EngineError, EngineResult};
use gguftool_calib::calib_file::Calibration;
use gguftool_calib::gptq::{gptq, GptqOptions};
use gguftool_quant::rows::RowCodec;

/// The GPTQ start of `linear` (see the module documentation); the plain
/// start (no latent, no importance) when `cal` has no Hessian of its row
/// length.
///
/// # Errors
/// GPTQ failures (a Hessian that cannot be factorized), decoding errors.
pub fn gptq_start(cal: &Calibration, fq: FakeQuant, linear: &QLinear) -> EngineResult<LinearInit> {
    let w = linear.weight().var().as_tensor();
    let n = *w
        .dims()
        .last()
        .ok_or_else(|| EngineError::BadInput("scalar weights".into()))?;
    let Some(h) = cal.hessian_for(linear.name()).filter(|h| h.n() == n) else {
        return Ok(LinearInit::default());
    };
    let wv = host_f32(w)?;
    // Row-transformed formats round in the basis of the op's seed (the one
    // the output records); formats without a transform ignore it.
    let seed = Some(fq.seed());
    let (bytes, _) = gptq(fq.format(), &wv, h, seed, GptqOptions::default())
        .map_err(|e| EngineError::BadInput(format!("{}: GPTQ: {e}", linear.name())))?;
    let mut latent = vec![0f32; wv.len()];
    RowCodec::new(fq.format(), n, seed)?.decode(&bytes, &mut latent)?;
    let m = h.matrix();
    let diag = (0..n).map(|i| m[i * n + i].max(0.0) as f32).collect();
    let stored_scales = fq.stored_scales(&bytes, wv.len() / n, n)?;
    Ok(LinearInit {
        latent: Some(latent),
        importance: Some(diag),
        stored_scales,
    })
}

/// The full-precision start of `linear` with scales chosen under
/// `importance` (per input column; ignored when its length is not the row
/// length).
pub fn importance_start(linear: &QLinear, importance: Option<&[f32]>) -> LinearInit {
    let n = linear.weight().var().as_tensor().dims().last().copied();
    LinearInit {
        latent: None,
        stored_scales: None,
        importance: importance
            .filter(|v| Some(v.len()) == n)
            .map(<[f32]>::to_vec),
    }
}
