//! `--lora FILE` and `--lora-scaled FILE SCALE` (llama.cpp's flags) for the
//! commands that run a model: adapters applied at run time by
//! [`Model::apply_lora`].

use crate::escape::escape_for_terminal as esc;
use gguftool_model::lora::read_lora_gguf;
use gguftool_model::Model;
use std::path::PathBuf;

/// LoRA adapter flags, flattened into a command's arguments.
#[derive(clap::Args, Debug, Default)]
pub struct LoraArgs {
    /// LoRA adapter (llama.cpp's adapter GGUF) applied at scale 1; repeatable.
    #[arg(long = "lora", value_name = "FILE")]
    pub lora: Vec<PathBuf>,
    /// LoRA adapter applied at a user scale; repeatable.
    #[arg(long = "lora-scaled", num_args = 2, value_names = ["FILE", "SCALE"])]
    pub lora_scaled: Vec<String>,
}

impl LoraArgs {
    /// The adapters with their scales, flags in the order given per kind.
    ///
    /// # Errors
    /// A scale that is not a finite number (a usage error, the message).
    pub fn adapters(&self) -> Result<Vec<(PathBuf, f32)>, String> {
        let mut out: Vec<(PathBuf, f32)> = self.lora.iter().map(|p| (p.clone(), 1.0)).collect();
        for pair in self.lora_scaled.chunks(2) {
            let [file, scale] = pair else {
                return Err("--lora-scaled needs FILE SCALE".into());
            };
            let s: f32 = scale
                .parse()
                .ok()
                .filter(|s: &f32| s.is_finite())
                .ok_or_else(|| {
                    format!("--lora-scaled {file} {scale}: SCALE must be a finite number")
                })?;
            out.push((PathBuf::from(file), s));
        }
        Ok(out)
    }

    /// Reads every adapter and attaches it to `model`, printing one line
    /// each to stderr.
    ///
    /// # Errors
    /// A malformed adapter file or one that does not fit the model, as the
    /// message (a file error).
    pub fn apply(adapters: &[(PathBuf, f32)], model: &mut Model) -> Result<(), String> {
        for (path, scale) in adapters {
            let file = read_lora_gguf(path).map_err(|e| e.to_string())?;
            let n = model
                .apply_lora(&file, *scale)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!(
                "lora: {} ({n} matrices, alpha {}, scale {scale})",
                esc(&path.display().to_string()),
                file.alpha
            );
        }
        Ok(())
    }
}
