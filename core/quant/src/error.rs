//! The error kernels and codecs raise.

/// Errors a kernel raises on inputs of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A buffer length does not match the block geometry.
    #[error("{what}: length {len} does not match {expected}")]
    BadLength {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        len: usize,
        /// What was expected.
        expected: String,
    },
    /// The format cannot encode this input, or has no kernel for it.
    #[error("{0}")]
    Unsupported(String),
}
