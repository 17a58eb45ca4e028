//! The row rotation (kept in the core, shared with QAT's incoherence option).

pub use gguftool_quant::hadamard::*;
