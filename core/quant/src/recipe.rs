//! Recipes: registered strategies that choose a format for each tensor of a
//! model (for example `mixed`, which allocates formats under a bits-per-weight
//! budget). A recipe registers with [`crate::register_recipe!`] into
//! [`crate::registry::RECIPES`], next to the formats; `convert --format NAME`
//! looks up formats first, then recipes.
//!
//! A recipe only chooses: the caller's conversion policy decides which tensors
//! may be assigned, supplies their importance, and encodes the result.

use crate::format::Format;
use gguftool_gguf::GgufFile;
use std::sync::Arc;

/// How a tensor's quantization error is compared across tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Objective {
    /// `sum imp * (w - q)^2 / sum imp * w^2` on the sampled rows (with a
    /// Hessian: `tr(dW H dW^T) / tr(W H W^T)`): the relative output noise
    /// of the matrix (scale-free, so tensors with and without importance
    /// data, or of different magnitudes, compare).
    Relative,
    /// `sum imp * (w - q)^2` (with a Hessian: `tr(dW H dW^T)`) scaled to the
    /// whole tensor: the expected squared output error when the importance
    /// holds the inputs' second moments.
    Absolute,
}

/// Per-tensor importance (per-column weights, `row_len` or `row_len` per
/// stacked matrix) of the tensor at a source index, when known.
pub type ImportanceFn<'a> = dyn Fn(usize) -> Option<Arc<Vec<f32>>> + Sync + 'a;

/// A positive semi-definite quadratic form `d -> d^T H d` over a tensor's
/// input (row length `n`, original basis): the mean second moments of the
/// inputs per token, `H = X^T X / tokens` (so that its diagonal is what an
/// imatrix holds, and tensors measured either way compare), and
/// `sum_rows d^T H d = tr(dW H dW^T)` is the mean squared output error of a
/// weight change `dW`. Recipes use it to measure a
/// candidate's error on the tensor's real inputs; it is defined here so
/// that formats need not depend on the crate that collects it.
pub trait QuadraticForm: Send + Sync {
    /// Input width `n`.
    fn width(&self) -> usize;
    /// `sum_r d_r^T H d_r` over the rows `d_r` of `d` (one or more rows of
    /// length [`QuadraticForm::width`], concatenated): `tr(D H D^T)`.
    /// Implementations may return 0 for a length that is not a multiple of
    /// the width.
    fn eval_rows(&self, d: &[f32]) -> f64;
    /// `diag(H)`, the per-column importance (an imatrix's values).
    fn diagonal(&self) -> Vec<f32>;
}

/// The input Hessian of the tensor at a source index, when calibrated.
pub type HessianFn<'a> = dyn Fn(usize) -> Option<&'a dyn QuadraticForm> + Sync + 'a;

/// What a recipe is asked to assign.
pub struct RecipeRequest<'a> {
    /// The source model.
    pub source: &'a GgufFile,
    /// Source indices of the tensors to assign a format to.
    pub tensors: &'a [usize],
    /// Importance of a tensor, by source index.
    pub importance: &'a ImportanceFn<'a>,
    /// Full input Hessians, by source index, when a calibration file is
    /// given: a recipe then measures errors as `tr(dW H dW^T)` instead of
    /// the diagonal importance.
    pub hessian: Option<&'a HessianFn<'a>>,
    /// Average bits per weight allowed over the assigned tensors.
    pub bits_per_weight: f64,
    /// Candidate formats (quantized block formats that can encode).
    pub candidates: &'a [&'static dyn Format],
    /// Rows sampled per tensor when measuring errors.
    pub sample_rows: u64,
    /// How errors are compared across tensors.
    pub objective: Objective,
    /// Called with (done, total) as measurements complete.
    pub progress: &'a (dyn Fn(u64, u64) + Sync),
}

/// The format chosen for one tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Choice {
    /// Index of the tensor in the source file.
    pub index: usize,
    /// Tensor name.
    pub name: String,
    /// Chosen format (a registered format name).
    pub format: &'static str,
    /// Bits of the tensor in that format.
    pub bits: u64,
    /// Its estimated error.
    pub error: f64,
    /// Element count.
    pub elements: u64,
}

/// A complete assignment: one format per requested tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Allocation {
    /// One choice per tensor, in request order.
    pub choices: Vec<Choice>,
    /// Average bits per weight reached.
    pub bits_per_weight: f64,
    /// Sum of the chosen errors.
    pub total_error: f64,
}

/// Why a recipe could not assign formats.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The request itself is unusable (budget, candidates): the caller's
    /// arguments are at fault.
    #[error("{0}")]
    Invalid(String),
    /// Reading or measuring the model failed.
    #[error(transparent)]
    Data(#[from] gguftool_gguf::Error),
}

/// A registered per-tensor format assignment strategy.
pub trait Recipe: Sync {
    /// Name used on the command line (`convert --format NAME`); unique among
    /// formats and recipes, case-insensitively.
    fn name(&self) -> &'static str;
    /// One line for `gguftool formats`.
    fn description(&self) -> &'static str;
    /// Checks a budget and candidate list before anything is read, so that
    /// callers can reject bad arguments early. The default accepts all.
    ///
    /// # Errors
    /// [`RecipeError::Invalid`] describing the problem.
    fn validate(
        &self,
        candidates: &[&'static dyn Format],
        bits_per_weight: f64,
    ) -> Result<(), RecipeError> {
        let _ = (candidates, bits_per_weight);
        Ok(())
    }
    /// Chooses a format for each requested tensor.
    ///
    /// # Errors
    /// [`RecipeError::Invalid`] for an unusable budget or candidate list,
    /// [`RecipeError::Data`] when the model cannot be read or measured.
    fn assign(&self, request: &RecipeRequest) -> Result<Allocation, RecipeError>;
}
