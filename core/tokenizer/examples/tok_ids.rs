//! Prints the ids of a file's text in llama-tokenize's `--ids` format:
//! `tok_ids MODEL FILE [--no-parse-special] [--no-bos]` (the text is used verbatim).

use gguftool_tokenizer::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (model, file) = (&args[1], &args[2]);
    let parse_special = !args.iter().any(|a| a == "--no-parse-special");
    let no_bos = args.iter().any(|a| a == "--no-bos");
    let tok = Tokenizer::from_gguf_file(model, &gguftool_gguf::validate::StandardTypes)?;
    let text = std::fs::read_to_string(file)?;
    let add_special = tok.vocab().add_bos() && !no_bos;
    let t = std::time::Instant::now();
    let ids = tok.tokenize(&text, add_special, parse_special)?;
    eprintln!("{} tokens in {:?}", ids.len(), t.elapsed());
    let s: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    println!("[{}]", s.join(", "));
    Ok(())
}
