//! PiQ3 and PiQ2: uniform grids whose step is `alpha * pi / k` (k = 4 at 3
//! bits, k = 3 at 2 bits), with a per-block alpha chosen to minimise the
//! importance-weighted squared error. Blocks of 32 weights fit every row
//! length that is a multiple of 32. Layout in docs/FORMATS.md.
//!
//! Storing `alpha` and multiplying by `pi / k` at decode is a
//! reparameterization of a plain uniform step; docs/RESULTS.md reports
//! what it measures against a uniform grid with an MSE-optimal scale.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod encode;
mod grid;
pub mod kernel;
pub mod layout;
pub mod qat;

use gguftool_quant::activation::Q8Activations;
use gguftool_quant::format::{
    BlockGrid, DifferentiableQuantizer, Format, Kernel, Quantizer, SimdLevel,
};
use gguftool_quant::register_format;
use layout::{PiqSpec, BLOCK};

/// Type id of PiQ3 (gguftool private range).
pub const PIQ3_TYPE_ID: u32 = 0x4001;
/// Type id of PiQ2 (gguftool private range).
pub const PIQ2_TYPE_ID: u32 = 0x4002;

/// PiQ3: 3-bit codes, integer levels -4..3 with a signed step, k = 4; 3.5 bpw.
/// (Measured +0.7 dB over symmetric half-integer levels; docs/RESULTS.md.)
pub const PIQ3: PiqSpec = PiqSpec {
    bits: 3,
    k: 4.0,
    offset: 4.0,
};
/// PiQ2: 2-bit codes, integer levels -2..1 with a signed step, k = 3; 2.5 bpw.
/// (Measured +0.2 dB over symmetric half-integer levels; docs/RESULTS.md.)
pub const PIQ2: PiqSpec = PiqSpec {
    bits: 2,
    k: 3.0,
    offset: 2.0,
};

/// A registered PiQ variant.
pub struct Piq {
    name: &'static str,
    id: u32,
    spec: PiqSpec,
    description: &'static str,
}

impl Piq {
    /// The variant's grid.
    pub fn spec(&self) -> &PiqSpec {
        &self.spec
    }
}

impl Format for Piq {
    fn name(&self) -> &'static str {
        self.name
    }
    fn type_id(&self) -> u32 {
        self.id
    }
    fn block_size(&self) -> usize {
        BLOCK
    }
    fn type_size(&self) -> usize {
        self.spec.type_size()
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
    fn block_grid(&self) -> Option<&dyn BlockGrid> {
        Some(self)
    }
    fn differentiable(&self) -> Option<&dyn DifferentiableQuantizer> {
        Some(self)
    }
}

impl Kernel for Piq {
    fn simd_levels(&self) -> &'static [SimdLevel] {
        kernel::LEVELS
    }
    unsafe fn dequantize_at(&self, level: SimdLevel, src: &[u8], dst: &mut [f32]) {
        kernel::dequantize(&self.spec, level, src, dst)
    }
    unsafe fn dot_at(&self, level: SimdLevel, src: &[u8], x: &[f32]) -> f32 {
        kernel::dot(&self.spec, level, src, x)
    }
    unsafe fn dot_q8_at(&self, level: SimdLevel, src: &[u8], x: &Q8Activations) -> f32 {
        kernel::dot_q8(&self.spec, level, src, x)
    }
}

impl Quantizer for Piq {
    fn quantize_blocks(&self, src: &[f32], importance: Option<&[f32]>, dst: &mut [u8]) {
        encode::encode(&self.spec, src, importance, dst)
    }
}

register_format!(
    PIQ3_FORMAT,
    &Piq {
        name: "piq3",
        id: PIQ3_TYPE_ID,
        spec: PIQ3,
        description: "3-bit pi-step grid, f16 alpha per 32",
    }
);
register_format!(
    PIQ2_FORMAT,
    &Piq {
        name: "piq2",
        id: PIQ2_TYPE_ID,
        spec: PIQ2,
        description: "2-bit pi-step grid, f16 alpha per 32",
    }
);
