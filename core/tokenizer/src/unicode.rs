//! Per-character classes as llama.cpp's pre-tokenizers see them.
//!
//! General categories come from `unicode-general-category` 0.6 (Unicode
//! 15.0); the characters Unicode 15.1 added are patched in by hand so the
//! classes match llama.cpp 0c1e570, whose tables were generated from
//! Unicode 15.1. Whitespace is the `White_Space` property, which is exactly
//! what [`char::is_whitespace`] tests.

use unicode_general_category::{get_general_category, GeneralCategory as G};

/// The coarse class llama.cpp assigns to a code point (one per major category).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Unassigned (`Cn`).
    Undefined,
    /// `\p{N}`
    Number,
    /// `\p{L}`
    Letter,
    /// `\p{Z}`
    Separator,
    /// `\p{M}`
    Mark,
    /// `\p{P}`
    Punctuation,
    /// `\p{S}`
    Symbol,
    /// `\p{C}` other than `Cn`.
    Control,
}

/// The class of `c`.
pub(crate) fn class(c: char) -> Class {
    let cp = c as u32;
    // Unicode 15.1 additions: U+2FFC..U+2FFF and U+31EF (So), CJK extension I (Lo).
    if (0x2FFC..=0x2FFF).contains(&cp) || cp == 0x31EF {
        return Class::Symbol;
    }
    if (0x2EBF0..=0x2EE5D).contains(&cp) {
        return Class::Letter;
    }
    match get_general_category(c) {
        G::Unassigned => Class::Undefined,
        G::Control | G::Format | G::PrivateUse | G::Surrogate => Class::Control,
        G::UppercaseLetter
        | G::LowercaseLetter
        | G::TitlecaseLetter
        | G::ModifierLetter
        | G::OtherLetter => Class::Letter,
        G::NonspacingMark | G::SpacingMark | G::EnclosingMark => Class::Mark,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => Class::Number,
        G::ConnectorPunctuation
        | G::DashPunctuation
        | G::OpenPunctuation
        | G::ClosePunctuation
        | G::InitialPunctuation
        | G::FinalPunctuation
        | G::OtherPunctuation => Class::Punctuation,
        G::MathSymbol | G::CurrencySymbol | G::ModifierSymbol | G::OtherSymbol => Class::Symbol,
        G::SpaceSeparator | G::LineSeparator | G::ParagraphSeparator => Class::Separator,
    }
}

/// Flags of one position of a piece; positions outside the piece have none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    /// Inside the piece at all.
    pub present: bool,
    /// `\p{L}`
    pub letter: bool,
    /// `\p{N}`
    pub number: bool,
    /// `\s`
    pub whitespace: bool,
}

impl Flags {
    /// Flags of an in-range character.
    pub fn of(c: char) -> Flags {
        let k = class(c);
        Flags {
            present: true,
            letter: k == Class::Letter,
            number: k == Class::Number,
            whitespace: c.is_whitespace(),
        }
    }

    /// `[^\s\p{L}\p{N}]` for an in-range character.
    pub fn is_other(self) -> bool {
        self.present && !(self.whitespace || self.letter || self.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class('a'), Class::Letter);
        assert_eq!(class('7'), Class::Number);
        assert_eq!(class('½'), Class::Number);
        assert_eq!(class('\u{301}'), Class::Mark);
        assert_eq!(class('$'), Class::Symbol);
        assert_eq!(class('!'), Class::Punctuation);
        assert_eq!(class('\u{378}'), Class::Undefined);
        assert_eq!(class('\u{2EBF0}'), Class::Letter);
        // U+1C89 arrived in Unicode 16.0: still unassigned for llama.cpp 0c1e570.
        assert_eq!(class('\u{1C89}'), Class::Undefined);
        assert!(Flags::of('\u{85}').whitespace);
        assert!(!Flags::of('\u{200B}').whitespace);
    }
}
