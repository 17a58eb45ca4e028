//! Measurement harnesses shared by `gguftool bench` and the criterion
//! benches: kernel throughput per format and SIMD level, and synthetic GGUF
//! files. Kept out of the library crates.
#![warn(missing_docs)]

pub mod kernels;
pub mod synthetic;

pub use synthetic::write_synthetic_gguf;
