//! Rendering metadata values as JSON or one-line text, summarizing long
//! arrays and strings unless asked for everything.

use gguftool_gguf::{Array, Value};
use serde_json::{json, Value as Json};

/// Elements shown before an array is summarized.
const ARRAY_PREVIEW: usize = 8;
/// Characters shown before a string is shortened in text output.
const STRING_PREVIEW: usize = 120;

fn float(f: f64) -> Json {
    if f.is_finite() {
        json!(f)
    } else {
        json!(f.to_string())
    }
}

/// A value as JSON; arrays are always `{"type": "array", "elem_type", "len",
/// "values", "truncated"}`, with only the first values unless `full`.
pub fn value_json(v: &Value, full: bool) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => float(*x as f64),
        Value::F64(x) => float(*x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => array_json(a, full),
    }
}

fn array_json(a: &Array, full: bool) -> Json {
    let n = if full {
        a.len()
    } else {
        a.len().min(ARRAY_PREVIEW)
    };
    let items: Vec<Json> = (0..n)
        .filter_map(|i| a.get(i))
        .map(|v| value_json(&v, full))
        .collect();
    // One shape whether or not the array is summarized.
    json!({
        "type": "array",
        "elem_type": a.elem_type().name(),
        "len": a.len(),
        "values": items,
        "truncated": n < a.len(),
    })
}

/// A value as one line of text for listings.
pub fn value_text(v: &Value, full: bool) -> String {
    match v {
        Value::String(s) => {
            let shown: String = if full {
                s.clone()
            } else {
                s.chars().take(STRING_PREVIEW).collect()
            };
            let mut out = format!("{shown:?}");
            if shown.len() < s.len() {
                out.push_str(&format!(" ... ({} bytes)", s.len()));
            }
            out
        }
        Value::Array(a) => {
            let n = if full {
                a.len()
            } else {
                a.len().min(ARRAY_PREVIEW)
            };
            let items: Vec<String> = (0..n)
                .filter_map(|i| a.get(i))
                .map(|v| value_text(&v, false))
                .collect();
            let more = if n < a.len() { ", ..." } else { "" };
            format!(
                "[{}{more}] ({} x {})",
                items.join(", "),
                a.len(),
                a.elem_type().name()
            )
        }
        other => value_json(other, full).to_string(),
    }
}
