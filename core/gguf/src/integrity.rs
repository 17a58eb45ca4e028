//! Per-tensor SHA-256 integrity manifests stored inside the GGUF file:
//! what the manifest holds, and checking a file against it. Writing one is
//! `crate::seal`'s job.
//!
//! Manifest version 2 lives in metadata keys under `gguftool.integrity.`:
//!
//! - `version` (u32, 2);
//! - `gguf_version` (u32), `tensor_count` and `metadata_count` (u64): the
//!   header fields as written;
//! - `file_size` (u64): the exact length of the file, so bytes appended after
//!   the last tensor are detected;
//! - `metadata` (array of strings): one entry per other metadata pair, in
//!   file order, `<16 hex: SHA-256 of the key, first 8 bytes><64 hex:
//!   SHA-256 of the pair as encoded>`, so a changed value names its key;
//! - `tensor_info` (array of strings): one entry per tensor, `<16 hex: name
//!   hash><8 hex: ggml type id><64 hex: SHA-256 of the dims>`, so a rename,
//!   a type change and a shape change are told apart;
//! - `tensor_sha256` (array of strings): one plain SHA-256 per tensor over its
//!   exact data bytes (padding excluded), checkable with `sha256sum`;
//! - `manifest_sha256` (string): SHA-256 over every other manifest pair as
//!   encoded, so an edited manifest entry is told from changed data.
//!
//! Version 1 (metadata and tensor-table digests as single strings) is still
//! verified, and reported as an older manifest.

use crate::value::{Array, Metadata, StrArray, Value};
use crate::write::{encode_kv, encode_string};
use crate::{GgufFile, TensorInfo, TensorSource};
use rayon::prelude::*;
use sha2::Digest;

pub use sha2::Sha256;

/// Prefix of every manifest key.
pub const PREFIX: &str = "gguftool.integrity.";
/// Manifest version key (u32).
pub const KEY_VERSION: &str = "gguftool.integrity.version";
/// GGUF version field as written (u32, v2).
pub const KEY_GGUF_VERSION: &str = "gguftool.integrity.gguf_version";
/// Tensor count field as written (u64, v2).
pub const KEY_TENSOR_COUNT: &str = "gguftool.integrity.tensor_count";
/// Metadata count field as written (u64, v2).
pub const KEY_METADATA_COUNT: &str = "gguftool.integrity.metadata_count";
/// Exact file length (u64, v2).
pub const KEY_FILE_SIZE: &str = "gguftool.integrity.file_size";
/// Per-key metadata digests (array of strings, v2).
pub const KEY_METADATA: &str = "gguftool.integrity.metadata";
/// Per-tensor info digests (array of strings, v2).
pub const KEY_TENSOR_INFO: &str = "gguftool.integrity.tensor_info";
/// Per-tensor data digests (array of hex strings, v1 and v2).
pub const KEY_TENSOR_SHA256: &str = "gguftool.integrity.tensor_sha256";
/// Digest of the other manifest pairs (hex string, v2).
pub const KEY_MANIFEST_SHA256: &str = "gguftool.integrity.manifest_sha256";
/// Metadata digest key (hex string, v1 only).
pub const KEY_METADATA_SHA256: &str = "gguftool.integrity.metadata_sha256";
/// Tensor-table digest key (hex string, v1 only).
pub const KEY_TENSOR_INFO_SHA256: &str = "gguftool.integrity.tensor_info_sha256";
/// Manifest version written.
pub const MANIFEST_VERSION: u32 = 2;

/// Every key of a version-2 manifest, in the order they are written.
pub const V2_KEYS: [&str; 9] = [
    KEY_VERSION,
    KEY_GGUF_VERSION,
    KEY_TENSOR_COUNT,
    KEY_METADATA_COUNT,
    KEY_FILE_SIZE,
    KEY_METADATA,
    KEY_TENSOR_INFO,
    KEY_TENSOR_SHA256,
    KEY_MANIFEST_SHA256,
];
/// Every key of a version-1 manifest.
pub const V1_KEYS: [&str; 4] = [
    KEY_VERSION,
    KEY_METADATA_SHA256,
    KEY_TENSOR_INFO_SHA256,
    KEY_TENSOR_SHA256,
];

/// Length of one `metadata` entry (16 + 64 hex digits).
pub const METADATA_ENTRY_LEN: usize = 80;
/// Length of one `tensor_info` entry (16 + 8 + 64 hex digits).
pub const TENSOR_INFO_ENTRY_LEN: usize = 88;

/// True for keys that belong to the manifest itself.
pub fn is_integrity_key(key: &str) -> bool {
    key.starts_with(PREFIX)
}

/// Lower-case hex of bytes.
pub fn hex(d: &[u8]) -> String {
    use std::fmt::Write;
    d.iter()
        .fold(String::with_capacity(d.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// SHA-256 (hex) of a whole byte string, e.g. a source file.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 over every metadata pair except the manifest's, encoded as stored
/// (manifest version 1's metadata digest).
pub fn metadata_digest(md: &Metadata) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    for (k, v) in md.entries().filter(|(k, _)| !is_integrity_key(k)) {
        buf.clear();
        encode_kv(&mut buf, k, v);
        h.update(&buf);
    }
    h.finalize().into()
}

/// The version-2 manifest entry of one metadata pair.
pub fn metadata_entry(key: &str, value: &Value) -> String {
    let mut buf = Vec::new();
    encode_kv(&mut buf, key, value);
    let mut s = hex(&Sha256::digest(key.as_bytes())[..8]);
    s.push_str(&hex(&Sha256::digest(&buf)));
    s
}

/// The version-2 `metadata` list: one entry per non-manifest pair.
pub fn metadata_entries(md: &Metadata) -> StrArray {
    md.entries()
        .filter(|(k, _)| !is_integrity_key(k))
        .map(|(k, v)| metadata_entry(k, v))
        .collect()
}

/// The version-2 manifest entry of one tensor info.
pub fn tensor_info_entry(name: &str, ggml_type: u32, dims: &[u64]) -> String {
    let mut s = hex(&Sha256::digest(name.as_bytes())[..8]);
    s.push_str(&format!("{ggml_type:08x}"));
    let mut buf = Vec::new();
    buf.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        buf.extend_from_slice(&d.to_le_bytes());
    }
    s.push_str(&hex(&Sha256::digest(&buf)));
    s
}

/// SHA-256 over the tensor table: name, dims and type of each tensor in
/// order (manifest version 1's tensor-table digest).
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

/// SHA-256 over the manifest pairs other than `manifest_sha256`, in order.
pub fn manifest_digest(md: &Metadata) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    for (k, v) in md
        .entries()
        .filter(|(k, _)| is_integrity_key(k) && *k != KEY_MANIFEST_SHA256)
    {
        buf.clear();
        encode_kv(&mut buf, k, v);
        h.update(&buf);
    }
    h.finalize().into()
}

fn infos_of(tensors: &[TensorInfo]) -> impl Iterator<Item = (&str, u32, &[u64])> {
    tensors
        .iter()
        .map(|t| (t.name.as_str(), t.ggml_type, t.dims.as_slice()))
}

/// SHA-256 of every tensor's data, computed in parallel over the mapping.
pub fn tensor_digests(file: &GgufFile) -> Vec<[u8; 32]> {
    (0..file.header().tensors.len())
        .into_par_iter()
        .map(|i| Sha256::digest(file.tensor_data(i)).into())
        .collect()
}

/// SHA-256 of every tensor's data from any [`TensorSource`], tensors in
/// parallel, each read chunk by chunk; `progress` is called with the byte
/// count of each chunk once it is hashed (from any thread).
///
/// # Errors
/// The first mapping or read that failed, naming the tensor.
pub fn tensor_digests_from<S: TensorSource + ?Sized>(
    src: &S,
    progress: &(dyn Fn(u64) + Sync),
) -> crate::Result<Vec<[u8; 32]>> {
    (0..src.header().tensors.len())
        .into_par_iter()
        .map(|i| {
            let mut h = Sha256::new();
            src.visit_tensor(i, &mut |chunk| {
                h.update(chunk);
                progress(chunk.len() as u64);
            })?;
            Ok(h.finalize().into())
        })
        .collect()
}

/// A manifest as read back from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Manifest version (1 or 2).
    pub version: u32,
    /// v1: stored metadata digest (hex).
    pub metadata_sha256: Option<String>,
    /// v1: stored tensor-table digest (hex).
    pub tensor_info_sha256: Option<String>,
    /// Stored per-tensor digests (hex), in tensor order.
    pub tensor_sha256: Vec<String>,
    /// v2: header fields (GGUF version, tensor count, metadata count).
    pub header: Option<(u32, u64, u64)>,
    /// v2: exact file length.
    pub file_size: Option<u64>,
    /// v2: per-key metadata entries.
    pub metadata: Vec<String>,
    /// v2: per-tensor info entries.
    pub tensor_info: Vec<String>,
    /// v2: stored digest of the manifest itself (hex).
    pub manifest_sha256: Option<String>,
}

impl Manifest {
    /// Reads the manifest; `Ok(None)` when the file has none, `Err` naming
    /// the key when one is present but malformed or unknown.
    pub fn from_metadata(md: &Metadata) -> Result<Option<Self>, String> {
        if !md.entries().any(|(k, _)| is_integrity_key(k)) {
            return Ok(None);
        }
        let version = match md.get(KEY_VERSION) {
            Some(Value::U32(v @ (1 | 2))) => *v,
            Some(v) => {
                return Err(format!(
                    "{KEY_VERSION} is {v:?}, expected u32 1 or {MANIFEST_VERSION}"
                ))
            }
            None => return Err(format!("{KEY_VERSION} is missing")),
        };
        let known: &[&str] = if version == 1 { &V1_KEYS } else { &V2_KEYS };
        if let Some((k, _)) = md
            .entries()
            .find(|(k, _)| is_integrity_key(k) && !known.contains(k))
        {
            return Err(format!(
                "unknown key {k:?} under the reserved prefix {PREFIX:?} (not part of a version {version} manifest; added after sealing?)"
            ));
        }
        let hex_str = |key: &str| -> Result<String, String> {
            match md.get(key) {
                Some(Value::String(s)) if is_hex(s, 64) => Ok(s.clone()),
                Some(_) => Err(format!("{key} is not a 64-digit hex string")),
                None => Err(format!("{key} is missing")),
            }
        };
        let hex_list = |key: &str, len: usize| -> Result<Vec<String>, String> {
            match md.get(key) {
                Some(Value::Array(Array::String(v))) if v.iter().all(|s| is_hex(s, len)) => {
                    Ok(v.to_vec())
                }
                Some(_) => Err(format!("{key} is not an array of {len}-digit hex strings")),
                None => Err(format!("{key} is missing")),
            }
        };
        let u64_of = |key: &str| -> Result<u64, String> {
            match md.get(key) {
                Some(Value::U64(v)) => Ok(*v),
                Some(_) => Err(format!("{key} is not a u64")),
                None => Err(format!("{key} is missing")),
            }
        };
        if version == 1 {
            return Ok(Some(Self {
                version,
                metadata_sha256: Some(hex_str(KEY_METADATA_SHA256)?),
                tensor_info_sha256: Some(hex_str(KEY_TENSOR_INFO_SHA256)?),
                tensor_sha256: hex_list(KEY_TENSOR_SHA256, 64)?,
                header: None,
                file_size: None,
                metadata: Vec::new(),
                tensor_info: Vec::new(),
                manifest_sha256: None,
            }));
        }
        let gguf_version = match md.get(KEY_GGUF_VERSION) {
            Some(Value::U32(v)) => *v,
            Some(_) => return Err(format!("{KEY_GGUF_VERSION} is not a u32")),
            None => return Err(format!("{KEY_GGUF_VERSION} is missing")),
        };
        Ok(Some(Self {
            version,
            metadata_sha256: None,
            tensor_info_sha256: None,
            tensor_sha256: hex_list(KEY_TENSOR_SHA256, 64)?,
            header: Some((
                gguf_version,
                u64_of(KEY_TENSOR_COUNT)?,
                u64_of(KEY_METADATA_COUNT)?,
            )),
            file_size: Some(u64_of(KEY_FILE_SIZE)?),
            metadata: hex_list(KEY_METADATA, METADATA_ENTRY_LEN)?,
            tensor_info: hex_list(KEY_TENSOR_INFO, TENSOR_INFO_ENTRY_LEN)?,
            manifest_sha256: Some(hex_str(KEY_MANIFEST_SHA256)?),
        }))
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One difference between a sealed file and its manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Change {
    /// A header field differs from the value recorded at sealing.
    #[error("header field {field} changed since sealing: sealed {sealed}, now {now}")]
    HeaderField {
        /// `version`, `tensor count` or `metadata count`.
        field: &'static str,
        /// Value at sealing.
        sealed: u64,
        /// Value now.
        now: u64,
    },
    /// The file's length differs from the sealed length.
    #[error("file is {now} bytes but was {sealed} bytes when sealed ({} bytes {} after the last tensor)", now.abs_diff(*sealed), if now > sealed { "appended" } else { "missing" })]
    FileSize {
        /// Length at sealing.
        sealed: u64,
        /// Length now.
        now: u64,
    },
    /// A metadata value changed.
    #[error("metadata key {0:?} changed since sealing")]
    MetadataChanged(String),
    /// A metadata key that was not there at sealing.
    #[error("metadata key {0:?} added after sealing (or renamed)")]
    MetadataAdded(String),
    /// Sealed metadata keys are gone.
    #[error("{0} sealed metadata key(s) removed (or renamed) after sealing")]
    MetadataRemoved(usize),
    /// The same keys and values, in another order.
    #[error("metadata keys reordered since sealing")]
    MetadataReordered,
    /// v1 manifests only say that something in the metadata changed.
    #[error("metadata changed since sealing (metadata digest mismatch)")]
    MetadataDigest,
    /// v1 manifests only say that something in the tensor table changed.
    #[error("tensor table (names, types or shapes) changed since sealing")]
    TensorTableDigest,
    /// A tensor's name differs from the sealed one at its position.
    #[error("tensor {index} {name:?}: renamed since sealing")]
    TensorRenamed {
        /// Position in the tensor table.
        index: usize,
        /// Name now.
        name: String,
    },
    /// A tensor's type changed.
    #[error("tensor {tensor:?}: type changed since sealing (sealed type id {sealed}, now {now})")]
    TensorType {
        /// Tensor name.
        tensor: String,
        /// Type id at sealing.
        sealed: u32,
        /// Type id now.
        now: u32,
    },
    /// A tensor's shape changed.
    #[error("tensor {0:?}: shape changed since sealing")]
    TensorShape(String),
    /// A tensor's data changed.
    #[error("tensor {0:?}: data changed since sealing (sha256 mismatch)")]
    TensorData(String),
    /// The manifest's own digest does not match and this tensor's stored
    /// digest disagrees with its data: the manifest entry was edited.
    #[error("manifest entry for tensor {0:?} was edited (the manifest's own digest no longer matches; the tensor's data may be intact)")]
    ManifestTensorEntry(String),
    /// The manifest's own digest does not match.
    #[error("integrity manifest was edited after sealing (manifest digest mismatch)")]
    ManifestEdited,
}

/// Outcome of checking a file against its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Whether a manifest was present.
    pub sealed: bool,
    /// The manifest's version, when readable.
    pub manifest_version: Option<u32>,
    /// Manifest present but unreadable (or with unknown keys): why.
    pub manifest_error: Option<String>,
    /// Metadata matches (None when unsealed).
    pub metadata_ok: Option<bool>,
    /// Tensor table matches (None when unsealed).
    pub tensor_info_ok: Option<bool>,
    /// Names of tensors whose data digest does not match.
    pub changed_tensors: Vec<String>,
    /// Every difference found, naming key, tensor or field.
    pub changes: Vec<Change>,
    /// Current digests of every tensor, in order: (name, hex).
    pub digests: Vec<(String, String)>,
}

impl IntegrityReport {
    /// True when unsealed, or sealed and everything matches.
    pub fn passed(&self) -> bool {
        self.manifest_error.is_none() && self.changes.is_empty()
    }
}

/// Hashes every tensor and compares with the embedded manifest, if any.
pub fn check(file: &GgufFile) -> IntegrityReport {
    check_with_digests(file, tensor_digests(file))
}

/// [`check`] on any [`TensorSource`], e.g. a
/// [`HeaderOnlyFile`](crate::HeaderOnlyFile) too large to map whole.
///
/// # Errors
/// A failed mapping or read of tensor data, naming the tensor.
pub fn check_source<S: TensorSource + ?Sized>(src: &S) -> crate::Result<IntegrityReport> {
    Ok(check_with_digests(src, tensor_digests_from(src, &|_| {})?))
}

/// [`check`] with tensor digests computed by the caller (in tensor order),
/// e.g. with progress reporting ([`tensor_digests_from`]) or streaming reads.
pub fn check_with_digests<S: TensorSource + ?Sized>(
    file: &S,
    digests: Vec<[u8; 32]>,
) -> IntegrityReport {
    let h = file.header();
    let hexes: Vec<String> = digests.iter().map(|d| hex(d)).collect();
    let mut report = IntegrityReport {
        sealed: false,
        manifest_version: None,
        manifest_error: None,
        metadata_ok: None,
        tensor_info_ok: None,
        changed_tensors: Vec::new(),
        changes: Vec::new(),
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
    report.manifest_version = Some(manifest.version);
    if manifest.tensor_sha256.len() != h.tensors.len() {
        report.manifest_error = Some(format!(
            "manifest lists {} tensor digests but the file has {} tensors",
            manifest.tensor_sha256.len(),
            h.tensors.len()
        ));
        return report;
    }
    let mut changes = Vec::new();
    let manifest_ok = match &manifest.manifest_sha256 {
        Some(want) => *want == hex(&manifest_digest(&h.metadata)),
        None => true,
    };
    if manifest.version == 1 {
        let md_ok = manifest.metadata_sha256.as_deref()
            == Some(hex(&metadata_digest(&h.metadata)).as_str());
        let ti_ok = manifest.tensor_info_sha256.as_deref()
            == Some(hex(&tensor_info_digest(infos_of(&h.tensors))).as_str());
        if !md_ok {
            changes.push(Change::MetadataDigest);
        }
        if !ti_ok {
            changes.push(Change::TensorTableDigest);
        }
        report.metadata_ok = Some(md_ok);
        report.tensor_info_ok = Some(ti_ok);
    } else {
        if let Some((v, nt, nk)) = manifest.header {
            for (field, sealed, now) in [
                ("version", v as u64, h.version as u64),
                ("tensor count", nt, h.tensors.len() as u64),
                ("metadata count", nk, h.metadata.len() as u64),
            ] {
                if sealed != now {
                    changes.push(Change::HeaderField { field, sealed, now });
                }
            }
        }
        if let Some(sealed) = manifest.file_size {
            let now = file.file_len();
            if sealed != now {
                changes.push(Change::FileSize { sealed, now });
            }
        }
        let before = changes.len();
        compare_metadata(&manifest.metadata, &h.metadata, &mut changes);
        report.metadata_ok = Some(changes.len() == before);
        let before = changes.len();
        if manifest.tensor_info.len() != h.tensors.len() {
            report.manifest_error = Some(format!(
                "manifest lists {} tensor infos but the file has {} tensors",
                manifest.tensor_info.len(),
                h.tensors.len()
            ));
            return report;
        }
        for (i, (t, want)) in h.tensors.iter().zip(&manifest.tensor_info).enumerate() {
            let got = tensor_info_entry(&t.name, t.ggml_type, &t.dims);
            if got[..16] != want[..16] {
                changes.push(Change::TensorRenamed {
                    index: i,
                    name: t.name.clone(),
                });
            }
            if got[16..24] != want[16..24] {
                changes.push(Change::TensorType {
                    tensor: t.name.clone(),
                    sealed: u32::from_str_radix(&want[16..24], 16).unwrap_or(u32::MAX),
                    now: t.ggml_type,
                });
            }
            if got[24..] != want[24..] {
                changes.push(Change::TensorShape(t.name.clone()));
            }
        }
        report.tensor_info_ok = Some(changes.len() == before);
    }
    report.changed_tensors = h
        .tensors
        .iter()
        .zip(manifest.tensor_sha256.iter().zip(&hexes))
        .filter(|(_, (want, got))| want != got)
        .map(|(t, _)| t.name.clone())
        .collect();
    for t in &report.changed_tensors {
        changes.push(if manifest_ok {
            Change::TensorData(t.clone())
        } else {
            Change::ManifestTensorEntry(t.clone())
        });
    }
    if !manifest_ok && report.changed_tensors.is_empty() {
        changes.push(Change::ManifestEdited);
    }
    report.changes = changes;
    report
}

/// Names every metadata key whose pair differs from the sealed list.
fn compare_metadata(sealed: &[String], md: &Metadata, changes: &mut Vec<Change>) {
    let current: Vec<(&str, String)> = md
        .entries()
        .filter(|(k, _)| !is_integrity_key(k))
        .map(|(k, v)| (k, metadata_entry(k, v)))
        .collect();
    if current.len() == sealed.len() && current.iter().zip(sealed).all(|((_, c), s)| c == s) {
        return;
    }
    let by_key: std::collections::HashMap<&str, &str> =
        sealed.iter().map(|s| (&s[..16], &s[16..])).collect();
    let mut matched = 0usize;
    let mut named = false;
    for (k, entry) in &current {
        match by_key.get(&entry[..16]) {
            None => {
                changes.push(Change::MetadataAdded(k.to_string()));
                named = true;
            }
            Some(want) => {
                matched += 1;
                if *want != &entry[16..] {
                    changes.push(Change::MetadataChanged(k.to_string()));
                    named = true;
                }
            }
        }
    }
    if matched < by_key.len() {
        changes.push(Change::MetadataRemoved(by_key.len() - matched));
        named = true;
    }
    if !named {
        changes.push(Change::MetadataReordered);
    }
}
