//! Errors of the candle training engine ([`crate::candle_op`],
//! [`crate::candle_model`], [`crate::blockwise`]).

/// What can go wrong building or training a candle model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// candle rejected an operation (shapes, dtypes, devices).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// Loading hyperparameters or running the runtime.
    #[error("model: {0}")]
    Model(#[from] gguftool_model::Error),
    /// The container.
    #[error(transparent)]
    Gguf(#[from] gguftool_gguf::Error),
    /// A kernel rejected its inputs while decoding a tensor.
    #[error("kernel: {0}")]
    Kernel(#[from] gguftool_quant::KernelError),
    /// A format, tensor or option the engine cannot train.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Inputs that do not fit together (shapes, token ids, empty data).
    #[error("bad input: {0}")]
    BadInput(String),
}

/// Result with [`EngineError`].
pub type EngineResult<T> = std::result::Result<T, EngineError>;
