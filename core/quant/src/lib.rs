//! The tensor-type interface of gguftool: the traits a format plugin
//! implements, the registry plugins add themselves to, activation blocks,
//! SIMD levels, row transforms and the shared rounding grid.
//! It names no concrete format; plugins register themselves.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod activation;
pub mod error;
pub mod format;
pub mod hadamard;
pub mod kernels;
pub mod recipe;
pub mod registry;
pub mod rng;
pub mod rows;
pub mod simd;
pub mod ste;

pub use error::KernelError;
#[doc(hidden)]
pub use linkme;
