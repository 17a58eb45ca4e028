//! Importance matrices (GGUF or legacy `.dat`) are untrusted input: parsing
//! never panics, every accepted value is finite and non-negative, and
//! fitting an entry to a tensor shape never panics.
#![no_main]

use gguftool_calib::imatrix::Imatrix;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Imatrix::parse(Path::new("fuzz.imatrix"), data.to_vec()) else {
        return;
    };
    for (name, values) in &m.entries {
        assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0), "{name}");
        for (row_len, n_mats) in [(values.len(), 1), (1, values.len()), (32, 2), (0, 0)] {
            if let Ok(Some(v)) = m.for_tensor(name, row_len, n_mats) {
                assert!(v.len() == row_len * n_mats || v.len() == row_len);
            }
        }
    }
});
