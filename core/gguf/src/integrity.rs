//! Per-tensor SHA-256 integrity manifests stored inside the GGUF file.
//!
//! The manifest lives in metadata keys under `gguftool.integrity.`:
//! a digest of every other metadata pair, a digest of the tensor table
//! (names, types, shapes; not offsets, which move when the header grows), and
//! one SHA-256 per tensor over its exact data bytes (padding excluded), in
//! tensor-info order. A tensor digest is a plain SHA-256, so it can be
//! checked with `sha256sum` on the extracted bytes.

use crate::value::{Array, Metadata, Value};
use crate::write::{encode_kv, encode_string, TensorSpec};
use crate::{GgufFile, TensorInfo};
use rayon::prelude::*;
use sha2::Digest;

pub use sha2::Sha256;

/// Prefix of every manifest key.
pub const PREFIX: &str = "gguftool.integrity.";
/// Manifest version key (u32).
pub const KEY_VERSION: &str = "gguftool.integrity.version";
/// Metadata digest key (hex string).
pub const KEY_METADATA_SHA256: &str = "gguftool.integrity.metadata_sha256";
/// Tensor-table digest key (hex string).
pub const KEY_TENSOR_INFO_SHA256: &str = "gguftool.integrity.tensor_info_sha256";
/// Per-tensor digests key (array of hex strings).
pub const KEY_TENSOR_SHA256: &str = "gguftool.integrity.tensor_sha256";
/// Manifest version written.
pub const MANIFEST_VERSION: u32 = 1;

/// True for keys that belong to the manifest itself.
pub fn is_integrity_key(key: &str) -> bool {
    key.starts_with(PREFIX)
}

/// Lower-case hex of a digest.
pub fn hex(d: &[u8; 32]) -> String {
    use std::fmt::Write;
    d.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 (hex) of a whole byte string, e.g. a source file.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes).into())
}

/// SHA-256 over every metadata pair except the manifest's, encoded as stored.
pub fn metadata_digest(md: &Metadata) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    for (k, v) in md.entries().iter().filter(|(k, _)| !is_integrity_key(k)) {
        buf.clear();
        encode_kv(&mut buf, k, v);
        h.update(&buf);
    }
    h.finalize().into()
}

/// SHA-256 over the tensor table: name, dims and type of each tensor in order.
pub fn tensor_info_digest<'a>(
    tensors: impl Iterator<Item = (&'a str, u32, &'a [u64])>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    for (name, ty, dims) in tensors {
        buf.clear();
        encode_string(&mut buf, name);
        buf.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            buf.extend_from_slice(&d.to_le_bytes());
        }
        buf.extend_from_slice(&ty.to_le_bytes());
        h.update(&buf);
    }
    h.finalize().into()
}

fn infos_of(tensors: &[TensorInfo]) -> impl Iterator<Item = (&str, u32, &[u64])> {
    tensors
        .iter()
        .map(|t| (t.name.as_str(), t.ggml_type, t.dims.as_slice()))
}

/// Manifest entries for a file about to be written, with zeroed tensor
/// digests for the writer to patch. `md` must already be free of manifest keys.
pub fn seal_entries(md: &Metadata, tensors: &[TensorSpec]) -> Vec<(String, Value)> {
    let placeholder = "0".repeat(64);
    vec![
        (KEY_VERSION.into(), Value::U32(MANIFEST_VERSION)),
        (
            KEY_METADATA_SHA256.into(),
            Value::String(hex(&metadata_digest(md))),
        ),
        (
            KEY_TENSOR_INFO_SHA256.into(),
            Value::String(hex(&tensor_info_digest(
                tensors
                    .iter()
                    .map(|t| (t.name.as_str(), t.ggml_type, t.dims.as_slice())),
            ))),
        ),
        (
            KEY_TENSOR_SHA256.into(),
            Value::Array(Array::String(vec![placeholder; tensors.len()])),
        ),
    ]
}

/// SHA-256 of every tensor's data, computed in parallel over the mapping.
pub fn tensor_digests(file: &GgufFile) -> Vec<[u8; 32]> {
    (0..file.header().tensors.len())
        .into_par_iter()
        .map(|i| Sha256::digest(file.tensor_data(i)).into())
        .collect()
}

/// A manifest as read back from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Stored metadata digest (hex).
    pub metadata_sha256: String,
    /// Stored tensor-table digest (hex).
    pub tensor_info_sha256: String,
    /// Stored per-tensor digests (hex), in tensor order.
    pub tensor_sha256: Vec<String>,
}

impl Manifest {
    /// Reads the manifest; `Ok(None)` when the file has none, `Err` naming
    /// the key when one is present but malformed.
    pub fn from_metadata(md: &Metadata) -> Result<Option<Self>, String> {
        if !md.entries().iter().any(|(k, _)| is_integrity_key(k)) {
            return Ok(None);
        }
        match md.get(KEY_VERSION) {
            Some(Value::U32(MANIFEST_VERSION)) => {}
            Some(v) => {
                return Err(format!(
                    "{KEY_VERSION} is {v:?}, expected u32 {MANIFEST_VERSION}"
                ))
            }
            None => return Err(format!("{KEY_VERSION} is missing")),
        }
        let hex_str = |key: &str| -> Result<String, String> {
            match md.get(key) {
                Some(Value::String(s)) if is_hex64(s) => Ok(s.clone()),
                Some(_) => Err(format!("{key} is not a 64-digit hex string")),
                None => Err(format!("{key} is missing")),
            }
        };
        let tensor_sha256 = match md.get(KEY_TENSOR_SHA256) {
            Some(Value::Array(Array::String(v))) if v.iter().all(|s| is_hex64(s)) => v.clone(),
            Some(_) => {
                return Err(format!(
                    "{KEY_TENSOR_SHA256} is not an array of 64-digit hex strings"
                ))
            }
            None => return Err(format!("{KEY_TENSOR_SHA256} is missing")),
        };
        Ok(Some(Self {
            metadata_sha256: hex_str(KEY_METADATA_SHA256)?,
            tensor_info_sha256: hex_str(KEY_TENSOR_INFO_SHA256)?,
            tensor_sha256,
        }))
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Outcome of checking a file against its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Whether a manifest was present.
    pub sealed: bool,
    /// Manifest present but unreadable: why.
    pub manifest_error: Option<String>,
    /// Metadata digest matches (None when unsealed).
    pub metadata_ok: Option<bool>,
    /// Tensor table digest matches (None when unsealed).
    pub tensor_info_ok: Option<bool>,
    /// Names of tensors whose data digest does not match.
    pub changed_tensors: Vec<String>,
    /// Current digests of every tensor, in order: (name, hex).
    pub digests: Vec<(String, String)>,
}

impl IntegrityReport {
    /// True when unsealed, or sealed and everything matches.
    pub fn passed(&self) -> bool {
        self.manifest_error.is_none()
            && self.metadata_ok != Some(false)
            && self.tensor_info_ok != Some(false)
            && self.changed_tensors.is_empty()
    }
}

/// Hashes every tensor and compares with the embedded manifest, if any.
pub fn check(file: &GgufFile) -> IntegrityReport {
    let h = file.header();
    let digests = tensor_digests(file);
    let hexes: Vec<String> = digests.iter().map(hex).collect();
    let mut report = IntegrityReport {
        sealed: false,
        manifest_error: None,
        metadata_ok: None,
        tensor_info_ok: None,
        changed_tensors: Vec::new(),
        digests: h
            .tensors
            .iter()
            .map(|t| t.name.clone())
            .zip(hexes.iter().cloned())
            .collect(),
    };
    let manifest = match Manifest::from_metadata(&h.metadata) {
        Ok(Some(m)) => m,
        Ok(None) => return report,
        Err(e) => {
            report.sealed = true;
            report.manifest_error = Some(e);
            return report;
        }
    };
    report.sealed = true;
    report.metadata_ok = Some(manifest.metadata_sha256 == hex(&metadata_digest(&h.metadata)));
    report.tensor_info_ok =
        Some(manifest.tensor_info_sha256 == hex(&tensor_info_digest(infos_of(&h.tensors))));
    if manifest.tensor_sha256.len() != h.tensors.len() {
        report.manifest_error = Some(format!(
            "manifest lists {} tensor digests but the file has {} tensors",
            manifest.tensor_sha256.len(),
            h.tensors.len()
        ));
        return report;
    }
    report.changed_tensors = h
        .tensors
        .iter()
        .zip(manifest.tensor_sha256.iter().zip(&hexes))
        .filter(|(_, (want, got))| want != got)
        .map(|(t, _)| t.name.clone())
        .collect();
    report
}
