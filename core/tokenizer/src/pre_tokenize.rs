//! BPE pre-tokenizers: the table from `tokenizer.ggml.pre` names to split
//! rules, and hand-written splitters equivalent to llama.cpp's.
//!
//! The GPT-2 and Llama-3 patterns use a lookahead (`\s+(?!\S)`) that the
//! `regex` crate cannot express, so they are matched by hand, character by
//! character, as llama.cpp's own custom matchers do. The simpler patterns
//! (`\p{N}`, punctuation runs, digit triples) are plain run/triple scanners.
//! Each rule applies to every piece the previous rule produced; spans a rule
//! does not match stay pieces of their own.

use crate::error::{Error, Result};
use crate::unicode::{class, Class, Flags};

/// One splitting rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// `\p{N}`: every number character alone.
    EachNumber,
    /// `\p{N}+`
    NumberRuns,
    /// `[\p{P}\$\+<=>\^~\|]+`
    PunctRuns,
    /// `[0-9][0-9][0-9]`
    AsciiDigitTriples,
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
    /// The Llama-3 pattern with `\p{N}{1,max_digits}` (3 for Llama-3, 1 for Qwen2).
    Llama3 {
        /// Longest digit group.
        max_digits: usize,
    },
}

/// A pre-tokenizer: the rules of one `tokenizer.ggml.pre` type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreTokenizer {
    name: &'static str,
    rules: &'static [Rule],
    /// Whether a whole piece that is already a token skips merging.
    pub(crate) ignore_merges: bool,
    /// The default of `add_bos` for this type (before the GGUF key).
    pub(crate) default_add_bos: bool,
}

const DEFAULT: &[Rule] = &[
    Rule::PunctRuns,
    Rule::Gpt2,
    Rule::NumberRuns,
    Rule::AsciiDigitTriples,
];
const GPT2: &[Rule] = &[Rule::Gpt2];
const SMOLLM: &[Rule] = &[Rule::EachNumber, Rule::Gpt2];
const LLAMA3: &[Rule] = &[Rule::Llama3 { max_digits: 3 }];
const QWEN2: &[Rule] = &[Rule::Llama3 { max_digits: 1 }];

/// `(names, canonical name, rules, ignore_merges, default add_bos)`, as in llama.cpp 0c1e570.
type Entry = (
    &'static [&'static str],
    &'static str,
    &'static [Rule],
    bool,
    bool,
);
const TABLE: &[Entry] = &[
    (&["default"], "default", DEFAULT, false, false),
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        "llama3",
        LLAMA3,
        true,
        true,
    ),
    (&["dbrx", "smaug-bpe"], "dbrx", LLAMA3, false, false),
    (
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "mpt",
            "olmo",
            "jais",
            "exaone4",
        ],
        "gpt-2",
        GPT2,
        false,
        false,
    ),
    (
        &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        "smollm",
        SMOLLM,
        false,
        false,
    ),
    (
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "stablelm2",
            "megrez",
        ],
        "qwen2",
        QWEN2,
        false,
        false,
    ),
];

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` value (`None`: `default`, as llama.cpp).
    pub fn from_name(pre: Option<&str>) -> Result<Self> {
        let name = pre.unwrap_or("default");
        for (names, canonical, rules, ignore_merges, default_add_bos) in TABLE {
            if names.contains(&name) {
                return Ok(Self {
                    name: canonical,
                    rules,
                    ignore_merges: *ignore_merges,
                    default_add_bos: *default_add_bos,
                });
            }
        }
        Err(Error::UnknownPreTokenizer {
            pre: name.to_string(),
            supported: TABLE
                .iter()
                .flat_map(|e| e.0.iter())
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The canonical name of the rule set.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Splits `text` into pieces (their concatenation is `text`).
    pub fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut pieces = vec![text];
        let mut chars: Vec<char> = Vec::new();
        let mut lens: Vec<usize> = Vec::new();
        for rule in self.rules {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                if piece.is_empty() {
                    continue;
                }
                chars.clear();
                chars.extend(piece.chars());
                lens.clear();
                split_chars(*rule, &chars, &mut lens);
                let mut offsets = piece.char_indices().map(|(i, _)| i).chain([piece.len()]);
                let mut start = offsets.next().unwrap_or(0);
                for &n in &lens {
                    let end = offsets.nth(n - 1).unwrap_or(piece.len());
                    next.push(&piece[start..end]);
                    start = end;
                }
            }
            pieces = next;
        }
        pieces
    }
}

/// Appends the lengths (in characters) of the pieces of `cs` under `rule`.
fn split_chars(rule: Rule, cs: &[char], out: &mut Vec<usize>) {
    match rule {
        Rule::EachNumber => matches_to_pieces(cs, out, |cs, i| {
            (class(cs[i]) == Class::Number).then_some(1)
        }),
        Rule::NumberRuns => matches_to_pieces(cs, out, |cs, i| {
            run_len(&cs[i..], |c| class(c) == Class::Number)
        }),
        Rule::PunctRuns => matches_to_pieces(cs, out, |cs, i| {
            run_len(&cs[i..], |c| {
                class(c) == Class::Punctuation || "$+<=>^~|".contains(c)
            })
        }),
        Rule::AsciiDigitTriples => matches_to_pieces(cs, out, |cs, i| {
            (i + 3 <= cs.len() && cs[i..i + 3].iter().all(|c| c.is_ascii_digit())).then_some(3)
        }),
        Rule::Gpt2 => gpt2(cs, out),
        Rule::Llama3 { max_digits } => llama3(cs, max_digits, out),
    }
}

fn run_len(cs: &[char], pred: impl Fn(char) -> bool) -> Option<usize> {
    let n = cs.iter().take_while(|&&c| pred(c)).count();
    (n > 0).then_some(n)
}

/// Leftmost non-overlapping matches become pieces, and so do the gaps between them.
fn matches_to_pieces(
    cs: &[char],
    out: &mut Vec<usize>,
    match_at: impl Fn(&[char], usize) -> Option<usize>,
) {
    let (mut i, mut gap) = (0, 0);
    while i < cs.len() {
        match match_at(cs, i) {
            Some(n) => {
                if i > gap {
                    out.push(i - gap);
                }
                out.push(n);
                i += n;
                gap = i;
            }
            None => i += 1,
        }
    }
    if cs.len() > gap {
        out.push(cs.len() - gap);
    }
}

/// Cursor over one piece: flags outside it are empty.
struct Cursor<'a> {
    cs: &'a [char],
    prev_end: usize,
    out: &'a mut Vec<usize>,
}

impl Cursor<'_> {
    fn flags(&self, i: usize) -> Flags {
        self.cs.get(i).map_or(Flags::default(), |&c| Flags::of(c))
    }

    fn get(&self, i: usize) -> Option<char> {
        self.cs.get(i).copied()
    }

    fn emit(&mut self, end: usize) {
        if end > self.prev_end {
            self.out.push(end - self.prev_end);
        }
        self.prev_end = end;
    }

    /// `'s|'t|'m|'d|'re|'ve|'ll` at `pos`; returns the match length.
    fn contraction(&self, pos: usize, fold_case: bool) -> Option<usize> {
        if self.get(pos) != Some('\'') {
            return None;
        }
        let lower = |c: Option<char>| c.map(|c| if fold_case { c.to_ascii_lowercase() } else { c });
        let a = lower(self.get(pos + 1))?;
        if matches!(a, 's' | 't' | 'm' | 'd') {
            return Some(2);
        }
        let b = lower(self.get(pos + 2))?;
        matches!((a, b), ('r', 'e') | ('v', 'e') | ('l', 'l')).then_some(3)
    }

    /// Whitespace handling shared by both patterns: `\s+(?!\S)` then `\s+`.
    fn whitespace(&mut self, pos: usize) -> usize {
        let n = (pos..).take_while(|&i| self.flags(i).whitespace).count();
        let end = if n > 1 && pos + n < self.cs.len() {
            pos + n - 1
        } else if n > 0 {
            pos + n
        } else {
            pos + 1
        };
        self.emit(end);
        end
    }
}

/// The GPT-2 pattern.
fn gpt2(cs: &[char], out: &mut Vec<usize>) {
    let mut cur = Cursor {
        cs,
        prev_end: 0,
        out,
    };
    let mut pos = 0;
    while pos < cs.len() {
        if let Some(n) = cur.contraction(pos, false) {
            pos += n;
            cur.emit(pos);
            continue;
        }
        let space = cs[pos] == ' ';
        let f = cur.flags(pos + usize::from(space));
        let run: Option<fn(Flags) -> bool> = if f.letter {
            Some(|f| f.letter)
        } else if f.number {
            Some(|f| f.number)
        } else if f.is_other() {
            Some(Flags::is_other)
        } else {
            None
        };
        if let Some(pred) = run {
            pos += usize::from(space);
            while pred(cur.flags(pos)) {
                pos += 1;
            }
            cur.emit(pos);
            continue;
        }
        pos = cur.whitespace(pos);
    }
}

/// The Llama-3 pattern (`max_digits` 3) and Qwen2's (`max_digits` 1).
fn llama3(cs: &[char], max_digits: usize, out: &mut Vec<usize>) {
    let mut cur = Cursor {
        cs,
        prev_end: 0,
        out,
    };
    let mut pos = 0;
    while pos < cs.len() {
        let c = cs[pos];
        let f = cur.flags(pos);
        if let Some(n) = cur.contraction(pos, true) {
            pos += n;
            cur.emit(pos);
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(c == '\r' || c == '\n' || f.number) && (f.letter || cur.flags(pos + 1).letter) {
            pos += 1;
            while cur.flags(pos).letter {
                pos += 1;
            }
            cur.emit(pos);
            continue;
        }
        // \p{N}{1,max_digits}
        if f.number {
            let mut ini = pos;
            while cur.flags(pos).number {
                pos += 1;
                if pos - ini >= max_digits {
                    cur.emit(pos);
                    ini = pos;
                }
            }
            cur.emit(pos);
            continue;
        }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        let f2 = if c == ' ' { cur.flags(pos + 1) } else { f };
        if !(f2.whitespace || f2.letter || f2.number) {
            pos += usize::from(c == ' ');
            while cur.flags(pos).is_other() {
                pos += 1;
            }
            while matches!(cur.get(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            cur.emit(pos);
            continue;
        }
        // \s*[\r\n]+
        let mut last_newline = None;
        let mut i = pos;
        while cur.flags(i).whitespace {
            if matches!(cs[i], '\r' | '\n') {
                last_newline = Some(i + 1);
            }
            i += 1;
        }
        if let Some(end) = last_newline {
            pos = end;
            cur.emit(pos);
            continue;
        }
        pos = cur.whitespace(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pre: &str, text: &str) -> Vec<String> {
        PreTokenizer::from_name(Some(pre))
            .unwrap()
            .split(text)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn gpt2_pieces() {
        assert_eq!(
            split("gpt-2", "Hello  world's 123!! \n x  "),
            ["Hello", " ", " world", "'s", " 123", "!!", " \n", " x", "  "]
        );
    }

    #[test]
    fn smollm_isolates_digits() {
        assert_eq!(split("smollm", " a12"), [" a", "1", "2"]);
        assert_eq!(split("smollm", "x 12"), ["x", " ", "1", "2"]);
    }

    #[test]
    fn llama3_pieces() {
        assert_eq!(
            split("llama-bpe", "I'M 1234567 (x)\n\n  y"),
            ["I", "'M", " ", "123", "456", "7", " (", "x", ")\n\n", " ", " y"]
        );
        assert_eq!(split("qwen2", "12"), ["1", "2"]);
    }

    #[test]
    fn default_pieces() {
        assert_eq!(
            split("default", "a+b 12345"),
            ["a", "+", "b", " ", "123", "45"]
        );
    }

    #[test]
    fn unknown_is_an_error() {
        let e = PreTokenizer::from_name(Some("nope")).unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
    }
}
