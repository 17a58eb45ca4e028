//! SmolLM2 token ids against llama-tokenize goldens (made by
//! `scripts/tokenizer_golden.sh`), on the committed vocab-only GGUF.

use gguftool_tokenizer::{TokenId, Tokenizer};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer")
}

fn smollm2() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::from_gguf_file(
            fixtures().join("smollm2-vocab.gguf"),
            &gguftool_gguf::validate::StandardTypes,
        )
        .unwrap()
    })
}

/// Parses llama-tokenize's `--ids` output (`[1, 2, 3]`).
fn parse_ids(s: &str) -> Vec<TokenId> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    s.split(", ")
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect()
}

/// Checks every short text in all three llama-tokenize modes; returns how many files matched.
fn check_goldens(tok: &Tokenizer, prefix: &str) -> usize {
    let mut checked = 0;
    let mut texts: Vec<_> = std::fs::read_dir(fixtures().join("texts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    texts.sort();
    for path in texts {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let add_bos = tok.vocab().add_bos();
        for (suffix, add_special, parse_special) in [
            ("", add_bos, true),
            (".nps", add_bos, false),
            (".nobos", false, true),
        ] {
            let golden = fixtures().join(format!("{prefix}_{name}{suffix}.ids"));
            let want = parse_ids(&std::fs::read_to_string(&golden).unwrap());
            let got = tok.tokenize(&text, add_special, parse_special).unwrap();
            assert_eq!(got, want, "{}", golden.display());
            checked += 1;
        }
    }
    checked
}

#[test]
fn smollm2_matches_llama_tokenize() {
    assert!(check_goldens(smollm2(), "smollm2") >= 12);
}

#[test]
fn smollm2_metadata() {
    let v = smollm2().vocab();
    assert_eq!(v.len(), 49152);
    assert!(!v.add_bos());
    assert_eq!(v.specials().eos, Some(2));
    assert_eq!(v.token_id("<|im_start|>"), Some(1));
}

#[test]
fn special_tokens_only_with_parse_special() {
    let t = smollm2();
    assert_eq!(t.tokenize("<|im_start|>", false, true).unwrap(), [1]);
    assert!(t.tokenize("<|im_start|>", false, false).unwrap().len() > 1);
    assert_eq!(t.detokenize(&[1], true).unwrap(), b"<|im_start|>");
    assert_eq!(t.detokenize(&[1], false).unwrap(), b"");
}

#[test]
fn detokenize_stress_text() {
    let t = smollm2();
    let text = std::fs::read_to_string(fixtures().join("texts/stress.txt")).unwrap();
    let ids = t.tokenize(&text, false, true).unwrap();
    assert_eq!(t.detokenize(&ids, true).unwrap(), text.as_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn gpt2_round_trip(s in "\\PC*") {
        let t = smollm2();
        let ids = t.tokenize(&s, false, false).unwrap();
        prop_assert_eq!(t.detokenize(&ids, false).unwrap(), s.as_bytes());
    }

    #[test]
    fn gpt2_round_trip_any_chars(s in any::<String>()) {
        let t = smollm2();
        let ids = t.tokenize(&s, false, false).unwrap();
        prop_assert_eq!(t.detokenize(&ids, false).unwrap(), s.as_bytes());
    }
}
