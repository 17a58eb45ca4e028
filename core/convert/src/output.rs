//! Crash-safe output: write to a temporary file beside the target, rename
//! over it only when everything succeeded.

use gguftool_gguf::error::{Error, Result};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// A temporary file that becomes `target` on [`AtomicOutput::commit`] and
/// disappears if dropped first.
pub struct AtomicOutput {
    target: PathBuf,
    force: bool,
    temp: NamedTempFile,
}

impl AtomicOutput {
    /// Creates the temporary file; fails early if `target` exists and
    /// `force` is false.
    pub fn create(target: impl AsRef<Path>, force: bool) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        if !force && target.exists() {
            return Err(Error::OutputExists(target));
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix(".gguftool-").suffix(".tmp");
        // Created 0666 minus the umask, like any other new file (tempfile's default is 0600).
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let temp = builder.tempfile_in(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self {
            target,
            force,
            temp,
        })
    }

    /// A buffered writer over the temporary file.
    pub fn writer(&self) -> Result<BufWriter<File>> {
        let f = self
            .temp
            .as_file()
            .try_clone()
            .map_err(|e| Error::io(self.temp.path(), e))?;
        Ok(BufWriter::with_capacity(1 << 20, f))
    }

    /// Flushes to disk and renames onto the target.
    pub fn commit(self) -> Result<()> {
        self.temp
            .as_file()
            .sync_all()
            .map_err(|e| Error::io(self.temp.path(), e))?;
        let res = if self.force {
            self.temp.persist(&self.target).map(|_| ())
        } else {
            self.temp.persist_noclobber(&self.target).map(|_| ())
        };
        res.map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                Error::OutputExists(self.target.clone())
            } else {
                Error::io(&self.target, e.error)
            }
        })
    }
}
