//! Conversions through a registered recipe (`convert --format mixed`): the
//! policy decides which matrices a recipe may assign, the recipe chooses a
//! format for each, and the choices become per-tensor overrides of the
//! ordinary policy.

use crate::policy::{self, Provenance, QuantPolicy};
use crate::{Plan, TensorAction};
use gguftool_calib::calib_file::Calibration;
use gguftool_gguf::value::Value;
use gguftool_gguf::Error;
use gguftool_gguf::GgufFile;
use gguftool_quant::format::Format;
use gguftool_quant::recipe::{
    Allocation, HessianFn, Objective, QuadraticForm, Recipe, RecipeError, RecipeRequest,
};
use gguftool_quant::registry;
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;

/// Settings of a conversion through a recipe.
pub struct RecipeSettings<'a> {
    /// Average bits per weight allowed over the assigned tensors.
    pub bpw: f64,
    /// Candidate formats (empty: [`registry::default_candidates`]).
    pub candidates: &'a [&'static dyn Format],
    /// Rows sampled per tensor when measuring.
    pub sample_rows: u64,
    /// How errors are compared across tensors.
    pub objective: Objective,
    /// Leave output.weight (and a tied token_embd.weight) to the policy's
    /// output type instead of assigning it.
    pub pin_output: bool,
    /// Leave token_embd.weight to the policy's embedding type.
    pub pin_embedding: bool,
    /// Input Hessians (`convert --calibration`): tensors whose input they
    /// cover are measured by `tr(dW H dW^T)` instead of their importance.
    pub calibration: Option<&'a Calibration>,
}

/// Metadata key naming what the recipe measured errors with: `hessian`
/// (some tensors by their input Hessian), `imatrix` (diagonal importance
/// only) or `unweighted`.
pub const KEY_SENSITIVITY: &str = "gguftool.convert.sensitivity";
/// Metadata key: how many allocated tensors were measured with their Hessian.
pub const KEY_HESSIAN_TENSORS: &str = "gguftool.convert.sensitivity_hessian_tensors";

/// Plans a conversion through `recipe`: returns the plan and the recipe's
/// allocation behind it.
///
/// # Errors
/// [`RecipeError::Invalid`] for unusable settings, [`RecipeError::Data`]
/// for everything the ordinary plan or the measurement reports.
pub fn plan(
    src: &GgufFile,
    recipe: &dyn Recipe,
    mut policy: QuantPolicy,
    provenance: &Provenance,
    settings: &RecipeSettings,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(Plan, Allocation), RecipeError> {
    let cands = if settings.candidates.is_empty() {
        registry::default_candidates()
    } else {
        settings.candidates.to_vec()
    };
    // Any candidate with the smallest block finds the tensors to allocate.
    let probe = *cands
        .iter()
        .min_by_key(|f| f.block_size())
        .ok_or_else(|| RecipeError::Invalid(format!("{}: no candidate formats", recipe.name())))?;
    if probe.block_size() <= 1 {
        return Err(RecipeError::Invalid(format!(
            "--candidates: {} is not a quantized block format that can encode",
            probe.name()
        )));
    }
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
            let pinned = (settings.pin_output && name == policy::OUTPUT_TENSOR)
                || (name == policy::TOKEN_EMBEDDING
                    && (settings.pin_embedding || (tied && settings.pin_output)));
            !overridden && !pinned
        })
        .map(|t| (t.source_index, t.importance.clone()))
        .collect();
    let indices: Vec<usize> = allocatable.iter().map(|(i, _)| *i).collect();
    let importance: HashMap<usize, Arc<Vec<f32>>> = allocatable
        .into_iter()
        .filter_map(|(i, m)| m.map(|m| (i, m)))
        .collect();
    let lookup = |i: usize| importance.get(&i).cloned();
    let hessian_of = |i: usize| -> Option<&dyn QuadraticForm> {
        let t = h.tensors.get(i)?;
        let hs = settings.calibration?.hessian_for(&t.name)?;
        (hs.n() as u64 == t.row_len()).then_some(hs as &dyn QuadraticForm)
    };
    let hessian_tensors = indices.iter().filter(|&&i| hessian_of(i).is_some()).count();
    let alloc = recipe.assign(&RecipeRequest {
        source: src,
        tensors: &indices,
        importance: &lookup,
        hessian: (hessian_tensors > 0).then_some(&hessian_of as &HessianFn),
        bits_per_weight: settings.bpw,
        candidates: &cands,
        sample_rows: settings.sample_rows,
        objective: settings.objective,
        progress,
    })?;
    for c in &alloc.choices {
        let re = Regex::new(&format!("^{}$", regex::escape(&c.name)))
            .map_err(|e| Error::Other(e.to_string()))?;
        let f = registry::by_name(c.format).ok_or_else(|| {
            Error::Other(format!(
                "{}: chose unregistered format {}",
                recipe.name(),
                c.format
            ))
        })?;
        policy.tensor_types.push((re, f));
    }
    let mut plan = policy::plan(src, &policy, provenance)?;
    plan.metadata.remove_where(|k| k == "general.file_type");
    plan.metadata.set(
        "gguftool.convert.format",
        Value::String(recipe.name().into()),
    );
    plan.metadata
        .set("gguftool.convert.bpw_budget", Value::F64(settings.bpw));
    let sensitivity = if hessian_tensors > 0 {
        "hessian"
    } else if importance.is_empty() {
        "unweighted"
    } else {
        "imatrix"
    };
    plan.metadata
        .set(KEY_SENSITIVITY, Value::String(sensitivity.into()));
    plan.metadata.set(
        KEY_HESSIAN_TENSORS,
        Value::U32(hessian_tensors.try_into().unwrap_or(u32::MAX)),
    );
    Ok((plan, alloc))
}
