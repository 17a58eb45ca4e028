//! Special-token partition (llama.cpp's `tokenizer_st_partition`): before any
//! model runs, raw text is cut at occurrences of special tokens, longest text
//! first. User-defined tokens are always cut out; control and unknown tokens
//! only when `parse_special` is on.

use crate::vocab::{attr, TokenId, Vocab};
use std::ops::Range;

/// A piece of the input: raw text (a byte range) or an already-chosen token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fragment {
    /// Text still to be tokenized.
    Text(Range<usize>),
    /// A special token found in the text.
    Token(TokenId),
}

/// C `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// Cuts `text` into fragments.
pub fn partition(vocab: &Vocab, text: &str, parse_special: bool) -> Vec<Fragment> {
    if text.is_empty() {
        return Vec::new();
    }
    let bytes = text.as_bytes();
    let mut frags = vec![Fragment::Text(0..text.len())];
    // Positions of each byte value: a cheap test of whether a token occurs at all.
    let mut at: Vec<Vec<usize>> = vec![Vec::new(); 256];
    for (i, &b) in bytes.iter().enumerate() {
        at[b as usize].push(i);
    }
    for &id in &vocab.special_cache {
        let a = vocab.attrs[id as usize];
        if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
            continue;
        }
        let needle = vocab.texts[id as usize].as_str();
        let occurs = at[needle.as_bytes()[0] as usize]
            .iter()
            .any(|&p| bytes[p..].starts_with(needle.as_bytes()));
        if !occurs {
            continue;
        }
        let mut next = Vec::with_capacity(frags.len() + 2);
        for f in frags {
            let Fragment::Text(r) = f else {
                next.push(f);
                continue;
            };
            let mut cur = r.start;
            while let Some(off) = text[cur..r.end].find(needle) {
                let m = cur + off;
                let mut left_end = m;
                if a & attr::LSTRIP != 0 {
                    while left_end > cur && is_c_space(bytes[left_end - 1]) {
                        left_end -= 1;
                    }
                }
                if left_end > cur {
                    next.push(Fragment::Text(cur..left_end));
                }
                next.push(Fragment::Token(id));
                cur = m + needle.len();
                if a & attr::RSTRIP != 0 {
                    while cur < r.end && is_c_space(bytes[cur]) {
                        cur += 1;
                    }
                }
            }
            if cur < r.end {
                next.push(Fragment::Text(cur..r.end));
            }
        }
        frags = next;
    }
    frags
}
