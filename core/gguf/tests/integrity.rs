//! The integrity manifest names what changed and covers the header fields,
//! the reserved prefix and bytes after the last tensor.

use gguftool_gguf::integrity::{self, Change};
use gguftool_gguf::seal::{rewrite, WriteOptions};
use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::write::{GgufWriter, TensorSpec};
use gguftool_gguf::{GgufFile, Metadata, Value};
use std::io::Cursor;
use std::path::PathBuf;

fn tiny() -> GgufFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama-f32.gguf");
    GgufFile::open(p, &StandardTypes).unwrap()
}

fn sealed_bytes() -> Vec<u8> {
    let opts = WriteOptions {
        seal: true,
        types: &StandardTypes,
    };
    rewrite(&tiny(), Cursor::new(Vec::new()), opts)
        .unwrap()
        .into_inner()
}

fn check(bytes: Vec<u8>) -> integrity::IntegrityReport {
    let f = GgufFile::from_bytes("t.gguf", bytes, &StandardTypes).unwrap();
    integrity::check(&f)
}

#[test]
fn sealed_file_passes_and_sealing_is_deterministic() {
    let a = sealed_bytes();
    assert_eq!(a, sealed_bytes());
    let r = check(a);
    assert!(r.passed(), "{r:?}");
    assert_eq!(r.manifest_version, Some(2));
}

#[test]
fn unknown_key_under_reserved_prefix_is_rejected() {
    let f = GgufFile::from_bytes("s", sealed_bytes(), &StandardTypes).unwrap();
    let mut md = f.header().metadata.clone();
    md.set("gguftool.integrity.note", Value::String("hi".into()));
    let specs: Vec<TensorSpec> = f.header().tensors.iter().map(TensorSpec::from).collect();
    let mut w = GgufWriter::begin(Cursor::new(Vec::new()), &md, specs, &StandardTypes).unwrap();
    for i in 0..f.header().tensors.len() {
        w.write_tensor_data(f.tensor_data(i)).unwrap();
    }
    let r = check(w.finish().unwrap().into_inner());
    assert!(!r.passed());
    let e = r.manifest_error.unwrap();
    assert!(e.contains("gguftool.integrity.note"), "{e}");
}

#[test]
fn changed_version_field_is_named() {
    let mut b = sealed_bytes();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    let r = check(b);
    assert!(
        r.changes.contains(&Change::HeaderField {
            field: "version",
            sealed: 3,
            now: 2
        }),
        "{r:?}"
    );
}

#[test]
fn trailing_bytes_are_detected() {
    let mut b = sealed_bytes();
    let len = b.len() as u64;
    b.extend_from_slice(&[0x41; 4096]);
    let r = check(b);
    assert_eq!(
        r.changes,
        vec![Change::FileSize {
            sealed: len,
            now: len + 4096
        }]
    );
    assert!(r.changes[0].to_string().contains("4096 bytes appended"));
}

fn find(b: &[u8], needle: &[u8]) -> usize {
    b.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn changed_metadata_value_names_the_key() {
    let mut b = sealed_bytes();
    let pos = find(&b, b"gguftool tiny llama fixture");
    b[pos] = b'G';
    let r = check(b);
    assert_eq!(
        r.changes,
        vec![Change::MetadataChanged("general.name".into())]
    );
    assert_eq!(
        r.changes[0].to_string(),
        "metadata key \"general.name\" changed since sealing"
    );
}

#[test]
fn renamed_tensor_and_changed_type_are_named() {
    let b = sealed_bytes();
    let f = GgufFile::from_bytes("s", b.clone(), &StandardTypes).unwrap();
    let t = f.header().tensors[1].clone();
    let name_at = t.info_offset as usize + 8;
    let mut renamed = b.clone();
    renamed[name_at] ^= 0x20;
    let r = check(renamed);
    assert_eq!(r.changes.len(), 1, "{r:?}");
    assert!(matches!(
        &r.changes[0],
        Change::TensorRenamed { index: 1, .. }
    ));
    // F32 (0) -> I32 (26): same byte size, so the file still parses.
    let type_at = name_at + t.name.len() + 4 + 8 * t.dims.len();
    let mut retyped = b;
    assert_eq!(retyped[type_at..type_at + 4], 0u32.to_le_bytes());
    retyped[type_at..type_at + 4].copy_from_slice(&26u32.to_le_bytes());
    let r = check(retyped);
    assert_eq!(
        r.changes,
        vec![Change::TensorType {
            tensor: t.name.clone(),
            sealed: 0,
            now: 26
        }]
    );
    assert!(r.changes[0]
        .to_string()
        .starts_with(&format!("tensor {:?}: type changed", t.name)));
}

#[test]
fn edited_manifest_digest_is_not_reported_as_changed_data() {
    let b = sealed_bytes();
    let f = GgufFile::from_bytes("s", b.clone(), &StandardTypes).unwrap();
    let name = f.header().tensors[2].name.clone();
    let digest = integrity::sha256_hex(f.tensor_data(2));
    let mut edited = b;
    let pos = find(&edited, digest.as_bytes());
    edited[pos] = if edited[pos] == b'0' { b'1' } else { b'0' };
    let r = check(edited);
    assert_eq!(r.changes, vec![Change::ManifestTensorEntry(name)]);
    // Changed data with an intact manifest is reported as changed data.
    let mut data = sealed_bytes();
    let off = (f.header().data_offset + f.header().tensors[2].offset) as usize;
    data[off] ^= 1;
    let r = check(data);
    assert_eq!(
        r.changes,
        vec![Change::TensorData(f.header().tensors[2].name.clone())]
    );
}

/// A file sealed with manifest version 1 (built here as the old writer did)
/// still verifies, and is reported as version 1.
#[test]
fn version_1_manifest_still_verifies() {
    let f = tiny();
    let mut md: Metadata = f.header().metadata.clone();
    let digests = integrity::tensor_digests(&f);
    md.set(integrity::KEY_VERSION, Value::U32(1));
    md.set(
        integrity::KEY_METADATA_SHA256,
        Value::String(integrity::hex(&integrity::metadata_digest(&md))),
    );
    md.set(
        integrity::KEY_TENSOR_INFO_SHA256,
        Value::String(integrity::hex(&integrity::tensor_info_digest(
            f.header()
                .tensors
                .iter()
                .map(|t| (t.name.as_str(), t.ggml_type, t.dims.as_slice())),
        ))),
    );
    md.set(
        integrity::KEY_TENSOR_SHA256,
        Value::Array(gguftool_gguf::Array::String(
            digests.iter().map(|d| integrity::hex(d)).collect(),
        )),
    );
    let specs: Vec<TensorSpec> = f.header().tensors.iter().map(TensorSpec::from).collect();
    let mut w = GgufWriter::begin(Cursor::new(Vec::new()), &md, specs, &StandardTypes).unwrap();
    for i in 0..f.header().tensors.len() {
        w.write_tensor_data(f.tensor_data(i)).unwrap();
    }
    let bytes = w.finish().unwrap().into_inner();
    let r = check(bytes.clone());
    assert!(r.passed(), "{r:?}");
    assert_eq!(r.manifest_version, Some(1));
    let mut b = bytes;
    let pos = find(&b, b"gguftool tiny llama fixture");
    b[pos] = b'G';
    assert_eq!(check(b).changes, vec![Change::MetadataDigest]);
}
