//! Checkpoint entries: named host copies of candle tensors, `(name, shape,
//! values)`, as the block-wise and distillation checkpoints hold them
//! ([`crate::checkpoint`] writes and reads them as GGUF).

use crate::engine_error::{EngineError, EngineResult};
use candle_core::Tensor;

/// `t` as a checkpoint entry named `prefix` + `name`: (name, shape, values).
///
/// # Errors
/// The tensor cannot be copied to the host.
pub(crate) fn named(
    prefix: &str,
    name: &str,
    t: &Tensor,
) -> EngineResult<(String, Vec<usize>, Vec<f32>)> {
    Ok((
        format!("{prefix}{name}"),
        t.dims().to_vec(),
        crate::candle_op::host_f32(t)?,
    ))
}

/// The entry `name` of a checkpoint's `tensors`, as a tensor on `like`'s
/// device.
///
/// # Errors
/// [`EngineError::BadInput`] when the entry is missing or its shape is not
/// `like`'s.
pub(crate) fn find_tensor(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    name: &str,
    like: &Tensor,
) -> EngineResult<Tensor> {
    let (_, shape, v) = tensors
        .iter()
        .find(|(n, _, _)| n == name)
        .ok_or_else(|| EngineError::BadInput(format!("checkpoint: tensor {name} missing")))?;
    if shape.as_slice() != like.dims() {
        return Err(EngineError::BadInput(format!(
            "checkpoint: tensor {name} of shape {shape:?}, expected {:?}",
            like.dims()
        )));
    }
    Ok(Tensor::from_vec(v.clone(), shape.clone(), like.device())?)
}
