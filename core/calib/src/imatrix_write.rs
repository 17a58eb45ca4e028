//! Collecting and writing importance matrices in llama.cpp's GGUF imatrix
//! format, so `llama-quantize --imatrix` and our `convert --imatrix` read
//! what `gguftool imatrix` writes.
//!
//! Layout (llama.cpp `tools/imatrix/imatrix.cpp`, `save_imatrix`):
//! `general.type = "imatrix"`, `imatrix.datasets` (string array),
//! `imatrix.chunk_count` (u32), `imatrix.chunk_size` (u32); per weight `W`,
//! with names sorted: `W.in_sum2` (F32, `[n_cols, n_mat]`, raw sums of
//! squared inputs) and `W.counts` (F32, `[1, n_mat]`, rows accumulated).

use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::value::{Array, Metadata, Value};
use gguftool_gguf::write::{GgufWriter, TensorSpec};
use std::collections::BTreeMap;
use std::io::{Seek, Write};

/// Sums of squared inputs per weight tensor, as llama-imatrix collects them
/// (in f32, per column; one vector per matrix of a stacked tensor).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImatrixCollector {
    entries: BTreeMap<String, Entry>,
    /// Dataset names recorded in the file.
    pub datasets: Vec<String>,
    /// Chunks processed.
    pub chunk_count: u32,
    /// Tokens per chunk.
    pub chunk_size: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    n_cols: usize,
    sums: Vec<f32>,
    counts: Vec<f32>,
}

/// Shapes that do not fit an existing entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("imatrix entry {tensor:?}: {reason}")]
pub struct CollectError {
    /// The weight tensor.
    pub tensor: String,
    /// What does not fit.
    pub reason: String,
}

impl ImatrixCollector {
    /// An empty collector for chunks of `chunk_size` tokens.
    pub fn new(chunk_size: u32) -> Self {
        Self {
            chunk_size,
            ..Default::default()
        }
    }

    /// Adds the input rows `x` (`rows x n_cols`) of matrix `mat` of weight
    /// `tensor` (which has `n_mat` matrices): `sums[j] += x_j^2`, `counts += rows`.
    ///
    /// # Errors
    /// `x` not whole rows, or shapes that differ from earlier calls.
    pub fn add(
        &mut self,
        tensor: &str,
        n_cols: usize,
        mat: usize,
        n_mat: usize,
        x: &[f32],
    ) -> Result<(), CollectError> {
        let err = |reason: String| CollectError {
            tensor: tensor.to_string(),
            reason,
        };
        if n_cols == 0 || !x.len().is_multiple_of(n_cols) || mat >= n_mat {
            return Err(err(format!(
                "{} values are not rows of {n_cols}, or matrix {mat} of {n_mat}",
                x.len()
            )));
        }
        let e = self
            .entries
            .entry(tensor.to_string())
            .or_insert_with(|| Entry {
                n_cols,
                sums: vec![0.0; n_cols * n_mat],
                counts: vec![0.0; n_mat],
            });
        if e.n_cols != n_cols || e.counts.len() != n_mat {
            return Err(err(format!(
                "shape {n_cols} x {n_mat} differs from the earlier {} x {}",
                e.n_cols,
                e.counts.len()
            )));
        }
        let sums = &mut e.sums[mat * n_cols..(mat + 1) * n_cols];
        for row in x.chunks_exact(n_cols) {
            sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v * v);
        }
        e.counts[mat] += (x.len() / n_cols) as f32;
        Ok(())
    }

    /// Weight tensors collected so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Mean squared input per column of `tensor` (sum / count), as consumers
    /// of the file compute it.
    pub fn means(&self, tensor: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(tensor)?;
        Some(
            e.sums
                .chunks_exact(e.n_cols)
                .zip(&e.counts)
                .flat_map(|(s, &c)| s.iter().map(move |&v| if c > 0.0 { v / c } else { 0.0 }))
                .collect(),
        )
    }

    /// Writes llama.cpp's GGUF imatrix into `w`.
    ///
    /// # Errors
    /// Writer failures.
    pub fn write<W: Write + Seek>(&self, w: W) -> Result<W, gguftool_gguf::GgufError> {
        let mut md = Metadata::new();
        md.set("general.type", Value::String("imatrix".into()));
        md.set(
            "imatrix.datasets",
            Value::Array(Array::String(self.datasets.clone().into())),
        );
        md.set("imatrix.chunk_count", Value::U32(self.chunk_count));
        md.set("imatrix.chunk_size", Value::U32(self.chunk_size));
        let mut specs = Vec::new();
        for (name, e) in &self.entries {
            let n_mat = e.counts.len() as u64;
            specs.push(TensorSpec {
                name: format!("{name}.in_sum2"),
                ggml_type: 0,
                dims: vec![e.n_cols as u64, n_mat],
                n_bytes: e.sums.len() as u64 * 4,
            });
            specs.push(TensorSpec {
                name: format!("{name}.counts"),
                ggml_type: 0,
                dims: vec![1, n_mat],
                n_bytes: n_mat * 4,
            });
        }
        let mut writer = GgufWriter::begin(w, &md, specs, &StandardTypes)?;
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        for e in self.entries.values() {
            writer.write_tensor_data(&bytes(&e.sums))?;
            writer.write_tensor_data(&bytes(&e.counts))?;
        }
        writer.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_sums_and_counts_and_round_trips_through_the_reader() {
        let mut c = ImatrixCollector {
            datasets: vec!["brown.txt".into()],
            chunk_count: 2,
            chunk_size: 4,
            ..Default::default()
        };
        c.add("blk.0.attn_q.weight", 2, 0, 1, &[1.0, 2.0, 3.0, -1.0])
            .unwrap();
        c.add("blk.0.attn_q.weight", 2, 0, 1, &[0.0, 1.0]).unwrap();
        c.add("blk.0.ffn_up.weight", 3, 1, 2, &[1.0, 1.0, 2.0])
            .unwrap();
        assert!(c.add("blk.0.attn_q.weight", 3, 0, 1, &[1.0; 3]).is_err());
        assert!(c.add("x", 2, 0, 1, &[1.0; 3]).is_err());
        assert_eq!(
            c.means("blk.0.attn_q.weight").unwrap(),
            vec![10.0 / 3.0, 6.0 / 3.0]
        );
        let bytes = c
            .write(std::io::Cursor::new(Vec::new()))
            .unwrap()
            .into_inner();
        let dir = std::env::temp_dir().join(format!("gguftool-imatrix-{}", std::process::id()));
        std::fs::write(&dir, &bytes).unwrap();
        let m = crate::imatrix::Imatrix::load(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            m.entries["blk.0.attn_q.weight"],
            vec![10.0 / 3.0, 6.0 / 3.0]
        );
        // Matrix 0 of the stacked tensor has no rows.
        let up = &m.entries["blk.0.ffn_up.weight"];
        assert_eq!(&up[3..], &[1.0, 1.0, 4.0]);
        assert_eq!(m.datasets, vec!["brown.txt".to_string()]);
    }
}
