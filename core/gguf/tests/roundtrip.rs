//! Parse -> write reproduces files byte for byte, and written files read
//! back with identical metadata and tensors (property test).

use gguftool_gguf::seal::{OutputWriter, WriteOptions};
use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::value::{Array, Metadata, Value};
use gguftool_gguf::write::TensorSpec;
use gguftool_gguf::{parse_header, GgufFile};
use proptest::prelude::*;
use std::io::Cursor;
use std::path::PathBuf;

fn rewrite(f: &GgufFile, opts: WriteOptions) -> Vec<u8> {
    gguftool_gguf::seal::rewrite(f, Cursor::new(Vec::new()), opts)
        .unwrap()
        .into_inner()
}

#[test]
fn gguf_py_files_round_trip_byte_identical() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let mut files = vec![
        dir.join("tiny-llama-f32.gguf"),
        dir.join("valid-minimal.gguf"),
    ];
    for e in std::fs::read_dir(dir.join("types")).unwrap() {
        files.push(e.unwrap().path());
    }
    for p in files {
        let bytes = std::fs::read(&p).unwrap();
        let f = GgufFile::from_bytes(&p, bytes.clone(), &StandardTypes).unwrap();
        let out = rewrite(&f, WriteOptions::default());
        assert!(
            out == bytes,
            "{}: rewrite differs ({} vs {} bytes)",
            p.display(),
            out.len(),
            bytes.len()
        );
    }
}

/// Fuzzer finds (valid files, possibly with trailing bytes): parse -> write
/// -> parse keeps every metadata value, tensor info and tensor byte.
#[test]
fn regression_files_round_trip_semantically() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/regressions");
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let f = GgufFile::from_bytes(&p, std::fs::read(&p).unwrap(), &StandardTypes).unwrap();
        let again = GgufFile::from_bytes(
            "rewritten",
            rewrite(&f, WriteOptions::default()),
            &StandardTypes,
        )
        .unwrap();
        assert_eq!(
            again.header().metadata,
            f.header().metadata,
            "{}",
            p.display()
        );
        assert_eq!(again.header().tensors.len(), f.header().tensors.len());
        for i in 0..f.header().tensors.len() {
            assert_eq!(again.tensor_data(i), f.tensor_data(i));
        }
    }
}

fn arb_array(depth: u32) -> BoxedStrategy<Array> {
    let leaf = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Array::U8),
        prop::collection::vec(any::<i16>(), 0..8).prop_map(Array::I16),
        prop::collection::vec(any::<u32>(), 0..8).prop_map(Array::U32),
        prop::collection::vec(any::<f32>(), 0..8).prop_map(Array::F32),
        prop::collection::vec(any::<bool>(), 0..8).prop_map(Array::Bool),
        prop::collection::vec(".{0,6}", 0..5).prop_map(|v| Array::String(v.into())),
        prop::collection::vec(any::<i64>(), 0..8).prop_map(Array::I64),
        prop::collection::vec(any::<f64>(), 0..8).prop_map(Array::F64),
    ];
    if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![
            leaf,
            prop::collection::vec(arb_array(depth - 1), 0..3).prop_map(Array::Array)
        ]
        .boxed()
    }
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<f32>().prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        ".{0,12}".prop_map(Value::String),
        arb_array(2).prop_map(Value::Array),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        any::<f64>().prop_map(Value::F64),
    ]
}

proptest! {
    #[test]
    fn written_files_read_back_equal(
        values in prop::collection::vec(arb_value(), 0..6),
        shapes in prop::collection::vec((1u64..4, 0u64..3), 0..4),
        seal in any::<bool>(),
    ) {
        let md = Metadata::from_entries(values.into_iter().enumerate().map(|(i, v)| (format!("k.{i}"), v)).collect());
        let specs: Vec<TensorSpec> = shapes.iter().enumerate().map(|(i, &(a, b))| TensorSpec {
            name: format!("t{i}"), ggml_type: 8, dims: vec![32 * a, b], n_bytes: 34 * a * b,
        }).collect();
        let data: Vec<Vec<u8>> = specs.iter().enumerate().map(|(i, s)| vec![i as u8 + 1; s.n_bytes as usize]).collect();
        let mut w = OutputWriter::begin(Cursor::new(Vec::new()), &md, specs.clone(), WriteOptions { seal, types: &StandardTypes }).unwrap();
        for d in &data { w.write_tensor_data(d).unwrap(); }
        let bytes = w.finish().unwrap().into_inner();
        let h = parse_header(&bytes, &StandardTypes).unwrap();
        let mut got = h.metadata.clone();
        got.remove_where(gguftool_gguf::integrity::is_integrity_key);
        prop_assert_eq!(got, md);
        prop_assert!(h.is_canonical_layout());
        let f = GgufFile::from_bytes("mem", bytes, &StandardTypes).unwrap();
        for (i, s) in specs.iter().enumerate() {
            prop_assert_eq!(&f.header().tensors[i].dims, &s.dims);
            prop_assert_eq!(f.tensor_data(i), &data[i][..]);
        }
        prop_assert!(gguftool_gguf::integrity::check(&f).passed());
        prop_assert_eq!(gguftool_gguf::integrity::check(&f).sealed, seal);
    }
}
