//! Semantic checks on a parsed header: alignment, tensor types, shapes,
//! byte sizes and data placement.

use super::value::Value;
use super::GgufHeader;
use crate::error::{GgufError, GgufResult};
use crate::ggml_type::{ggml_type, TypeStatus};

/// Default alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Key holding the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Largest alignment accepted. llama.cpp accepts any u32 power of two, but a
/// 2 GiB alignment lets a 57-byte file demand gigabytes of padding when it
/// is rewritten (found by fuzzing); real files use 32 to 64 KiB.
pub const MAX_ALIGNMENT: u32 = 1 << 20;

/// Block geometry of a tensor type, from the ggml table or a [`TypeResolver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeGeometry {
    /// Type name.
    pub name: &'static str,
    /// Elements per block.
    pub block_size: u64,
    /// Bytes per block.
    pub type_size: u64,
}

/// Resolves tensor type ids outside ggml's table (gguftool's private range)
/// to their geometry. The container knows no format registry; the caller
/// passes one (`gguftool_quant::registry::TYPES` resolves every linked plugin).
pub trait TypeResolver: Sync {
    /// The geometry of private type `id`, or `None` when it is unknown.
    fn private_type(&self, id: u32) -> Option<TypeGeometry>;
}

/// A resolver that knows no private types: only ggml's table is accepted.
#[derive(Debug, Clone, Copy, Default)]
pub struct StandardTypes;

impl TypeResolver for StandardTypes {
    fn private_type(&self, _id: u32) -> Option<TypeGeometry> {
        None
    }
}

/// Reads and checks `general.alignment`.
pub fn alignment(md: &super::value::Metadata) -> GgufResult<u64> {
    match md.get(ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if *a > MAX_ALIGNMENT => Err(GgufError::BadAlignment {
            reason: format!("{a} exceeds the maximum {MAX_ALIGNMENT}"),
        }),
        Some(Value::U32(a)) if *a != 0 && a.is_power_of_two() => Ok(*a as u64),
        Some(Value::U32(a)) => Err(GgufError::BadAlignment {
            reason: format!("{a} is not a non-zero power of two"),
        }),
        Some(v) => Err(GgufError::BadAlignment {
            reason: format!("stored as {} (must be u32)", v.value_type().name()),
        }),
    }
}

/// Resolves a tensor type id to its geometry (ggml's table first, then
/// `types`), rejecting unknown and removed ids.
pub fn tensor_type(
    tensor: &str,
    raw: u32,
    offset: u64,
    types: &dyn TypeResolver,
) -> GgufResult<TypeGeometry> {
    if let Some(t) = ggml_type(raw) {
        return match t.status {
            TypeStatus::Active => Ok(TypeGeometry {
                name: t.name,
                block_size: t.block_size as u64,
                type_size: t.type_size as u64,
            }),
            TypeStatus::Removed => Err(GgufError::RemovedTensorType {
                tensor: tensor.to_string(),
                offset,
                raw,
                name: t.name,
            }),
        };
    }
    if let Some(g) = types.private_type(raw) {
        return Ok(g);
    }
    Err(GgufError::UnknownTensorType {
        tensor: tensor.to_string(),
        offset,
        raw,
    })
}

/// Element count and byte size of a tensor, with overflow and block checks.
pub fn tensor_size(
    tensor: &str,
    dims: &[u64],
    geometry: &TypeGeometry,
    offset: u64,
) -> GgufResult<(u64, u64)> {
    let overflow = || GgufError::ShapeOverflow {
        tensor: tensor.to_string(),
        offset,
        dims: dims.to_vec(),
    };
    let mut n: u64 = 1;
    for &d in dims {
        if d > i64::MAX as u64 {
            return Err(overflow());
        }
        n = n.checked_mul(d).ok_or_else(overflow)?;
    }
    if n > i64::MAX as u64 {
        return Err(overflow());
    }
    let ne0 = dims.first().copied().unwrap_or(1);
    if !ne0.is_multiple_of(geometry.block_size) {
        return Err(GgufError::RowNotBlockMultiple {
            tensor: tensor.to_string(),
            ne0,
            type_name: geometry.name.to_string(),
            block: geometry.block_size,
        });
    }
    let bytes = (n / geometry.block_size)
        .checked_mul(geometry.type_size)
        .filter(|b| *b <= i64::MAX as u64)
        .ok_or_else(overflow)?;
    Ok((n, bytes))
}

/// Checks that every tensor's data is aligned, inside the file and disjoint
/// from every other tensor's data.
pub fn tensor_layout(h: &GgufHeader, file_len: u64) -> GgufResult<()> {
    let mut ranges: Vec<(u64, u64, usize)> = Vec::with_capacity(h.tensors.len());
    for (i, t) in h.tensors.iter().enumerate() {
        if !t.offset.is_multiple_of(h.alignment) {
            return Err(GgufError::MisalignedTensor {
                tensor: t.name.clone(),
                offset: t.offset,
                alignment: h.alignment,
            });
        }
        if t.n_bytes == 0 {
            // Zero-element tensors are legal and occupy no bytes anywhere.
            continue;
        }
        let start = h.data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= file_len => ranges.push((s, e, i)),
            (s, e) => {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: t.name.clone(),
                    start: s.unwrap_or(u64::MAX),
                    end: e.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.0 < a.1 {
            return Err(GgufError::TensorOverlap {
                tensor: h.tensors[b.2].name.clone(),
                other: h.tensors[a.2].name.clone(),
            });
        }
    }
    Ok(())
}
