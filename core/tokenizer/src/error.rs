//! Typed errors: every variant names the metadata key or token involved.

/// Errors raised while building a tokenizer from metadata or while tokenizing.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A required metadata key is absent.
    #[error("missing metadata key `{key}`")]
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// A key holds a value of the wrong type.
    #[error("metadata key `{key}` has type {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// What the tokenizer accepts.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
    /// A per-token array is shorter than `tokenizer.ggml.tokens`.
    #[error("metadata key `{key}` has {found} entries but `tokenizer.ggml.tokens` has {tokens}")]
    LengthMismatch {
        /// The per-token key (scores or token types).
        key: &'static str,
        /// Number of tokens.
        tokens: usize,
        /// Number of entries found.
        found: usize,
    },
    /// The vocabulary is empty or larger than token ids can address.
    #[error("`tokenizer.ggml.tokens` has {count} tokens (must be 1..=2147483647)")]
    BadVocabSize {
        /// Number of tokens found.
        count: usize,
    },
    /// `tokenizer.ggml.model` names a tokenizer this crate does not implement.
    #[error("unsupported `tokenizer.ggml.model` {model:?} (supported: \"llama\", \"gpt2\")")]
    UnknownModel {
        /// The value found.
        model: String,
    },
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not implement.
    #[error("unsupported `tokenizer.ggml.pre` {pre:?} (supported: {supported})")]
    UnknownPreTokenizer {
        /// The value found.
        pre: String,
        /// Comma-separated supported names.
        supported: String,
    },
    /// A merge is not two space-separated parts.
    #[error("`tokenizer.ggml.merges`[{index}] = {merge:?} is not two space-separated parts")]
    MalformedMerge {
        /// Index in the merges array.
        index: usize,
        /// The entry.
        merge: String,
    },
    /// A merge names a part that is not a token.
    #[error("`tokenizer.ggml.merges`[{index}] refers to {part:?}, which is not in `tokenizer.ggml.tokens`")]
    MergeUnknownToken {
        /// Index in the merges array.
        index: usize,
        /// The unknown part.
        part: String,
    },
    /// A text needed a byte-fallback token the vocabulary does not have.
    #[error("the vocabulary has no token for byte 0x{byte:02X} (neither <0x{byte:02X}> nor the raw byte)")]
    NoByteToken {
        /// The byte.
        byte: u8,
    },
    /// BOS or EOS must be added but the vocabulary defines none.
    #[error("the vocabulary asks for {which} but has no valid {which} token id")]
    NoSpecialToken {
        /// "BOS" or "EOS".
        which: &'static str,
    },
    /// A token id outside the vocabulary was passed to detokenization.
    #[error("token id {id} is outside the vocabulary of {n_vocab} tokens")]
    BadTokenId {
        /// The id.
        id: i64,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// The model file could not be opened or parsed.
    #[error("{path}: {message}")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
