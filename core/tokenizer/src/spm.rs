//! SentencePiece (llama.cpp's `llm_tokenizer_spm`): start from UTF-8
//! characters, repeatedly merge the adjacent pair whose concatenation is a
//! token with the highest score (leftmost on ties), and emit symbols that are
//! not tokens as `<0xXX>` byte tokens.

use crate::error::Result;
use crate::symbols::{merge, symbols, Symbol};
use crate::vocab::{TokenId, Vocab};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A candidate merge: higher score first, then smaller left index.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // -0.0 and 0.0 compare equal, as with C++ `<`.
        let key = |s: f32| if s == 0.0 { 0.0 } else { s };
        key(self.score)
            .total_cmp(&key(other.score))
            .then(Reverse(self.left).cmp(&Reverse(other.left)))
    }
}

/// Tokenizes `text` (spaces already escaped as U+2581) and appends the ids.
pub(crate) fn tokenize(vocab: &Vocab, text: &str, out: &mut Vec<TokenId>) -> Result<()> {
    let mut syms = symbols(text);
    let count = syms.len();

    let mut queue = BinaryHeap::new();
    let push = |queue: &mut BinaryHeap<Bigram>, syms: &[Symbol], l: usize, r: usize| {
        let size = syms[l].len + syms[r].len;
        let start = syms[l].start;
        if let Some(id) = vocab.token_id(&text[start..start + size]) {
            queue.push(Bigram {
                score: vocab.scores[id as usize],
                left: l,
                right: r,
                size,
            });
        }
    };
    for i in 1..count {
        push(&mut queue, &syms, i - 1, i);
    }
    while let Some(b) = queue.pop() {
        let (l, r) = (b.left, b.right);
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.size {
            continue;
        }
        merge(&mut syms, l, r);
        if let Some(p) = syms[l].prev {
            push(&mut queue, &syms, p, l);
        }
        if let Some(nx) = syms[l].next {
            push(&mut queue, &syms, l, nx);
        }
    }

    let mut i = (count > 0).then_some(0);
    while let Some(k) = i {
        let s = syms[k];
        let piece = &text[s.start..s.start + s.len];
        match vocab.token_id(piece) {
            Some(id) => out.push(id),
            None => {
                for b in piece.bytes() {
                    out.push(vocab.byte_to_token(b)?);
                }
            }
        }
        i = s.next;
    }
    Ok(())
}
