//! Arbitrary vocabularies and texts: building and tokenizing return
//! results or typed errors, never panic.

use gguftool_tokenizer::{Tokenizer, VocabData};
use proptest::prelude::*;

fn vocab() -> impl Strategy<Value = VocabData> {
    (
        prop::sample::select(vec!["llama", "gpt2"]),
        prop::sample::select(vec!["smollm", "llama-bpe", "qwen2", "gpt-2", "default"]),
        prop::collection::vec("(<[a-z|]{0,3}>|\\PC{0,3})", 1..24),
        prop::collection::vec(-4i32..8, 0..24),
        prop::collection::vec(any::<f32>(), 0..24),
        prop::collection::vec(any::<(prop::sample::Index, prop::sample::Index)>(), 0..12),
        prop::option::of(0u32..40),
        any::<(bool, bool, bool)>(),
    )
        .prop_map(|(model, pre, tokens, types, scores, pairs, bos, flags)| {
            let merges: Vec<String> = pairs
                .iter()
                .map(|(a, b)| format!("{} {}", a.get(&tokens), b.get(&tokens)))
                .collect();
            VocabData {
                model: model.into(),
                pre: Some(pre.into()),
                tokens,
                token_types: (!types.is_empty()).then_some(types),
                scores: (!scores.is_empty()).then_some(scores),
                merges: Some(merges),
                add_bos: Some(flags.0),
                add_eos: Some(flags.1),
                add_space_prefix: Some(flags.2),
                ids: gguftool_tokenizer::SpecialIds {
                    bos,
                    ..Default::default()
                },
                ..Default::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn never_panics(data in vocab(), text in "(<[a-z|]{0,3}>|\\PC{0,4}| {1,3}|\n)*", special: bool) {
        if let Ok(t) = Tokenizer::new(&data) {
            for add in [false, true] {
                if let Ok(ids) = t.tokenize(&text, add, special) {
                    let _ = t.detokenize(&ids, special);
                }
            }
        }
    }
}
