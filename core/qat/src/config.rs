//! The QAT configuration: validated, read from JSON or TOML.

use crate::blockwise::{BlockLoss, BlockwiseConfig};
use crate::e2e::{DistillConfig, LossConfig};
use gguftool_quant::format::Ste;
use serde::{Deserialize, Serialize};

/// What one learnable scale covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One scale per block of the format (its `group_size`).
    Block,
    /// One scale shared by every block of a tensor (BitNet's per-tensor scale).
    Tensor,
}

/// Weights of the loss terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossWeights {
    /// Knowledge distillation from the full-precision teacher (KL at the temperature, times T^2).
    pub distill: f32,
    /// Task cross-entropy against the labels.
    pub task: f32,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            distill: 1.0,
            task: 0.0,
        }
    }
}

/// Low-rank adapters trained on a frozen quantized base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank of each adapter.
    pub rank: usize,
    /// Scaling: the update is `alpha / rank * B A`.
    pub alpha: f32,
    /// Patterns of the matrices that get adapters, as
    /// [`crate::lora::LoraConfig::targets`]: a block matrix's name without
    /// `.weight` (`blk.3.attn_q`) or its role (`attn_q`), `*` matching any
    /// run of characters.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    /// Rank 8, alpha 16, every block matrix.
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: crate::candle_model::BLOCK_MATRICES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// Everything a QAT run needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QatConfig {
    /// Registered format whose differentiable quantizer is trained.
    pub format: String,
    /// Expected bits per code of the format (checked when given).
    pub bits: Option<u32>,
    /// Straight-through estimator for the rounding.
    pub ste: Ste,
    /// Scale granularity.
    pub granularity: Granularity,
    /// Loss term weights.
    pub loss: LossWeights,
    /// Distillation temperature.
    pub temperature: f32,
    /// Passes over the training data.
    pub epochs: usize,
    /// Peak learning rate of the latent weights (AdamW).
    pub learning_rate: f32,
    /// Peak learning rate of the scales (default: `learning_rate`).
    pub scale_learning_rate: Option<f32>,
    /// Learn the latent weights (otherwise only the scales).
    pub learn_weights: bool,
    /// Parameterize scales as `alpha * pi / k` (PiQ's convention): the
    /// optimizer then works on `alpha`, which scales its steps by `pi / k`.
    pub pi_k: Option<f32>,
    /// Train in a randomized-Hadamard-rotated basis (incoherence processing).
    pub incoherence: bool,
    /// Linear warm-up steps before the cosine decay.
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f32>,
    /// Decoupled weight decay (AdamW) of the latent weights.
    pub weight_decay: f32,
    /// Examples per step.
    pub batch_size: usize,
    /// Seed of every random choice (initialization, shuffling, rotations).
    pub seed: u64,
    /// Optional low-rank adapters (LoRA-QAT).
    pub lora: Option<LoraConfig>,
    /// Micro-batches whose gradients are summed into one optimizer step
    /// (block stage).
    pub gradient_accumulation: usize,
    /// Train the norm gains of each block (block stage).
    pub learn_norms: bool,
    /// Feed each block the outputs of the trained quantized blocks before
    /// it, else the full-precision activations (block stage).
    pub quantized_inputs: bool,
    /// Train only the first this many blocks; later ones are converted as
    /// `convert` would (block stage).
    pub max_blocks: Option<usize>,
    /// The block-output error minimized: `"mse"` or `"rms-normalized"`
    /// (each position divided by its RMS first; block stage).
    pub block_loss: BlockLoss,
    /// Optimizer steps of end-to-end distillation (e2e and lora stages).
    pub steps: usize,
    /// Held-out evaluation every this many steps, choosing the kept step
    /// (e2e and lora stages).
    pub eval_every: usize,
    /// Positions per chunk of the output head in the distillation loss
    /// (bounds memory to about a dozen `head_chunk x n_vocab` f32 tensors;
    /// e2e and lora stages).
    pub head_chunk: usize,
}

impl Default for QatConfig {
    fn default() -> Self {
        Self {
            format: "ternary".into(),
            bits: None,
            ste: Ste::LearnedStepSize,
            granularity: Granularity::Block,
            loss: LossWeights::default(),
            temperature: 1.0,
            epochs: 3,
            learning_rate: 1e-3,
            scale_learning_rate: None,
            learn_weights: true,
            pi_k: None,
            incoherence: false,
            warmup_steps: 0,
            grad_clip: Some(1.0),
            weight_decay: 0.0,
            batch_size: 32,
            seed: 0,
            lora: None,
            gradient_accumulation: 1,
            learn_norms: true,
            quantized_inputs: true,
            max_blocks: None,
            block_loss: BlockLoss::RmsNormalized,
            steps: 100,
            eval_every: 25,
            head_chunk: 64,
        }
    }
}

/// A configuration field with an invalid value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("QAT config: {field}: {reason}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

fn positive_finite(field: &'static str, v: f32) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("must be a positive finite number, got {v}"),
        ))
    }
}

impl QatConfig {
    /// Parses JSON.
    pub fn from_json(s: &str) -> Result<Self, ConfigError> {
        let c: Self = serde_json::from_str(s).map_err(|e| bad("json", e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Parses TOML.
    pub fn from_toml(s: &str) -> Result<Self, ConfigError> {
        let c: Self = toml::from_str(s).map_err(|e| {
            // One line naming the key the error points at.
            let key = e.span().and_then(|sp| {
                let start = s[..sp.start.min(s.len())].rfind('\n').map_or(0, |i| i + 1);
                let line = s[start..].lines().next()?;
                line.split_once('=').map(|(k, _)| k.trim().to_string())
            });
            let msg = e.message().trim().to_string();
            bad("toml", key.map_or(msg.clone(), |k| format!("{k}: {msg}")))
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Serializes to TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fmt = gguftool_quant::registry::by_name(&self.format).ok_or_else(|| {
            bad(
                "format",
                format!("{:?} is not a registered format", self.format),
            )
        })?;
        if fmt.differentiable().is_none() {
            return Err(bad(
                "format",
                format!("{} has no differentiable quantizer", fmt.name()),
            ));
        }
        if let Some(b) = self.bits {
            let have = fmt.bits_per_weight().floor() as u32;
            if b != have {
                return Err(bad(
                    "bits",
                    format!("{b} does not match {} ({have} bits per weight)", fmt.name()),
                ));
            }
        }
        match self.ste {
            Ste::Clipped { clip } => positive_finite("ste.clip", clip)?,
            Ste::Ewgs { lambda } if !(lambda.is_finite() && lambda >= 0.0) => {
                return Err(bad("ste.lambda", format!("must be >= 0, got {lambda}")));
            }
            _ => {}
        }
        for (field, w) in [
            ("loss.distill", self.loss.distill),
            ("loss.task", self.loss.task),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(bad(field, format!("must be >= 0, got {w}")));
            }
        }
        if self.loss.distill + self.loss.task <= 0.0 {
            return Err(bad("loss", "at least one loss weight must be positive"));
        }
        positive_finite("temperature", self.temperature)?;
        if self.epochs == 0 {
            return Err(bad("epochs", "must be at least 1"));
        }
        positive_finite("learning_rate", self.learning_rate)?;
        if let Some(lr) = self.scale_learning_rate {
            positive_finite("scale_learning_rate", lr)?;
        }
        if let Some(k) = self.pi_k {
            positive_finite("pi_k", k)?;
        }
        if let Some(c) = self.grad_clip {
            positive_finite("grad_clip", c)?;
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad(
                "weight_decay",
                format!("must be >= 0, got {}", self.weight_decay),
            ));
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size", "must be at least 1"));
        }
        if self.gradient_accumulation == 0 {
            return Err(bad("gradient_accumulation", "must be at least 1"));
        }
        if self.max_blocks == Some(0) {
            return Err(bad("max_blocks", "must be at least 1"));
        }
        if self.steps == 0 {
            return Err(bad("steps", "must be at least 1"));
        }
        if self.eval_every == 0 {
            return Err(bad("eval_every", "must be at least 1"));
        }
        if self.head_chunk == 0 {
            return Err(bad("head_chunk", "must be at least 1"));
        }
        if let Some(l) = &self.lora {
            if l.rank == 0 {
                return Err(bad("lora.rank", "must be at least 1"));
            }
            positive_finite("lora.alpha", l.alpha)?;
            if l.targets.is_empty() {
                return Err(bad("lora.targets", "name at least one tensor"));
            }
            if let Some(t) = l.targets.iter().find(|t| t.trim().is_empty()) {
                return Err(bad("lora.targets", format!("empty pattern {t:?}")));
            }
        }
        Ok(())
    }

    /// Scale learning rate.
    pub fn scale_lr(&self) -> f32 {
        self.scale_learning_rate.unwrap_or(self.learning_rate)
    }

    /// Checks that the configuration suits block-wise reconstruction
    /// (`gguftool qat --stage block`) and translates it: `learning_rate`
    /// is the latent weights' step size and `scale_learning_rate` that of
    /// the scales and norm gains (both relative to each tensor's initial
    /// RMS, per Adam step); `grad_clip`, `warmup_steps` (per block) and
    /// `weight_decay` apply per step.
    ///
    /// # Errors
    /// [`QatConfig::validate`]'s, and a field the block stage does not use
    /// set to anything but its default (`granularity`, `loss`,
    /// `temperature`, `pi_k`, `incoherence`, `lora`).
    pub fn to_blockwise(&self) -> Result<BlockwiseConfig, ConfigError> {
        self.validate()?;
        let d = QatConfig::default();
        let unused = |field: &'static str, used_by: &str| {
            Err(bad(
                field,
                format!("not used by the block stage (remove it; {used_by})"),
            ))
        };
        let per_tensor = "--stage per-tensor uses it";
        let distill = "the distillation of --stage e2e, lora and all uses it";
        let library = "only the library's reference-model training uses it";
        if self.granularity != d.granularity {
            return unused("granularity", per_tensor);
        }
        if self.loss != d.loss {
            return unused("loss", distill);
        }
        if self.temperature != d.temperature {
            return unused("temperature", distill);
        }
        if self.pi_k.is_some() {
            return unused("pi_k", library);
        }
        if self.incoherence {
            return unused("incoherence", library);
        }
        if self.lora.is_some() {
            return unused("lora", "--stage lora uses it");
        }
        self.e2e_fields_unused("block")?;
        Ok(self.blockwise_unchecked())
    }

    /// The block-wise configuration of the block-stage fields (see
    /// [`QatConfig::to_blockwise`]), unchecked.
    fn blockwise_unchecked(&self) -> BlockwiseConfig {
        BlockwiseConfig {
            learning_rate: self.scale_lr() as f64,
            weight_learning_rate: self.learning_rate as f64,
            learn_weights: self.learn_weights,
            learn_norms: self.learn_norms,
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.gradient_accumulation,
            grad_clip: self.grad_clip.map(f64::from),
            warmup_steps: self.warmup_steps,
            weight_decay: self.weight_decay as f64,
            quantized_inputs: self.quantized_inputs,
            seed: self.seed,
            max_blocks: self.max_blocks,
            loss: self.block_loss,
        }
    }

    /// Refuses the fields only end-to-end distillation uses when they are
    /// not at their defaults, naming the stage that does not use them.
    fn e2e_fields_unused(&self, stage: &str) -> Result<(), ConfigError> {
        let d = QatConfig::default();
        let unused = |field: &'static str| {
            Err(bad(
                field,
                format!(
                    "not used by the {stage} stage (remove it, or use --stage e2e, lora or all)"
                ),
            ))
        };
        if self.steps != d.steps {
            return unused("steps");
        }
        if self.eval_every != d.eval_every {
            return unused("eval_every");
        }
        if self.head_chunk != d.head_chunk {
            return unused("head_chunk");
        }
        Ok(())
    }

    /// Refuses the fields neither end-to-end distillation nor LoRA-QAT use
    /// (`granularity`, `pi_k`, `incoherence`, and unless `block_too` the
    /// block-stage fields `epochs`, `max_blocks`, `quantized_inputs`,
    /// `warmup_steps`, `weight_decay`).
    fn distill_unused(&self, stage: &str, block_too: bool) -> Result<(), ConfigError> {
        let d = QatConfig::default();
        let unused = |field: &'static str| {
            Err(bad(
                field,
                format!("not used by the {stage} stage (remove it)"),
            ))
        };
        if self.granularity != d.granularity {
            return unused("granularity");
        }
        if self.pi_k.is_some() {
            return unused("pi_k");
        }
        if self.incoherence {
            return unused("incoherence");
        }
        if !block_too {
            if self.epochs != d.epochs {
                return unused("epochs");
            }
            if self.max_blocks.is_some() {
                return unused("max_blocks");
            }
            if self.quantized_inputs != d.quantized_inputs {
                return unused("quantized_inputs");
            }
            if self.block_loss != d.block_loss {
                return unused("block_loss");
            }
            if self.warmup_steps != d.warmup_steps {
                return unused("warmup_steps");
            }
            if self.weight_decay != d.weight_decay {
                return unused("weight_decay");
            }
        }
        Ok(())
    }

    /// The distillation settings common to the e2e, lora and all stages.
    fn distill_unchecked(&self) -> DistillConfig {
        DistillConfig {
            loss: LossConfig {
                temperature: self.temperature as f64,
                kd_weight: self.loss.distill as f64,
                ce_weight: self.loss.task as f64,
                chunk_positions: self.head_chunk,
            },
            learning_rate: self.scale_lr() as f64,
            weight_learning_rate: self.learning_rate as f64,
            lora_learning_rate: self.learning_rate as f64,
            learn_scales: true,
            learn_norms: self.learn_norms,
            learn_weights: self.learn_weights,
            learn_lora: false,
            steps: self.steps,
            batch_size: self.batch_size,
            grad_accum: self.gradient_accumulation,
            eval_every: self.eval_every,
            clip: self.grad_clip.map(f64::from),
            seed: self.seed,
        }
    }

    /// Checks that the configuration suits end-to-end distillation
    /// (`gguftool qat --stage e2e`) and translates it: `steps` Adam steps
    /// of `gradient_accumulation` micro-batches of `batch_size` sequences;
    /// `scale_learning_rate` is the step size of the scales and norm gains
    /// and `learning_rate` that of the latent weights (both relative to
    /// each tensor's initial RMS); the loss is `loss.distill` times `T^2`
    /// KL at `temperature` plus `loss.task` times the next-token
    /// cross-entropy, the output head in chunks of `head_chunk` positions;
    /// `grad_clip` clips the global gradient norm; the held-out KL every
    /// `eval_every` steps picks the kept step.
    ///
    /// # Errors
    /// [`QatConfig::validate`]'s, and a field the stage does not use set to
    /// anything but its default (`granularity`, `pi_k`, `incoherence`,
    /// `lora`, `epochs`, `max_blocks`, `quantized_inputs`, `warmup_steps`,
    /// `weight_decay`).
    pub fn to_e2e(&self) -> Result<DistillConfig, ConfigError> {
        self.validate()?;
        self.distill_unused("e2e", false)?;
        if self.lora.is_some() {
            return Err(bad("lora", "not used by the e2e stage (use --stage lora)"));
        }
        Ok(self.distill_unchecked())
    }

    /// Checks that the configuration suits LoRA-QAT (`gguftool qat --stage
    /// lora`) and translates it: as [`QatConfig::to_e2e`], but only the
    /// adapters `lora` describes are trained, with `learning_rate` as their
    /// (absolute) Adam step size; the base stays frozen. The adapters'
    /// initialisation is seeded by `seed`.
    ///
    /// # Errors
    /// As [`QatConfig::to_e2e`] (but `lora` is required), and
    /// `learn_weights`, `learn_norms` or `scale_learning_rate` set (the base
    /// is frozen).
    pub fn to_lora(&self) -> Result<(DistillConfig, crate::lora::LoraConfig), ConfigError> {
        self.validate()?;
        self.distill_unused("lora", false)?;
        let frozen = |field: &'static str| {
            Err(bad(
                field,
                "the lora stage trains only the adapters over a frozen base (remove it, or use --stage e2e)",
            ))
        };
        if self.learn_weights {
            return frozen("learn_weights");
        }
        if self.learn_norms {
            return frozen("learn_norms");
        }
        if self.scale_learning_rate.is_some() {
            return frozen("scale_learning_rate");
        }
        let Some(l) = &self.lora else {
            return Err(bad("lora", "the lora stage needs { rank, alpha, targets }"));
        };
        let cfg = DistillConfig {
            learn_scales: false,
            learn_norms: false,
            learn_weights: false,
            learn_lora: true,
            ..self.distill_unchecked()
        };
        let lora = crate::lora::LoraConfig {
            rank: l.rank,
            alpha: l.alpha,
            targets: l.targets.clone(),
            seed: self.seed,
        };
        Ok((cfg, lora))
    }

    /// Checks that the configuration suits `gguftool qat --stage all`
    /// (block-wise reconstruction, then end-to-end distillation from its
    /// result) and translates it into both stages' settings: the block
    /// stage's fields as [`QatConfig::to_blockwise`], the distillation's as
    /// [`QatConfig::to_e2e`]; the fields both use (`learning_rate`,
    /// `scale_learning_rate`, `learn_weights`, `learn_norms`, `batch_size`,
    /// `gradient_accumulation`, `grad_clip`, `seed`) apply to both.
    ///
    /// # Errors
    /// [`QatConfig::validate`]'s, and `granularity`, `pi_k`, `incoherence`
    /// or `lora` set.
    pub fn to_all(&self) -> Result<(BlockwiseConfig, DistillConfig), ConfigError> {
        self.validate()?;
        self.distill_unused("all", true)?;
        if self.lora.is_some() {
            return Err(bad("lora", "not used by the all stage (use --stage lora)"));
        }
        Ok((self.blockwise_unchecked(), self.distill_unchecked()))
    }

    /// Checks that the configuration suits per-tensor QAT: the block-stage
    /// fields keep their defaults.
    ///
    /// # Errors
    /// [`QatConfig::validate`]'s, and a block-stage field set.
    pub fn check_per_tensor(&self) -> Result<(), ConfigError> {
        self.validate()?;
        let d = QatConfig::default();
        let unused = |field: &'static str| {
            Err(bad(
                field,
                "not used by the per-tensor stage (remove it, or use --stage block)",
            ))
        };
        if self.gradient_accumulation != d.gradient_accumulation {
            return unused("gradient_accumulation");
        }
        if self.learn_norms != d.learn_norms {
            return unused("learn_norms");
        }
        if self.quantized_inputs != d.quantized_inputs {
            return unused("quantized_inputs");
        }
        if self.max_blocks.is_some() {
            return unused("max_blocks");
        }
        if self.block_loss != d.block_loss {
            return unused("block_loss");
        }
        self.e2e_fields_unused("per-tensor")
    }
}

/// The defaults of `gguftool qat --stage block` (`QUALITY.md` 3c step 4):
/// scales and norm gains only (Adam, step 5e-3 of their RMS), latent
/// weights frozen (step 1e-4 when `learn_weights`), 2 epochs per block, 4
/// sequences per step, no clipping.
pub fn block_default_config() -> QatConfig {
    QatConfig {
        learning_rate: 1e-4,
        scale_learning_rate: Some(5e-3),
        learn_weights: false,
        epochs: 2,
        batch_size: 4,
        grad_clip: None,
        ..QatConfig::default()
    }
}

/// The defaults of `gguftool qat --stage e2e`: Adam on the scales and norm
/// gains at 1e-3 of their RMS (latent weights frozen; 1e-4 when
/// `learn_weights`), 100 steps of 4 sequences, KL at temperature 1 only,
/// the held-out KL every 25 steps, no clipping.
pub fn e2e_default_config() -> QatConfig {
    QatConfig {
        learning_rate: 1e-4,
        scale_learning_rate: Some(1e-3),
        learn_weights: false,
        batch_size: 4,
        grad_clip: None,
        ..QatConfig::default()
    }
}

/// The defaults of `gguftool qat --stage lora`: rank-8 adapters (alpha 16)
/// on every block matrix, Adam at 5e-4 (absolute), base frozen (no latent
/// weights, scales or norm gains trained), otherwise as
/// [`e2e_default_config`].
pub fn lora_default_config() -> QatConfig {
    QatConfig {
        learning_rate: 5e-4,
        scale_learning_rate: None,
        learn_weights: false,
        learn_norms: false,
        batch_size: 4,
        grad_clip: None,
        lora: Some(LoraConfig::default()),
        ..QatConfig::default()
    }
}

/// The defaults of `gguftool qat --stage all`: the block stage's
/// ([`block_default_config`]) for every field it uses, also in the
/// distillation that follows; the distillation-only fields as in
/// [`e2e_default_config`].
pub fn all_default_config() -> QatConfig {
    let e = e2e_default_config();
    QatConfig {
        steps: e.steps,
        eval_every: e.eval_every,
        head_chunk: e.head_chunk,
        temperature: e.temperature,
        loss: e.loss,
        ..block_default_config()
    }
}
