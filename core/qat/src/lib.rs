//! Quantization-aware training. The core orchestrates; formats supply the
//! fake-quant forward and STE backward (`DifferentiableQuantizer`).
//!
//! - [`config`]: the validated configuration (JSON/TOML);
//! - [`optim`]: AdamW, warm-up + cosine schedule, gradient clipping;
//! - [`loss`]: task cross-entropy and knowledge distillation;
//! - [`train`]: the loop, generic over [`train::Trainable`];
//! - [`recon`]: per-tensor reconstruction QAT for real GGUF models;
//! - [`per_tensor`]: a whole model, tensor by tensor (`gguftool qat`): which
//!   matrices to train, PTQ kept where QAT is not better, the report;
//! - the candle engine (training through the model on candle-core
//!   autograd): [`candle_op`] (any format's fake quantization as a custom
//!   op), [`candle_model`] (the runtime's llama and gemma3 forward in
//!   candle ops, matrices optionally fake-quantized), [`blockwise`] (block-wise
//!   reconstruction of quantized blocks, resumable), [`checkpoint`] (its
//!   checkpoints as GGUF files), [`init`] (GPTQ or importance starting
//!   points), [`e2e`] (end-to-end distillation
//!   from the full-precision model, chunked output head, resumable), [`candle_adam`]
//!   (Adam on candle variables), [`lora`] (LoRA adapters over the frozen
//!   quantized base, merging), [`lora_gguf`] (llama.cpp LoRA GGUF files),
//!   [`engine_error`].
//!
//! The straight-through estimators on uniform grids live in `gguftool_quant::ste`
//! (the formats use them). The character-level reference model is a test
//! fixture (`tests/support/mlp.rs`), shared with the `qat_reference` example.

#![warn(missing_docs)]

pub mod blockwise;
pub mod candle_adam;
pub mod candle_model;
pub mod candle_op;
pub mod checkpoint;
pub mod config;
pub mod e2e;
pub mod engine_error;
pub mod init;
pub mod lora;
pub mod lora_gguf;
pub mod loss;
mod named_tensors;
pub mod optim;
pub mod per_tensor;
pub mod recon;
pub mod train;
