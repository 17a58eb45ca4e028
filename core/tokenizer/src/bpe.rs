//! GPT-2 byte-level BPE: bytes to printable characters, then merges by rank
//! (lowest rank first, leftmost on ties) through a priority queue.

use crate::error::Result;
use crate::symbols::{merge, symbols, Symbol};
use crate::vocab::{TokenId, Vocab};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::OnceLock;

/// The GPT-2 byte-to-character table: printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100 onward in byte order.
pub fn byte_to_char(b: u8) -> char {
    tables().0[b as usize]
}

/// The byte a GPT-2 byte-level character stands for.
pub fn char_to_byte(c: char) -> Option<u8> {
    tables().1.get(c as usize).copied().flatten()
}

type Tables = ([char; 256], Vec<Option<u8>>);

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let printable = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut fwd = ['\0'; 256];
        let mut back = vec![None; 0x100 + 256];
        let mut extra = 0u32;
        for b in 0..=255u8 {
            let c = if printable(b) {
                char::from(b)
            } else {
                extra += 1;
                char::from_u32(0xFF + extra).unwrap_or('\u{FFFD}')
            };
            fwd[b as usize] = c;
            back[c as usize] = Some(b);
        }
        (fwd, back)
    })
}

/// A queued merge: (rank, left, right, left length, right length).
type Candidate = (u32, usize, usize, usize, usize);

/// Tokenizes one pre-tokenized piece (raw text) and appends the ids.
pub(crate) fn tokenize_piece(
    vocab: &Vocab,
    piece: &str,
    ignore_merges: bool,
    out: &mut Vec<TokenId>,
) -> Result<()> {
    let word: String = piece.bytes().map(byte_to_char).collect();
    if ignore_merges {
        if let Some(id) = vocab.token_id(&word) {
            out.push(id);
            return Ok(());
        }
    }
    let mut syms = symbols(&word);
    let count = syms.len();
    let text = |s: &Symbol| &word[s.start..s.start + s.len];

    // (rank, left) ordered smallest first; the lengths detect stale entries.
    let mut queue: BinaryHeap<Reverse<Candidate>> = BinaryHeap::new();
    let push = |queue: &mut BinaryHeap<_>, syms: &[Symbol], l: usize, r: usize| {
        if let Some(rank) = vocab.rank(text(&syms[l]), text(&syms[r])) {
            queue.push(Reverse((rank, l, r, syms[l].len, syms[r].len)));
        }
    };
    for i in 1..count {
        push(&mut queue, &syms, i - 1, i);
    }
    while let Some(Reverse((_, l, r, llen, rlen))) = queue.pop() {
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len != llen || syms[r].len != rlen {
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

    for s in syms.iter().filter(|s| s.len > 0) {
        let t = text(s);
        match vocab.token_id(t) {
            Some(id) => out.push(id),
            None => {
                // Unknown symbols fall back to single-character tokens; bytes without one are dropped.
                for b in t.bytes().filter(u8::is_ascii) {
                    let mut buf = [0u8; 4];
                    if let Some(id) = vocab.token_id((b as char).encode_utf8(&mut buf)) {
                        out.push(id);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_round_trips() {
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(b' '), '\u{120}');
        assert_eq!(byte_to_char(b'\n'), '\u{10A}');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('\u{2581}'), None);
    }
}
