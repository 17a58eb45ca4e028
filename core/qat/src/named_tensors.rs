//! Checkpoint entries: named host copies of candle tensors, `(name, shape,
//! values)`, as the block-wise and distillation checkpoints hold them
//! ([`crate::checkpoint`] writes and reads them as GGUF).

use crate::candle_adam::CandleAdam;
use crate::engine_error::{EngineError, EngineResult};
use candle_core::Tensor;

/// A checkpoint entry: name, shape, values.
pub(crate) type Entry = (String, Vec<usize>, Vec<f32>);

/// `t` as a checkpoint entry named `prefix` + `name`: (name, shape, values).
///
/// # Errors
/// The tensor cannot be copied to the host.
pub(crate) fn named(prefix: &str, name: &str, t: &Tensor) -> EngineResult<Entry> {
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
pub(crate) fn find_tensor(tensors: &[Entry], name: &str, like: &Tensor) -> EngineResult<Tensor> {
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

/// The entries of an optimizer's training state, four per variable of
/// `adam` (named by `names`, in the same order): `cur.` its value, `best.`
/// the kept snapshot `best[k]`, `adam_m.` and `adam_v.` Adam's moments.
///
/// # Errors
/// A tensor cannot be copied to the host.
pub(crate) fn training_entries<'a>(
    names: impl IntoIterator<Item = &'a str>,
    adam: &CandleAdam,
    best: &[Tensor],
) -> EngineResult<Vec<Entry>> {
    let (m, v) = adam.moments();
    let mut out = Vec::with_capacity(4 * best.len());
    for (k, (name, var)) in names.into_iter().zip(adam.vars()).enumerate() {
        out.push(named("cur.", name, var.as_tensor())?);
        out.push(named("best.", name, &best[k])?);
        out.push(named("adam_m.", name, &m[k])?);
        out.push(named("adam_v.", name, &v[k])?);
    }
    Ok(out)
}

/// Restores what [`training_entries`] wrote: each variable of `adam` set
/// to its `cur.` entry, Adam's moments and `steps` restored; returns the
/// `best.` snapshots.
///
/// # Errors
/// An entry missing or of another shape, a step count Adam cannot hold.
pub(crate) fn restore_training<'a>(
    tensors: &[Entry],
    names: impl IntoIterator<Item = &'a str>,
    adam: &mut CandleAdam,
    steps: u64,
) -> EngineResult<Vec<Tensor>> {
    let (mut m, mut v, mut best) = (Vec::new(), Vec::new(), Vec::new());
    for (name, var) in names.into_iter().zip(adam.vars()) {
        let like = var.as_tensor();
        var.set(&find_tensor(tensors, &format!("cur.{name}"), like)?)?;
        m.push(find_tensor(tensors, &format!("adam_m.{name}"), like)?);
        v.push(find_tensor(tensors, &format!("adam_v.{name}"), like)?);
        best.push(find_tensor(tensors, &format!("best.{name}"), like)?);
    }
    adam.restore(steps, m, v)?;
    Ok(best)
}
