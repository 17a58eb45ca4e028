//! The conversion pipeline: per-tensor plan from a quantization policy,
//! execution in bounded chunks into an atomically committed output, and
//! the quality report.
#![warn(missing_docs)]

pub mod calibration;
pub mod output;
mod pipeline;
pub mod policy;
pub mod quality;
pub mod recipe;

pub use pipeline::*;
