//! Parsing of argument values shared by several commands (kept out of the
//! library crates: they take typed values).

use gguftool_convert::policy::format_by_name;
use gguftool_gguf::Error;
use gguftool_quant::format::Format;
use regex::Regex;

type Result<T> = std::result::Result<T, Error>;

/// A regex error on one line (the parser's message spans several, with the
/// pattern and a caret under the fault).
pub fn regex_error_line(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(s) => s
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .map_or_else(
                || s.split_whitespace().collect::<Vec<_>>().join(" "),
                str::to_string,
            ),
        other => other
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Parses `REGEX=FORMAT` (a `--tensor-type` argument); an empty pattern,
/// which would match every tensor, is refused.
pub fn parse_tensor_type(arg: &str) -> Result<(Regex, &'static dyn Format)> {
    let (re, fmt) = arg
        .rsplit_once('=')
        .ok_or_else(|| Error::Other(format!("--tensor-type {arg:?}: expected REGEX=FORMAT")))?;
    if re.is_empty() {
        return Err(Error::Other(format!(
            "--tensor-type {arg:?}: empty pattern (it would match every tensor; use --format)"
        )));
    }
    let re = Regex::new(re)
        .map_err(|e| Error::Other(format!("--tensor-type {arg:?}: {}", regex_error_line(&e))))?;
    let format =
        format_by_name(fmt).map_err(|e| Error::Other(format!("--tensor-type {arg:?}: {e}")))?;
    Ok((re, format))
}
