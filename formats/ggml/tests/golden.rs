//! Bit-exact comparison with gguf-py 0.19 on the committed golden fixtures
//! (`fixtures/types/*.gguf`, made by `fixtures/generate.py`).

use gguftool_ggml as _;
use gguftool_gguf::GgufFile;
use gguftool_quant::format::{quantize, Format};
use gguftool_quant::registry;
use std::path::PathBuf;

fn fixture(name: &str) -> GgufFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/types")
        .join(name);
    gguftool_quant::registry::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn tensor<'a>(f: &'a GgufFile, name: &str) -> (usize, &'a [u8]) {
    let i = f
        .header()
        .tensor_index(name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    (i, f.tensor_data(i))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn format_of(f: &GgufFile, i: usize) -> &'static dyn Format {
    let id = f.header().tensors[i].ggml_type;
    registry::by_type_id(id).unwrap_or_else(|| panic!("type {id} not registered"))
}

fn check_decode(file: &str) {
    let f = fixture(file);
    let (bi, blocks) = tensor(&f, "blocks");
    let (_, expected) = tensor(&f, "expected");
    let fmt = format_of(&f, bi);
    let want = f32s(expected);
    let mut got = vec![0f32; want.len()];
    fmt.dequantize(blocks, &mut got).unwrap();
    let mismatches: Vec<usize> = (0..want.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    assert!(
        mismatches.is_empty(),
        "{file}: {} of {} values differ; first at {}: got {:?} want {:?}",
        mismatches.len(),
        want.len(),
        mismatches[0],
        got[mismatches[0]],
        want[mismatches[0]]
    );
}

fn check_encode(file: &str) {
    let f = fixture(file);
    let (qi, want) = tensor(&f, "quantized");
    let (_, input) = tensor(&f, "input");
    let fmt = format_of(&f, qi);
    let mut got = vec![0u8; want.len()];
    quantize(fmt, &f32s(input), None, &mut got).unwrap();
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(first.is_none(), "{file}: first differing byte at {first:?}");
}

macro_rules! golden {
    ($($test:ident: $file:literal $(, encode $enc:ident)?;)*) => {$(
        #[test]
        fn $test() {
            check_decode($file);
            $( let _ = stringify!($enc); check_encode($file); )?
        }
    )*};
}

golden! {
    decode_f16: "f16.gguf";
    decode_bf16_encode_bf16: "bf16.gguf", encode yes;
    decode_q4_0_encode_q4_0: "q4_0.gguf", encode yes;
    decode_q4_1: "q4_1.gguf";
    decode_q5_0: "q5_0.gguf";
    decode_q5_1: "q5_1.gguf";
    decode_q8_0_encode_q8_0: "q8_0.gguf", encode yes;
    decode_q2_k: "q2_k.gguf";
    decode_q3_k: "q3_k.gguf";
    decode_q4_k: "q4_k.gguf";
    decode_q5_k: "q5_k.gguf";
    decode_q6_k: "q6_k.gguf";
    decode_iq4_nl: "iq4_nl.gguf";
    decode_iq4_xs: "iq4_xs.gguf";
    decode_tq1_0_encode_tq1_0: "tq1_0.gguf", encode yes;
    decode_tq2_0_encode_tq2_0: "tq2_0.gguf", encode yes;
    decode_mxfp4: "mxfp4.gguf";
    decode_nvfp4: "nvfp4.gguf";
}

#[test]
fn encode_f16_matches_numpy() {
    check_encode("f16-encode.gguf");
}

/// Encodes `input` of `fixtures/types/encode-<type>.gguf` (made by
/// `scripts/ggml_gguf_py_check.py golden`) without importance and with
/// `importance`, comparing with `quantized` (gguf-py / ggml's
/// `quantize_row_*_ref`) and `quantized_imatrix` (ggml's `quantize_*` with
/// quant_weights).
fn check_encode_pair(file: &str) {
    let f = fixture(file);
    let (_, input) = tensor(&f, "input");
    let (_, imp) = tensor(&f, "importance");
    let (input, imp) = (f32s(input), f32s(imp));
    for (name, importance) in [("quantized", None), ("quantized_imatrix", Some(&imp[..]))] {
        let (qi, want) = tensor(&f, name);
        let fmt = format_of(&f, qi);
        let mut got = vec![0u8; want.len()];
        quantize(fmt, &input, importance, &mut got).unwrap();
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        assert!(
            first.is_none(),
            "{file} {name}: first differing byte at {first:?} (block {:?})",
            first.map(|i| i / fmt.type_size())
        );
    }
}

macro_rules! golden_encode {
    ($($test:ident: $file:literal;)*) => {$(
        #[test]
        fn $test() {
            check_encode_pair($file);
        }
    )*};
}

golden_encode! {
    encode_q4_1_matches_reference: "encode-q4_1.gguf";
    encode_q5_0_matches_reference: "encode-q5_0.gguf";
    encode_q5_1_matches_reference: "encode-q5_1.gguf";
    encode_iq4_nl_matches_reference: "encode-iq4_nl.gguf";
    encode_q2_k_matches_reference: "encode-q2_k.gguf";
    encode_q3_k_matches_reference: "encode-q3_k.gguf";
    encode_q4_k_matches_reference: "encode-q4_k.gguf";
    encode_q5_k_matches_reference: "encode-q5_k.gguf";
    encode_q6_k_matches_reference: "encode-q6_k.gguf";
}
