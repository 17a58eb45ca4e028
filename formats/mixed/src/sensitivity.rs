//! Per-tensor error of each candidate format, measured on sampled rows.

use gguftool_gguf::error::{Error, Result};
use gguftool_gguf::GgufFile;
use gguftool_quant::format::Format;
use gguftool_quant::rows::fits;
use gguftool_quant::rows::row_importance;
use gguftool_quant::rows::{tensor_decoder, RowCodec, DEFAULT_SEED};
use rayon::prelude::*;

pub use gguftool_quant::recipe::Objective;
use gguftool_quant::recipe::{HessianFn, QuadraticForm};

/// One candidate's cost and error for one tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Option {
    /// Candidate format name.
    pub format: &'static str,
    /// Encoded bits of the whole tensor.
    pub bits: u64,
    /// Estimated error of the tensor under the [`Objective`].
    pub error: f64,
}

/// Every fitting candidate for one tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorSensitivity {
    /// Index of the tensor in the source file.
    pub index: usize,
    /// Tensor name.
    pub name: String,
    /// Element count.
    pub elements: u64,
    /// Candidates whose blocks fit the rows, by ascending bits.
    pub options: Vec<Option>,
}

/// Evenly spaced row indices, at most `max` of `n`.
fn sample_rows(n: u64, max: u64) -> Vec<u64> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|i| i * n / max).collect()
}

/// Error of `target` on the sampled rows of tensor `index` under the
/// [`Objective`]: weighted by the per-column `importance`, or, given the
/// input Hessian `hessian`, `tr(dW H dW^T)` with `diag(H)` as the encoder's
/// importance.
fn candidate_error(
    src: &GgufFile,
    index: usize,
    rows: &[u64],
    importance: std::option::Option<&[f32]>,
    hessian: std::option::Option<&dyn QuadraticForm>,
    target: &'static dyn Format,
    objective: Objective,
) -> Result<f64> {
    let t = &src.header().tensors[index];
    let row_len = t.row_len() as usize;
    let kernel_err = |source: gguftool_quant::KernelError| Error::Kernel {
        tensor: t.name.clone(),
        source: source.into(),
    };
    if let Some(h) = hessian {
        if h.width() != row_len {
            return Err(Error::Unsupported {
                tensor: t.name.clone(),
                reason: format!("input Hessian of width {} for rows of {row_len}", h.width()),
            });
        }
    }
    let diag = hessian.map(|h| h.diagonal());
    let dec = tensor_decoder(src, index)?;
    let enc = RowCodec::new(target, row_len, Some(DEFAULT_SEED)).map_err(kernel_err)?;
    let data = src.tensor_data(index);
    let mut w = vec![0f32; row_len];
    let mut q = vec![0f32; row_len];
    let mut bytes = vec![0u8; enc.row_bytes()];
    let (mut total, mut signal) = (0f64, 0f64);
    // With a Hessian: the sampled rows and their errors, evaluated at once.
    let (mut ws, mut ds) = (Vec::new(), Vec::new());
    for &r in rows {
        let off = r as usize * dec.row_bytes();
        dec.decode(&data[off..off + dec.row_bytes()], &mut w)
            .map_err(kernel_err)?;
        let imp = match &diag {
            Some(d) => Some(d.as_slice()),
            None => importance.map(|m| row_importance(t, m, r)),
        };
        enc.encode(&w, imp, &mut bytes).map_err(kernel_err)?;
        enc.decode(&bytes, &mut q).map_err(kernel_err)?;
        if hessian.is_some() {
            ds.extend(w.iter().zip(&q).map(|(w, q)| w - q));
            if objective == Objective::Relative {
                ws.extend_from_slice(&w);
            }
            continue;
        }
        for (j, (a, b)) in w.iter().zip(&q).enumerate() {
            let weight = imp.map_or(1.0, |m| m[j] as f64);
            total += weight * (*a as f64 - *b as f64).powi(2);
            signal += weight * (*a as f64).powi(2);
        }
    }
    if let Some(h) = hessian {
        total = h.eval_rows(&ds);
        if objective == Objective::Relative {
            signal = h.eval_rows(&ws);
        }
    }
    Ok(match objective {
        Objective::Absolute => total * t.n_rows() as f64 / rows.len().max(1) as f64,
        Objective::Relative if signal > 0.0 => total / signal,
        Objective::Relative => 0.0,
    })
}

/// Measures every candidate that fits on each listed tensor (index and its
/// per-column importance, `row_len` or `row_len` per matrix), sampling at
/// most `max_rows` evenly spaced rows per tensor; `progress` is called once
/// per measured (tensor, candidate). Where `hessian` gives a tensor's input
/// Hessian, its error is `tr(dW H dW^T)` (relative: over `tr(W H W^T)`)
/// and its importance is not used. Deterministic.
///
/// # Errors
/// Unreadable tensors, codec failures, and a Hessian whose width is not the
/// tensor's row length (naming the tensor).
pub fn sensitivity(
    src: &GgufFile,
    tensors: &[(usize, std::option::Option<std::sync::Arc<Vec<f32>>>)],
    hessian: std::option::Option<&HessianFn>,
    candidates: &[&'static dyn Format],
    max_rows: u64,
    objective: Objective,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<TensorSensitivity>> {
    let jobs: Vec<(usize, usize)> = tensors
        .iter()
        .enumerate()
        .flat_map(|(k, _)| (0..candidates.len()).map(move |c| (k, c)))
        .collect();
    let errors: Vec<std::option::Option<f64>> = jobs
        .par_iter()
        .map(|&(k, c)| {
            let (index, imp) = &tensors[k];
            let t = &src.header().tensors[*index];
            if !fits(candidates[c], t.row_len()) || t.n_elements == 0 {
                return Ok(None);
            }
            let rows = sample_rows(t.n_rows(), max_rows);
            let e = candidate_error(
                src,
                *index,
                &rows,
                imp.as_deref().map(Vec::as_slice),
                hessian.and_then(|h| h(*index)),
                candidates[c],
                objective,
            );
            progress();
            e.map(Some)
        })
        .collect::<Result<_>>()?;
    Ok(tensors
        .iter()
        .enumerate()
        .map(|(k, (index, _))| {
            let t = &src.header().tensors[*index];
            let blocks = |f: &dyn Format| t.n_elements / f.block_size() as u64;
            let mut options: Vec<Option> = candidates
                .iter()
                .enumerate()
                .filter_map(|(c, f)| {
                    errors[k * candidates.len() + c].map(|error| Option {
                        format: f.name(),
                        bits: blocks(*f) * f.type_size() as u64 * 8,
                        error,
                    })
                })
                .collect();
            options.sort_by(|a, b| a.bits.cmp(&b.bits).then(a.error.total_cmp(&b.error)));
            TensorSensitivity {
                index: *index,
                name: t.name.clone(),
                elements: t.n_elements,
                options,
            }
        })
        .collect())
}
