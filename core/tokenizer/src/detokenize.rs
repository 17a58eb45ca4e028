//! Token ids back to bytes (llama.cpp's `token_to_piece` and `detokenize`).

use crate::bpe::char_to_byte;
use crate::error::{Error, Result};
use crate::vocab::{attr, Model, TokenId, Vocab};

/// The bytes token `id` stands for. Control and unknown tokens render as
/// their text only when `special` is true; unused and undefined tokens
/// render as nothing. Up to `lstrip` leading spaces are removed.
pub fn token_to_piece(vocab: &Vocab, id: TokenId, special: bool, lstrip: usize) -> Result<Vec<u8>> {
    let a = vocab.attr(id).ok_or(Error::BadTokenId {
        id: id.into(),
        n_vocab: vocab.len(),
    })?;
    let text = &vocab.texts[id as usize];
    let hidden = attr::UNKNOWN | attr::CONTROL;
    let piece: Vec<u8> = if !special && a & hidden != 0 {
        Vec::new()
    } else if a & (hidden | attr::USER_DEFINED) != 0 {
        text.as_bytes().to_vec()
    } else if a & attr::NORMAL != 0 {
        match vocab.model {
            Model::Spm => text.replace('\u{2581}', " ").into_bytes(),
            Model::Bpe(_) => decode_byte_level(text),
        }
    } else if a & attr::BYTE != 0 {
        vec![byte_token_value(text)]
    } else {
        Vec::new()
    };
    let skip = piece
        .iter()
        .take(lstrip)
        .take_while(|&&b| b == b' ')
        .count();
    Ok(piece[skip..].to_vec())
}

/// Concatenated pieces of `ids`; with SentencePiece's space prefix the first
/// piece loses one leading space, as llama.cpp's `detokenize` does.
pub fn detokenize(vocab: &Vocab, ids: &[TokenId], special: bool) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut strip = usize::from(vocab.add_space_prefix);
    for &id in ids {
        out.extend(token_to_piece(vocab, id, special, strip)?);
        strip = 0;
    }
    Ok(out)
}

/// The byte of a `<0xXX>` token (llama.cpp reads the two hex digits with strtol).
fn byte_token_value(text: &str) -> u8 {
    let hex = text.get(3..5).unwrap_or("");
    let digits: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    u8::from_str_radix(&digits, 16).unwrap_or(0)
}

/// GPT-2 byte-level text to bytes; characters outside the table become
/// `[UNK_BYTE_0x..<text>]`, as in llama.cpp.
fn decode_byte_level(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// Incremental text from token pieces: bytes are held back until they form
/// valid UTF-8, so a character split across tokens is emitted whole. Bytes
/// that can never be valid become U+FFFD.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    buf: Vec<u8>,
}

impl Utf8Stream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and returns the text that is complete so far.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.buf.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.buf[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.buf.len();
                    break;
                }
                Err(e) => {
                    let ok = start + e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.buf[start..ok]).expect("checked"));
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{fffd}');
                            start = ok + n;
                        }
                        None => {
                            start = ok;
                            break;
                        }
                    }
                }
            }
        }
        self.buf.drain(..start);
        out
    }

    /// The held-back bytes of an unfinished character, lossily.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn split_characters_are_held_back() {
        let text = "a€b😀c";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut s = Utf8Stream::new();
            let mut out = s.push(&bytes[..cut]);
            out += &s.push(&bytes[cut..]);
            out += &s.finish();
            assert_eq!(out, text);
        }
        let mut s = Utf8Stream::new();
        let mut out = String::new();
        for b in bytes {
            let piece = s.push(&[*b]);
            assert!(piece.chars().all(|c| c != '\u{fffd}'));
            out += &piece;
        }
        assert_eq!(out, text);
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(b"x\xffy"), "x\u{fffd}y");
        assert_eq!(s.push(b"\xe2\x82"), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}
