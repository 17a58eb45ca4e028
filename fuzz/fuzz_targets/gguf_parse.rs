//! Arbitrary bytes -> parse + validate; on success, touch every tensor's
//! data, hash it, and decode it with its registered format.
#![no_main]

use gguftool_formats as _;
use gguftool_gguf::integrity;
use gguftool_gguf::GgufFile;
use gguftool_quant::registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("fuzz", data.to_vec(), &registry::TYPES) else {
        return;
    };
    let _ = integrity::check(&file);
    for (i, t) in file.header().tensors.iter().enumerate() {
        let bytes = file.tensor_data(i);
        assert_eq!(bytes.len() as u64, t.n_bytes);
        if let Some(f) = registry::by_type_id(t.ggml_type) {
            let mut out = vec![0f32; (t.n_elements as usize).min(1 << 20)];
            if out.len() as u64 == t.n_elements {
                f.dequantize(bytes, &mut out)
                    .expect("validated sizes must decode");
            }
        }
    }
});
