//! Ternary weights {-1, 0, +1} with an f16 scale per 64 (2.25 bpw):
//! `ternary` uses BitNet b1.58's absmean scale, `ternary_mse` the scale and
//! support minimising the importance-weighted squared error. Both decode the
//! same way and train with QAT through the `DifferentiableQuantizer`.
//! llama.cpp's TQ1_0/TQ2_0 (blocks of 256) are written by the `ggml` crate,
//! byte-identical to gguf-py. Layout in docs/FORMATS.md.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod encode;
mod grid;
pub mod kernel;
pub mod layout;
pub mod qat;

use encode::ScaleRule;
use gguftool_quant::activation::Q8Activations;
use gguftool_quant::format::{
    BlockGrid, DifferentiableQuantizer, Format, Kernel, Quantizer, SimdLevel,
};
use gguftool_quant::register_format;

/// Type id of `ternary` (absmean scale; gguftool private range).
pub const TERNARY_TYPE_ID: u32 = 0x4004;
/// Type id of `ternary_mse` (MSE-optimal scale; same layout).
pub const TERNARY_MSE_TYPE_ID: u32 = 0x4005;

/// A registered ternary variant (they differ only in the encoder).
pub struct Ternary {
    name: &'static str,
    id: u32,
    rule: ScaleRule,
    description: &'static str,
}

impl Ternary {
    /// How this variant picks its scales.
    pub fn rule(&self) -> ScaleRule {
        self.rule
    }
}

impl Format for Ternary {
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
        layout::TYPE_SIZE
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
    fn differentiable(&self) -> Option<&dyn DifferentiableQuantizer> {
        Some(self)
    }
    fn block_grid(&self) -> Option<&dyn BlockGrid> {
        Some(self)
    }
    fn suits_post_training(&self) -> bool {
        false
    }
}

impl Kernel for Ternary {
    fn simd_levels(&self) -> &'static [SimdLevel] {
        kernel::LEVELS
    }
    unsafe fn dequantize_at(&self, level: SimdLevel, src: &[u8], dst: &mut [f32]) {
        kernel::dequantize(level, src, dst)
    }
    unsafe fn dot_at(&self, level: SimdLevel, src: &[u8], x: &[f32]) -> f32 {
        kernel::dot(level, src, x)
    }
    unsafe fn dot_q8_at(&self, level: SimdLevel, src: &[u8], x: &Q8Activations) -> f32 {
        kernel::dot_q8(level, src, x)
    }
}

impl Quantizer for Ternary {
    fn quantize_blocks(&self, src: &[f32], importance: Option<&[f32]>, dst: &mut [u8]) {
        encode::encode(self.rule, src, importance, dst)
    }
}

register_format!(
    TERNARY_FORMAT,
    &Ternary {
        name: "ternary",
        id: TERNARY_TYPE_ID,
        rule: ScaleRule::AbsMean,
        description: "ternary, BitNet b1.58 absmean f16 scale per 64",
    }
);
register_format!(
    TERNARY_MSE_FORMAT,
    &Ternary {
        name: "ternary_mse",
        id: TERNARY_MSE_TYPE_ID,
        rule: ScaleRule::Mse,
        description: "ternary, MSE-optimal f16 scale per 64",
    }
);
