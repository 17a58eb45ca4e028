//! Arbitrary blocks through every standard type's decoder and dot
//! products: no panic, no out-of-bounds read, lengths checked.
#![no_main]

use gguftool_quant::format::Format;
use gguftool_quant::registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let formats: Vec<&dyn Format> = registry::all()
        .iter()
        .copied()
        .filter(|f| gguftool_gguf::ggml_type::ggml_type(f.type_id()).is_some())
        .collect();
    common::exercise(formats[sel as usize % formats.len()], rest);
});

#[path = "common.rs"]
mod common;
