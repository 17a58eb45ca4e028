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
//! Row-transformed formats (`q2_quip`): the format's blocks hold rotated
//! rows `R w` (`R` orthogonal, the format's [`RowTransform`] at the op's
//! seed), and its differentiable quantizer works in that basis. The op
//! rotates each row, fake-quantizes it, and rotates back:
//! `Q(w) = R^T q(R w)`; the backward rotates the output gradient
//! (`R g`), applies the format's STE there and rotates the weight gradient
//! back (`R^T`), which is the exact chain rule because `R^{-1} = R^T`
//! (QuIP#'s incoherence processing trained through, Tseng et al. 2024).
//! Scales are per group of the rotated row. [`FakeQuant::export`] writes
//! the rotated blocks the file stores: the file must record the op's seed
//! (`gguftool_quant::rows::SEED_KEY`).
//!
//! Devices: the op runs on the CPU. [`FakeQuant::apply`] moves tensors on
//! another device (candle's `cuda` feature) to the host and back, so the
//! model code is device-agnostic; the backward works on host copies.

use crate::engine_error::{EngineError, EngineResult};
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
use gguftool_quant::format::{
    DifferentiableQuantizer, Format, PreparedRowTransform, RowTransform, Ste,
};
use rayon::prelude::*;

/// A format's fake quantization with an STE: builds the op and manages
/// scales for it.
#[derive(Clone, Copy)]
pub struct FakeQuant {
    format: &'static dyn Format,
    dq: &'static dyn DifferentiableQuantizer,
    ste: Ste,
    transform: Option<&'static dyn RowTransform>,
    seed: u64,
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
    /// Fake quantization of `format` under `ste` (row transforms at
    /// `gguftool_quant::rows::DEFAULT_SEED`; see [`FakeQuant::with_seed`]).
    ///
    /// # Errors
    /// [`EngineError::Unsupported`] when the format has no differentiable
    /// quantizer.
    pub fn new(format: &'static dyn Format, ste: Ste) -> EngineResult<Self> {
        let dq = format.differentiable().ok_or_else(|| {
            EngineError::Unsupported(format!("{} has no differentiable quantizer", format.name()))
        })?;
        if dq.group_size() == 0 {
            return Err(EngineError::Unsupported(format!(
                "{} reports a group size of 0",
                format.name()
            )));
        }
        Ok(Self {
            format,
            dq,
            ste,
            transform: format.row_transform(),
            seed: gguftool_quant::rows::DEFAULT_SEED,
        })
    }

    /// The same op with the row transform seeded by `seed` (no effect on
    /// formats without one).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The row-transform seed (what the output file must record under
    /// `gguftool_quant::rows::SEED_KEY` for a row-transformed format).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The prepared row transform for rows of `row_len`, when the format
    /// has one.
    fn prepared(&self, row_len: usize) -> EngineResult<Option<Box<dyn PreparedRowTransform>>> {
        self.transform
            .map(|t| {
                t.prepare(row_len, self.seed).map_err(|e| {
                    EngineError::BadInput(format!("{}: rows of {row_len}: {e}", self.format.name()))
                })
            })
            .transpose()
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
    /// encoded blocks of the format (and its row transform, if any, takes
    /// that length).
    pub fn fits(&self, row_len: usize) -> bool {
        row_len > 0
            && row_len.is_multiple_of(self.group_size())
            && row_len.is_multiple_of(self.format.block_size())
            && self
                .transform
                .is_none_or(|t| t.prepare(row_len, self.seed).is_ok())
    }

    pub(crate) fn check_shapes(&self, w: &[usize], s: &[usize]) -> EngineResult<usize> {
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

    /// The scales stored in `bytes` (a `[rows, row_len]` matrix encoded
    /// in the format, whole rows of blocks) as a `[rows, row_len /
    /// group_size]` CPU tensor: with them the fake quantization of the
    /// decoded matrix gives the decoded matrix back. `None` where the
    /// format cannot read its scales back
    /// (`DifferentiableQuantizer::stored_scales`).
    ///
    /// # Errors
    /// Rows that do not fit the format's groups, a byte count other than
    /// the matrix's, candle errors.
    pub fn stored_scales(
        &self,
        bytes: &[u8],
        rows: usize,
        row_len: usize,
    ) -> EngineResult<Option<Tensor>> {
        if !self.fits(row_len) {
            return Err(EngineError::BadInput(format!(
                "rows of {row_len} do not fit {} groups",
                self.format.name()
            )));
        }
        let blocks = rows * (row_len / self.format.block_size());
        if blocks.checked_mul(self.format.type_size()) != Some(bytes.len()) {
            return Err(EngineError::BadInput(format!(
                "{} bytes for {rows} rows of {row_len} {} weights",
                bytes.len(),
                self.format.name()
            )));
        }
        let per_row = row_len / self.group_size();
        let mut s = vec![0f32; rows * per_row];
        if !self.dq.stored_scales(bytes, &mut s) {
            return Ok(None);
        }
        Ok(Some(Tensor::from_vec(s, (rows, per_row), &Device::Cpu)?))
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
        let mut wv = host_f32(w)?;
        let g = self.group_size();
        let per_row = row_len / g;
        let mut s = vec![0f32; wv.len() / g];
        let rt = self.prepared(row_len)?;
        let rot_imp = match (&rt, importance) {
            (Some(rt), Some(imp)) => Some(rt.importance(imp)),
            _ => None,
        };
        let importance = rot_imp.as_deref().or(importance);
        if let Some(rt) = &rt {
            wv.par_chunks_mut(row_len).for_each(|r| rt.forward(r));
        }
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
        let row_len = *w.dims().last().expect("checked shapes");
        let op = FakeQuantOp {
            fq: *self,
            rt: self.prepared(row_len)?.map(std::sync::Arc::from),
        };
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
    /// GGUF tensor-data order (rotated rows for a row-transformed format,
    /// at [`FakeQuant::seed`]).
    ///
    /// # Errors
    /// Shapes that do not fit, non-f32 tensors.
    pub fn export(&self, w: &Tensor, scales: &Tensor) -> EngineResult<Vec<u8>> {
        let row_len = self.check_shapes(w.dims(), scales.dims())?;
        let mut wv = host_f32(w)?;
        if let Some(rt) = self.prepared(row_len)? {
            wv.par_chunks_mut(row_len).for_each(|r| rt.forward(r));
        }
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

/// The candle op (built by [`FakeQuant::apply`]), with the row transform
/// prepared for the weights' row length.
struct FakeQuantOp {
    fq: FakeQuant,
    rt: Option<std::sync::Arc<dyn PreparedRowTransform>>,
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
        match &self.rt {
            None => out
                .par_chunks_mut(row_len)
                .zip(w.par_chunks(row_len).zip(s.par_chunks(per_row)))
                .for_each(|(o, (w, s))| self.fq.dq.forward(w, s, o)),
            Some(rt) => out
                .par_chunks_mut(row_len)
                .zip(w.par_chunks(row_len).zip(s.par_chunks(per_row)))
                .for_each(|(o, (w, s))| {
                    let mut x = w.to_vec();
                    rt.forward(&mut x);
                    self.fq.dq.forward(&x, s, o);
                    rt.inverse(o);
                }),
        }
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
        let mut gs = vec![0f32; sv.len()];
        let ste = self.fq.ste;
        let rt = self.rt.as_deref();
        // One row's backward: the STE's weight gradient into `gw`, the
        // scales' into `gs`. Q(w) = R^T q(R w) for row-transformed formats:
        // dL/d(Rw) from q's STE at R g, then back through R (orthogonal:
        // R^-1 = R^T), which only the weight gradient needs.
        let row = |gw: &mut [f32], gs: &mut [f32], w: &[f32], s: &[f32], g: &[f32], want_w| match rt
        {
            None => self.fq.dq.backward(w, s, g, ste, gw, gs),
            Some(rt) => {
                let (mut x, mut gr) = (w.to_vec(), g.to_vec());
                rt.forward(&mut x);
                rt.forward(&mut gr);
                self.fq.dq.backward(&x, s, &gr, ste, gw, gs);
                if want_w {
                    rt.inverse(gw);
                }
            }
        };
        let rows = wv
            .par_chunks(row_len)
            .zip(sv.par_chunks(per_row))
            .zip(gv.par_chunks(row_len));
        // Frozen latent weights enter the graph detached: no weight
        // gradient is wanted, so none is kept (one row of scratch per task
        // instead of a weight-sized buffer).
        let gw = if w.track_op() {
            let mut gw = vec![0f32; wv.len()];
            gw.par_chunks_mut(row_len)
                .zip(gs.par_chunks_mut(per_row))
                .zip(rows)
                .for_each(|((gw, gs), ((w, s), g))| row(gw, gs, w, s, g, true));
            Some(Tensor::from_vec(gw, w.shape(), w.device())?)
        } else {
            gs.par_chunks_mut(per_row).zip(rows).for_each_init(
                || vec![0f32; row_len],
                |scratch, (gs, ((w, s), g))| row(scratch, gs, w, s, g, false),
            );
            None
        };
        Ok((
            gw,
            Some(Tensor::from_vec(gs, scales.shape(), scales.device())?),
        ))
    }
}
