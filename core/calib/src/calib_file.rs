//! The calibration file: per distinct linear-layer input, the second-moment
//! matrix `X^T X` and its token count, and which weight tensors read that
//! input (q/k/v share one, gate/up share one). A GGUF file of our own,
//! documented in docs/FORMATS.md and validated on load like every input:
//!
//! - `gguftool.calibration.version` (u32) = 1;
//! - `gguftool.calibration.datasets` (string array): text files and weights;
//! - per input site `S` (named after its first consumer): tensor `S.xtx`
//!   (F32, `[n, n]`), metadata `gguftool.calibration.tokens.S` (u64) and
//!   `gguftool.calibration.consumers.S` (string array of weight tensor names).

use crate::gptq::Hessian;
use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::value::{Array, Metadata, Value};
use gguftool_gguf::write::{GgufWriter, TensorSpec};
use gguftool_gguf::GgufFile;
use std::collections::HashMap;
use std::io::{Seek, Write};

/// Metadata key of the format version.
pub const VERSION_KEY: &str = "gguftool.calibration.version";
/// Metadata key of the dataset list.
pub const DATASETS_KEY: &str = "gguftool.calibration.datasets";
const TOKENS_PREFIX: &str = "gguftool.calibration.tokens.";
const CONSUMERS_PREFIX: &str = "gguftool.calibration.consumers.";
const XTX_SUFFIX: &str = ".xtx";

/// One input site: its Hessian and the weight tensors that read it.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibInput {
    /// Site name (the first consumer's tensor name).
    pub site: String,
    /// Weight tensors whose input this is.
    pub consumers: Vec<String>,
    /// `X^T X` and the token count.
    pub hessian: Hessian,
}

/// A whole calibration set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calibration {
    /// Texts (and weights) the statistics come from.
    pub datasets: Vec<String>,
    /// The input sites.
    pub inputs: Vec<CalibInput>,
}

/// A malformed calibration file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibError {
    /// A required key or tensor is absent or of the wrong type.
    #[error("calibration file: {0}")]
    Malformed(String),
    /// The container could not be written.
    #[error("calibration file: {0}")]
    Write(String),
}

impl Calibration {
    /// The Hessian of the input of weight tensor `tensor`, if calibrated.
    pub fn hessian_for(&self, tensor: &str) -> Option<&Hessian> {
        self.inputs
            .iter()
            .find(|i| i.consumers.iter().any(|c| c == tensor))
            .map(|i| &i.hessian)
    }

    /// Writes the set as GGUF into `w`.
    ///
    /// # Errors
    /// Writer failures.
    pub fn write<W: Write + Seek>(&self, w: W) -> Result<W, CalibError> {
        let mut md = Metadata::new();
        md.set("general.type", Value::String("calibration".into()));
        md.set(VERSION_KEY, Value::U32(1));
        md.set(
            DATASETS_KEY,
            Value::Array(Array::String(self.datasets.clone().into())),
        );
        let mut specs = Vec::new();
        for i in &self.inputs {
            let n = i.hessian.n() as u64;
            md.set(
                &format!("{TOKENS_PREFIX}{}", i.site),
                Value::U64(i.hessian.tokens()),
            );
            md.set(
                &format!("{CONSUMERS_PREFIX}{}", i.site),
                Value::Array(Array::String(i.consumers.clone().into())),
            );
            specs.push(TensorSpec {
                name: format!("{}{XTX_SUFFIX}", i.site),
                ggml_type: 0,
                dims: vec![n, n],
                n_bytes: n * n * 4,
            });
        }
        let err = |e: gguftool_gguf::GgufError| CalibError::Write(e.to_string());
        let mut writer = GgufWriter::begin(w, &md, specs, &StandardTypes).map_err(err)?;
        for i in &self.inputs {
            let bytes: Vec<u8> = i
                .hessian
                .matrix()
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect();
            writer.write_tensor_data(&bytes).map_err(err)?;
        }
        writer.finish().map_err(err)
    }

    /// Reads and validates a calibration file.
    ///
    /// # Errors
    /// Missing or mistyped keys, tensors that are not square F32 matrices,
    /// non-finite or negative-diagonal entries, asymmetric matrices,
    /// consumers claimed by two sites.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, CalibError> {
        let bad = |m: String| CalibError::Malformed(m);
        let md = &f.header().metadata;
        match md.get(VERSION_KEY) {
            Some(Value::U32(1)) => {}
            Some(v) => return Err(bad(format!("{VERSION_KEY} is {v:?}, expected u32 1"))),
            None => {
                return Err(bad(format!(
                    "missing {VERSION_KEY} (not a calibration file)"
                )))
            }
        }
        let datasets = match md.get(DATASETS_KEY) {
            Some(Value::Array(Array::String(v))) => v.iter().map(str::to_string).collect(),
            None => Vec::new(),
            Some(_) => return Err(bad(format!("{DATASETS_KEY} must be a string array"))),
        };
        let mut inputs = Vec::new();
        let mut owner: HashMap<String, String> = HashMap::new();
        for (idx, t) in f.header().tensors.iter().enumerate() {
            let Some(site) = t.name.strip_suffix(XTX_SUFFIX) else {
                return Err(bad(format!("unexpected tensor {:?}", t.name)));
            };
            let n = t.dims.first().copied().unwrap_or(0);
            if t.ggml_type != 0 || t.dims.len() != 2 || t.dims[1] != n || n == 0 {
                return Err(bad(format!(
                    "tensor {:?} must be a square F32 matrix, is {} {:?}",
                    t.name, t.type_name, t.dims
                )));
            }
            let n = n as usize;
            let tokens = match md.get(&format!("{TOKENS_PREFIX}{site}")) {
                Some(Value::U64(v)) if *v > 0 => *v,
                _ => return Err(bad(format!("missing or zero {TOKENS_PREFIX}{site} (u64)"))),
            };
            let consumers = match md.get(&format!("{CONSUMERS_PREFIX}{site}")) {
                Some(Value::Array(Array::String(v))) if !v.is_empty() => {
                    v.iter().map(str::to_string).collect::<Vec<_>>()
                }
                _ => {
                    return Err(bad(format!(
                        "missing {CONSUMERS_PREFIX}{site} (string array)"
                    )))
                }
            };
            for c in &consumers {
                if let Some(prev) = owner.insert(c.clone(), site.to_string()) {
                    return Err(bad(format!(
                        "tensor {c:?} is claimed by sites {prev:?} and {site:?}"
                    )));
                }
            }
            let h: Vec<f64> = f
                .tensor_data(idx)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect();
            check_matrix(site, &h, n).map_err(bad)?;
            let hessian =
                Hessian::from_matrix(n, h, tokens).map_err(|e| bad(format!("{site}: {e}")))?;
            inputs.push(CalibInput {
                site: site.to_string(),
                consumers,
                hessian,
            });
        }
        Ok(Self { datasets, inputs })
    }
}

fn check_matrix(site: &str, h: &[f64], n: usize) -> Result<(), String> {
    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{site}: entry ({}, {}) is not finite",
            i / n,
            i % n
        ));
    }
    for i in 0..n {
        if h[i * n + i] < 0.0 {
            return Err(format!("{site}: negative diagonal entry {i}"));
        }
        for j in 0..i {
            let (a, b) = (h[i * n + j], h[j * n + i]);
            if (a - b).abs() > 1e-4 * (a.abs() + b.abs()) + 1e-30 {
                return Err(format!("{site}: not symmetric at ({i}, {j})"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A calibration GGUF with one site `blk.0.attn_q.weight` whose tensor
    /// has `dims` and data `h` (f32), and the given consumers.
    fn file(dims: &[u64], h: &[f32], consumers: &[&str], tokens: Option<u64>) -> Vec<u8> {
        let site = "blk.0.attn_q.weight";
        let mut md = Metadata::new();
        md.set(VERSION_KEY, Value::U32(1));
        if let Some(t) = tokens {
            md.set(&format!("{TOKENS_PREFIX}{site}"), Value::U64(t));
        }
        let c: Vec<String> = consumers.iter().map(|s| s.to_string()).collect();
        md.set(
            &format!("{CONSUMERS_PREFIX}{site}"),
            Value::Array(Array::String(c.into())),
        );
        let spec = TensorSpec {
            name: format!("{site}{XTX_SUFFIX}"),
            ggml_type: 0,
            dims: dims.to_vec(),
            n_bytes: h.len() as u64 * 4,
        };
        let mut w =
            GgufWriter::begin(Cursor::new(Vec::new()), &md, vec![spec], &StandardTypes).unwrap();
        let bytes: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_tensor_data(&bytes).unwrap();
        w.finish().unwrap().into_inner()
    }

    fn load(bytes: Vec<u8>) -> Result<Calibration, CalibError> {
        let f = GgufFile::from_bytes("c.gguf", bytes, &StandardTypes).unwrap();
        Calibration::from_gguf(&f)
    }

    fn err(bytes: Vec<u8>) -> String {
        load(bytes).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_site_loads() {
        let c = load(file(
            &[2, 2],
            &[2.0, 1.0, 1.0, 3.0],
            &["blk.0.attn_q.weight"],
            Some(7),
        ))
        .unwrap();
        assert_eq!(c.inputs.len(), 1);
        assert_eq!(c.inputs[0].hessian.tokens(), 7);
        assert_eq!(c.inputs[0].hessian.matrix(), &[2.0, 1.0, 1.0, 3.0]);
        assert!(c.hessian_for("blk.0.attn_q.weight").is_some());
    }

    #[test]
    fn malformed_sites_are_refused_naming_the_tensor() {
        let q = &["blk.0.attn_q.weight"][..];
        let e = err(file(&[2, 3], &[1.0; 6], q, Some(7)));
        assert!(
            e.contains("\"blk.0.attn_q.weight.xtx\" must be a square F32 matrix"),
            "{e}"
        );
        let e = err(file(
            &[2, 2],
            &[1.0, f32::INFINITY, f32::INFINITY, 1.0],
            q,
            Some(7),
        ));
        assert!(
            e.contains("blk.0.attn_q.weight: entry (0, 1) is not finite"),
            "{e}"
        );
        let e = err(file(&[2, 2], &[1.0, 0.5, -0.5, 1.0], q, Some(7)));
        assert!(
            e.contains("blk.0.attn_q.weight: not symmetric at (1, 0)"),
            "{e}"
        );
        let e = err(file(&[2, 2], &[-1.0, 0.0, 0.0, 1.0], q, Some(7)));
        assert!(
            e.contains("blk.0.attn_q.weight: negative diagonal entry 0"),
            "{e}"
        );
        let e = err(file(&[2, 2], &[1.0, 0.0, 0.0, 1.0], q, None));
        assert!(e.contains("tokens.blk.0.attn_q.weight"), "{e}");
        let e = err(file(&[2, 2], &[1.0, 0.0, 0.0, 1.0], q, Some(0)));
        assert!(e.contains("missing or zero"), "{e}");
        let e = err(file(&[2, 2], &[1.0, 0.0, 0.0, 1.0], &[], Some(7)));
        assert!(e.contains("consumers.blk.0.attn_q.weight"), "{e}");
    }

    #[test]
    fn a_tensor_claimed_by_two_sites_is_refused() {
        let mut c = load(file(&[1, 1], &[1.0], &["blk.0.attn_q.weight"], Some(3))).unwrap();
        let mut other = c.inputs[0].clone();
        other.site = "blk.0.attn_k.weight".into();
        c.inputs.push(other);
        let bytes = c.write(Cursor::new(Vec::new())).unwrap().into_inner();
        let e = err(bytes);
        assert!(
            e.contains("tensor \"blk.0.attn_q.weight\" is claimed by sites"),
            "{e}"
        );
    }
}
