//! Synthetic GGUF files for the verify benches.

use gguftool_gguf::seal::{OutputWriter, WriteOptions};
use gguftool_gguf::value::{Metadata, Value};
use gguftool_gguf::write::TensorSpec;
use std::path::Path;

/// Writes a GGUF of `n_tensors` F32 tensors totalling about `total_bytes`,
/// filled with a cheap deterministic pattern.
pub fn write_synthetic_gguf(path: &Path, total_bytes: u64, n_tensors: u64) -> std::io::Result<()> {
    let per = (total_bytes / n_tensors / 4 / 256).max(1) * 256;
    let specs: Vec<TensorSpec> = (0..n_tensors)
        .map(|i| TensorSpec {
            name: format!("blk.{i}.weight"),
            ggml_type: 0,
            dims: vec![256, per / 256],
            n_bytes: per * 4,
        })
        .collect();
    let mut md = Metadata::new();
    md.set("general.architecture", Value::String("bench".into()));
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut w = OutputWriter::begin(file, &md, specs, WriteOptions::default())
        .map_err(std::io::Error::other)?;
    let mut rng = gguftool_quant::rng::SplitMix64::new(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; (per * 4) as usize];
    for _ in 0..n_tensors {
        for c in buf.chunks_exact_mut(8) {
            c.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        w.write_tensor_data(&buf).map_err(std::io::Error::other)?;
    }
    w.finish().map_err(std::io::Error::other)?;
    Ok(())
}
