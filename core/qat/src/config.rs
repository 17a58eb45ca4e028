//! The QAT configuration: validated, read from JSON or TOML.

use crate::blockwise::BlockwiseConfig;
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
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of each adapter.
    pub rank: usize,
    /// Scaling: the update is `alpha / rank * B A`.
    pub alpha: f32,
    /// Names (or name substrings) of the tensors that get adapters.
    pub targets: Vec<String>,
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
        if let Some(l) = &self.lora {
            if l.rank == 0 {
                return Err(bad("lora.rank", "must be at least 1"));
            }
            positive_finite("lora.alpha", l.alpha)?;
            if l.targets.is_empty() {
                return Err(bad("lora.targets", "name at least one tensor"));
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
        let unused = |field: &'static str| {
            Err(bad(
                field,
                "not used by the block stage (remove it, or use --stage per-tensor)",
            ))
        };
        if self.granularity != d.granularity {
            return unused("granularity");
        }
        if self.loss != d.loss {
            return unused("loss");
        }
        if self.temperature != d.temperature {
            return unused("temperature");
        }
        if self.pi_k.is_some() {
            return unused("pi_k");
        }
        if self.incoherence {
            return unused("incoherence");
        }
        if self.lora.is_some() {
            return unused("lora");
        }
        Ok(BlockwiseConfig {
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
        })
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
        Ok(())
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
