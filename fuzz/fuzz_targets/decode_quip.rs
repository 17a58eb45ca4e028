//! Arbitrary Q2+QuIP blocks (both variants) through the block kernels at every SIMD level,
//! then whole rows through the row codec (rotation from an arbitrary seed
//! and row length): no panic, no out-of-bounds read, SIMD decode == scalar.
#![no_main]

use gguftool_quant::format::Format;
use gguftool_quant::registry;
use gguftool_quant::rows::RowCodec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let (head, rest) = data.split_at(10);
    let name = if head[9] & 0x80 == 0 {
        "q2_quip"
    } else {
        "q2_quip_lite"
    };
    let f: &dyn Format = registry::by_name(name).unwrap();
    common::exercise(f, rest);
    let seed = u64::from_le_bytes(head[..8].try_into().unwrap());
    let blocks_per_row = (u16::from_le_bytes([head[8], head[9]]) as usize % 16) + 1;
    let row_len = blocks_per_row * f.block_size();
    let Ok(codec) = RowCodec::new(f, row_len, Some(seed)) else {
        return;
    };
    let rows = rest.len() / codec.row_bytes();
    if rows == 0 {
        return;
    }
    let src = &rest[..rows * codec.row_bytes()];
    let mut out = vec![0f32; rows * row_len];
    codec.decode(src, &mut out).expect("whole rows decode");
    let x: Vec<f32> = (0..row_len).map(|i| (i % 5) as f32 - 2.0).collect();
    let mut y = vec![0f32; rows];
    codec.matvec(src, &x, &mut y).expect("matvec");
    codec.matvec_q8(src, &x, &mut y).expect("matvec q8");
    assert!(
        codec.decode(src, &mut out[1..]).is_err(),
        "partial row accepted"
    );
});

#[path = "common.rs"]
mod common;
