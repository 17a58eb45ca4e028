//! llama.cpp importance matrices: the GGUF format written by `llama-imatrix`
//! (`<tensor>.in_sum2` and `<tensor>.counts`) and the legacy `.dat` format.
//! Values are normalized to mean squared activations per input column.

use gguftool_gguf::error::{Error, Result};
use gguftool_gguf::{GgufFile, Value};
use std::collections::HashMap;
use std::path::Path;

/// Per-tensor importance (mean squared input activation per column; one
/// vector per matrix for stacked 3-D tensors, concatenated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imatrix {
    /// Importance by tensor name.
    pub entries: HashMap<String, Vec<f32>>,
    /// Calibration datasets recorded in the file.
    pub datasets: Vec<String>,
}

impl Imatrix {
    /// Loads either format (GGUF is recognised by its magic).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if bytes.starts_with(b"GGUF") {
            let f = GgufFile::from_bytes(path, bytes, &gguftool_quant::registry::TYPES)?;
            Self::from_gguf(&f).map_err(|m| Error::Other(format!("{}: {m}", path.display())))
        } else {
            Self::from_legacy(&bytes).map_err(|m| Error::Other(format!("{}: {m}", path.display())))
        }
    }

    /// Importance for `tensor` shaped for its rows: `row_len` values per
    /// matrix, `n_mats` matrices; None when absent or of another shape.
    pub fn for_tensor(&self, tensor: &str, row_len: usize, n_mats: usize) -> Option<&[f32]> {
        let e = self.entries.get(tensor)?;
        (e.len() == row_len * n_mats || e.len() == row_len).then_some(e.as_slice())
    }

    fn from_gguf(f: &GgufFile) -> std::result::Result<Self, String> {
        let h = f.header();
        let floats = |i: usize| -> std::result::Result<Vec<f32>, String> {
            let t = &h.tensors[i];
            if t.ggml_type != 0 {
                return Err(format!(
                    "tensor {:?} must be F32, is {}",
                    t.name, t.type_name
                ));
            }
            Ok(f.tensor_data(i)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let mut entries = HashMap::new();
        for (i, t) in h.tensors.iter().enumerate() {
            let Some(name) = t.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let ci = h
                .tensor_index(&format!("{name}.counts"))
                .ok_or_else(|| format!("{name}: in_sum2 without counts"))?;
            let (sums, counts) = (floats(i)?, floats(ci)?);
            if counts.is_empty() || sums.len() % counts.len() != 0 {
                return Err(format!(
                    "{name}: {} sums do not split into {} matrices",
                    sums.len(),
                    counts.len()
                ));
            }
            let ne0 = sums.len() / counts.len();
            let values = sums
                .chunks_exact(ne0)
                .zip(&counts)
                .flat_map(|(s, &c)| {
                    let c = c.round();
                    s.iter().map(move |&v| if c > 0.0 { v / c } else { 1.0 })
                })
                .collect();
            entries.insert(name.to_string(), values);
        }
        if entries.is_empty() {
            return Err("no <tensor>.in_sum2 entries".into());
        }
        let datasets = match h.metadata.get("imatrix.datasets") {
            Some(Value::Array(gguftool_gguf::Array::String(v))) => v.to_vec(),
            _ => Vec::new(),
        };
        Ok(Self { entries, datasets })
    }

    fn from_legacy(b: &[u8]) -> std::result::Result<Self, String> {
        let mut r = LegacyReader { b, pos: 0 };
        let n = r.i32("entry count")?;
        if n < 1 {
            return Err("legacy imatrix has no entries".into());
        }
        let mut entries = HashMap::new();
        for e in 0..n {
            let len = r.len("name length")?;
            let name = String::from_utf8(r.bytes(len, "name")?.to_vec())
                .map_err(|_| format!("entry {e}: name is not UTF-8"))?;
            let ncall = r.i32("ncall")?;
            let nval = r.len("value count")?;
            if nval == 0 {
                return Err(format!("{name}: no values"));
            }
            let raw = r.bytes(nval.saturating_mul(4), "values")?;
            let values = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .map(|v| if ncall > 0 { v / ncall as f32 } else { v })
                .collect();
            entries.insert(name, values);
        }
        // Optional trailer: chunk count and dataset name.
        let mut datasets = Vec::new();
        if r.i32("chunk count").is_ok() {
            if let Ok(len) = r.len("dataset name length") {
                if let Ok(name) = r.bytes(len, "dataset name") {
                    datasets.push(String::from_utf8_lossy(name).into_owned());
                }
            }
        }
        Ok(Self { entries, datasets })
    }
}

/// Bounds-checked reader for the legacy format.
struct LegacyReader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> LegacyReader<'a> {
    fn bytes(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| {
                format!(
                    "truncated legacy imatrix: {what} at byte offset {} needs {n} bytes",
                    self.pos
                )
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> std::result::Result<i32, String> {
        let v = self.bytes(4, what)?;
        Ok(i32::from_le_bytes([v[0], v[1], v[2], v[3]]))
    }

    fn len(&mut self, what: &str) -> std::result::Result<usize, String> {
        let offset = self.pos;
        usize::try_from(self.i32(what)?)
            .map_err(|_| format!("negative {what} at byte offset {offset}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(entries: &[(&str, i32, &[f32])]) -> Vec<u8> {
        let mut b = (entries.len() as i32).to_le_bytes().to_vec();
        for (name, ncall, vals) in entries {
            b.extend((name.len() as i32).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend(ncall.to_le_bytes());
            b.extend((vals.len() as i32).to_le_bytes());
            vals.iter().for_each(|v| b.extend(v.to_le_bytes()));
        }
        b.extend(10i32.to_le_bytes());
        b.extend(5i32.to_le_bytes());
        b.extend(b"brown");
        b
    }

    #[test]
    fn legacy_values_are_divided_by_ncall() {
        let m = Imatrix::from_legacy(&legacy(&[
            ("a.weight", 4, &[8.0, 4.0]),
            ("b.weight", 0, &[3.0]),
        ]))
        .unwrap();
        assert_eq!(m.entries["a.weight"], vec![2.0, 1.0]);
        assert_eq!(m.entries["b.weight"], vec![3.0]);
        assert_eq!(m.datasets, vec!["brown".to_string()]);
        assert_eq!(m.for_tensor("a.weight", 2, 1), Some(&[2.0f32, 1.0][..]));
        assert_eq!(m.for_tensor("a.weight", 3, 1), None);
    }

    #[test]
    fn legacy_garbage_is_an_error_not_a_panic() {
        let good = legacy(&[("a.weight", 4, &[8.0, 4.0])]);
        for len in 0..good.len() - 13 {
            assert!(Imatrix::from_legacy(&good[..len]).is_err(), "prefix {len}");
        }
        let mut huge = 1i32.to_le_bytes().to_vec();
        huge.extend(i32::MAX.to_le_bytes());
        assert!(Imatrix::from_legacy(&huge).is_err());
    }
}
