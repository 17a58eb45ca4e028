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
