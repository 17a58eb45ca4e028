//! Standard llama.cpp tensor types as a gguftool format plugin.
//!
//! Decoding covers every type gguf-py 0.19 decodes except the grid-based
//! IQ1/IQ2/IQ3 families; encoding covers F32, F16, BF16, Q8_0, Q4_0, Q4_1,
//! Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K, TQ1_0 and TQ2_0. Without importance the
//! encoders are bit-identical to gguf-py where it has an encoder and to
//! ggml's reference quantizers otherwise (golden fixtures in
//! `fixtures/types`); with importance they run ggml's imatrix-weighted
//! searches ([`encode`]). The same types but the floats also have a
//! two-phase encoder (`BlockGrid`: block parameters chosen by the encoder's
//! own code, then each element rounded on its own), which GPTQ uses to
//! round column by column inside a block.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod dot;
pub mod encode;
pub mod float;
mod grid;
pub mod half_bits;
pub mod kquants;
pub mod legacy;
pub mod nvfp4;
pub mod ternary;

use dot::DotKind;
use gguftool_gguf::ggml_type::{ggml_type, TypeStatus};
use gguftool_quant::activation::{Q8Activations, Q8KActivations, VecDotType};
use gguftool_quant::format::{BlockGrid, Format, Kernel, Quantizer, SimdLevel};
use gguftool_quant::register_format;

type BlockDecoder = fn(&[u8], &mut [f32]);
type BlockEncoder = fn(&[f32], &mut [u8]);
type WeightedBlockEncoder = fn(&[f32], &[f32], &mut [u8]);

/// A standard type described by its block geometry and per-block codecs.
///
/// The geometry is not written here: [`geometry`] reads it from the ggml
/// type table (`gguftool_gguf::ggml_type`) when the statics are built.
pub struct StdType {
    name: &'static str,
    id: u32,
    block_size: usize,
    type_size: usize,
    description: &'static str,
    decode: BlockDecoder,
    encoder: Option<&'static BlockQuantizer>,
    dot: DotKind,
}

/// Elements and bytes per block of the active standard type `id`, from the
/// ggml type table; evaluated at compile time for the registered statics,
/// so an id that is not an active type fails the build.
pub const fn geometry(id: u32) -> (usize, usize) {
    match ggml_type(id) {
        Some(t) if matches!(t.status, TypeStatus::Active) => {
            (t.block_size as usize, t.type_size as usize)
        }
        _ => panic!("not an active ggml type id"),
    }
}

/// A quantizer made of a per-block encoder, plus an importance-weighted
/// one for the types that have it (the others ignore importance).
pub struct BlockQuantizer {
    id: u32,
    encode: BlockEncoder,
    weighted: Option<WeightedBlockEncoder>,
}

impl Quantizer for BlockQuantizer {
    fn quantize_blocks(&self, src: &[f32], importance: Option<&[f32]>, dst: &mut [u8]) {
        let (block_size, type_size) = geometry(self.id);
        let blocks = src
            .chunks_exact(block_size)
            .zip(dst.chunks_exact_mut(type_size));
        match (importance, self.weighted) {
            (Some(imp), Some(weighted)) => {
                for ((x, b), w) in blocks.zip(imp.chunks_exact(block_size)) {
                    weighted(x, w, b);
                }
            }
            _ => {
                for (x, b) in blocks {
                    (self.encode)(x, b);
                }
            }
        }
    }
}

impl Format for StdType {
    fn name(&self) -> &'static str {
        self.name
    }
    fn type_id(&self) -> u32 {
        self.id
    }
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn type_size(&self) -> usize {
        self.type_size
    }
    fn description(&self) -> &'static str {
        self.description
    }
    fn kernel(&self) -> &dyn Kernel {
        self
    }
    fn suits_post_training(&self) -> bool {
        // Ternary types hold weights trained to be ternary (BitNet); PTQ of
        // a float model into them destroys it (docs/RESULTS.md).
        !matches!(self.name, "tq1_0" | "tq2_0")
    }
    fn quantizer(&self) -> Option<&dyn Quantizer> {
        self.encoder.map(|q| q as &dyn Quantizer)
    }
    fn block_grid(&self) -> Option<&dyn BlockGrid> {
        // Every type with a per-element grid encoder (all but the floats).
        self.encoder.and(grid::Grid::for_type(self.id))
    }
}

impl Kernel for StdType {
    fn simd_levels(&self) -> &'static [SimdLevel] {
        self.dot.simd_levels()
    }

    fn vec_dot_type(&self) -> VecDotType {
        self.dot.vec_dot_type()
    }

    unsafe fn dequantize_at(&self, level: SimdLevel, src: &[u8], dst: &mut [f32]) {
        // SAFETY: forwarded contract.
        if unsafe { dot::dequantize(self.dot, level, src, dst) } {
            return;
        }
        if self.id == 0 {
            // F32: a plain little-endian copy, without a call per element.
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            return;
        }
        for (b, out) in src
            .chunks_exact(self.type_size)
            .zip(dst.chunks_exact_mut(self.block_size))
        {
            (self.decode)(b, out);
        }
    }

    unsafe fn dot_at(&self, level: SimdLevel, src: &[u8], x: &[f32]) -> f32 {
        // SAFETY: forwarded contract.
        match unsafe { dot::dot_f32(self.dot, level, src, x) } {
            Some(v) => v,
            // SAFETY: forwarded contract.
            None => unsafe { dot::decode_then_dot(self, level, src, x) },
        }
    }

    unsafe fn dot_q8_at(&self, level: SimdLevel, src: &[u8], x: &Q8Activations) -> f32 {
        // SAFETY: forwarded contract (src holds whole blocks of this type,
        // x as many elements; level is supported).
        match unsafe { dot::dot_q8(self.dot, level, src, x) } {
            Some(v) => v,
            // SAFETY: forwarded contract.
            None => unsafe { dot::decode_then_dot_q8(self, level, src, x) },
        }
    }

    unsafe fn dot_q8k_at(&self, level: SimdLevel, src: &[u8], x: &Q8KActivations) -> f32 {
        // SAFETY: forwarded contract.
        match unsafe { dot::dot_q8k(self.dot, level, src, x) } {
            Some(v) => v,
            // SAFETY: forwarded contract.
            None => unsafe { dot::decode_then_dot_q8k(self, level, src, x) },
        }
    }
}

macro_rules! std_type {
    ($static:ident, $name:literal, $id:literal, $desc:literal, $dec:path, $dot:expr) => {
        register_format!(
            $static,
            &StdType {
                name: $name,
                id: $id,
                block_size: geometry($id).0,
                type_size: geometry($id).1,
                description: $desc,
                decode: $dec,
                encoder: None,
                dot: $dot,
            }
        );
    };
    ($static:ident, $name:literal, $id:literal, $desc:literal, $dec:path, $dot:expr, $enc:path) => {
        register_format!(
            $static,
            &StdType {
                name: $name,
                id: $id,
                block_size: geometry($id).0,
                type_size: geometry($id).1,
                description: $desc,
                decode: $dec,
                encoder: Some(&BlockQuantizer {
                    id: $id,
                    encode: $enc,
                    weighted: None,
                }),
                dot: $dot,
            }
        );
    };
    ($static:ident, $name:literal, $id:literal, $desc:literal, $dec:path, $dot:expr, $enc:path, $wenc:path) => {
        register_format!(
            $static,
            &StdType {
                name: $name,
                id: $id,
                block_size: geometry($id).0,
                type_size: geometry($id).1,
                description: $desc,
                decode: $dec,
                encoder: Some(&BlockQuantizer {
                    id: $id,
                    encode: $enc,
                    weighted: Some($wenc),
                }),
                dot: $dot,
            }
        );
    };
}

std_type!(
    F32,
    "f32",
    0,
    "IEEE single precision",
    float::dequant_f32,
    DotKind::F32,
    float::quant_f32
);

std_type!(
    F16,
    "f16",
    1,
    "IEEE half precision",
    float::dequant_f16,
    DotKind::F16,
    float::quant_f16
);

std_type!(
    BF16,
    "bf16",
    30,
    "bfloat16",
    float::dequant_bf16,
    DotKind::Bf16,
    float::quant_bf16
);

std_type!(
    F64,
    "f64",
    28,
    "IEEE double precision (decoded to f32)",
    float::dequant_f64,
    DotKind::None
);

std_type!(
    Q4_0,
    "q4_0",
    2,
    "4-bit, f16 scale per 32",
    legacy::dequant_q4_0,
    DotKind::Q4_0,
    legacy::quant_q4_0,
    encode::quant_q4_0_weighted
);

std_type!(
    Q4_1,
    "q4_1",
    3,
    "4-bit, f16 scale and min per 32",
    legacy::dequant_q4_1,
    DotKind::Q4_1,
    encode::quant_q4_1,
    encode::quant_q4_1_weighted
);

std_type!(
    Q5_0,
    "q5_0",
    6,
    "5-bit, f16 scale per 32",
    legacy::dequant_q5_0,
    DotKind::Q5_0,
    encode::quant_q5_0,
    encode::quant_q5_0_weighted
);

std_type!(
    Q5_1,
    "q5_1",
    7,
    "5-bit, f16 scale and min per 32",
    legacy::dequant_q5_1,
    DotKind::Q5_1,
    encode::quant_q5_1,
    encode::quant_q5_1_weighted
);

std_type!(
    Q8_0,
    "q8_0",
    8,
    "8-bit, f16 scale per 32",
    legacy::dequant_q8_0,
    DotKind::Q8_0,
    legacy::quant_q8_0
);

std_type!(
    Q2_K,
    "q2_k",
    10,
    "2-bit K-quant",
    kquants::dequant_q2_k,
    DotKind::Q2K,
    encode::quant_q2_k,
    encode::quant_q2_k_weighted
);

std_type!(
    Q3_K,
    "q3_k",
    11,
    "3-bit K-quant",
    kquants::dequant_q3_k,
    DotKind::Q3K,
    encode::quant_q3_k,
    encode::quant_q3_k_weighted
);

std_type!(
    Q4_K,
    "q4_k",
    12,
    "4-bit K-quant",
    kquants::dequant_q4_k,
    DotKind::Q4K,
    encode::quant_q4_k,
    encode::quant_q4_k_weighted
);

std_type!(
    Q5_K,
    "q5_k",
    13,
    "5-bit K-quant",
    kquants::dequant_q5_k,
    DotKind::Q5K,
    encode::quant_q5_k,
    encode::quant_q5_k_weighted
);

std_type!(
    Q6_K,
    "q6_k",
    14,
    "6-bit K-quant",
    kquants::dequant_q6_k,
    DotKind::Q6K,
    encode::quant_q6_k,
    encode::quant_q6_k_weighted
);

std_type!(
    IQ4_NL,
    "iq4_nl",
    20,
    "4-bit non-linear levels per 32",
    legacy::dequant_iq4_nl,
    DotKind::Iq4Nl,
    encode::quant_iq4_nl,
    encode::quant_iq4_nl_weighted
);

std_type!(
    IQ4_XS,
    "iq4_xs",
    23,
    "4-bit non-linear, 6-bit sub-scales",
    kquants::dequant_iq4_xs,
    DotKind::Iq4Xs
);

std_type!(
    TQ1_0,
    "tq1_0",
    34,
    "ternary, base-3 packed",
    ternary::dequant_tq1_0,
    DotKind::None,
    ternary::quant_tq1_0
);

std_type!(
    TQ2_0,
    "tq2_0",
    35,
    "ternary, 2-bit packed",
    ternary::dequant_tq2_0,
    DotKind::None,
    ternary::quant_tq2_0
);

std_type!(
    MXFP4,
    "mxfp4",
    39,
    "E2M1 with E8M0 scale per 32",
    legacy::dequant_mxfp4,
    DotKind::None
);

std_type!(
    NVFP4,
    "nvfp4",
    40,
    "E2M1 with UE4M3 scale per 16",
    nvfp4::dequant_nvfp4,
    DotKind::None
);

std_type!(
    Q1_0,
    "q1_0",
    41,
    "1-bit sign, f16 scale per 128",
    legacy::dequant_q1_0,
    DotKind::None
);

std_type!(
    Q2_0,
    "q2_0",
    42,
    "2-bit {-1,0,1,2}, f16 scale per 64",
    legacy::dequant_q2_0,
    DotKind::None
);
