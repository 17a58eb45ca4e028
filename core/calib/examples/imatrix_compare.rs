//! Compares two importance matrices entry by entry (e.g. `gguftool imatrix`'s
//! against `llama-imatrix`'s on the same model, text and context): prints the
//! cosine similarity of the mean squared activations per entry, and the
//! minimum and mean over entries.
//! `cargo run --release -p gguftool-calib --example imatrix_compare -- A.gguf B.gguf`

use gguftool_calib::imatrix::Imatrix;
use gguftool_formats as _;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [a, b] = &args[..] else {
        return Err("usage: imatrix_compare A.gguf B.gguf".into());
    };
    let (a, b) = (Imatrix::load(Path::new(a))?, Imatrix::load(Path::new(b))?);
    let mut names: Vec<&String> = a
        .entries
        .keys()
        .filter(|k| b.entries.contains_key(*k))
        .collect();
    names.sort();
    let only_a = a.entries.len() - names.len();
    let only_b = b.entries.len() - names.len();
    let mut cos = Vec::new();
    for n in &names {
        let (x, y) = (&a.entries[*n], &b.entries[*n]);
        if x.len() != y.len() {
            println!("{n}: lengths differ ({} vs {})", x.len(), y.len());
            continue;
        }
        let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
        let nx: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
        let ny: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum::<f64>().sqrt();
        let c = dot / (nx * ny);
        println!("{n}: cosine {c:.6}");
        cos.push(c);
    }
    let min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = cos.iter().sum::<f64>() / cos.len().max(1) as f64;
    println!(
        "{} shared entries ({only_a} only in A, {only_b} only in B): min cosine {min:.6}, mean {mean:.6}",
        cos.len()
    );
    Ok(())
}
