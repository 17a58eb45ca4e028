//! Mutations of a sealed model: verification never panics, and never
//! passes a file whose tensor bytes differ from what was sealed.
#![no_main]

use gguftool_gguf::integrity;
use gguftool_gguf::seal::{rewrite, WriteOptions};
use gguftool_gguf::GgufFile;
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use std::sync::OnceLock;

/// The tiny fixture model, sealed once.
fn sealed() -> &'static (Vec<u8>, GgufFile) {
    static SEALED: OnceLock<(Vec<u8>, GgufFile)> = OnceLock::new();
    SEALED.get_or_init(|| {
        let src = include_bytes!("../../fixtures/tiny-llama-f32.gguf").to_vec();
        let f = GgufFile::from_bytes("tiny", src, &gguftool_quant::registry::TYPES)
            .expect("fixture parses");
        let bytes = rewrite(
            &f,
            Cursor::new(Vec::new()),
            WriteOptions {
                seal: true,
                types: &gguftool_quant::registry::TYPES,
            },
        )
        .expect("seal")
        .into_inner();
        (
            bytes.clone(),
            GgufFile::from_bytes("sealed", bytes, &gguftool_quant::registry::TYPES)
                .expect("sealed parses"),
        )
    })
}

fuzz_target!(|edits: Vec<(u32, u8)>| {
    let (clean, original) = sealed();
    let mut bytes = clean.clone();
    for (pos, x) in edits.into_iter().take(16) {
        let i = pos as usize % bytes.len();
        bytes[i] ^= x;
    }
    let Ok(f) = GgufFile::from_bytes("mutated", bytes, &gguftool_quant::registry::TYPES) else {
        return;
    };
    let report = integrity::check(&f);
    if report.passed() && report.sealed {
        // Every tensor must hold exactly the sealed bytes.
        for (i, t) in f.header().tensors.iter().enumerate() {
            let o = original
                .header()
                .tensor_index(&t.name)
                .expect("a passing file keeps the tensor table");
            assert_eq!(
                f.tensor_data(i),
                original.tensor_data(o),
                "changed tensor {:?} passed",
                t.name
            );
        }
    }
});
