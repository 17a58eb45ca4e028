//! Links every format plugin of gguftool into a binary: depending on this
//! crate and calling [`link`] once keeps each plugin's registration (a
//! link-time slice entry) from being dropped by the linker. Adding a format
//! crate means adding it here, and nowhere else.
#![warn(missing_docs)]

use gguftool_ggml as _;
use gguftool_mixed as _;
use gguftool_piq as _;
use gguftool_quip as _;
use gguftool_ternary as _;

/// Forces the plugins into the binary; returns the number of registered
/// tensor types (never zero when the plugins are linked).
pub fn link() -> usize {
    gguftool_quant::registry::all().len()
}
