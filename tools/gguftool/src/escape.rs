//! Escaping text taken from a file before it reaches a terminal: keys,
//! tensor names and strings may hold control characters (an ANSI escape
//! sequence can clear the screen or forge a hyperlink; a newline forges a
//! line of output).

use std::borrow::Cow;

/// Characters that must not reach a terminal raw: C0 and C1 controls, DEL,
/// and the bidirectional overrides and isolates (which reorder what is shown).
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
    }
}

/// `s` with every control character (and bidi override) written as an
/// escape (`\n`, `\x1b`, `\u{202e}`); unchanged when it holds none.
pub fn escape_for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One `sha256sum` line for `name`, following sha256sum's convention: a
/// name holding a backslash, newline or carriage return (here: any unsafe
/// character) is escaped and the line starts with a backslash, so each
/// tensor stays on one line.
pub fn sha256sum_line(digest: &str, name: &str) -> String {
    if !name.chars().any(|c| c == '\\' || is_unsafe(c)) {
        return format!("{digest}  {name}");
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if is_unsafe(c) => push_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    format!("\\{digest}  {out}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(
            escape_for_terminal("blk.0.weight"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(escape_for_terminal("x.\x1b[2Jclear"), "x.\\x1b[2Jclear");
        assert_eq!(escape_for_terminal("a\nb\u{202e}"), "a\\nb\\u{202e}");
        assert_eq!(escape_for_terminal("\u{9b}"), "\\x9b");
    }

    #[test]
    fn sha256sum_lines() {
        assert_eq!(sha256sum_line("ab", "w"), "ab  w");
        assert_eq!(sha256sum_line("ab", "a\\b\nc"), "\\ab  a\\\\b\\nc");
    }
}
