//! `--lora FNAME[,...]` and `--lora-scaled FNAME:SCALE[,...]` (llama.cpp's
//! flags) for the commands that run a model: adapters applied at run time by
//! [`Model::apply_lora`].

use crate::escape::escape_for_terminal as esc;
use gguftool_model::lora::read_lora_gguf;
use gguftool_model::Model;
use std::path::PathBuf;

/// LoRA adapter flags, flattened into a command's arguments; the syntax is
/// llama.cpp's (common/arg.cpp): comma-separated lists, `FNAME:SCALE`.
#[derive(clap::Args, Debug, Default)]
pub struct LoraArgs {
    /// LoRA adapter (llama.cpp's adapter GGUF) applied at scale 1; several
    /// comma-separated or the flag repeated.
    #[arg(long = "lora", value_name = "FNAME")]
    pub lora: Vec<String>,
    /// LoRA adapter applied at a user scale, as FNAME:SCALE; several
    /// comma-separated or the flag repeated.
    #[arg(long = "lora-scaled", value_name = "FNAME:SCALE,...")]
    pub lora_scaled: Vec<String>,
}

impl LoraArgs {
    /// The adapters with their scales: `--lora` ones first, each flag's
    /// list in order.
    ///
    /// # Errors
    /// An empty file name, or a `--lora-scaled` item without `:SCALE` or
    /// whose scale is not a finite number (a usage error, the message).
    pub fn adapters(&self) -> Result<Vec<(PathBuf, f32)>, String> {
        let mut out = Vec::new();
        for item in self.lora.iter().flat_map(|l| l.split(',')) {
            if item.is_empty() {
                return Err("--lora: empty file name".into());
            }
            out.push((PathBuf::from(item), 1.0));
        }
        for item in self.lora_scaled.iter().flat_map(|l| l.split(',')) {
            let bad =
                || format!("--lora-scaled {item:?}: expected FNAME:SCALE with a finite SCALE");
            let (file, scale) = item.rsplit_once(':').ok_or_else(bad)?;
            let s: f32 = scale
                .parse()
                .ok()
                .filter(|s: &f32| s.is_finite())
                .ok_or_else(bad)?;
            if file.is_empty() {
                return Err(bad());
            }
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
