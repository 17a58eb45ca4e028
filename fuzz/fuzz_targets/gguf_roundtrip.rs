//! Parse -> write -> parse: metadata, tensor infos and tensor bytes survive.
#![no_main]

use gguftool_core::gguf::write::{GgufWriter, TensorSpec, WriteOptions};
use gguftool_core::gguf::{parse_header, GgufFile};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("fuzz", data.to_vec()) else {
        return;
    };
    let h = file.header();
    let specs: Vec<TensorSpec> = h
        .tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            ggml_type: t.ggml_type,
            dims: t.dims.clone(),
            n_bytes: t.n_bytes,
        })
        .collect();
    let mut w = GgufWriter::begin(Cursor::new(Vec::new()), &h.metadata, specs, WriteOptions::default())
        .expect("a parsed header must be writable");
    for i in 0..h.tensors.len() {
        w.write_tensor_data(file.tensor_data(i)).expect("declared sizes");
    }
    let out = w.finish().expect("complete").into_inner();
    let again = parse_header(&out).expect("written file must parse");
    assert_eq!(again.metadata, h.metadata);
    assert_eq!(again.tensors.len(), h.tensors.len());
    let reread = GgufFile::from_bytes("out", out).expect("written file must open");
    for (i, (a, b)) in h.tensors.iter().zip(&again.tensors).enumerate() {
        assert_eq!((&a.name, a.ggml_type, &a.dims, a.n_bytes), (&b.name, b.ggml_type, &b.dims, b.n_bytes));
        assert_eq!(file.tensor_data(i), reread.tensor_data(i));
    }
});
