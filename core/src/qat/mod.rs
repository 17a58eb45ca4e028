//! Quantization-aware training support: straight-through estimators on
//! uniform grids, shared by every format's `DifferentiableQuantizer`.

pub mod ste;
