//! The candle model computes the runtime's logits (`core/model`, exact f32
//! products: `MatmulPath::ReferenceF32`) on the same weights: the tiny
//! llama fixture, a tiny gemma3 with sliding-window layers built from it,
//! and (ignored, needs /work/main/models) SmolLM2-135M and Gemma-3-270M.
//! Gradients through the whole model are checked against finite
//! differences where they are true derivatives (norm gains).

use candle_core::{Device, Tensor, Var};
use gguftool_formats as _;
use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::write::{GgufWriter, TensorSpec};
use gguftool_gguf::{GgufFile, Metadata, Value};
use gguftool_model::{Logits, MatmulPath, Model, NoHooks};
use gguftool_qat::candle_model::CandleModel;
use gguftool_qat::candle_op::FakeQuant;
use gguftool_quant::format::Ste;
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama-f32.gguf")
}

const TOKENS: [u32; 12] = [1, 259, 270, 261, 262, 268, 273, 264, 260, 266, 271, 263];

/// (max |a - b|, max |a - b| / max |b|).
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    (d, d / scale)
}

fn runtime_logits(mut m: Model, tokens: &[u32]) -> (Model, Vec<f32>) {
    m.set_matmul_path(MatmulPath::ReferenceF32);
    let mut c = m.new_cache(tokens.len());
    let l = m
        .forward(&mut c, tokens, Logits::All, &mut NoHooks)
        .unwrap();
    (m, l)
}

#[test]
fn llama_logits_equal_the_runtime() {
    let (m, want) = runtime_logits(Model::open(fixture(), 1).unwrap(), &TOKENS);
    let cm = CandleModel::from_model(&m, &Device::Cpu).unwrap();
    let got = cm.logits(&TOKENS).unwrap();
    let (abs, rel) = diff(&got, &want);
    eprintln!("tiny llama: max abs diff {abs:.3e}, relative {rel:.3e}");
    assert!(rel < 1e-4, "{abs} {rel}");
    // A batch of two sequences gives each one's logits.
    let mut other = TOKENS;
    other.reverse();
    let (_, want2) = runtime_logits(Model::open(fixture(), 1).unwrap(), &other);
    let t = cm.token_tensor(&[&TOKENS, &other]).unwrap();
    let both = cm.forward(&t).unwrap();
    assert_eq!(both.dims(), &[2, TOKENS.len(), m.n_vocab()]);
    let v: Vec<f32> = both.flatten_all().unwrap().to_vec1().unwrap();
    let n = want.len();
    assert!(diff(&v[..n], &want).1 < 1e-4);
    assert!(diff(&v[n..], &want2).1 < 1e-4);
    // Bad ids and ragged batches are errors.
    assert!(cm.logits(&[99999]).is_err());
    assert!(cm.token_tensor(&[&TOKENS, &TOKENS[..3]]).is_err());
    assert!(cm.logits(&[]).is_err());
}

/// (name, dims, f32 data).
type Tensors = Vec<(String, Vec<u64>, Vec<f32>)>;

fn build(md: &Metadata, tensors: &Tensors) -> GgufFile {
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

/// A tiny gemma3 from the fixture's tensors (as in core/model's tests):
/// layers 0 and 2 with a window of 4, layer 1 global (pattern [T, F]),
/// QK and post norms, tied output, a final softcap, weights scaled up so
/// the window and the GELU's range matter.
fn tiny_gemma() -> Model {
    let f = gguftool_quant::registry::open(fixture()).unwrap();
    let mut m = Metadata::new();
    for (k, v) in f.header().metadata.entries() {
        if let Some(rest) = k.strip_prefix("llama.") {
            m.set(&format!("gemma3.{rest}"), v.clone());
        } else {
            m.set(k, v.clone());
        }
    }
    m.set("general.architecture", Value::String("gemma3".into()));
    m.set("gemma3.attention.sliding_window", Value::U32(4));
    m.set("gemma3.attention.sliding_window_pattern", Value::U32(2));
    m.set("gemma3.rope.freq_base", Value::F32(1e6));
    m.set("gemma3.final_logit_softcapping", Value::F32(30.0));
    let mut tensors: Tensors = f
        .header()
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| t.name != "output.weight")
        .map(|(i, t)| {
            let v = f
                .tensor_data(i)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (t.name.clone(), t.dims.clone(), v)
        })
        .collect();
    for il in 0..2 {
        for (n, len) in [
            ("attn_q_norm", 16u64),
            ("attn_k_norm", 16),
            ("post_attention_norm", 64),
            ("post_ffw_norm", 64),
        ] {
            let v = (0..len)
                .map(|i| 1.0 + 0.01 * (i as f32 + il as f32))
                .collect();
            tensors.push((format!("blk.{il}.{n}.weight"), vec![len], v));
        }
    }
    for t in tensors.iter_mut().filter(|t| t.1.len() == 2) {
        t.2.iter_mut().for_each(|v| *v *= 20.0);
    }
    Model::from_file(build(&m, &tensors), 1).unwrap()
}

#[test]
fn gemma3_logits_equal_the_runtime_with_sliding_windows() {
    let m = tiny_gemma();
    assert_eq!(m.hparams().swa_layers, vec![true, false]);
    let (m, want) = runtime_logits(m, &TOKENS);
    let cm = CandleModel::from_model(&m, &Device::Cpu).unwrap();
    let got = cm.logits(&TOKENS).unwrap();
    let (abs, rel) = diff(&got, &want);
    eprintln!("tiny gemma3: max abs diff {abs:.3e}, relative {rel:.3e}");
    assert!(rel < 1e-4, "{abs} {rel}");
    // The window matters here: a full-attention copy differs.
    let mut full = cm.clone();
    full.blocks_mut()[0].config.n_swa = 0;
    assert!(diff(&full.logits(&TOKENS).unwrap(), &want).1 > 1e-3);
}

#[test]
fn norm_gradients_match_finite_differences() {
    let m = Model::open(fixture(), 1).unwrap();
    let mut cm = CandleModel::from_model(&m, &Device::Cpu).unwrap();
    cm.blocks_mut()[1].set_norms_trainable(true);
    let toks = cm.token_tensor(&[&TOKENS[..8]]).unwrap();
    let nv = m.n_vocab();
    let r = Tensor::from_vec(
        (0..8 * nv)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect(),
        (1, 8, nv),
        &Device::Cpu,
    )
    .unwrap();
    let loss = |cm: &CandleModel| -> Tensor {
        cm.forward(&toks)
            .unwrap()
            .mul(&r)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = loss(&cm).backward().unwrap();
    let params: Vec<Var> = cm.blocks()[1]
        .parameters()
        .iter()
        .map(|p| p.var().clone())
        .collect();
    assert_eq!(params.len(), 2, "attention and FFN norms");
    for v in &params {
        let g: Vec<f32> = grads.get(v).unwrap().to_vec1().unwrap();
        let w0: Vec<f32> = v.as_tensor().to_vec1().unwrap();
        for j in [0usize, 13, 40, 63] {
            let h = 1e-2 * w0[j].abs().max(0.1);
            let at = |x: f32| -> f64 {
                let mut w = w0.clone();
                w[j] = x;
                v.set(&Tensor::new(w, &Device::Cpu).unwrap()).unwrap();
                loss(&cm).to_scalar::<f32>().unwrap() as f64
            };
            let fd = ((at(w0[j] + h) - at(w0[j] - h)) / (2.0 * h as f64)) as f32;
            v.set(&Tensor::new(w0.clone(), &Device::Cpu).unwrap())
                .unwrap();
            assert!(
                (fd - g[j]).abs() <= 1e-2 * g[j].abs().max(fd.abs()) + 1e-3,
                "d/dnorm[{j}]: {} vs fd {fd}",
                g[j]
            );
        }
    }
}

#[test]
fn fake_quantized_blocks_change_logits_and_export() {
    let m = Model::open(fixture(), 1).unwrap();
    let mut cm = CandleModel::from_model(&m, &Device::Cpu).unwrap();
    let fp = cm.logits(&TOKENS).unwrap();
    let fq = FakeQuant::by_name("piq3", Ste::LearnedStepSize).unwrap();
    for b in cm.blocks_mut() {
        b.quantize(fq, false).unwrap();
    }
    let q = cm.logits(&TOKENS).unwrap();
    let rel = diff(&q, &fp).1;
    assert!(rel > 1e-4 && rel < 0.5, "{rel}");
    // Only scales are trainable by default; latent weights on request.
    assert_eq!(cm.blocks()[0].parameters().len(), 7);
    cm.blocks_mut()[0].quantize(fq, true).unwrap();
    assert_eq!(cm.blocks()[0].parameters().len(), 14);
    // The export decodes to the fake-quantized weights (f16 scales aside).
    let l = &cm.blocks()[0].linears()[0];
    let bytes = l.export().unwrap().unwrap();
    let mut dec = vec![0f32; 64 * 64];
    fq.format().dequantize(&bytes, &mut dec).unwrap();
    let eff: Vec<f32> = l
        .effective_weight()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(diff(&dec, &eff).1 < 2e-3);
}

fn real(name: &str) -> PathBuf {
    let dir = std::env::var_os("GGUFTOOL_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: set GGUFTOOL_MODELS_DIR (the F32 bases: fixtures/fetch-real-models.sh)",
        p.display()
    );
    p
}

fn argmax_agreement(a: &[f32], b: &[f32], nv: usize) -> f64 {
    let am = |r: &[f32]| {
        r.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |m, (i, &v)| if v > m.1 { (i, v) } else { m },
            )
            .0
    };
    let n = a.len() / nv;
    let same = (0..n)
        .filter(|&t| am(&a[t * nv..(t + 1) * nv]) == am(&b[t * nv..(t + 1) * nv]))
        .count();
    same as f64 / n as f64
}

/// Real models against the runtime's exact-f32 path: SmolLM2-135M (llama,
/// 64 tokens) to 1e-4 relative; Gemma-3-270M (gemma3, 520 tokens: past its
/// 512-token window, so the sliding-window layers mask) to 2e-3. Gemma's
/// bound is looser because ggml's GELU looks its input up at f16
/// precision: a last-bit difference of a gate value (matmul summation
/// order) can move it to the next f16, a step of 2^-11 relative. Measured:
/// with the runtime's own FFN inputs, our activations differ by 2e-5..1e-4
/// per layer with the table (2e-4..4e-4 with an f32 GELU), and the error
/// grows through 18 layers whose residual stream reaches 2e4, to 9e-4
/// (the same before and after position 512). Structure is checked exactly
/// on the tiny gemma3; here the window is checked by a full-attention copy
/// differing at positions 512.. by far more.
#[test]
#[ignore = "needs the F32 real models in GGUFTOOL_MODELS_DIR (or models/); a few minutes"]
fn real_models_logits_equal_the_runtime() {
    for (file, n, bound) in [
        ("SmolLM2-135M-Instruct-F32.gguf", 64usize, 1e-4f32),
        ("gemma-3-270m-F32.gguf", 520, 2e-3),
    ] {
        let p = real(file);
        // Ordinary ids (below 20000 in both vocabularies), deterministic.
        let seq: Vec<u32> = (0..n as u32).map(|i| 100 + (i * 7919) % 19900).collect();
        let t0 = std::time::Instant::now();
        let (m, want) = runtime_logits(Model::open(&p, 0).unwrap(), &seq);
        let t1 = t0.elapsed();
        let mut cm = CandleModel::from_model(&m, &Device::Cpu).unwrap();
        let t2 = std::time::Instant::now();
        let got = cm.logits(&seq).unwrap();
        let t3 = t2.elapsed();
        let nv = m.n_vocab();
        let (abs, rel) = diff(&got, &want);
        let top1 = argmax_agreement(&got, &want, nv);
        eprintln!(
            "{file}: {n} tokens, max abs diff {abs:.3e}, relative {rel:.3e}, top-1 agreement {top1} (runtime {t1:.2?}, candle {t3:.2?})"
        );
        assert!(rel < bound, "{file}: {abs} {rel}");
        assert!(top1 >= 0.99, "{file}: {top1}");
        if n > 512 {
            let late = |v: &[f32]| v[512 * nv..].to_vec();
            let windowed = diff(&late(&got), &late(&want)).1;
            for b in cm.blocks_mut() {
                b.config.n_swa = 0;
            }
            let full = diff(&late(&cm.logits(&seq).unwrap()), &late(&want)).1;
            eprintln!("  positions 512..: windowed {windowed:.3e}, full attention {full:.3e}");
            assert!(full > 10.0 * windowed, "{windowed} {full}");
        }
    }
}
