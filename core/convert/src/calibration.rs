//! Checks a calibration file against the conversion it is meant for before
//! any rounding starts: every matrix the plan quantizes needs the Hessian of
//! its input, of its row length. A file made for another model, or missing
//! an entry, is refused naming the tensor, instead of silently falling back
//! to diagonal rounding for part of the model.

use crate::policy::{OUTPUT_TENSOR, TOKEN_EMBEDDING};
use crate::{Plan, TensorAction};
use gguftool_calib::calib_file::Calibration;
use gguftool_gguf::{Error, GgufFile, Result};

/// Fails on the first planned quantized matrix (block size > 1) of `plan`
/// that `cal` has no Hessian for, or whose Hessian has another width than
/// the matrix's rows. An untied `token_embd.weight` is exempt (it is a
/// lookup table, not a linear layer's weight).
///
/// # Errors
/// [`Error::Other`] naming the tensor and, for a width mismatch, both widths.
pub fn check_calibration(plan: &Plan, src: &GgufFile, cal: &Calibration) -> Result<()> {
    let h = src.header();
    let tied = h.tensor_index(OUTPUT_TENSOR).is_none();
    for pt in &plan.tensors {
        let TensorAction::Transcode { target, .. } = pt.action else {
            continue;
        };
        if target.block_size() <= 1 {
            continue;
        }
        let info = &h.tensors[pt.source_index];
        if info.name == TOKEN_EMBEDDING && !tied {
            continue;
        }
        let Some(hess) = cal.hessian_for(&info.name) else {
            return Err(Error::Other(format!(
                "calibration file has no Hessian for tensor {:?} (made for another model, or \
                 with other tensors kept unquantized?)",
                info.name
            )));
        };
        if hess.n() as u64 != info.row_len() {
            return Err(crate::pipeline::width_mismatch(
                &info.name,
                hess.n(),
                info.row_len(),
            ));
        }
    }
    Ok(())
}
