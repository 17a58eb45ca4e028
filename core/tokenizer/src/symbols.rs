//! The doubly linked symbol list both merge algorithms (SentencePiece
//! bigrams and BPE ranks) work on: one symbol per character at first,
//! neighbours merged in place until no merge applies.

/// A span of the text being merged, linked to its neighbours.
#[derive(Clone, Copy)]
pub(crate) struct Symbol {
    /// Byte offset of the span.
    pub start: usize,
    /// Byte length (0 once merged into its left neighbour).
    pub len: usize,
    /// Index of the previous live symbol.
    pub prev: Option<usize>,
    /// Index of the next live symbol.
    pub next: Option<usize>,
}

/// One symbol per character of `text`, linked in order.
pub(crate) fn symbols(text: &str) -> Vec<Symbol> {
    let mut syms: Vec<Symbol> = text
        .char_indices()
        .enumerate()
        .map(|(i, (start, c))| Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: None,
        })
        .collect();
    let count = syms.len();
    for (i, s) in syms.iter_mut().enumerate() {
        s.next = (i + 1 < count).then_some(i + 1);
    }
    syms
}

/// Merges symbol `r` into its left neighbour `l` and relinks the list.
pub(crate) fn merge(syms: &mut [Symbol], l: usize, r: usize) {
    syms[l].len += syms[r].len;
    syms[r].len = 0;
    syms[l].next = syms[r].next;
    if let Some(nx) = syms[r].next {
        syms[nx].prev = Some(l);
    }
}
