//! Quantization-aware training. The core orchestrates; formats supply the
//! fake-quant forward and STE backward (`DifferentiableQuantizer`).
//!
//! - [`config`]: the validated configuration (JSON/TOML);
//! - [`ste`]: straight-through estimators on uniform grids;
//! - [`optim`]: AdamW, warm-up + cosine schedule, gradient clipping;
//! - [`loss`]: task cross-entropy and knowledge distillation;
//! - [`train`]: the loop, generic over [`train::Trainable`];
//! - [`recon`]: per-tensor reconstruction QAT for real GGUF models;
//! - [`mlp`]: the end-to-end reference model (full precision, PTQ, QAT, LoRA-QAT).

pub mod config;
pub mod loss;
pub mod mlp;
pub mod optim;
pub mod recon;
pub mod ste;
pub mod train;
