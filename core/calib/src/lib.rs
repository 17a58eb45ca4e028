//! Calibration data: llama.cpp importance matrices, read and validated
//! against the tensors they describe; input Hessians and GPTQ rounding for
//! any format.
#![warn(missing_docs)]

pub mod calib_file;
pub mod collect;
pub mod gptq;
pub mod gptq_factor;
pub mod imatrix;
pub mod imatrix_write;
pub mod linalg;
pub mod quadratic;
