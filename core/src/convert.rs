//! The conversion pipeline: a per-tensor plan (copy or transcode) executed
//! tensor by tensor, in bounded row chunks, in parallel within each chunk,
//! streaming into an atomically committed output file.

use crate::error::{Error, Result};
use crate::format::{quantize, Format};
use crate::gguf::value::Metadata;
use crate::gguf::write::{GgufWriter, TensorSpec, WriteOptions};
use crate::gguf::{GgufFile, TensorInfo};
use crate::output::AtomicOutput;
use crate::registry;
use rayon::prelude::*;
use std::path::Path;

/// Decoded elements processed per chunk (bounds memory to ~64 MiB of f32).
const CHUNK_ELEMENTS: u64 = 16 << 20;

/// What happens to one tensor.
#[derive(Clone, Copy)]
pub enum TensorAction {
    /// Bytes copied unchanged.
    Copy,
    /// Decoded with the source format and re-encoded with `target`.
    Transcode {
        /// Source format (decoder).
        source: &'static dyn Format,
        /// Target format (encoder).
        target: &'static dyn Format,
    },
}

impl std::fmt::Debug for TensorAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorAction::Copy => write!(f, "copy"),
            TensorAction::Transcode { source, target } => {
                write!(f, "{} -> {}", source.name(), target.name())
            }
        }
    }
}

/// One tensor of the plan.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Index of the source tensor.
    pub source_index: usize,
    /// The output tensor.
    pub spec: TensorSpec,
    /// How its bytes are produced.
    pub action: TensorAction,
}

/// A full conversion plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Output metadata.
    pub metadata: Metadata,
    /// Output tensors in order.
    pub tensors: Vec<PlannedTensor>,
}

impl Plan {
    /// Total output tensor-data bytes (padding excluded).
    pub fn output_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.spec.n_bytes).sum()
    }
}

/// Plans transcoding of `t` to `target`, checking both sides are possible.
pub fn transcode(
    t: &TensorInfo,
    index: usize,
    target: &'static dyn Format,
) -> Result<PlannedTensor> {
    let unsupported = |reason: String| Error::Unsupported {
        tensor: t.name.clone(),
        reason,
    };
    let source = registry::by_type_id(t.ggml_type)
        .ok_or_else(|| unsupported(format!("no decoder for type {}", t.type_name)))?;
    if target.quantizer().is_none() {
        return Err(unsupported(format!("{} cannot be encoded", target.name())));
    }
    let bs = target.block_size() as u64;
    if !t.row_len().is_multiple_of(bs) {
        return Err(unsupported(format!(
            "row length {} is not a multiple of the {} block size {bs}",
            t.row_len(),
            target.name()
        )));
    }
    Ok(PlannedTensor {
        source_index: index,
        spec: TensorSpec {
            name: t.name.clone(),
            ggml_type: target.type_id(),
            dims: t.dims.clone(),
            n_bytes: t.n_elements / bs * target.type_size() as u64,
        },
        action: TensorAction::Transcode { source, target },
    })
}

/// Plans an unchanged copy of `t`.
pub fn copy(t: &TensorInfo, index: usize) -> PlannedTensor {
    PlannedTensor {
        source_index: index,
        spec: TensorSpec {
            name: t.name.clone(),
            ggml_type: t.ggml_type,
            dims: t.dims.clone(),
            n_bytes: t.n_bytes,
        },
        action: TensorAction::Copy,
    }
}

/// Executes `plan` against `src`, writing `out` atomically. `progress` is
/// called with the number of source bytes finished after each chunk.
pub fn execute(
    src: &GgufFile,
    plan: &Plan,
    out: &Path,
    force: bool,
    opts: WriteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let output = AtomicOutput::create(out, force)?;
    let specs = plan.tensors.iter().map(|t| t.spec.clone()).collect();
    // A manifest describes the file it was made for; never carry a stale one.
    let mut metadata = plan.metadata.clone();
    if !opts.seal {
        metadata.remove_where(crate::integrity::is_integrity_key);
    }
    let wrap = |e| Error::Gguf {
        path: out.to_path_buf(),
        source: e,
    };
    let mut w = GgufWriter::begin(output.writer()?, &metadata, specs, opts).map_err(wrap)?;
    for pt in &plan.tensors {
        let data = src.tensor_data(pt.source_index);
        let info = &src.header().tensors[pt.source_index];
        match pt.action {
            TensorAction::Copy => {
                for chunk in data.chunks(CHUNK_ELEMENTS as usize) {
                    w.write_tensor_data(chunk).map_err(wrap)?;
                    progress(chunk.len() as u64);
                }
            }
            TensorAction::Transcode { source, target } => {
                transcode_tensor(info, data, source, target, &mut |bytes, src_done| {
                    w.write_tensor_data(bytes).map_err(wrap)?;
                    progress(src_done);
                    Ok(())
                })?;
            }
        }
    }
    w.finish().map_err(wrap)?;
    output.commit()
}

/// Decodes and re-encodes one tensor chunk by chunk, handing each encoded
/// chunk (and the source bytes it consumed) to `sink`.
pub fn transcode_tensor(
    info: &TensorInfo,
    data: &[u8],
    source: &dyn Format,
    target: &dyn Format,
    sink: &mut dyn FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    let row_len = info.row_len();
    let n_rows = info.n_rows();
    if n_rows == 0 || row_len == 0 {
        return Ok(());
    }
    let src_row = (row_len / source.block_size() as u64 * source.type_size() as u64) as usize;
    let dst_row = (row_len / target.block_size() as u64 * target.type_size() as u64) as usize;
    let rows_per_chunk = (CHUNK_ELEMENTS / row_len).clamp(1, n_rows) as usize;
    let rows_per_task = rows_per_chunk
        .div_ceil(rayon::current_num_threads() * 4)
        .max(1);
    let kernel_err = |source| Error::Kernel {
        tensor: info.name.clone(),
        source,
    };
    let mut out = vec![0u8; rows_per_chunk * dst_row];
    for src_chunk in data.chunks(rows_per_chunk * src_row) {
        let rows = src_chunk.len() / src_row;
        let dst_chunk = &mut out[..rows * dst_row];
        dst_chunk
            .par_chunks_mut(rows_per_task * dst_row)
            .zip(src_chunk.par_chunks(rows_per_task * src_row))
            .try_for_each(|(d, s)| {
                let mut tmp = vec![0f32; s.len() / src_row * row_len as usize];
                source.dequantize(s, &mut tmp)?;
                quantize(target, &tmp, None, d)
            })
            .map_err(kernel_err)?;
        sink(dst_chunk, src_chunk.len() as u64)?;
    }
    Ok(())
}
