//! Progress bars on stderr (hidden automatically when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// A byte-counting progress bar with a message.
pub fn bytes_bar(total: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// A counting progress bar with a message.
pub fn count_bar(total: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// [`bytes_bar`] when stderr is a terminal, else a hidden bar (nothing is
/// written, whatever the environment asks of indicatif).
pub fn tty_bytes_bar(total: u64, msg: &str) -> ProgressBar {
    if std::io::stderr().is_terminal() {
        bytes_bar(total, msg)
    } else {
        ProgressBar::hidden()
    }
}

/// [`count_bar`] when stderr is a terminal, else a hidden bar.
pub fn tty_count_bar(total: u64, msg: &str) -> ProgressBar {
    if std::io::stderr().is_terminal() {
        count_bar(total, msg)
    } else {
        ProgressBar::hidden()
    }
}
