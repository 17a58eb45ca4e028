//! SQNR of Q2+QuIP with and without its rotation (the same 2-bit blocks),
//! and of PiQ2, on every matrix of a model, pooled per tensor kind.
//!
//! `cargo run --release -p gguftool-quip --example incoherence -- MODEL.gguf [ROWS]`
//! (ROWS: rows sampled per tensor, evenly spaced; default 256).

use gguftool_ggml as _;
use gguftool_piq as _;
use gguftool_quant::format::{quantize, Format};
use gguftool_quant::registry;
use gguftool_quant::rows::RowCodec;
use std::collections::BTreeMap;

/// Signal and noise sums for: rotated, unrotated, PiQ2.
type Sums = [(f64, f64); 3];

fn kind(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["blk", _, k, ..] => (*k).to_string(),
        [k, ..] => (*k).to_string(),
        [] => name.to_string(),
    }
}

fn add(s: &mut (f64, f64), w: &[f32], q: &[f32]) {
    for (a, b) in w.iter().zip(q) {
        s.0 += (*a as f64).powi(2);
        s.1 += (*a as f64 - *b as f64).powi(2);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: incoherence MODEL.gguf [ROWS]")?;
    let max_rows: u64 = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let file = gguftool_quant::registry::open(path)?;
    let quip: &dyn Format = &gguftool_quip::Q2_QUIP;
    let piq2 = registry::by_name("piq2").ok_or("piq2 not linked")?;
    let mut by_kind: BTreeMap<String, Sums> = BTreeMap::new();
    for (i, t) in file.header().tensors.iter().enumerate() {
        let row_len = t.row_len() as usize;
        let Some(src) = registry::by_type_id(t.ggml_type) else {
            continue;
        };
        if t.dims.len() < 2 || !row_len.is_multiple_of(64) {
            continue;
        }
        let dec = RowCodec::new(src, row_len, None)?;
        let rot = RowCodec::new(quip, row_len, Some(gguftool_quant::rows::DEFAULT_SEED))?;
        let n_rows = t.n_rows();
        let rows: Vec<u64> = (0..n_rows.min(max_rows))
            .map(|k| k * n_rows / n_rows.min(max_rows))
            .collect();
        let data = file.tensor_data(i);
        let sums = by_kind.entry(kind(&t.name)).or_insert([(0.0, 0.0); 3]);
        let (mut w, mut q) = (vec![0f32; row_len], vec![0f32; row_len]);
        let mut bytes = vec![0u8; rot.row_bytes()];
        let mut pbytes = vec![0u8; row_len / 32 * piq2.type_size()];
        for r in rows {
            let off = r as usize * dec.row_bytes();
            dec.decode(&data[off..off + dec.row_bytes()], &mut w)?;
            rot.encode(&w, None, &mut bytes)?;
            rot.decode(&bytes, &mut q)?;
            add(&mut sums[0], &w, &q);
            quantize(quip, &w, None, &mut bytes)?;
            quip.dequantize(&bytes, &mut q)?;
            add(&mut sums[1], &w, &q);
            quantize(piq2, &w, None, &mut pbytes)?;
            piq2.dequantize(&pbytes, &mut q)?;
            add(&mut sums[2], &w, &q);
        }
    }
    let db = |(s, n): (f64, f64)| 10.0 * (s / n).log10();
    println!("| tensor kind | Q2+QuIP (rotated) | same 2-bit blocks, no rotation | gain | PiQ2 |");
    println!("|---|---|---|---|---|");
    let mut total: Sums = [(0.0, 0.0); 3];
    for (k, s) in &by_kind {
        for j in 0..3 {
            total[j].0 += s[j].0;
            total[j].1 += s[j].1;
        }
        println!(
            "| {k} | {:.2} dB | {:.2} dB | {:+.2} dB | {:.2} dB |",
            db(s[0]),
            db(s[1]),
            db(s[0]) - db(s[1]),
            db(s[2])
        );
    }
    println!(
        "| all | {:.2} dB | {:.2} dB | {:+.2} dB | {:.2} dB |",
        db(total[0]),
        db(total[1]),
        db(total[0]) - db(total[1]),
        db(total[2])
    );
    Ok(())
}
