//! The tensor-type interface of gguftool: the traits a format plugin
//! implements, the registry plugins add themselves to, activation blocks,
//! SIMD levels, row transforms and the shared rounding grid.
//! It names no concrete format; plugins register themselves.
#![warn(missing_docs)]

pub mod activation;
pub mod format;
pub mod hadamard;
pub mod recipe;
pub mod registry;
pub mod rng;
pub mod rows;
pub mod simd;
pub mod ste;

pub use format::KernelError;
#[doc(hidden)]
pub use linkme;
