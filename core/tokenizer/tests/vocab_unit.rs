//! SentencePiece on a tiny hand-made vocabulary, and typed metadata errors.

use gguftool_gguf::{Array, Metadata, Value};
use gguftool_tokenizer::gguf_vocab::from_metadata;
use gguftool_tokenizer::{Error, Tokenizer, VocabData};

/// `<unk>`, `<s>`, `</s>`, 256 byte tokens, then `extra` (text, score, type).
fn spm(extra: &[(&str, f32, i32)], add_space_prefix: Option<bool>) -> Tokenizer {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut scores = vec![0.0, 0.0, 0.0];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(6);
    }
    for &(t, s, ty) in extra {
        tokens.push(t.to_string());
        scores.push(s);
        types.push(ty);
    }
    let data = VocabData {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        add_space_prefix,
        ..Default::default()
    };
    Tokenizer::new(&data).unwrap()
}

fn ids(t: &Tokenizer, words: &[&str]) -> Vec<u32> {
    words
        .iter()
        .map(|w| t.vocab().token_id(w).unwrap())
        .collect()
}

#[test]
fn merges_follow_scores() {
    let base = [("a", -1.0, 1), ("b", -1.0, 1), ("c", -1.0, 1)];
    // "bc" scores higher than "ab": a + bc.
    let mut v = base.to_vec();
    v.extend([("ab", -3.0, 1), ("bc", -2.0, 1)]);
    let t = spm(&v, Some(false));
    assert_eq!(
        t.tokenize("abc", false, false).unwrap(),
        ids(&t, &["a", "bc"])
    );
    // "ab" higher: ab + c.
    let mut v = base.to_vec();
    v.extend([("ab", -2.0, 1), ("bc", -3.0, 1)]);
    let t = spm(&v, Some(false));
    assert_eq!(
        t.tokenize("abc", false, false).unwrap(),
        ids(&t, &["ab", "c"])
    );
    // Equal scores: the leftmost pair wins; then a longer token forms.
    let mut v = base.to_vec();
    v.extend([("ab", -2.0, 1), ("bc", -2.0, 1), ("abc", -5.0, 1)]);
    let t = spm(&v, Some(false));
    assert_eq!(t.tokenize("abc", false, false).unwrap(), ids(&t, &["abc"]));
    assert_eq!(
        t.tokenize("abcb", false, false).unwrap(),
        ids(&t, &["abc", "b"])
    );
}

#[test]
fn byte_fallback() {
    let t = spm(&[("a", -1.0, 1)], Some(false));
    assert_eq!(
        t.tokenize("aé", false, false).unwrap(),
        ids(&t, &["a", "<0xC3>", "<0xA9>"])
    );
    assert_eq!(
        t.detokenize(&t.tokenize("aé", false, false).unwrap(), false)
            .unwrap(),
        "aé".as_bytes()
    );
}

#[test]
fn space_prefix_and_bos() {
    let v = [
        ("\u{2581}", -1.0, 1),
        ("a", -1.0, 1),
        ("\u{2581}a", -0.5, 1),
        ("<x>", 0.0, 4),
    ];
    // Default for `llama`: space prefix on, BOS on.
    let t = spm(&v, None);
    assert!(t.vocab().add_space_prefix());
    assert_eq!(
        t.tokenize("a", true, false).unwrap(),
        ids(&t, &["<s>", "\u{2581}a"])
    );
    // After a special (user-defined) token the next text gets a prefix too.
    assert_eq!(
        t.tokenize("a<x>a", false, false).unwrap(),
        ids(&t, &["\u{2581}a", "<x>", "\u{2581}a"])
    );
    assert_eq!(
        t.detokenize(&ids(&t, &["\u{2581}a", "\u{2581}a"]), false)
            .unwrap(),
        b"a a"
    );
    let t = spm(&v, Some(false));
    assert_eq!(
        t.tokenize("a a", false, false).unwrap(),
        ids(&t, &["a", "\u{2581}a"])
    );
}

#[test]
fn control_tokens_need_parse_special() {
    let t = spm(
        &[
            ("a", -1.0, 1),
            ("<", -1.0, 1),
            (">", -1.0, 1),
            ("s", -1.0, 1),
            ("/", -1.0, 1),
        ],
        Some(false),
    );
    assert_eq!(t.tokenize("</s>", false, true).unwrap(), [2]);
    assert_eq!(t.tokenize("</s>", false, false).unwrap().len(), 4);
}

fn md(pairs: Vec<(&str, Value)>) -> Metadata {
    Metadata::from_entries(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn strings(v: &[&str]) -> Value {
    Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
}

fn err(m: Metadata) -> Error {
    match from_metadata(&m).and_then(|d| Tokenizer::new(&d)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn typed_errors_name_the_key() {
    let model = ("tokenizer.ggml.model", Value::String("gpt2".into()));
    let pre = ("tokenizer.ggml.pre", Value::String("gpt-2".into()));
    let tokens = ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"]));

    let e = err(md(vec![model.clone()]));
    assert_eq!(
        e,
        Error::MissingKey {
            key: "tokenizer.ggml.tokens"
        }
    );
    assert!(e.to_string().contains("tokenizer.ggml.tokens"));

    let e = err(md(vec![("tokenizer.ggml.model", Value::U32(1))]));
    assert!(
        matches!(
            e,
            Error::WrongType {
                key: "tokenizer.ggml.model",
                ..
            }
        ),
        "{e}"
    );

    let e = err(md(vec![
        model.clone(),
        ("tokenizer.ggml.tokens", Value::Array(Array::U32(vec![1]))),
    ]));
    assert!(e.to_string().contains("array of u32"), "{e}");

    let e = err(md(vec![
        model.clone(),
        pre.clone(),
        tokens.clone(),
        ("tokenizer.ggml.scores", Value::Array(Array::F32(vec![0.0]))),
        ("tokenizer.ggml.merges", strings(&["a b"])),
    ]));
    assert_eq!(
        e,
        Error::LengthMismatch {
            key: "tokenizer.ggml.scores",
            tokens: 3,
            found: 1
        }
    );

    let e = err(md(vec![
        model.clone(),
        pre.clone(),
        tokens.clone(),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![1, 1])),
        ),
        ("tokenizer.ggml.merges", strings(&["a b"])),
    ]));
    assert!(matches!(
        e,
        Error::LengthMismatch {
            key: "tokenizer.ggml.token_type",
            ..
        }
    ));

    let e = err(md(vec![model.clone(), pre.clone(), tokens.clone()]));
    assert_eq!(
        e,
        Error::MissingKey {
            key: "tokenizer.ggml.merges"
        }
    );

    let e = err(md(vec![
        model.clone(),
        pre.clone(),
        tokens.clone(),
        ("tokenizer.ggml.merges", strings(&["a c"])),
    ]));
    assert_eq!(
        e,
        Error::MergeUnknownToken {
            index: 0,
            part: "c".into()
        }
    );

    let e = err(md(vec![
        model.clone(),
        pre.clone(),
        tokens.clone(),
        ("tokenizer.ggml.merges", strings(&["ab"])),
    ]));
    assert!(matches!(e, Error::MalformedMerge { index: 0, .. }));

    let e = err(md(vec![
        model.clone(),
        ("tokenizer.ggml.pre", Value::String("no-such-pre".into())),
        tokens.clone(),
        ("tokenizer.ggml.merges", strings(&["a b"])),
    ]));
    assert!(
        matches!(&e, Error::UnknownPreTokenizer { pre, .. } if pre == "no-such-pre"),
        "{e}"
    );

    let e = err(md(vec![
        ("tokenizer.ggml.model", Value::String("bert".into())),
        tokens.clone(),
    ]));
    assert!(matches!(e, Error::UnknownModel { .. }));

    let e = err(md(vec![
        model,
        pre,
        tokens,
        ("tokenizer.ggml.bos_token_id", Value::F32(1.0)),
    ]));
    assert!(matches!(
        e,
        Error::WrongType {
            key: "tokenizer.ggml.bos_token_id",
            ..
        }
    ));
}

#[test]
fn tiny_bpe_merges_by_rank() {
    let data = VocabData {
        model: "gpt2".into(),
        pre: Some("gpt-2".into()),
        tokens: ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        merges: Some(vec!["b c".into(), "a b".into(), "a bc".into()]),
        ..Default::default()
    };
    let t = Tokenizer::new(&data).unwrap();
    assert_eq!(t.tokenize("abc", false, false).unwrap(), [5]);
    assert_eq!(t.tokenize("abab", false, false).unwrap(), [3, 3]);
    // No BOS for gpt2 unless the key asks; an out-of-range default BOS (11) is dropped.
    assert!(!t.vocab().add_bos());
    assert_eq!(t.vocab().specials().bos, None);
    // Characters with no token are dropped, as in llama.cpp.
    assert_eq!(t.tokenize("az", false, false).unwrap(), [0]);
}

#[test]
fn bad_token_id_in_detokenize() {
    let t = spm(&[], Some(false));
    assert!(matches!(
        t.detokenize(&[100_000], false),
        Err(Error::BadTokenId { .. })
    ));
}
