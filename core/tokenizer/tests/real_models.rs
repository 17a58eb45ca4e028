//! Real-model tokenizer checks against llama-tokenize goldens. Ignored by
//! default; run after `fixtures/fetch-real-models.sh` with
//! `cargo test --release -p gguftool-tokenizer --test real_models -- --ignored`.
//! Full-text goldens (SOTU 40k, Brown 100k) are checked when
//! `scripts/tokenizer_golden.sh` has written them to `target/tokenizer-golden/`.

use gguftool_tokenizer::{TokenId, Tokenizer};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model(name: &str) -> Tokenizer {
    let dir = std::env::var_os("GGUFTOOL_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: run fixtures/fetch-real-models.sh",
        p.display()
    );
    Tokenizer::from_gguf_file(&p, &gguftool_gguf::validate::StandardTypes).unwrap()
}

fn parse_ids(s: &str) -> Vec<TokenId> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    s.split(", ")
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect()
}

/// Compares every golden `PREFIX_NAME{,.nps,.nobos}.ids` in `golden_dir` whose text is in `text_dir`.
fn check(tok: &Tokenizer, prefix: &str, text_dir: &Path, golden_dir: &Path) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(text_dir) else {
        return 0;
    };
    for e in rd {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("txt") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let add_bos = tok.vocab().add_bos();
        for (suffix, add_special, parse_special) in [
            ("", add_bos, true),
            (".nps", add_bos, false),
            (".nobos", false, true),
        ] {
            let golden = golden_dir.join(format!("{prefix}_{name}{suffix}.ids"));
            let Ok(s) = std::fs::read_to_string(&golden) else {
                continue;
            };
            let want = parse_ids(&s);
            let got = tok.tokenize(&text, add_special, parse_special).unwrap();
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            assert!(
                got == want,
                "{}: {} ids vs {} golden, first difference at {first:?}",
                golden.display(),
                got.len(),
                want.len()
            );
            n += 1;
        }
    }
    n
}

fn check_all(file: &str, prefix: &str) {
    let tok = model(file);
    let fx = root().join("fixtures/tokenizer");
    assert!(check(&tok, prefix, &fx.join("texts"), &fx) >= 12);
    let big = root().join("target/tokenizer-golden");
    let n = check(&tok, prefix, &big, &big);
    eprintln!("{prefix}: {n} full-text goldens checked");
}

#[test]
#[ignore]
fn gemma3_matches_llama_tokenize() {
    check_all("gemma-3-270m-q4_k_m.gguf", "gemma3");
}

#[test]
#[ignore]
fn smollm2_matches_llama_tokenize() {
    check_all("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2");
}

#[test]
#[ignore]
fn gemma3_round_trip_stress() {
    let tok = model("gemma-3-270m-q4_k_m.gguf");
    let text = std::fs::read_to_string(root().join("fixtures/tokenizer/texts/stress.txt")).unwrap();
    // Control tokens written in the text render back as their text; Gemma has no space prefix.
    let ids = tok.tokenize(&text, false, true).unwrap();
    assert_eq!(tok.detokenize(&ids, true).unwrap(), text.as_bytes());
}
