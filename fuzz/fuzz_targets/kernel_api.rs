//! The safe kernel API under arbitrary inputs: any registered format, any
//! SIMD level (including other architectures' levels), encoded buffers and
//! activation blocks of arbitrary lengths and values, through the `Format`
//! entry points and `KernelTable`. Mismatched lengths must be errors;
//! nothing may crash or read out of bounds.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use gguftool_formats as _;
use gguftool_quant::activation::{Activations, Q8Activations, Q8KActivations};
use gguftool_quant::format::SimdLevel;
use gguftool_quant::kernels::KernelTable;
use gguftool_quant::registry;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    format: u8,
    level: u8,
    row_len: u16,
    seed: Option<u64>,
    blocks: Vec<u8>,
    q8_codes: Vec<i8>,
    q8_scales: Vec<f32>,
    q8k_codes: Vec<i8>,
    q8k_scales: Vec<f32>,
    x: Vec<f32>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(inp) = Input::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let formats = registry::all();
    let f = formats[inp.format as usize % formats.len()];
    let level = SimdLevel::ALL[inp.level as usize % SimdLevel::ALL.len()];
    let n_out = inp.blocks.len() / f.type_size().max(1) * f.block_size();
    let mut dst = vec![0f32; n_out.min(1 << 20)];
    let _ = f.dequantize_with(level, &inp.blocks, &mut dst);
    let _ = f.dot_with(level, &inp.blocks, &inp.x);
    let q8 = Q8Activations::from_parts(inp.q8_codes, inp.q8_scales);
    let q8k = Q8KActivations::from_parts(inp.q8k_codes, inp.q8k_scales);
    if let Ok(q) = &q8 {
        let _ = f.dot_q8_with(level, &inp.blocks, q);
    }
    if let Ok(q) = &q8k {
        let _ = f.dot_q8k_with(level, &inp.blocks, q);
    }
    let Ok(table) = KernelTable::new(f, inp.row_len as usize, inp.seed, level) else {
        return;
    };
    let _ = table.quantize_activations(&inp.x);
    let acts: Vec<Activations> = [
        q8.ok().map(Activations::Q8_0),
        q8k.ok().map(Activations::Q8K),
        Some(Activations::F32(inp.x)),
    ]
    .into_iter()
    .flatten()
    .collect();
    for a in &acts {
        let _ = table.dot(&inp.blocks, a);
    }
    let rb = table.row_bytes().max(1);
    let mut out = vec![0f32; (inp.blocks.len() / rb) * acts.len()];
    let _ = table.matmul(&inp.blocks, &acts, &mut out);
});
