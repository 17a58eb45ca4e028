//! The runtime: llama.cpp's `llama` and `gemma3` forward passes over
//! weights memory-mapped in their stored type (any registered format),
//! through each tensor's [`KernelTable`](gguftool_quant::kernels::KernelTable)
//! with activations quantized once per input vector.
//!
//! - Hyperparameters: [`hparams`], with llama.cpp's keys and defaults.
//! - [`Model::forward`]: a batch of positions (prefill, each weight matrix
//!   applied to every position in one `matmul`, rows split over a pool of
//!   threads) or one token (decode), appending to a [`KvCache`] (f32).
//! - [`Hooks`]: every linear's input and the final hidden state, for
//!   calibration.
//! - [`lora`]: llama.cpp LoRA adapter files, applied by
//!   [`Model::apply_lora`].
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod error;
pub mod gemm;
pub mod hparams;
pub mod lora;
mod model;
pub mod ops;

pub use error::{Error, Result};
pub use hparams::{Arch, Hparams, RopeKind, SUPPORTED};
pub use model::{
    Hooks, KvCache, Linear, Logits, MatmulPath, Model, NoHooks, DECODE_ONCE_MIN_BATCH,
};
