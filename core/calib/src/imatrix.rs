//! llama.cpp importance matrices: the GGUF format written by `llama-imatrix`
//! (`<tensor>.in_sum2` and `<tensor>.counts`) and the legacy `.dat` format.
//! Values are normalized to mean squared activations per input column.

use gguftool_gguf::error::{Error, Result};
use gguftool_gguf::{GgufFile, Value};
use std::collections::HashMap;
use std::path::Path;

/// Why [`Imatrix::parse`] failed: the container, or the imatrix in it.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not a valid GGUF file.
    #[error(transparent)]
    Gguf(Error),
    /// A valid container holding an invalid importance matrix.
    #[error(transparent)]
    Imatrix(#[from] ImatrixError),
}

/// Why an importance matrix (or one of its entries) is refused. Every
/// variant names the tensor concerned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImatrixError {
    /// A value that is NaN, infinite or negative (importance is a mean of
    /// squares: such a value would silently wreck the quantized tensor).
    #[error("imatrix entry for tensor {tensor:?}: value {value} at index {index} is {reason}")]
    BadValue {
        /// The tensor.
        tensor: String,
        /// Index of the value within the entry.
        index: usize,
        /// The value.
        value: f32,
        /// `NaN`, `infinite` or `negative`.
        reason: &'static str,
    },
    /// A count (GGUF `.counts`, legacy `ncall`) that is NaN, infinite or negative.
    #[error("imatrix entry for tensor {tensor:?}: count {value} at index {index} is not a finite non-negative number")]
    BadCount {
        /// The tensor.
        tensor: String,
        /// Index of the count.
        index: usize,
        /// The count.
        value: f32,
    },
    /// The entry's sums do not split into its matrices, or it is empty.
    #[error("imatrix entry for tensor {tensor:?}: {sums} values do not split into {counts} matrices of at least one column")]
    BadSplit {
        /// The tensor.
        tensor: String,
        /// Number of sums.
        sums: usize,
        /// Number of counts (matrices).
        counts: usize,
    },
    /// The entry does not fit the tensor it is for (llama.cpp refuses this too).
    #[error("imatrix entry for tensor {tensor:?} has {len} values; the tensor needs {row_len} per matrix x {n_mats} matrices")]
    SizeMismatch {
        /// The tensor.
        tensor: String,
        /// Values in the entry.
        len: usize,
        /// The tensor's row length.
        row_len: usize,
        /// The tensor's matrix count.
        n_mats: usize,
    },
    /// Anything else wrong with the file's structure.
    #[error("{0}")]
    Malformed(String),
}

impl From<String> for ImatrixError {
    fn from(s: String) -> Self {
        ImatrixError::Malformed(s)
    }
}

/// Checks every value of an entry: finite and non-negative.
fn check_values(tensor: &str, values: &[f32]) -> std::result::Result<(), ImatrixError> {
    for (index, &value) in values.iter().enumerate() {
        let reason = if value.is_nan() {
            "NaN"
        } else if value.is_infinite() {
            "infinite"
        } else if value < 0.0 {
            "negative"
        } else {
            continue;
        };
        return Err(ImatrixError::BadValue {
            tensor: tensor.to_string(),
            index,
            value,
            reason,
        });
    }
    Ok(())
}

/// Per-tensor importance (mean squared input activation per column; one
/// vector per matrix for stacked 3-D tensors, concatenated). Every value is
/// finite and non-negative (checked at load).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imatrix {
    /// Importance by tensor name.
    pub entries: HashMap<String, Vec<f32>>,
    /// Calibration datasets recorded in the file.
    pub datasets: Vec<String>,
    /// Matrices each entry was recorded for (GGUF `.counts` length; absent
    /// for legacy files, which do not say).
    pub matrices: HashMap<String, usize>,
}

impl Imatrix {
    /// Loads either format (GGUF is recognised by its magic).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, bytes).map_err(|e| match e {
            ParseError::Gguf(e) => e,
            ParseError::Imatrix(m) => Error::Other(format!("{}: {m}", path.display())),
        })
    }

    /// Parses either format from memory (`name` is used in messages).
    pub fn parse(name: &Path, bytes: Vec<u8>) -> std::result::Result<Self, ParseError> {
        if bytes.starts_with(b"GGUF") {
            let f = GgufFile::from_bytes(name, bytes, &gguftool_quant::registry::TYPES)
                .map_err(ParseError::Gguf)?;
            Ok(Self::from_gguf(&f)?)
        } else {
            Ok(Self::from_legacy(&bytes)?)
        }
    }

    /// Importance for `tensor` shaped for its rows: `row_len` values per
    /// matrix, `n_mats` matrices (an entry recorded for one matrix, or a
    /// legacy entry of `row_len` values, is shared by all matrices). `Ok(None)` when the imatrix has no entry for the tensor;
    /// an error when it has one that does not fit.
    pub fn for_tensor(
        &self,
        tensor: &str,
        row_len: usize,
        n_mats: usize,
    ) -> std::result::Result<Option<&[f32]>, ImatrixError> {
        let Some(e) = self.entries.get(tensor) else {
            return Ok(None);
        };
        let fits = match self.matrices.get(tensor) {
            Some(&m) => {
                (m == n_mats && e.len() == row_len.saturating_mul(n_mats))
                    || (m == 1 && e.len() == row_len)
            }
            None => e.len() == row_len.saturating_mul(n_mats) || e.len() == row_len,
        };
        if fits {
            Ok(Some(e.as_slice()))
        } else {
            Err(ImatrixError::SizeMismatch {
                tensor: tensor.to_string(),
                len: e.len(),
                row_len,
                n_mats,
            })
        }
    }

    fn from_gguf(f: &GgufFile) -> std::result::Result<Self, ImatrixError> {
        let h = f.header();
        let floats = |i: usize| -> std::result::Result<Vec<f32>, ImatrixError> {
            let t = &h.tensors[i];
            if t.ggml_type != 0 {
                return Err(ImatrixError::Malformed(format!(
                    "tensor {:?} must be F32, is {}",
                    t.name, t.type_name
                )));
            }
            Ok(f.tensor_data(i)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let mut entries = HashMap::new();
        let mut matrices = HashMap::new();
        for (i, t) in h.tensors.iter().enumerate() {
            let Some(name) = t.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let ci = h
                .tensor_index(&format!("{name}.counts"))
                .ok_or_else(|| format!("{name}: in_sum2 without counts"))?;
            let (sums, counts) = (floats(i)?, floats(ci)?);
            if counts.is_empty() || sums.is_empty() || sums.len() % counts.len() != 0 {
                return Err(ImatrixError::BadSplit {
                    tensor: name.to_string(),
                    sums: sums.len(),
                    counts: counts.len(),
                });
            }
            check_values(name, &sums)?;
            if let Some((index, &value)) = counts
                .iter()
                .enumerate()
                .find(|(_, c)| !c.is_finite() || **c < 0.0)
            {
                return Err(ImatrixError::BadCount {
                    tensor: name.to_string(),
                    index,
                    value,
                });
            }
            let ne0 = sums.len() / counts.len();
            let values: Vec<f32> = sums
                .chunks_exact(ne0)
                .zip(&counts)
                .flat_map(|(s, &c)| {
                    let c = c.round();
                    s.iter().map(move |&v| if c > 0.0 { v / c } else { 1.0 })
                })
                .collect();
            check_values(name, &values)?;
            matrices.insert(name.to_string(), counts.len());
            entries.insert(name.to_string(), values);
        }
        if entries.is_empty() {
            return Err("no <tensor>.in_sum2 entries".to_string().into());
        }
        let datasets = match h.metadata.get("imatrix.datasets") {
            Some(Value::Array(gguftool_gguf::Array::String(v))) => v.to_vec(),
            _ => Vec::new(),
        };
        Ok(Self {
            entries,
            datasets,
            matrices,
        })
    }

    fn from_legacy(b: &[u8]) -> std::result::Result<Self, ImatrixError> {
        let mut r = LegacyReader { b, pos: 0 };
        let n = r.i32("entry count")?;
        if n < 1 {
            return Err("legacy imatrix has no entries".to_string().into());
        }
        let mut entries = HashMap::new();
        for e in 0..n {
            let len = r.len("name length")?;
            let name = String::from_utf8(r.bytes(len, "name")?.to_vec())
                .map_err(|_| format!("entry {e}: name is not UTF-8"))?;
            let ncall = r.i32("ncall")?;
            let nval = r.len("value count")?;
            if nval == 0 {
                return Err(ImatrixError::BadSplit {
                    tensor: name,
                    sums: 0,
                    counts: 1,
                });
            }
            let raw = r.bytes(nval.saturating_mul(4), "values")?;
            let values = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<f32>>();
            check_values(&name, &values)?;
            let values: Vec<f32> = values
                .into_iter()
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
        Ok(Self {
            entries,
            datasets,
            matrices: HashMap::new(),
        })
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
        assert_eq!(m.for_tensor("a.weight", 2, 1), Ok(Some(&[2.0f32, 1.0][..])));
        assert!(matches!(
            m.for_tensor("a.weight", 3, 1),
            Err(ImatrixError::SizeMismatch { .. })
        ));
        assert_eq!(m.for_tensor("c.weight", 3, 1), Ok(None));
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

    /// A GGUF imatrix with one entry: `sums` and `counts` as F32 tensors.
    fn gguf(sums: &[f32], counts: &[f32]) -> Vec<u8> {
        use gguftool_gguf::write::{GgufWriter, TensorSpec};
        let specs = vec![
            TensorSpec {
                name: "blk.0.w.in_sum2".into(),
                ggml_type: 0,
                dims: vec![sums.len() as u64],
                n_bytes: 4 * sums.len() as u64,
            },
            TensorSpec {
                name: "blk.0.w.counts".into(),
                ggml_type: 0,
                dims: vec![counts.len() as u64],
                n_bytes: 4 * counts.len() as u64,
            },
        ];
        let md = gguftool_gguf::Metadata::new();
        let mut w = GgufWriter::begin(
            std::io::Cursor::new(Vec::new()),
            &md,
            specs,
            &gguftool_gguf::validate::StandardTypes,
        )
        .unwrap();
        for v in [sums, counts] {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_tensor_data(&b).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn parse(b: Vec<u8>) -> std::result::Result<Imatrix, ImatrixError> {
        match Imatrix::parse(Path::new("t"), b) {
            Ok(m) => Ok(m),
            Err(ParseError::Imatrix(e)) => Err(e),
            Err(ParseError::Gguf(e)) => panic!("{e}"),
        }
    }

    #[test]
    fn nan_inf_and_negative_values_are_refused_naming_tensor_and_index() {
        for (bad, reason) in [
            (f32::NAN, "NaN"),
            (f32::INFINITY, "infinite"),
            (-50.0, "negative"),
        ] {
            let mut sums = vec![4.0f32; 64];
            sums[37] = bad;
            let e = parse(gguf(&sums, &[2.0])).unwrap_err();
            match &e {
                ImatrixError::BadValue {
                    tensor,
                    index,
                    reason: r,
                    ..
                } => {
                    assert_eq!((tensor.as_str(), *index, *r), ("blk.0.w", 37, reason))
                }
                other => panic!("{other:?}"),
            }
            assert!(e.to_string().contains("\"blk.0.w\""), "{e}");
            let legacy_e =
                Imatrix::from_legacy(&legacy(&[("a.weight", 1, &[1.0, bad])])).unwrap_err();
            assert!(
                matches!(legacy_e, ImatrixError::BadValue { index: 1, .. }),
                "{legacy_e:?}"
            );
        }
        // Counts too.
        let e = parse(gguf(&[1.0; 4], &[f32::NAN])).unwrap_err();
        assert!(
            matches!(e, ImatrixError::BadCount { index: 0, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn zero_element_entry_is_an_error_not_a_panic() {
        let e = parse(gguf(&[], &[1.0])).unwrap_err();
        assert!(
            matches!(
                e,
                ImatrixError::BadSplit {
                    sums: 0,
                    counts: 1,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = parse(gguf(&[1.0; 5], &[1.0, 1.0])).unwrap_err();
        assert!(matches!(e, ImatrixError::BadSplit { .. }), "{e:?}");
    }

    #[test]
    fn entry_of_the_wrong_size_is_refused_not_dropped() {
        let m = parse(gguf(&[1.0; 64], &[1.0, 1.0])).unwrap();
        // 2 matrices of 32: fits [32 x n x 2]; a 64-column tensor does not.
        assert!(m.for_tensor("blk.0.w", 32, 2).unwrap().is_some());
        let e = m.for_tensor("blk.0.w", 64, 1).unwrap_err();
        assert!(e.to_string().contains("\"blk.0.w\" has 64 values"), "{e}");
        let e = m.for_tensor("blk.0.w", 48, 1).unwrap_err();
        assert!(matches!(
            e,
            ImatrixError::SizeMismatch {
                len: 64,
                row_len: 48,
                ..
            }
        ));
    }
}
