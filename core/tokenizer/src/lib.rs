//! Tokenizers that reproduce llama.cpp (commit 0c1e570) token for token,
//! built from a model's GGUF metadata alone.
//!
//! - `tokenizer.ggml.model` = `llama`: SentencePiece ([`spm`]): spaces become
//!   U+2581, characters merge by highest token score, unknown symbols fall
//!   back to `<0xXX>` byte tokens. No merges are needed (Gemma's GGUF has none).
//! - `tokenizer.ggml.model` = `gpt2`: byte-level BPE ([`bpe`]) by merge rank
//!   after a pre-tokenizer chosen by `tokenizer.ggml.pre` ([`pre_tokenize`]);
//!   an unknown pre-tokenizer name is an error, as in llama.cpp.
//! - Special tokens are cut out of the text first ([`special`]), longest first:
//!   user-defined tokens always, control tokens only with `parse_special`.
//!
//! Unicode classes: the pre-tokenizer patterns need `\p{L}`, `\p{N}` and
//! `\s`, and their lookahead (`\s+(?!\S)`) rules out the `regex` crate, so
//! the splitters are hand-written and ask per character. Categories come from
//! the `unicode-general-category` crate (small, no dependencies, a plain
//! table lookup); version 0.6 carries Unicode 15.0, and the few characters
//! Unicode 15.1 added are patched in, because llama.cpp 0c1e570's own tables
//! are Unicode 15.1 (newer crate versions carry 16.0, whose new letters
//! llama.cpp still treats as unassigned). `\s` is `char::is_whitespace`,
//! which is the same `White_Space` set llama.cpp uses.
//!
//! Only [`gguf_vocab`] knows the GGUF container; everything else works on
//! [`VocabData`].
#![warn(missing_docs)]

pub mod bpe;
pub mod detokenize;
pub mod error;
pub mod gguf_vocab;
pub mod pre_tokenize;
pub mod special;
pub mod spm;
mod symbols;
mod unicode;
pub mod vocab;
pub mod vocab_data;

pub use detokenize::Utf8Stream;
pub use error::{Error, Result};
pub use pre_tokenize::PreTokenizer;
pub use special::Fragment;
pub use vocab::{attr, Model, Specials, TokenId, Vocab};
pub use vocab_data::{SpecialIds, VocabData};

use std::path::Path;

/// A tokenizer: a [`Vocab`] plus the tokenize/detokenize entry points.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: Vocab,
}

impl Tokenizer {
    /// Builds a tokenizer from metadata.
    pub fn new(data: &VocabData) -> Result<Self> {
        Ok(Self {
            vocab: Vocab::new(data)?,
        })
    }

    /// Reads the tokenizer of a GGUF model file; private tensor type ids
    /// are resolved through `types` (e.g. `gguftool_quant::registry::TYPES`).
    pub fn from_gguf_file(
        path: impl AsRef<Path>,
        types: &dyn gguftool_gguf::validate::TypeResolver,
    ) -> Result<Self> {
        Self::new(&gguf_vocab::read_file(path.as_ref(), types)?)
    }

    /// Builds the tokenizer from an open file's metadata.
    pub fn from_metadata(md: &gguftool_gguf::Metadata) -> Result<Self> {
        Self::new(&gguf_vocab::from_metadata(md)?)
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Tokenizes `text` as llama.cpp's `llama_tokenize` does: with
    /// `add_special`, BOS/EOS are added when the model asks for them; with
    /// `parse_special`, control tokens written in the text are recognised.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<TokenId>> {
        let v = &self.vocab;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && v.add_bos {
            out.push(
                v.specials
                    .bos
                    .ok_or(Error::NoSpecialToken { which: "BOS" })?,
            );
        }
        let mut prev_special = true;
        for frag in special::partition(v, text, parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(r) => {
                    let raw = &text[r];
                    match &v.model {
                        Model::Spm => {
                            let mut s = String::with_capacity(raw.len() + 4);
                            if v.add_space_prefix && prev_special {
                                s.push(' ');
                            }
                            s.push_str(raw);
                            let s = s.replace(' ', "\u{2581}");
                            spm::tokenize(v, &s, &mut out)?;
                        }
                        Model::Bpe(pre) => {
                            for piece in pre.split(raw) {
                                bpe::tokenize_piece(v, piece, pre.ignore_merges, &mut out)?;
                            }
                        }
                    }
                    prev_special = false;
                }
            }
        }
        if add_special && v.add_eos {
            out.push(
                v.specials
                    .eos
                    .ok_or(Error::NoSpecialToken { which: "EOS" })?,
            );
        }
        Ok(out)
    }

    /// The bytes of one token (see [`detokenize::token_to_piece`]).
    pub fn token_to_piece(&self, id: TokenId, special: bool) -> Result<Vec<u8>> {
        detokenize::token_to_piece(&self.vocab, id, special, 0)
    }

    /// The bytes of a token sequence (see [`detokenize::detokenize`]).
    pub fn detokenize(&self, ids: &[TokenId], special: bool) -> Result<Vec<u8>> {
        detokenize::detokenize(&self.vocab, ids, special)
    }
}
