//! gguftool core: GGUF reading, validation and writing, the ggml type table,
//! per-tensor integrity, the format registry and the conversion pipeline.
//! The core names no concrete format; plugins register themselves.
#![warn(missing_docs)]

pub mod activation;
pub mod bench;
pub mod convert;
pub mod error;
pub mod format;
pub mod ggml_type;
pub mod gguf;
pub mod hadamard;
pub mod imatrix;
pub mod integrity;
pub mod output;
pub mod policy;
pub mod qat;
pub mod quality;
pub mod registry;
pub mod rows;
pub mod simd;
pub mod template_scan;

pub use error::{Error, GgufError, Result};
#[doc(hidden)]
pub use linkme;
