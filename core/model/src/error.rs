//! Typed errors of the runtime.

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key llama.cpp requires is absent.
    #[error("missing required metadata key `{0}`")]
    MissingKey(String),
    /// A key is present but unusable.
    #[error("metadata key `{key}`: {msg}")]
    BadKey {
        /// The key.
        key: String,
        /// Why.
        msg: String,
    },
    /// `general.architecture` names an architecture we do not run.
    #[error("unsupported general.architecture `{arch}` (supported: {supported})")]
    UnknownArch {
        /// The architecture in the file.
        arch: String,
        /// The supported list.
        supported: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor {
        /// The tensor name.
        name: String,
        /// Expected dims, row length first.
        expected: Vec<u64>,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    BadShape {
        /// The tensor name.
        name: String,
        /// Its dims.
        found: Vec<u64>,
        /// Expected dims, row length first.
        expected: Vec<u64>,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken {
        /// The id.
        id: u32,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// The batch does not fit the KV cache.
    #[error("KV cache full: {used} + {batch} positions exceed its {capacity}")]
    ContextFull {
        /// Positions already cached.
        used: usize,
        /// Positions in the batch.
        batch: usize,
        /// Cache capacity.
        capacity: usize,
    },
    /// A LoRA adapter file that is malformed or does not fit the model.
    #[error("LoRA adapter {0}")]
    Adapter(String),
    /// Something the runtime does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The container.
    #[error(transparent)]
    Gguf(#[from] gguftool_gguf::Error),
    /// A kernel rejected its inputs.
    #[error("kernel: {0}")]
    Kernel(#[from] gguftool_quant::KernelError),
    /// The thread pool.
    #[error("thread pool: {0}")]
    Pool(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
