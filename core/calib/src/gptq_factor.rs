//! GPTQ for every consumer of one input site at once: q/k/v (and gate/up)
//! read the same input, so they share the Hessian and, rounded into the
//! same format, the same damped inverse-Hessian factor. GPTQ rounds rows
//! independently given that factor, so rounding the consumers' rows stacked
//! in one [`gptq`] call factorizes once and gives each consumer exactly the
//! bytes a call of its own would. This wraps [`gptq`] and leaves its body
//! alone.

use crate::gptq::{gptq, GptqError, GptqOptions, GptqReport, Hessian};
use gguftool_quant::format::Format;

/// Rounds several weight matrices that share the input Hessian `h` (each
/// `rows_k x n`, row-major, original basis) into `format` with one
/// factorization; returns each matrix's bytes, in order, and the report.
///
/// # Errors
/// As [`gptq`]; a matrix whose length is not a multiple of `n` is a shape
/// error naming its position.
pub fn gptq_shared(
    format: &dyn Format,
    ws: &[&[f32]],
    h: &Hessian,
    seed: Option<u64>,
    opts: GptqOptions,
) -> Result<(Vec<Vec<u8>>, GptqReport), GptqError> {
    let n = h.n();
    if n == 0 {
        return Err(GptqError::Shape("Hessian of width 0".into()));
    }
    let bs = format.block_size();
    if bs == 0 || !n.is_multiple_of(bs) {
        return Err(GptqError::Shape(format!(
            "rows of {n} are not whole {} blocks of {bs}",
            format.name()
        )));
    }
    for (k, w) in ws.iter().enumerate() {
        if !w.len().is_multiple_of(n) {
            return Err(GptqError::Shape(format!(
                "matrix {k}: {} weights for rows of {n}",
                w.len()
            )));
        }
    }
    let row_bytes = n / bs * format.type_size();
    let stacked: Vec<f32> = ws.iter().flat_map(|w| w.iter().copied()).collect();
    let (bytes, report) = gptq(format, &stacked, h, seed, opts)?;
    let mut out = Vec::with_capacity(ws.len());
    let mut at = 0;
    for w in ws {
        let len = w.len() / n * row_bytes;
        let part = bytes.get(at..at + len).ok_or_else(|| {
            GptqError::Format(format!(
                "{} gave {} bytes for {} rows",
                format.name(),
                bytes.len(),
                stacked.len() / n
            ))
        })?;
        out.push(part.to_vec());
        at += len;
    }
    Ok((out, report))
}
