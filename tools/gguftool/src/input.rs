//! Opening an input model with messages a new user can act on: a directory
//! says so, and a file that is not GGUF says what it looks like.

use crate::escape::escape_for_terminal;
use gguftool_gguf::error::GgufError;
use gguftool_gguf::{Error, GgufFile};
use std::io::Read;
use std::path::Path;

/// The first `n` bytes of a file (fewer when it is shorter).
fn head(path: &Path, n: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(n);
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(n as u64).read_to_end(&mut buf);
    }
    buf
}

/// Bytes as escaped text: printable ASCII as is, the rest as `\xHH`.
pub fn bytes_text(b: &[u8]) -> String {
    b.iter()
        .map(|&c| match c {
            b'"' => "\\\"".to_string(),
            b'\\' => "\\\\".to_string(),
            0x20..=0x7e => (c as char).to_string(),
            _ => format!("\\x{c:02x}"),
        })
        .collect()
}

/// What a file that is not GGUF looks like, from its first bytes.
pub fn looks_like(b: &[u8]) -> Option<&'static str> {
    if b.len() >= 9 && b[8] == b'{' {
        let n = u64::from_le_bytes(b[..8].try_into().ok()?);
        if n > 1 && n < (1 << 32) {
            return Some("a safetensors file (8-byte header length, then JSON); convert it to GGUF first (llama.cpp's convert_hf_to_gguf.py)");
        }
    }
    if b.starts_with(b"PK\x03\x04") || b.starts_with(b"PK\x05\x06") {
        return Some(
            "a zip archive, as PyTorch saves .pt/.pth/.bin checkpoints; convert it to GGUF first",
        );
    }
    if b.len() >= 2 && b[0] == 0x80 && (2..=5).contains(&b[1]) {
        return Some("a Python pickle (an old PyTorch checkpoint); convert it to GGUF first");
    }
    if b.starts_with(b"FUGG") {
        return Some("a big-endian GGUF file, which is not supported");
    }
    if b.starts_with(&[0x1f, 0x8b]) {
        return Some("a gzip file; decompress it first");
    }
    if b.starts_with(b"version https://git-lfs") {
        return Some("a Git LFS pointer, not the model; fetch the file with git lfs pull");
    }
    None
}

/// Opens and validates `path` as a GGUF model, through the format registry.
///
/// # Errors
/// The container's errors, with a directory and a non-GGUF file explained.
pub fn open(path: &Path) -> Result<GgufFile, Error> {
    open_with(path, |p| gguftool_quant::registry::open(p))
}

/// [`open`] with another opener (e.g. the header-only one `verify` uses).
pub fn open_with<T>(
    path: &Path,
    opener: impl FnOnce(&Path) -> Result<T, Error>,
) -> Result<T, Error> {
    if path.is_dir() {
        return Err(Error::Other(format!(
            "{}: is a directory, not a GGUF file",
            escape_for_terminal(&path.display().to_string())
        )));
    }
    match opener(path) {
        Err(Error::Gguf {
            source: GgufError::BadMagic { found },
            ..
        }) => {
            let b = head(path, 16);
            let what = looks_like(&b).map_or_else(String::new, |w| format!("; it looks like {w}"));
            Err(Error::Other(format!(
                "{}: not a GGUF file: bad magic at byte offset 0: expected \"GGUF\", found \"{}\" (hex {}){what}",
                escape_for_terminal(&path.display().to_string()),
                bytes_text(&found),
                found.iter().map(|c| format!("{c:02x}")).collect::<Vec<_>>().join(" "),
            )))
        }
        other => other,
    }
}

/// The fixed header fields (magic, version, counts) of a file that could not
/// be parsed, for `inspect` to show before the error.
pub fn raw_header(path: &Path) -> Option<Vec<(&'static str, String)>> {
    let b = head(path, 24);
    // Only a GGUF magic makes the following fields mean anything.
    if b.len() < 4 || &b[..4] != b"GGUF" {
        return None;
    }
    let mut rows = vec![("magic", format!("\"{}\"", bytes_text(&b[..4])))];
    if b.len() >= 8 {
        rows.push((
            "version",
            u32::from_le_bytes(b[4..8].try_into().ok()?).to_string(),
        ));
    }
    if b.len() >= 16 {
        rows.push((
            "tensors",
            format!(
                "{} (declared)",
                u64::from_le_bytes(b[8..16].try_into().ok()?)
            ),
        ));
    }
    if b.len() >= 24 {
        rows.push((
            "metadata",
            format!(
                "{} keys (declared)",
                u64::from_le_bytes(b[16..24].try_into().ok()?)
            ),
        ));
    }
    Some(rows)
}

/// Refuses an output that is the input file, for commands that transform
/// the input (the source model would be replaced by its conversion).
pub fn refuse_same_file(input: &Path, output: &Path) -> Result<(), Error> {
    if gguftool_convert::same_file(input, output) {
        return Err(Error::Other(format!(
            "{}: the output is the input file; write to another path (the input would be replaced)",
            escape_for_terminal(&output.display().to_string())
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_other_formats() {
        let mut st = 100u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{\"__metadata__\"");
        assert!(looks_like(&st).unwrap().contains("safetensors"));
        assert!(looks_like(b"PK\x03\x04rest").unwrap().contains("zip"));
        assert!(looks_like(&[0x80, 2, 0x7d]).unwrap().contains("pickle"));
        assert!(looks_like(b"hello world").is_none());
        assert_eq!(bytes_text(b"PK\x03\x04"), "PK\\x03\\x04");
    }
}
