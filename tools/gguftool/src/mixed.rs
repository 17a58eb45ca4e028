//! `convert --format mixed`: measure each candidate format's error per
//! tensor, allocate formats under the bits-per-weight budget, and turn the
//! allocation into per-tensor overrides of the ordinary policy.

use gguftool_convert::policy::{self, format_by_name, Provenance, QuantPolicy};
use gguftool_convert::{Plan, TensorAction};
use gguftool_gguf::value::Value;
use gguftool_gguf::Error;
use gguftool_gguf::GgufFile;
use gguftool_mixed::{allocate, sensitivity, Allocation, Objective};
use gguftool_quant::format::Format;
use gguftool_quant::registry;
use regex::Regex;
use std::sync::Arc;

/// Settings of a mixed-precision conversion.
pub struct MixedArgs<'a> {
    /// Average bits per weight allowed over the allocated tensors.
    pub bpw: f64,
    /// Candidate format names (empty: every registered block format that can
    /// encode and suits post-training quantization).
    pub candidates: &'a [String],
    /// Rows sampled per tensor when measuring.
    pub sample_rows: u64,
    /// How errors are compared across tensors.
    pub objective: Objective,
    /// Leave output.weight (and a tied token_embd.weight) to the policy's
    /// output type instead of allocating it.
    pub pin_output: bool,
    /// Leave token_embd.weight to the policy's embedding type.
    pub pin_embedding: bool,
}

/// The candidate formats.
pub fn candidates(names: &[String]) -> Result<Vec<&'static dyn Format>, Error> {
    if names.is_empty() {
        // `block_formats` is already ordered by type id.
        return Ok(registry::block_formats()
            .into_iter()
            .filter(|f| f.quantizer().is_some() && f.suits_post_training())
            .collect());
    }
    names.iter().map(|n| format_by_name(n)).collect()
}

/// Plans a mixed conversion: returns the plan and the allocation behind it.
pub fn plan(
    src: &GgufFile,
    mut policy: QuantPolicy,
    provenance: &Provenance,
    args: &MixedArgs,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(Plan, Allocation), Error> {
    let cands = candidates(args.candidates)?;
    if cands.is_empty() {
        return Err(Error::Other("mixed: no candidate formats".into()));
    }
    // Any candidate with the smallest block finds the tensors to allocate.
    let probe = *cands
        .iter()
        .min_by_key(|f| f.block_size())
        .ok_or_else(|| Error::Other("mixed: no candidate formats".into()))?;
    policy.format = probe;
    let user_overrides = policy.tensor_types.clone();
    let base = policy::plan(src, &policy, provenance)?;
    let h = src.header();
    let tied = h.tensor_index(policy::OUTPUT_TENSOR).is_none();
    let allocatable: Vec<(usize, Option<Arc<Vec<f32>>>)> = base
        .tensors
        .iter()
        .filter(|t| matches!(t.action, TensorAction::Transcode { target, .. } if target.block_size() > 1))
        .filter(|t| {
            let name = &h.tensors[t.source_index].name;
            let overridden = user_overrides.iter().any(|(re, _)| re.is_match(name));
            let pinned = (args.pin_output && name == policy::OUTPUT_TENSOR)
                || (name == policy::TOKEN_EMBEDDING
                    && (args.pin_embedding || (tied && args.pin_output)));
            !overridden && !pinned
        })
        .map(|t| (t.source_index, t.importance.clone()))
        .collect();
    let total = (allocatable.len() * cands.len()) as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    let sens = sensitivity(
        src,
        &allocatable,
        &cands,
        args.sample_rows,
        args.objective,
        &|| {
            let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            progress(d, total);
        },
    )?;
    let alloc = allocate(&sens, args.bpw).map_err(|e| Error::Other(format!("mixed: {e}")))?;
    for c in &alloc.choices {
        let re = Regex::new(&format!("^{}$", regex::escape(&c.name)))
            .map_err(|e| Error::Other(e.to_string()))?;
        policy.tensor_types.push((re, format_by_name(c.format)?));
    }
    let mut plan = policy::plan(src, &policy, provenance)?;
    plan.metadata.remove_where(|k| k == "general.file_type");
    plan.metadata
        .set("gguftool.convert.format", Value::String("mixed".into()));
    plan.metadata
        .set("gguftool.convert.bpw_budget", Value::F64(args.bpw));
    Ok((plan, alloc))
}

/// Prints the allocation table.
pub fn print_allocation(alloc: &Allocation) {
    println!(
        "{:<40} {:>12} {:<12} {:>8} {:>14}",
        "tensor", "elements", "format", "bpw", "est. error"
    );
    for c in &alloc.choices {
        println!(
            "{:<40} {:>12} {:<12} {:>8.4} {:>14.6e}",
            c.name,
            c.elements,
            c.format,
            c.bits as f64 / c.elements.max(1) as f64,
            c.error
        );
    }
    let mut by_format: Vec<(&str, u64)> = Vec::new();
    for c in &alloc.choices {
        match by_format.iter_mut().find(|(f, _)| *f == c.format) {
            Some((_, n)) => *n += c.elements,
            None => by_format.push((c.format, c.elements)),
        }
    }
    let total: u64 = alloc.choices.iter().map(|c| c.elements).sum();
    let shares: Vec<String> = by_format
        .iter()
        .map(|(f, n)| format!("{f} {:.1}%", 100.0 * *n as f64 / total.max(1) as f64))
        .collect();
    println!(
        "\nallocated {} tensors at {:.4} bpw (elements: {}); estimated total error {:.6e}\n",
        alloc.choices.len(),
        alloc.bits_per_weight,
        shares.join(", "),
        alloc.total_error
    );
}
