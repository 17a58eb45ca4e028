//! Q2+QuIP: each row is rotated by a seeded randomized Hadamard transform
//! (incoherence processing, as in QuIP/QuIP#), which spreads outliers so the
//! rotated weights are close to Gaussian, then quantized to 2 bits with a
//! 6-bit scale per 16 weights (2.625 bpw). The seed lives in the file
//! (`gguftool.row_transform.seed`); decoding to the original basis and
//! matrix-vector products go through `gguftool_quant::rows::RowCodec`, which
//! rotates the activations once per product. Layout in docs/FORMATS.md.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod encode;
mod grid;
pub mod kernel;
pub mod layout;
pub mod ldlq;
mod qat;
pub mod rotation;

use gguftool_quant::activation::Q8Activations;
use gguftool_quant::format::{
    BlockGrid, DifferentiableQuantizer, Format, Kernel, PreparedRowTransform, Quantizer,
    RowTransform, SimdLevel,
};
use gguftool_quant::register_format;
use ldlq::Feedback;
use rotation::Rotation;
use std::sync::{Arc, Mutex};

/// Type id of Q2+QuIP with 6-bit sub-scales (gguftool private range).
pub const Q2_QUIP_TYPE_ID: u32 = 0x4003;
/// Type id of Q2+QuIP with 4-bit sub-scales.
pub const Q2_QUIP_LITE_TYPE_ID: u32 = 0x4006;

/// A Q2+QuIP variant with `SB`-bit sub-scales (6: `q2_quip`, 2.625 bpw;
/// 4: `q2_quip_lite`, 2.5 bpw).
pub struct Q2Quip<const SB: u32> {
    name: &'static str,
    id: u32,
    description: &'static str,
}

/// Q2+QuIP with 6-bit sub-scales.
pub static Q2_QUIP: Q2Quip<6> = Q2Quip {
    name: "q2_quip",
    id: Q2_QUIP_TYPE_ID,
    description: "randomized Hadamard rotation, then 2-bit, 6-bit scale per 16",
};
/// Q2+QuIP with 4-bit sub-scales.
pub static Q2_QUIP_LITE: Q2Quip<4> = Q2Quip {
    name: "q2_quip_lite",
    id: Q2_QUIP_LITE_TYPE_ID,
    description: "randomized Hadamard rotation, then 2-bit, 4-bit scale per 16",
};

impl<const SB: u32> Format for Q2Quip<SB> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn type_id(&self) -> u32 {
        self.id
    }
    fn block_size(&self) -> usize {
        layout::BLOCK
    }
    fn type_size(&self) -> usize {
        layout::type_size::<SB>()
    }
    fn description(&self) -> &'static str {
        self.description
    }
    fn kernel(&self) -> &dyn Kernel {
        self
    }
    fn quantizer(&self) -> Option<&dyn Quantizer> {
        Some(self)
    }
    fn row_transform(&self) -> Option<&dyn RowTransform> {
        Some(self)
    }
    fn block_grid(&self) -> Option<&dyn BlockGrid> {
        Some(self)
    }
    /// In the rotated basis (see the `qat` module): callers rotate rows
    /// with [`Format::row_transform`] first.
    fn differentiable(&self) -> Option<&dyn DifferentiableQuantizer> {
        Some(self)
    }
}

impl<const SB: u32> Kernel for Q2Quip<SB> {
    fn simd_levels(&self) -> &'static [SimdLevel] {
        kernel::LEVELS
    }
    unsafe fn dequantize_at(&self, level: SimdLevel, src: &[u8], dst: &mut [f32]) {
        kernel::dequantize::<SB>(level, src, dst)
    }
    unsafe fn dot_at(&self, level: SimdLevel, src: &[u8], x: &[f32]) -> f32 {
        kernel::dot::<SB>(level, src, x)
    }
    unsafe fn dot_q8_at(&self, level: SimdLevel, src: &[u8], x: &Q8Activations) -> f32 {
        kernel::dot_q8::<SB>(level, src, x)
    }
}

impl<const SB: u32> Quantizer for Q2Quip<SB> {
    fn quantize_blocks(&self, src: &[f32], importance: Option<&[f32]>, dst: &mut [u8]) {
        encode::encode::<SB>(src, importance, dst)
    }
}

impl<const SB: u32> RowTransform for Q2Quip<SB> {
    fn prepare(&self, row_len: usize, seed: u64) -> Result<Box<dyn PreparedRowTransform>, String> {
        Rotation::new(row_len, seed)
            .map(|rotation| {
                Box::new(QuipRows::<SB> {
                    rotation,
                    feedback: Mutex::new(None),
                }) as Box<dyn PreparedRowTransform>
            })
            .ok_or_else(|| "an empty row cannot be rotated".to_string())
    }
}

/// The rotation of one tensor's rows, with the LDLQ factor of the last
/// importance vector seen (rows of a matrix share one).
pub struct QuipRows<const SB: u32> {
    rotation: Rotation,
    feedback: Mutex<Option<(Vec<f32>, Arc<Feedback>)>>,
}

impl<const SB: u32> QuipRows<SB> {
    fn feedback_for(&self, imp: &[f32]) -> Arc<Feedback> {
        // Held while building, so concurrent encoders of the tensor wait
        // for one factorization instead of repeating it.
        let mut slot = self.feedback.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((key, fb)) = slot.as_ref() {
            if key.as_slice() == imp {
                return fb.clone();
            }
        }
        let fb = Arc::new(Feedback::new(&self.rotation, imp));
        *slot = Some((imp.to_vec(), fb.clone()));
        fb
    }
}

impl<const SB: u32> PreparedRowTransform for QuipRows<SB> {
    fn forward(&self, row: &mut [f32]) {
        self.rotation.forward(row)
    }
    fn inverse(&self, row: &mut [f32]) {
        self.rotation.inverse(row)
    }
    fn importance(&self, imp: &[f32]) -> Vec<f32> {
        self.rotation.rotated_importance(imp)
    }
    fn encode_weighted(&self, rows: &[f32], importance: &[f32], dst: &mut [u8]) -> bool {
        let n = self.rotation.len();
        let row_bytes = n / layout::BLOCK * layout::type_size::<SB>();
        let mut x = vec![0f32; n];
        for ((w, imp), out) in rows
            .chunks_exact(n)
            .zip(importance.chunks_exact(n))
            .zip(dst.chunks_exact_mut(row_bytes))
        {
            let fb = self.feedback_for(imp);
            x.copy_from_slice(w);
            self.rotation.forward(&mut x);
            fb.encode_row::<SB>(&x, out);
        }
        true
    }
}

register_format!(Q2_QUIP_FORMAT, &Q2_QUIP);
register_format!(Q2_QUIP_LITE_FORMAT, &Q2_QUIP_LITE);
