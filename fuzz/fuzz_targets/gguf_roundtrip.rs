//! Parse -> write -> parse: metadata, tensor infos and tensor bytes survive.
#![no_main]

use gguftool_gguf::seal::{rewrite, WriteOptions};
use gguftool_gguf::{parse_header, GgufFile};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("fuzz", data.to_vec(), &gguftool_quant::registry::TYPES)
    else {
        return;
    };
    let h = file.header();
    let out = rewrite(&file, Cursor::new(Vec::new()), WriteOptions::default())
        .expect("a parsed file must be writable")
        .into_inner();
    let again =
        parse_header(&out, &gguftool_quant::registry::TYPES).expect("written file must parse");
    assert_eq!(again.metadata, h.metadata);
    assert_eq!(again.tensors.len(), h.tensors.len());
    let reread = GgufFile::from_bytes("out", out, &gguftool_quant::registry::TYPES)
        .expect("written file must open");
    for (i, (a, b)) in h.tensors.iter().zip(&again.tensors).enumerate() {
        assert_eq!(
            (&a.name, a.ggml_type, &a.dims, a.n_bytes),
            (&b.name, b.ggml_type, &b.dims, b.n_bytes)
        );
        assert_eq!(file.tensor_data(i), reread.tensor_data(i));
    }
});
