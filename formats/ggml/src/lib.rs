//! Standard llama.cpp tensor types as a gguftool format plugin.
//!
//! Decoding covers every type gguf-py 0.19 decodes except the grid-based
//! IQ1/IQ2/IQ3 families; encoding covers F32, F16, BF16, Q8_0, Q4_0, TQ1_0
//! and TQ2_0. All results are bit-identical to gguf-py (golden fixtures in
//! `fixtures/golden`).
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod float;
pub mod half_bits;
pub mod kquants;
pub mod legacy;
pub mod nvfp4;
pub mod ternary;

use gguftool_quant::format::{Format, Kernel, Quantizer, SimdLevel};
use gguftool_quant::register_format;

type BlockDecoder = fn(&[u8], &mut [f32]);
type BlockEncoder = fn(&[f32], &mut [u8]);

/// A standard type described by its block geometry and per-block codecs.
pub struct StdType {
    name: &'static str,
    id: u32,
    block_size: usize,
    type_size: usize,
    description: &'static str,
    decode: BlockDecoder,
    encoder: Option<&'static BlockQuantizer>,
}

/// A quantizer made of a per-block encoder (standard types ignore importance).
pub struct BlockQuantizer {
    block_size: usize,
    type_size: usize,
    encode: BlockEncoder,
}

impl Quantizer for BlockQuantizer {
    fn quantize_blocks(&self, src: &[f32], _importance: Option<&[f32]>, dst: &mut [u8]) {
        for (x, b) in src
            .chunks_exact(self.block_size)
            .zip(dst.chunks_exact_mut(self.type_size))
        {
            (self.encode)(x, b);
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
}

impl Kernel for StdType {
    unsafe fn dequantize_at(&self, _level: SimdLevel, src: &[u8], dst: &mut [f32]) {
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
}

macro_rules! std_type {
    ($static:ident, $name:literal, $id:literal, $bs:literal, $ts:literal, $desc:literal, $dec:path) => {
        register_format!(
            $static,
            &StdType {
                name: $name,
                id: $id,
                block_size: $bs,
                type_size: $ts,
                description: $desc,
                decode: $dec,
                encoder: None,
            }
        );
    };
    ($static:ident, $name:literal, $id:literal, $bs:literal, $ts:literal, $desc:literal, $dec:path, $enc:path) => {
        register_format!(
            $static,
            &StdType {
                name: $name,
                id: $id,
                block_size: $bs,
                type_size: $ts,
                description: $desc,
                decode: $dec,
                encoder: Some(&BlockQuantizer {
                    block_size: $bs,
                    type_size: $ts,
                    encode: $enc,
                }),
            }
        );
    };
}

std_type!(
    F32,
    "f32",
    0,
    1,
    4,
    "IEEE single precision",
    float::dequant_f32,
    float::quant_f32
);
std_type!(
    F16,
    "f16",
    1,
    1,
    2,
    "IEEE half precision",
    float::dequant_f16,
    float::quant_f16
);
std_type!(
    BF16,
    "bf16",
    30,
    1,
    2,
    "bfloat16",
    float::dequant_bf16,
    float::quant_bf16
);
std_type!(
    F64,
    "f64",
    28,
    1,
    8,
    "IEEE double precision (decoded to f32)",
    float::dequant_f64
);
std_type!(
    Q4_0,
    "q4_0",
    2,
    32,
    18,
    "4-bit, f16 scale per 32",
    legacy::dequant_q4_0,
    legacy::quant_q4_0
);
std_type!(
    Q4_1,
    "q4_1",
    3,
    32,
    20,
    "4-bit, f16 scale and min per 32",
    legacy::dequant_q4_1
);
std_type!(
    Q5_0,
    "q5_0",
    6,
    32,
    22,
    "5-bit, f16 scale per 32",
    legacy::dequant_q5_0
);
std_type!(
    Q5_1,
    "q5_1",
    7,
    32,
    24,
    "5-bit, f16 scale and min per 32",
    legacy::dequant_q5_1
);
std_type!(
    Q8_0,
    "q8_0",
    8,
    32,
    34,
    "8-bit, f16 scale per 32",
    legacy::dequant_q8_0,
    legacy::quant_q8_0
);
std_type!(
    Q2_K,
    "q2_k",
    10,
    256,
    84,
    "2-bit K-quant",
    kquants::dequant_q2_k
);
std_type!(
    Q3_K,
    "q3_k",
    11,
    256,
    110,
    "3-bit K-quant",
    kquants::dequant_q3_k
);
std_type!(
    Q4_K,
    "q4_k",
    12,
    256,
    144,
    "4-bit K-quant",
    kquants::dequant_q4_k
);
std_type!(
    Q5_K,
    "q5_k",
    13,
    256,
    176,
    "5-bit K-quant",
    kquants::dequant_q5_k
);
std_type!(
    Q6_K,
    "q6_k",
    14,
    256,
    210,
    "6-bit K-quant",
    kquants::dequant_q6_k
);
std_type!(
    IQ4_NL,
    "iq4_nl",
    20,
    32,
    18,
    "4-bit non-linear levels per 32",
    legacy::dequant_iq4_nl
);
std_type!(
    IQ4_XS,
    "iq4_xs",
    23,
    256,
    136,
    "4-bit non-linear, 6-bit sub-scales",
    kquants::dequant_iq4_xs
);
std_type!(
    TQ1_0,
    "tq1_0",
    34,
    256,
    54,
    "ternary, base-3 packed",
    ternary::dequant_tq1_0,
    ternary::quant_tq1_0
);
std_type!(
    TQ2_0,
    "tq2_0",
    35,
    256,
    66,
    "ternary, 2-bit packed",
    ternary::dequant_tq2_0,
    ternary::quant_tq2_0
);
std_type!(
    MXFP4,
    "mxfp4",
    39,
    32,
    17,
    "E2M1 with E8M0 scale per 32",
    legacy::dequant_mxfp4
);
std_type!(
    NVFP4,
    "nvfp4",
    40,
    64,
    36,
    "E2M1 with UE4M3 scale per 16",
    nvfp4::dequant_nvfp4
);
std_type!(
    Q1_0,
    "q1_0",
    41,
    128,
    18,
    "1-bit sign, f16 scale per 128",
    legacy::dequant_q1_0
);
std_type!(
    Q2_0,
    "q2_0",
    42,
    64,
    18,
    "2-bit {-1,0,1,2}, f16 scale per 64",
    legacy::dequant_q2_0
);
