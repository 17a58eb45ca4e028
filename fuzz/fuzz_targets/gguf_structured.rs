//! Structure-aware: an `arbitrary` model (metadata of every value type,
//! tensor infos of any type id and shape, data) is written by our writer,
//! then mutated byte-wise, so parsing reaches the tensor-info and data
//! stages instead of failing at the magic.
#![no_main]

use arbitrary::Arbitrary;
use gguftool_gguf::integrity;
use gguftool_gguf::value::{Array, Metadata, Value};
use gguftool_gguf::seal::{OutputWriter, WriteOptions};
use gguftool_gguf::write::TensorSpec;
use gguftool_gguf::GgufFile;
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

#[derive(Arbitrary, Debug)]
enum V {
    U8(u8),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    F64(f64),
    ArrU32(Vec<u32>),
    ArrStr(Vec<String>),
    Nested(Vec<Vec<i16>>),
}

#[derive(Arbitrary, Debug)]
struct T {
    name: String,
    ty: u8,
    dims: Vec<u16>,
}

#[derive(Arbitrary, Debug)]
struct Model {
    kvs: Vec<(String, V)>,
    alignment: Option<u8>,
    tensors: Vec<T>,
    seal: bool,
    mutations: Vec<(u16, u8)>,
}

fn value(v: V) -> Value {
    match v {
        V::U8(x) => Value::U8(x),
        V::I32(x) => Value::I32(x),
        V::F32(x) => Value::F32(x),
        V::Bool(x) => Value::Bool(x),
        V::Str(x) => Value::String(x),
        V::U64(x) => Value::U64(x),
        V::F64(x) => Value::F64(x),
        V::ArrU32(x) => Value::Array(Array::U32(x)),
        V::ArrStr(x) => Value::Array(Array::String(x.into())),
        V::Nested(x) => Value::Array(Array::Array(x.into_iter().map(Array::I16).collect())),
    }
}

fuzz_target!(|m: Model| {
    let mut md = Metadata::new();
    for (k, v) in m.kvs.into_iter().take(16) {
        md.set(&k, value(v));
    }
    if let Some(a) = m.alignment {
        md.set("general.alignment", Value::U32(1 << (a % 12)));
    }
    let specs: Vec<TensorSpec> = m
        .tensors
        .into_iter()
        .take(8)
        .filter_map(|t| {
            let ty = gguftool_gguf::validate::tensor_type(
                &t.name,
                (t.ty % 44) as u32,
                0,
                &gguftool_quant::registry::TYPES,
            )
            .ok()?;
            let mut dims: Vec<u64> = t.dims.iter().take(4).map(|&d| (d % 64) as u64).collect();
            if let Some(d0) = dims.first_mut() {
                *d0 *= ty.block_size;
            }
            let n: u64 = dims.iter().product();
            // Keep the harness's own buffers small.
            if n / ty.block_size * ty.type_size > 1 << 20 {
                return None;
            }
            Some(TensorSpec {
                name: t.name,
                ggml_type: (t.ty % 44) as u32,
                dims,
                n_bytes: n / ty.block_size * ty.type_size,
            })
        })
        .collect();
    let Ok(mut w) = OutputWriter::begin(
        Cursor::new(Vec::new()),
        &md,
        specs.clone(),
        WriteOptions {
            seal: m.seal,
            types: &gguftool_quant::registry::TYPES,
        },
    ) else {
        return;
    };
    for s in &specs {
        if w.write_tensor_data(&vec![0x5a; s.n_bytes as usize])
            .is_err()
        {
            return;
        }
    }
    let Ok(out) = w.finish() else { return };
    let mut bytes = out.into_inner();
    let clean = bytes.clone();
    for (pos, x) in m.mutations.into_iter().take(8) {
        if !bytes.is_empty() {
            let i = pos as usize % bytes.len();
            bytes[i] ^= x;
        }
    }
    let mutated = bytes != clean;
    match GgufFile::from_bytes("fuzz", bytes, &gguftool_quant::registry::TYPES) {
        Ok(f) => {
            let r = integrity::check(&f);
            if m.seal && !mutated {
                assert!(r.passed(), "a freshly sealed file must verify");
            }
        }
        Err(_) => assert!(mutated, "our writer produced a file our reader rejects"),
    }
});
