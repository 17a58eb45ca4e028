//! Fake quantization as a candle custom op: any registered format's
//! [`DifferentiableQuantizer`] becomes a differentiable function
//! `(weights, scales) -> fake-quantized weights`, so a new format trains
//! through the engine without engine changes.
//!
//! Shapes: weights `[rows, row_len]` (GGUF order: a row is one output
//! unit's inputs), scales `[rows, row_len / group_size]`, one per group of
//! the format, f32. The forward is the format's `forward`; the backward is
//! its `backward` under the configured [`Ste`] (weight gradients through
//! the straight-through estimator, scale gradients as the STE defines
//! them, e.g. LSQ's scaled step gradient; zero for the plain and clipped
//! STEs). Rows are processed in parallel.
//!
//! Devices: the op runs on the CPU. [`FakeQuant::apply`] moves tensors on
//! another device (candle's `cuda` feature) to the host and back, so the
//! model code is device-agnostic; the backward works on host copies.

use crate::engine_error::{EngineError, EngineResult};
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
use gguftool_quant::format::{DifferentiableQuantizer, Format, Ste};
use rayon::prelude::*;

/// A format's fake quantization with an STE: builds the op and manages
/// scales for it.
#[derive(Clone, Copy)]
pub struct FakeQuant {
    format: &'static dyn Format,
    dq: &'static dyn DifferentiableQuantizer,
    ste: Ste,
}

impl std::fmt::Debug for FakeQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeQuant")
            .field("format", &self.format.name())
            .field("ste", &self.ste)
            .finish()
    }
}

impl FakeQuant {
    /// Fake quantization of `format` under `ste`.
    ///
    /// # Errors
    /// [`EngineError::Unsupported`] when the format has no differentiable
    /// quantizer, or has a row transform (its blocks live in a rotated
    /// basis the op does not model).
    pub fn new(format: &'static dyn Format, ste: Ste) -> EngineResult<Self> {
        let dq = format.differentiable().ok_or_else(|| {
            EngineError::Unsupported(format!("{} has no differentiable quantizer", format.name()))
        })?;
        if format.row_transform().is_some() {
            return Err(EngineError::Unsupported(format!(
                "{} rotates rows before encoding; fake quantization in the original basis is not implemented",
                format.name()
            )));
        }
        if dq.group_size() == 0 {
            return Err(EngineError::Unsupported(format!(
                "{} reports a group size of 0",
                format.name()
            )));
        }
        Ok(Self { format, dq, ste })
    }

    /// [`FakeQuant::new`] for a format looked up by name in the registry.
    ///
    /// # Errors
    /// An unknown name, or as [`FakeQuant::new`].
    pub fn by_name(name: &str, ste: Ste) -> EngineResult<Self> {
        let f = gguftool_quant::registry::by_name(name)
            .ok_or_else(|| EngineError::Unsupported(format!("unknown format `{name}`")))?;
        Self::new(f, ste)
    }

    /// The format.
    pub fn format(&self) -> &'static dyn Format {
        self.format
    }

    /// The straight-through estimator of the backward.
    pub fn ste(&self) -> Ste {
        self.ste
    }

    /// Weights per scale.
    pub fn group_size(&self) -> usize {
        self.dq.group_size()
    }

    /// Whether rows of `row_len` weights split into whole groups and whole
    /// encoded blocks of the format.
    pub fn fits(&self, row_len: usize) -> bool {
        row_len > 0
            && row_len.is_multiple_of(self.group_size())
            && row_len.is_multiple_of(self.format.block_size())
    }

    fn check_shapes(&self, w: &[usize], s: &[usize]) -> EngineResult<usize> {
        let Some((&row_len, lead)) = w.split_last() else {
            return Err(EngineError::BadInput("scalar weights".into()));
        };
        if !self.fits(row_len) {
            return Err(EngineError::BadInput(format!(
                "rows of {row_len} do not split into {} groups of {} (blocks of {})",
                self.format.name(),
                self.group_size(),
                self.format.block_size()
            )));
        }
        let mut want = lead.to_vec();
        want.push(row_len / self.group_size());
        if s != want.as_slice() {
            return Err(EngineError::BadInput(format!(
                "scales of shape {s:?} for weights {w:?} (want {want:?})"
            )));
        }
        Ok(row_len)
    }

    /// The format's initial scales for `w` (`[rows, row_len]`, f32) as a
    /// `[rows, row_len / group_size]` tensor on `w`'s device. `importance`
    /// is per column (`row_len` values) or `None`.
    ///
    /// # Errors
    /// Shapes that do not fit the format, a non-f32 tensor.
    pub fn init_scales(&self, w: &Tensor, importance: Option<&[f32]>) -> EngineResult<Tensor> {
        let dims = w.dims().to_vec();
        let row_len = *dims
            .last()
            .ok_or_else(|| EngineError::BadInput("scalar weights".into()))?;
        if !self.fits(row_len) {
            return Err(EngineError::BadInput(format!(
                "rows of {row_len} do not fit {} groups",
                self.format.name()
            )));
        }
        if let Some(imp) = importance {
            if imp.len() != row_len {
                return Err(EngineError::BadInput(format!(
                    "importance of {} values for rows of {row_len}",
                    imp.len()
                )));
            }
        }
        let wv = host_f32(w)?;
        let g = self.group_size();
        let per_row = row_len / g;
        let mut s = vec![0f32; wv.len() / g];
        s.par_chunks_mut(per_row)
            .zip(wv.par_chunks(row_len))
            .for_each(|(s, w)| self.dq.init_scales(w, importance, s));
        let mut sd = dims;
        *sd.last_mut().expect("non-empty dims") = per_row;
        Ok(Tensor::from_vec(s, sd, w.device())?)
    }

    /// The fake-quantized weights `Q(w; scales)`, differentiable in both.
    ///
    /// # Errors
    /// Shapes that do not fit ([`EngineError::BadInput`]), non-f32 tensors,
    /// candle errors.
    pub fn apply(&self, w: &Tensor, scales: &Tensor) -> EngineResult<Tensor> {
        self.check_shapes(w.dims(), scales.dims())?;
        if w.dtype() != DType::F32 || scales.dtype() != DType::F32 {
            return Err(EngineError::BadInput(format!(
                "fake quantization takes f32 (weights {:?}, scales {:?})",
                w.dtype(),
                scales.dtype()
            )));
        }
        let op = FakeQuantOp { fq: *self };
        if w.device().is_cpu() {
            Ok(w.contiguous()?.apply_op2(&scales.contiguous()?, op)?)
        } else {
            let cpu = Device::Cpu;
            let out = w
                .to_device(&cpu)?
                .contiguous()?
                .apply_op2(&scales.to_device(&cpu)?.contiguous()?, op)?;
            Ok(out.to_device(w.device())?)
        }
    }

    /// Encodes `w` with `scales` (as [`FakeQuant::apply`] takes them)
    /// through the format's `export`: whole rows of encoded blocks, in
    /// GGUF tensor-data order.
    ///
    /// # Errors
    /// Shapes that do not fit, non-f32 tensors.
    pub fn export(&self, w: &Tensor, scales: &Tensor) -> EngineResult<Vec<u8>> {
        let row_len = self.check_shapes(w.dims(), scales.dims())?;
        let wv = host_f32(w)?;
        let sv = host_f32(scales)?;
        let row_bytes = row_len / self.format.block_size() * self.format.type_size();
        let per_row = row_len / self.group_size();
        let mut out = vec![0u8; wv.len() / row_len * row_bytes];
        out.par_chunks_mut(row_bytes)
            .zip(wv.par_chunks(row_len).zip(sv.par_chunks(per_row)))
            .for_each(|(d, (w, s))| self.dq.export(w, s, d));
        Ok(out)
    }
}

/// A tensor's values on the host, flattened (f32 only).
pub(crate) fn host_f32(t: &Tensor) -> EngineResult<Vec<f32>> {
    if t.dtype() != DType::F32 {
        return Err(EngineError::BadInput(format!(
            "expected f32, found {:?}",
            t.dtype()
        )));
    }
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// The candle op (built by [`FakeQuant::apply`]).
struct FakeQuantOp {
    fq: FakeQuant,
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("fake quantization: {what} must be f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("fake quantization: {what} must be contiguous"),
    }
}

impl CustomOp2 for FakeQuantOp {
    fn name(&self) -> &'static str {
        "gguftool-fake-quant"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let row_len = self
            .fq
            .check_shapes(l1.dims(), l2.dims())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let w = contiguous(s1, l1, "weights")?;
        let s = contiguous(s2, l2, "scales")?;
        let per_row = row_len / self.fq.group_size();
        let mut out = vec![0f32; w.len()];
        out.par_chunks_mut(row_len)
            .zip(w.par_chunks(row_len).zip(s.par_chunks(per_row)))
            .for_each(|(o, (w, s))| self.fq.dq.forward(w, s, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        w: &Tensor,
        scales: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let m = |e: EngineError| candle_core::Error::Msg(e.to_string());
        let row_len = self.fq.check_shapes(w.dims(), scales.dims()).map_err(m)?;
        let wv = host_f32(w).map_err(m)?;
        let sv = host_f32(scales).map_err(m)?;
        let gv = host_f32(grad).map_err(m)?;
        let per_row = row_len / self.fq.group_size();
        let mut gw = vec![0f32; wv.len()];
        let mut gs = vec![0f32; sv.len()];
        let ste = self.fq.ste;
        gw.par_chunks_mut(row_len)
            .zip(gs.par_chunks_mut(per_row))
            .zip(
                wv.par_chunks(row_len)
                    .zip(sv.par_chunks(per_row))
                    .zip(gv.par_chunks(row_len)),
            )
            .for_each(|((gw, gs), ((w, s), g))| self.fq.dq.backward(w, s, g, ste, gw, gs));
        Ok((
            Some(Tensor::from_vec(gw, w.shape(), w.device())?),
            Some(Tensor::from_vec(gs, scales.shape(), scales.device())?),
        ))
    }
}
