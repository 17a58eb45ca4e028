//! The GGUF container: parsing, validation, the zero-copy file handle,
//! writing, and integrity sealing, with the ggml tensor-type table.
//!
//! This crate knows no format registry: ids in the private range reach the
//! validator through a [`validate::TypeResolver`] the caller passes.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod error;
mod file;
pub mod ggml_type;
pub mod integrity;
pub mod read;
pub mod seal;
pub mod template_scan;
pub mod validate;
pub mod value;
pub mod write;

pub use error::{Error, GgufError, GgufResult, Result};
pub use file::*;
