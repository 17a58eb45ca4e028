//! Generation on fixtures/tiny-llama-f32.gguf: greedy equals the argmax of
//! `forward` step by step (a full recompute over the whole sequence each
//! step), and a seed fixes the sampled tokens.

use gguftool_eval::{argmax, generate, Sampler, SamplerParams, Stop};
use gguftool_formats as _;
use gguftool_model::{Logits, Model, NoHooks};
use std::path::PathBuf;

fn model() -> Model {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama-f32.gguf");
    Model::open(p, 2).unwrap()
}

const PROMPT: [u32; 6] = [1, 259, 270, 261, 262, 268];

fn run(m: &Model, params: SamplerParams, seed: u64, n: usize) -> (Vec<u32>, Stop) {
    let mut cache = m.new_cache(64);
    let mut s = Sampler::new(params, seed);
    let mut seen = Vec::new();
    let st = generate(m, &mut cache, &PROMPT, n, &mut s, &|_| false, &mut |t| {
        seen.push(t);
        true
    })
    .unwrap();
    assert_eq!(seen, st.tokens);
    assert_eq!(st.n_prompt, PROMPT.len());
    (st.tokens, st.stop)
}

fn greedy() -> SamplerParams {
    SamplerParams {
        temp: 0.0,
        top_k: 40,
        top_p: 0.95,
    }
}

#[test]
fn greedy_is_argmax_of_forward_step_by_step() {
    let m = model();
    let (toks, stop) = run(&m, greedy(), 1, 20);
    assert_eq!(stop, Stop::Length);
    assert_eq!(toks.len(), 20);
    // Deterministic across runs and seeds.
    assert_eq!(run(&m, greedy(), 2, 20).0, toks);
    // Each token is the argmax of a fresh batched forward over everything before it.
    let mut seq = PROMPT.to_vec();
    for &t in &toks {
        let mut cache = m.new_cache(64);
        let l = m
            .forward(&mut cache, &seq, Logits::Last, &mut NoHooks)
            .unwrap();
        assert_eq!(argmax(&l), t, "after {seq:?}");
        seq.push(t);
    }
}

#[test]
fn seed_fixes_sampled_tokens() {
    let m = model();
    let p = SamplerParams {
        temp: 1.0,
        top_k: 0,
        top_p: 1.0,
    };
    let a = run(&m, p, 7, 24).0;
    assert_eq!(run(&m, p, 7, 24).0, a);
    assert_ne!(run(&m, p, 8, 24).0, a);
    // top-k 1 is greedy whatever the temperature.
    let k1 = SamplerParams {
        temp: 2.0,
        top_k: 1,
        top_p: 1.0,
    };
    assert_eq!(run(&m, k1, 3, 20).0, run(&m, greedy(), 3, 20).0);
}

#[test]
fn stops_at_eog_context_and_rejects_long_prompts() {
    let m = model();
    let (toks, _) = run(&m, greedy(), 1, 5);
    let first = toks[0];
    let mut cache = m.new_cache(64);
    let mut s = Sampler::new(greedy(), 0);
    let st = generate(
        &m,
        &mut cache,
        &PROMPT,
        5,
        &mut s,
        &|t| t == first,
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(st.stop, Stop::Eog(first));
    assert!(st.tokens.is_empty());

    let mut cache = m.new_cache(8);
    let st = generate(&m, &mut cache, &PROMPT, 50, &mut s, &|_| false, &mut |_| {
        true
    })
    .unwrap();
    assert_eq!(st.stop, Stop::ContextFull);
    assert_eq!(st.tokens.len(), 3);

    let mut cache = m.new_cache(4);
    let e = generate(&m, &mut cache, &PROMPT, 5, &mut s, &|_| false, &mut |_| {
        true
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("longer than the context of 4"),
        "{e}"
    );
}
