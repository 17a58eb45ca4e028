//! The `mixed` recipe: measure each candidate's error per tensor, then
//! allocate formats under the bits-per-weight budget.

use crate::{allocate, sensitivity};
use gguftool_quant::format::Format;
use gguftool_quant::recipe::{Allocation, Recipe, RecipeError, RecipeRequest};
use gguftool_quant::register_recipe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Mixed precision under a bits-per-weight budget.
pub struct Mixed;

register_recipe!(MIXED, &Mixed);

/// Checks the candidates and the budget before anything is measured.
pub fn validate(candidates: &[&'static dyn Format], bpw: f64) -> Result<(), RecipeError> {
    if candidates.is_empty() {
        return Err(RecipeError::Invalid("mixed: no candidate formats".into()));
    }
    for f in candidates {
        if f.block_size() <= 1 || f.quantizer().is_none() {
            return Err(RecipeError::Invalid(format!(
                "--candidates: {} is not a quantized block format that can encode",
                f.name()
            )));
        }
    }
    let lo = candidates
        .iter()
        .map(|f| f.bits_per_weight())
        .fold(f64::INFINITY, f64::min);
    let hi = candidates
        .iter()
        .map(|f| f.bits_per_weight())
        .fold(0.0, f64::max);
    if !bpw.is_finite() || bpw <= 0.0 {
        return Err(RecipeError::Invalid(format!(
            "--bpw {bpw}: expected a finite number of bits per weight in {lo:.4}..={hi:.4}"
        )));
    }
    if bpw < lo {
        return Err(RecipeError::Invalid(format!(
            "--bpw {bpw} is below the smallest candidate ({lo:.4} bpw; candidates span {lo:.4}..={hi:.4})"
        )));
    }
    if bpw > hi {
        return Err(RecipeError::Invalid(format!(
            "--bpw {bpw} is above the largest candidate ({hi:.4} bpw; candidates span {lo:.4}..={hi:.4})"
        )));
    }
    Ok(())
}

impl Recipe for Mixed {
    fn name(&self) -> &'static str {
        "mixed"
    }

    fn description(&self) -> &'static str {
        "one format per tensor from --candidates, least error under the --bpw budget"
    }

    fn validate(&self, candidates: &[&'static dyn Format], bpw: f64) -> Result<(), RecipeError> {
        validate(candidates, bpw)
    }

    fn assign(&self, req: &RecipeRequest) -> Result<Allocation, RecipeError> {
        validate(req.candidates, req.bits_per_weight)?;
        if req.tensors.is_empty() {
            return Err(RecipeError::Invalid(
                "mixed: no tensor left to allocate (every matrix is kept, pinned or overridden)"
                    .into(),
            ));
        }
        let tensors: Vec<(usize, Option<Arc<Vec<f32>>>)> = req
            .tensors
            .iter()
            .map(|&i| (i, (req.importance)(i)))
            .collect();
        let total = (tensors.len() * req.candidates.len()) as u64;
        let done = AtomicU64::new(0);
        let sens = sensitivity(
            req.source,
            &tensors,
            req.hessian,
            req.candidates,
            req.sample_rows.max(1),
            req.objective,
            &|| {
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                (req.progress)(d, total);
            },
        )?;
        allocate(&sens, req.bits_per_weight)
            .map_err(|e| RecipeError::Invalid(format!("mixed: {e}")))
    }
}
