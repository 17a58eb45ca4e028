//! Writes a vocab-only copy of a GGUF model: `general.architecture`,
//! `general.name` and every `tokenizer.*` key, no tensors.
//! `cargo run -p gguftool-tokenizer --example vocab_only -- IN.gguf OUT.gguf`
//! (made `fixtures/tokenizer/smollm2-vocab.gguf` from SmolLM2-135M-Instruct, Apache-2.0).

use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::write::GgufWriter;
use gguftool_gguf::{GgufFile, Metadata};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (input, output) = (&args[1], &args[2]);
    let file = GgufFile::open(input, &StandardTypes)?;
    let keep = |k: &str| {
        k == "general.architecture"
            || k == "general.name"
            || (k.starts_with("tokenizer.") && k != "tokenizer.chat_template")
    };
    let entries = file
        .header()
        .metadata
        .entries()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let md = Metadata::from_entries(entries);
    let out = std::fs::File::create(output)?;
    GgufWriter::begin(out, &md, Vec::new(), &StandardTypes)?.finish()?;
    Ok(())
}
