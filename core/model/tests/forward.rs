//! Forward-pass properties on fixtures/tiny-llama-f32.gguf (its agreement
//! with llama.cpp is in core/eval/tests/golden.rs) and on a tiny gemma3
//! built from it, plus the typed load errors.

use gguftool_formats as _;
use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::write::{GgufWriter, TensorSpec};
use gguftool_gguf::{GgufFile, Metadata, Value};
use gguftool_model::lora::{read_lora_gguf, LoraFile, LoraTensors};
use gguftool_model::{Error, Hooks, Logits, MatmulPath, Model, NoHooks};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama-f32.gguf")
}

fn open(threads: usize) -> Model {
    Model::open(fixture(), threads).unwrap()
}

const TOKENS: [u32; 12] = [1, 259, 270, 261, 262, 268, 273, 264, 260, 266, 271, 263];

/// (name, dims, f32 data).
type Tensor = (String, Vec<u64>, Vec<f32>);

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Rebuilds a GGUF in memory from `file` with metadata `md` and tensors
/// (name, dims, f32 data).
fn build(md: &Metadata, tensors: &[Tensor]) -> GgufFile {
    let specs = tensors
        .iter()
        .map(|(n, d, v)| TensorSpec {
            name: n.clone(),
            ggml_type: 0,
            dims: d.clone(),
            n_bytes: v.len() as u64 * 4,
        })
        .collect();
    let mut w =
        GgufWriter::begin(std::io::Cursor::new(Vec::new()), md, specs, &StandardTypes).unwrap();
    for (_, _, v) in tensors {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_tensor_data(&bytes).unwrap();
    }
    let bytes = w.finish().unwrap().into_inner();
    GgufFile::from_bytes("test.gguf", bytes, &gguftool_quant::registry::TYPES).unwrap()
}

fn fixture_parts() -> (Metadata, Vec<Tensor>) {
    let f = gguftool_quant::registry::open(fixture()).unwrap();
    let md = f.header().metadata.clone();
    let tensors = f
        .header()
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = f
                .tensor_data(i)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (t.name.clone(), t.dims.clone(), v)
        })
        .collect();
    (md, tensors)
}

fn load_err(md: &Metadata, tensors: &[Tensor]) -> Error {
    match Model::from_file(build(md, tensors), 1) {
        Ok(_) => panic!("loaded"),
        Err(e) => e,
    }
}

#[test]
fn prefill_equals_token_by_token_decode() {
    let m = open(2);
    let mut c = m.new_cache(32);
    let all = m
        .forward(&mut c, &TOKENS, Logits::All, &mut NoHooks)
        .unwrap();
    let nv = m.n_vocab();
    assert_eq!(all.len(), TOKENS.len() * nv);
    let mut c2 = m.new_cache(32);
    for (i, &t) in TOKENS.iter().enumerate() {
        let one = m
            .forward(&mut c2, &[t], Logits::Last, &mut NoHooks)
            .unwrap();
        let d = max_rel_diff(&all[i * nv..(i + 1) * nv], &one);
        assert!(d < 1e-4, "position {i}: {d}");
    }
    // A prefill in two batches continues the cache.
    let mut c3 = m.new_cache(32);
    m.forward(&mut c3, &TOKENS[..5], Logits::None, &mut NoHooks)
        .unwrap();
    let rest = m
        .forward(&mut c3, &TOKENS[5..], Logits::All, &mut NoHooks)
        .unwrap();
    assert!(max_rel_diff(&all[5 * nv..], &rest) < 1e-4);
    assert_eq!(c3.len(), TOKENS.len());
}

#[test]
fn both_matmul_paths_agree() {
    let mut m = open(2);
    let mut c = m.new_cache(32);
    let a = m
        .forward(&mut c, &TOKENS, Logits::All, &mut NoHooks)
        .unwrap();
    m.set_matmul_path(MatmulPath::Kernels);
    c.clear();
    let b = m
        .forward(&mut c, &TOKENS, Logits::All, &mut NoHooks)
        .unwrap();
    assert!(max_rel_diff(&a, &b) < 1e-4);
}

#[test]
fn threads_one_and_two_give_identical_logits() {
    for path in [MatmulPath::Auto, MatmulPath::Kernels] {
        let mut outs = Vec::new();
        for t in [1, 2] {
            let mut m = open(t);
            m.set_matmul_path(path);
            let mut c = m.new_cache(32);
            outs.push(
                m.forward(&mut c, &TOKENS, Logits::All, &mut NoHooks)
                    .unwrap(),
            );
        }
        assert_eq!(outs[0], outs[1], "{path:?}");
    }
}

#[derive(Default)]
struct Record {
    seen: Vec<(usize, String, usize, usize, usize)>,
    last: Option<(usize, usize)>,
}

impl Hooks for Record {
    fn linear_input(
        &mut self,
        layer: usize,
        tensor: &str,
        x: &[f32],
        n_tokens: usize,
        n_in: usize,
    ) {
        self.seen
            .push((layer, tensor.to_string(), x.len(), n_tokens, n_in));
    }
    fn final_hidden(&mut self, x: &[f32], n_tokens: usize, n_embd: usize) {
        assert_eq!(x.len(), n_tokens * n_embd);
        self.last = Some((n_tokens, n_embd));
    }
}

#[test]
fn hooks_see_every_linear_input() {
    let m = open(1);
    let mut c = m.new_cache(32);
    let mut r = Record::default();
    m.forward(&mut c, &TOKENS[..7], Logits::Last, &mut r)
        .unwrap();
    let (d, ff) = (64, 128);
    let mut want = Vec::new();
    for il in 0..2 {
        for (n, w) in [
            ("attn_q", d),
            ("attn_k", d),
            ("attn_v", d),
            ("attn_output", d),
            ("ffn_gate", d),
            ("ffn_up", d),
            ("ffn_down", ff),
        ] {
            want.push((il, format!("blk.{il}.{n}.weight"), 7 * w, 7, w));
        }
    }
    assert_eq!(r.seen, want);
    assert_eq!(r.last, Some((7, 64)));
    // Every block weight of the file is covered.
    let f = gguftool_quant::registry::open(fixture()).unwrap();
    let mats: Vec<_> = f
        .header()
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2)
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(mats.len(), want.len());
    assert!(mats.iter().all(|n| r.seen.iter().any(|s| &s.1 == n)));
}

#[test]
fn typed_errors() {
    let (md, tensors) = fixture_parts();

    let mut m = md.clone();
    m.set("general.architecture", Value::String("mamba".into()));
    let e = load_err(&m, &tensors);
    assert!(
        matches!(&e, Error::UnknownArch { arch, .. } if arch == "mamba"),
        "{e}"
    );
    assert!(e.to_string().contains("llama, gemma3"), "{e}");

    let mut m = md.clone();
    m.remove_where(|k| k == "llama.embedding_length");
    let e = load_err(&m, &tensors);
    assert!(
        matches!(&e, Error::MissingKey(k) if k == "llama.embedding_length"),
        "{e}"
    );

    let mut m = md.clone();
    m.remove_where(|k| k == "llama.attention.layer_norm_rms_epsilon");
    let e = load_err(&m, &tensors);
    assert!(
        e.to_string()
            .contains("llama.attention.layer_norm_rms_epsilon"),
        "{e}"
    );

    let mut t = tensors.clone();
    let k = t.iter().position(|x| x.0 == "blk.1.ffn_up.weight").unwrap();
    t[k].1 = vec![64, 64];
    t[k].2.truncate(64 * 64);
    let e = load_err(&md, &t);
    assert!(
        matches!(&e, Error::BadShape { name, expected, .. } if name == "blk.1.ffn_up.weight" && expected == &vec![64, 128]),
        "{e}"
    );

    let mut t = tensors.clone();
    t.retain(|x| x.0 != "blk.0.attn_k.weight");
    let e = load_err(&md, &t);
    assert!(
        matches!(&e, Error::MissingTensor { name, expected } if name == "blk.0.attn_k.weight" && expected == &vec![64, 32]),
        "{e}"
    );

    // Token ids out of range and a full cache are errors too.
    let model = open(1);
    let mut c = model.new_cache(4);
    assert!(matches!(
        model.forward(&mut c, &[9999], Logits::Last, &mut NoHooks),
        Err(Error::BadToken { id: 9999, .. })
    ));
    assert!(matches!(
        model.forward(&mut c, &[1, 2, 3, 4, 5], Logits::Last, &mut NoHooks),
        Err(Error::ContextFull { .. })
    ));
}

/// A tiny gemma3 (2 layers, both sliding-window with a window of 4) made
/// from the fixture's tensors plus the gemma3 norms.
fn tiny_gemma() -> Model {
    let (md, mut tensors) = fixture_parts();
    let mut m = Metadata::new();
    for (k, v) in md.entries() {
        if let Some(rest) = k.strip_prefix("llama.") {
            m.set(&format!("gemma3.{rest}"), v.clone());
        } else {
            m.set(k, v.clone());
        }
    }
    m.set("general.architecture", Value::String("gemma3".into()));
    m.set("gemma3.attention.sliding_window", Value::U32(4));
    m.set("gemma3.rope.freq_base", Value::F32(1e6));
    tensors.retain(|t| t.0 != "output.weight");
    for il in 0..2 {
        for (n, len) in [
            ("attn_q_norm", 16u64),
            ("attn_k_norm", 16),
            ("post_attention_norm", 64),
            ("post_ffw_norm", 64),
        ] {
            let v = (0..len).map(|i| 1.0 + 0.01 * i as f32).collect();
            tensors.push((format!("blk.{il}.{n}.weight"), vec![len], v));
        }
    }
    // Larger weights than the fixture's, so the window's effect is visible.
    for t in tensors.iter_mut().filter(|t| t.1.len() == 2) {
        t.2.iter_mut().for_each(|v| *v *= 20.0);
    }
    Model::from_file(build(&m, &tensors), 2).unwrap()
}

#[test]
fn gemma3_sliding_window_is_exact() {
    let m = tiny_gemma();
    let hp = m.hparams();
    assert_eq!(hp.swa_layers, vec![true, true]);
    assert_eq!(hp.n_swa, 4);
    let nv = m.n_vocab();
    let run = |toks: &[u32]| {
        let mut c = m.new_cache(32);
        m.forward(&mut c, toks, Logits::Last, &mut NoHooks).unwrap()
    };
    // Two window-4 layers: the last position sees tokens at distance <= 6.
    let base = run(&TOKENS);
    let n = TOKENS.len();
    let mut far = TOKENS;
    far[n - 1 - 7] = 200;
    assert_eq!(run(&far), base, "a token 7 back changed the output");
    let mut near = TOKENS;
    near[n - 1 - 6] = 200;
    assert_ne!(run(&near), base, "a token 6 back did not change the output");
    // Prefill equals decode under the window too.
    let mut c = m.new_cache(32);
    let all = m
        .forward(&mut c, &TOKENS, Logits::All, &mut NoHooks)
        .unwrap();
    let mut c2 = m.new_cache(32);
    for (i, &t) in TOKENS.iter().enumerate() {
        let one = m
            .forward(&mut c2, &[t], Logits::Last, &mut NoHooks)
            .unwrap();
        assert!(max_rel_diff(&all[i * nv..(i + 1) * nv], &one) < 1e-4, "{i}");
    }
}

/// A deterministic adapter of rank `r` for `name` (`n_in -> n_out`).
fn adapter(name: &str, n_in: usize, n_out: usize, r: usize, seed: u32) -> LoraTensors {
    let v = |n: usize, k: u32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.7311 + k as f32 * 1.37).sin()) * 0.05)
            .collect()
    };
    LoraTensors {
        name: name.into(),
        rank: r,
        n_in,
        n_out,
        a: v(r * n_in, seed),
        b: v(n_out * r, seed + 1),
    }
}

fn lora_file() -> LoraFile {
    LoraFile {
        arch: "llama".into(),
        alpha: 16.0,
        adapters: vec![
            adapter("blk.0.attn_q.weight", 64, 64, 4, 1),
            adapter("blk.1.ffn_down.weight", 128, 64, 4, 3),
        ],
    }
}

fn logits_of(m: &Model) -> Vec<f32> {
    let mut c = m.new_cache(TOKENS.len());
    m.forward(&mut c, &TOKENS, Logits::All, &mut NoHooks)
        .unwrap()
}

/// `W x + s B (A x)` at run time equals the forward of the merged weights
/// `W + s B A` (llama.cpp's scale `s = scale * alpha / r`), and an adapter
/// that does not fit is refused naming the tensor, leaving the model as it was.
#[test]
fn lora_at_run_time_equals_the_merged_weights() {
    let file = lora_file();
    let scale = 0.5;
    let s = scale * file.alpha / 4.0;
    let mut adapted = open(1);
    adapted.set_matmul_path(MatmulPath::ReferenceF32);
    let base = logits_of(&adapted);
    assert_eq!(adapted.apply_lora(&file, scale).unwrap(), 2);
    let with_lora = logits_of(&adapted);

    let (md, mut tensors) = fixture_parts();
    for ad in &file.adapters {
        let t = tensors.iter_mut().find(|t| t.0 == ad.name).unwrap();
        for o in 0..ad.n_out {
            for i in 0..ad.n_in {
                let ba: f32 = (0..ad.rank)
                    .map(|k| ad.b[o * ad.rank + k] * ad.a[k * ad.n_in + i])
                    .sum();
                t.2[o * ad.n_in + i] += s * ba;
            }
        }
    }
    let mut merged = Model::from_file(build(&md, &tensors), 1).unwrap();
    merged.set_matmul_path(MatmulPath::ReferenceF32);
    let want = logits_of(&merged);
    assert!(
        max_rel_diff(&base, &want) > 1e-3,
        "the adapter changes nothing"
    );
    let d = max_rel_diff(&with_lora, &want);
    assert!(d < 1e-5, "run-time LoRA vs merged: {d}");

    // Refusals, each naming what is wrong; the model is unchanged.
    let mut m = open(1);
    m.set_matmul_path(MatmulPath::ReferenceF32);
    let mut bad = lora_file();
    bad.arch = "gemma3".into();
    assert!(m
        .apply_lora(&bad, 1.0)
        .unwrap_err()
        .to_string()
        .contains("\"gemma3\""));
    let mut bad = lora_file();
    bad.adapters[1].name = "blk.9.ffn_down.weight".into();
    let e = m.apply_lora(&bad, 1.0).unwrap_err().to_string();
    assert!(e.contains("\"blk.9.ffn_down.weight\" is no matrix"), "{e}");
    let mut bad = lora_file();
    bad.adapters[1] = adapter("blk.1.ffn_down.weight", 64, 64, 4, 3);
    let e = m.apply_lora(&bad, 1.0).unwrap_err().to_string();
    assert!(
        e.contains("\"blk.1.ffn_down.weight\": factors are 64 -> 64"),
        "{e}"
    );
    assert!(m.apply_lora(&lora_file(), f32::NAN).is_err());
    assert_eq!(logits_of(&m), base);
}

/// A llama.cpp-layout adapter GGUF reads back exactly; malformed ones are
/// refused naming the tensor or key.
#[test]
fn lora_gguf_reads_back_and_malformed_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, md: &Metadata, tensors: &[Tensor]| {
        let f = build(md, tensors);
        let p = dir.path().join(name);
        std::fs::write(&p, f.bytes()).unwrap();
        p
    };
    let mut md = Metadata::new();
    md.set("general.architecture", Value::String("llama".into()));
    md.set("general.type", Value::String("adapter".into()));
    md.set("adapter.type", Value::String("lora".into()));
    md.set("adapter.lora.alpha", Value::F32(16.0));
    let file = lora_file();
    let mut tensors: Vec<Tensor> = Vec::new();
    for ad in &file.adapters {
        let (r, ni, no) = (ad.rank as u64, ad.n_in as u64, ad.n_out as u64);
        tensors.push((format!("{}.lora_a", ad.name), vec![ni, r], ad.a.clone()));
        tensors.push((format!("{}.lora_b", ad.name), vec![r, no], ad.b.clone()));
    }
    let good = write("good.gguf", &md, &tensors);
    assert_eq!(read_lora_gguf(&good).unwrap(), file);

    let err = |p: &std::path::Path| read_lora_gguf(p).unwrap_err().to_string();
    let e = err(&write("unpaired.gguf", &md, &tensors[..3]));
    assert!(
        e.contains("\"blk.1.ffn_down.weight\" is missing one factor"),
        "{e}"
    );
    let mut odd = tensors.clone();
    odd[0].0 = "blk.0.attn_q.weight.lora_c".into();
    let e = err(&write("suffix.gguf", &md, &odd));
    assert!(
        e.contains("\"blk.0.attn_q.weight.lora_c\" has an unexpected suffix"),
        "{e}"
    );
    let mut chain = tensors.clone();
    chain[1] = (chain[1].0.clone(), vec![2, 64], vec![0.0; 128]);
    let e = err(&write("chain.gguf", &md, &chain));
    assert!(e.contains("do not chain"), "{e}");
    let mut nan = tensors.clone();
    nan[3].2[5] = f32::NAN;
    let e = err(&write("nan.gguf", &md, &nan));
    assert!(
        e.contains("\"blk.1.ffn_down.weight.lora_b\": value 5 is not finite"),
        "{e}"
    );
    let mut not_adapter = md.clone();
    not_adapter.set("general.type", Value::String("model".into()));
    let e = err(&write("model.gguf", &not_adapter, &tensors));
    assert!(e.contains("general.type is \"model\""), "{e}");
    let mut bad_alpha = md.clone();
    bad_alpha.set("adapter.lora.alpha", Value::U32(16));
    let e = err(&write("alpha.gguf", &bad_alpha, &tensors));
    assert!(e.contains("adapter.lora.alpha is u32"), "{e}");
}
