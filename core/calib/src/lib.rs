//! Calibration data: llama.cpp importance matrices, read and validated
//! against the tensors they describe. (Hessian collection and GPTQ land here.)
#![warn(missing_docs)]

pub mod imatrix;
