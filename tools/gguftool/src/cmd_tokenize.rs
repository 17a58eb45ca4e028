//! `gguftool tokenize`: token ids of a text, printed as llama.cpp's
//! `llama-tokenize` prints them (same defaults: special tokens parsed, BOS
//! when the model asks for it, escape sequences processed).

use gguftool_tokenizer::Tokenizer;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `gguftool tokenize`.
#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// GGUF model file (only its `tokenizer.*` metadata is read).
    model: PathBuf,
    /// Text to tokenize.
    #[arg(short = 'p', long = "prompt", conflicts_with_all = ["file", "stdin"])]
    prompt: Option<String>,
    /// File whose bytes are tokenized verbatim (no trailing newline is dropped).
    #[arg(short = 'f', long = "file", conflicts_with = "stdin")]
    file: Option<PathBuf>,
    /// Read the text from standard input.
    #[arg(long)]
    stdin: bool,
    /// Print only the ids, as a list like `[1, 2, 3]`.
    #[arg(long)]
    ids: bool,
    /// Do not recognise control tokens written in the text (user-defined tokens still are).
    #[arg(long)]
    no_parse_special: bool,
    /// Do not add BOS even if the model asks for it.
    #[arg(long)]
    no_bos: bool,
    /// Do not process escape sequences (\n, \r, \t, \', \", \\, \xNN) in the text.
    #[arg(long)]
    no_escape: bool,
    /// Print the number of tokens at the end.
    #[arg(long)]
    show_count: bool,
}

fn other(msg: String) -> gguftool_gguf::Error {
    gguftool_gguf::Error::Other(msg)
}

pub fn run(args: TokenizeArgs) -> Result<ExitCode, gguftool_gguf::Error> {
    let mut text: Vec<u8> = if let Some(p) = &args.prompt {
        p.clone().into_bytes()
    } else if let Some(f) = &args.file {
        std::fs::read(f).map_err(|e| gguftool_gguf::Error::io(f, e))?
    } else if args.stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| gguftool_gguf::Error::io(Path::new("<stdin>"), e))?;
        buf
    } else {
        return Err(other(
            "must specify one of: --stdin, -f/--file or -p/--prompt".into(),
        ));
    };
    if !args.no_escape {
        text = process_escapes(&text);
    }
    let text = String::from_utf8(text).map_err(|e| {
        other(format!(
            "the text is not valid UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let tok = Tokenizer::from_gguf_file(&args.model, &gguftool_quant::registry::TYPES)
        .map_err(|e| other(e.to_string()))?;
    let add_special = tok.vocab().add_bos() && !args.no_bos;
    let ids = tok
        .tokenize(&text, add_special, !args.no_parse_special)
        .map_err(|e| other(e.to_string()))?;

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let res = (|| -> std::io::Result<()> {
        if args.ids {
            let list: Vec<String> = ids.iter().map(u32::to_string).collect();
            writeln!(out, "[{}]", list.join(", "))?;
        } else {
            for &id in &ids {
                let piece = tok.token_to_piece(id, true).unwrap_or_default();
                writeln!(out, "{id:6} -> '{}'", escape_piece(&piece))?;
            }
        }
        if args.show_count {
            writeln!(out, "Total number of tokens: {}", ids.len())?;
        }
        out.flush()
    })();
    res.map_err(|e| gguftool_gguf::Error::io(Path::new("<stdout>"), e))?;
    Ok(ExitCode::SUCCESS)
}

/// Escape sequences as llama.cpp's `string_process_escapes` handles them.
fn process_escapes(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'\\' && i + 1 < input.len() {
            i += 1;
            match input[i] {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'\'' => out.push(b'\''),
                b'"' => out.push(b'"'),
                b'\\' => out.push(b'\\'),
                b'x' if i + 2 < input.len()
                    && strtol_hex2(input[i + 1], input[i + 2]).is_some() =>
                {
                    out.push(strtol_hex2(input[i + 1], input[i + 2]).unwrap_or(0));
                    i += 2;
                }
                c => {
                    out.push(b'\\');
                    out.push(c);
                }
            }
        } else {
            out.push(input[i]);
        }
        i += 1;
    }
    out
}

/// `strtol(two chars, 16)` when it consumes both: hex digits, optionally after
/// one leading space or sign (the value wraps to a byte, as `char(val)` does).
fn strtol_hex2(a: u8, b: u8) -> Option<u8> {
    let hex = |c: u8| (c as char).to_digit(16);
    let d = hex(b)?;
    match a {
        b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b'+' => Some(d as u8),
        b'-' => Some((d as u8).wrapping_neg()),
        _ => Some((hex(a)? * 16 + d) as u8),
    }
}

/// A piece for people: control characters escaped, invalid UTF-8 as `\xNN`.
fn escape_piece(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                c if c.is_control() => s.push_str(&format!("\\u{{{:04x}}}", c as u32)),
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            process_escapes(br"a\nb\tc\\d\x41\q\x4"),
            b"a\nb\tc\\dA\\q\\x4"
        );
        assert_eq!(process_escapes(br"\x-1"), [0xFF]);
        assert_eq!(escape_piece(b"a\n\x01\xff"), "a\\n\\u{0001}\\xff");
    }
}
