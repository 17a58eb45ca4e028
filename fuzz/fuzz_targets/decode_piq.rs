//! Arbitrary blocks through PiQ's decoders, dot and 8-bit dot at every
//! SIMD level: no panic, no out-of-bounds read, SIMD decode == scalar.
#![no_main]

use gguftool_quant::format::Format;
use gguftool_quant::registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let formats: [&dyn Format; 2] = [
        registry::by_name("piq3").unwrap(),
        registry::by_name("piq2").unwrap(),
    ];
    common::exercise(formats[sel as usize % 2], rest);
});

#[path = "common.rs"]
mod common;
