//! Crash-safe output: write to a temporary file beside the target, rename
//! over it only when everything succeeded. SIGINT, SIGTERM and SIGHUP
//! remove every live temporary file before the process dies (see
//! [`signals`]); a temporary file left by a run that could not clean up
//! (SIGKILL, power loss) is named by the next run that writes beside it.
#![deny(unsafe_op_in_unsafe_fn)]

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
    _registration: Registration,
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
        warn_stale_temps(&dir);
        // tempfile's error names the temporary path; name the output instead.
        let temp = builder.tempfile_in(&dir).map_err(|e| {
            Error::Other(format!(
                "{}: cannot create the output file in directory {}: {}",
                target.display(),
                dir.display(),
                std::io::Error::from(e.kind())
            ))
        })?;
        signals::register(temp.path());
        let registration = Registration(temp.path().to_path_buf());
        Ok(Self {
            _registration: registration,
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

/// Stops tracking a temporary path when the output is committed or dropped
/// (the `NamedTempFile` removes the file itself on drop).
struct Registration(PathBuf);

impl Drop for Registration {
    fn drop(&mut self) {
        signals::unregister(&self.0);
    }
}

/// Warns about `.gguftool-*.tmp` files in `dir` that no live output of this
/// process owns: leftovers of an interrupted run.
fn warn_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n.starts_with(".gguftool-") && n.ends_with(".tmp") && !signals::is_registered(&e.path())
        {
            eprintln!(
                "warning: stale temporary file {} from an interrupted run; remove it",
                e.path().display()
            );
        }
    }
}

/// Removal of temporary outputs on SIGINT, SIGTERM and SIGHUP.
///
/// Paths are kept as leaked, NUL-terminated C strings in a fixed table of
/// atomic pointers, so the handler only loads pointers and calls `unlink`,
/// `signal` and `raise`, all async-signal-safe. It then re-raises the signal
/// with the default action, so the exit status says which signal ended the
/// process (the shell reports 130 for SIGINT, 143 for SIGTERM).
///
/// A long computation that can stop cleanly (QAT, which then writes a
/// checkpoint) calls [`defer_interrupts`]: the first signal then only sets
/// a flag it polls ([`interrupted`]); a second one, more than a second
/// later, ends the process as above.
pub mod signals {
    use std::ffi::CString;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
    use std::sync::Once;

    static DEFER: AtomicBool = AtomicBool::new(false);
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    /// While `on`, the first SIGINT, SIGTERM or SIGHUP only sets the flag
    /// [`interrupted`] returns (installing the handler if needed).
    pub fn defer_interrupts(on: bool) {
        install();
        DEFER.store(on, Ordering::SeqCst);
    }

    /// True once a signal arrived while interrupts were deferred.
    pub fn interrupted() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }

    const SLOTS: usize = 64;
    static TEMPS: [AtomicPtr<libc::c_char>; SLOTS] =
        [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
    static INSTALL: Once = Once::new();

    /// Monotonic time of the first deferred signal, nanoseconds.
    static FIRST_NS: AtomicU64 = AtomicU64::new(0);

    /// Signals within this long of the first deferred one count as the
    /// same Ctrl-C: `timeout -s INT` and some shells deliver one SIGINT to
    /// the process and another to its process group.
    const GRACE_NS: u64 = 1_000_000_000;

    fn monotonic_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime is async-signal-safe and writes only `ts`.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64)
    }

    extern "C" fn on_signal(sig: libc::c_int) {
        // Atomic loads and stores are async-signal-safe.
        if DEFER.load(Ordering::SeqCst) {
            let now = monotonic_ns();
            if !INTERRUPTED.swap(true, Ordering::SeqCst) {
                FIRST_NS.store(now, Ordering::SeqCst);
                return;
            }
            if now.wrapping_sub(FIRST_NS.load(Ordering::SeqCst)) < GRACE_NS {
                return;
            }
        }
        for slot in &TEMPS {
            let p = slot.load(Ordering::SeqCst);
            if !p.is_null() {
                // SAFETY: `p` is a leaked, never-freed NUL-terminated string
                // (see `register`); unlink is async-signal-safe.
                unsafe { libc::unlink(p) };
            }
        }
        // SAFETY: restoring the default action and re-raising are
        // async-signal-safe; the process then ends by `sig`.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }

    fn install() {
        INSTALL.call_once(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only
                // performs async-signal-safe calls.
                unsafe {
                    libc::signal(
                        sig,
                        on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
                    );
                }
            }
        });
    }

    fn c_path(path: &Path) -> Option<CString> {
        use std::os::unix::ffi::OsStrExt;
        CString::new(path.as_os_str().as_bytes()).ok()
    }

    /// Tracks `path` for removal on a terminating signal.
    pub fn register(path: &Path) {
        install();
        let Some(c) = c_path(path) else { return };
        let p = c.into_raw();
        for slot in &TEMPS {
            if slot
                .compare_exchange(std::ptr::null_mut(), p, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return;
            }
        }
        // Table full: the path is not tracked (and the string is freed).
        // SAFETY: `p` came from `CString::into_raw` just above and was not shared.
        drop(unsafe { CString::from_raw(p) });
    }

    /// Stops tracking `path`. The string is leaked on purpose: a handler
    /// running on another thread may still be reading it.
    pub fn unregister(path: &Path) {
        let Some(c) = c_path(path) else { return };
        for slot in &TEMPS {
            let p = slot.load(Ordering::SeqCst);
            // SAFETY: non-null slot pointers are leaked NUL-terminated strings.
            if !p.is_null() && unsafe { std::ffi::CStr::from_ptr(p) } == c.as_c_str() {
                slot.store(std::ptr::null_mut(), Ordering::SeqCst);
            }
        }
    }

    /// True when `path` is a live temporary output of this process.
    pub fn is_registered(path: &Path) -> bool {
        let Some(c) = c_path(path) else { return false };
        TEMPS.iter().any(|slot| {
            let p = slot.load(Ordering::SeqCst);
            // SAFETY: non-null slot pointers are leaked NUL-terminated strings.
            !p.is_null() && unsafe { std::ffi::CStr::from_ptr(p) } == c.as_c_str()
        })
    }
}
