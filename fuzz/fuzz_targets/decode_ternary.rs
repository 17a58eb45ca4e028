//! Arbitrary ternary blocks (both variants share the layout) through the
//! decoders, dot and 8-bit dot at every SIMD level: no panic, no
//! out-of-bounds read, SIMD decode == scalar.
#![no_main]

use gguftool_quant::registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let name = if sel % 2 == 0 {
        "ternary"
    } else {
        "ternary_mse"
    };
    common::exercise(registry::by_name(name).unwrap(), rest);
});

#[path = "common.rs"]
mod common;
