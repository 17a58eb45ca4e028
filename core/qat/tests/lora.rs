//! LoRA-QAT on the tiny llama fixture: adapters start as the identity,
//! train by distillation over a frozen piq2 base, survive a round trip
//! through a llama.cpp LoRA GGUF (same logits after applying the file),
//! and merge into the base as `W + scale * B A`.

use candle_core::{DType, Device, Tensor};
use gguftool_formats as _;
use gguftool_gguf::value::{Metadata, Value};
use gguftool_gguf::write::{GgufWriter, TensorSpec};
use gguftool_model::Model;
use gguftool_qat::candle_model::CandleModel;
use gguftool_qat::candle_op::FakeQuant;
use gguftool_qat::e2e::{distill, DistillConfig, LossConfig};
use gguftool_qat::lora::{adapted, attach_lora, glob_match, merge_lora, merged_weight, LoraConfig};
use gguftool_qat::lora_gguf::{apply_lora_file, read_lora_gguf, write_lora_gguf};
use gguftool_quant::format::Ste;
use gguftool_quant::hadamard::SplitMix64;
use std::path::{Path, PathBuf};

fn model() -> CandleModel {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama-f32.gguf");
    CandleModel::from_model(&Model::open(p, 1).unwrap(), &Device::Cpu).unwrap()
}

fn piq2_model() -> CandleModel {
    let mut m = model();
    let fq = FakeQuant::by_name("piq2", Ste::LearnedStepSize).unwrap();
    for b in m.blocks_mut() {
        b.quantize(fq, false).unwrap();
        for l in b.linears_mut() {
            l.freeze();
        }
    }
    m
}

fn seqs(n: usize, len: usize, n_vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| (r.next_u64() % n_vocab as u64) as u32)
                .collect()
        })
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gguftool-lora-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn cfg(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        seed: 3,
    }
}

/// Distils LoRA adapters on attention q/v and the FFN down matrix over a
/// frozen piq2 base; returns the trained student.
fn trained() -> (CandleModel, Vec<Vec<u32>>) {
    let teacher = model();
    let mut student = piq2_model();
    let names = attach_lora(&mut student, &cfg(&["attn_q", "attn_v", "ffn_down"])).unwrap();
    assert_eq!(names.len(), 6);
    let nv = student.hparams().n_vocab;
    // Random tokens on a random fixture carry little signal an adapter of
    // 3,328 weights could generalise from (held-out KL on fresh sequences
    // drifts up), so this checks that the adapters fit their training
    // sequences: the "held-out" set is the training set.
    let train = seqs(4, 24, nv, 1);
    let held = train.clone();
    let c = DistillConfig {
        steps: 30,
        eval_every: 10,
        learn_scales: false,
        learn_norms: false,
        learn_lora: true,
        lora_learning_rate: 3e-4,
        loss: LossConfig {
            chunk_positions: 32,
            ..LossConfig::default()
        },
        ..DistillConfig::default()
    };
    let r = distill(&mut student, &teacher, &train, &held, &c, &mut |_| {}).unwrap();
    eprintln!(
        "LoRA r4 on 6 matrices, {} elements: held-out KL {:.4e} -> {:.4e} (step {}); {:?}",
        r.trained_elements,
        r.initial.kl,
        r.best.kl,
        r.best_step,
        r.evals.iter().map(|(s, e)| (*s, e.kl)).collect::<Vec<_>>()
    );
    // 6 adapters x (A + B), nothing else.
    assert_eq!(r.trained_tensors, 12);
    // Measured 0.58x.
    assert!(r.best.kl < 0.8 * r.initial.kl, "{r:?}");
    (student, held)
}

#[test]
fn patterns_select_matrices_by_role_or_name() {
    assert!(glob_match("ffn_*", "ffn_down"));
    assert!(glob_match("blk.1.*", "blk.1.attn_q"));
    assert!(glob_match("*", ""));
    assert!(!glob_match("attn_q", "attn_qk"));
    assert!(!glob_match("blk.1.*", "blk.10"));
    let mut m = model();
    assert_eq!(attach_lora(&mut m, &cfg(&["ffn_*"])).unwrap().len(), 6);
    let mut m = model();
    let names = attach_lora(&mut m, &cfg(&["blk.1.attn_*"])).unwrap();
    assert_eq!(
        names,
        ["q", "k", "v", "output"].map(|s| format!("blk.1.attn_{s}.weight"))
    );
    assert!(attach_lora(&mut model(), &cfg(&["nothing"])).is_err());
    let zero_rank = LoraConfig {
        rank: 0,
        ..cfg(&["*"])
    };
    assert!(attach_lora(&mut model(), &zero_rank).is_err());
}

#[test]
fn fresh_adapters_leave_the_model_unchanged() {
    let base = piq2_model();
    let mut m = piq2_model();
    attach_lora(&mut m, &cfg(&["*"])).unwrap();
    assert_eq!(adapted(&m).len(), 14);
    let s = seqs(1, 16, m.hparams().n_vocab, 4);
    assert_eq!(m.logits(&s[0]).unwrap(), base.logits(&s[0]).unwrap());
}

#[test]
fn trained_adapters_round_trip_through_a_llama_cpp_lora_gguf() {
    let (student, held) = trained();
    let path = tmp("adapter.gguf");
    assert_eq!(
        write_lora_gguf(&student, &path, Some("test adapter")).unwrap(),
        6
    );
    // llama.cpp's layout, read with the plain container reader.
    let f = gguftool_gguf::GgufFile::open(&path, &gguftool_gguf::validate::StandardTypes).unwrap();
    let md = &f.header().metadata;
    assert_eq!(
        md.get("general.type").and_then(Value::as_str),
        Some("adapter")
    );
    assert_eq!(md.get("adapter.type").and_then(Value::as_str), Some("lora"));
    assert_eq!(
        md.get("general.architecture").and_then(Value::as_str),
        Some("llama")
    );
    assert_eq!(md.get("adapter.lora.alpha"), Some(&Value::F32(8.0)));
    assert_eq!(f.header().tensors.len(), 12);
    let t = |n: &str| {
        f.header()
            .tensors
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .clone()
    };
    // attn_q: 64 -> 64; ffn_down: 128 -> 64; A: ne [n_in, r], B: ne [r, n_out].
    assert_eq!(t("blk.0.attn_q.weight.lora_a").dims, [64, 4]);
    assert_eq!(t("blk.0.attn_q.weight.lora_b").dims, [4, 64]);
    assert_eq!(t("blk.1.ffn_down.weight.lora_a").dims, [128, 4]);
    assert_eq!(t("blk.1.ffn_down.weight.lora_b").dims, [4, 64]);
    assert_eq!(t("blk.1.attn_v.weight.lora_b").dims, [4, 32]);
    assert!(f.header().tensors.iter().all(|t| t.ggml_type == 0));
    drop(f);

    let file = read_lora_gguf(&path).unwrap();
    assert_eq!(
        (file.arch.as_str(), file.alpha, file.adapters.len()),
        ("llama", 8.0, 6)
    );
    let mut fresh = piq2_model();
    assert_eq!(apply_lora_file(&mut fresh, &file).unwrap(), 6);
    for s in &held {
        assert_eq!(fresh.logits(s).unwrap(), student.logits(s).unwrap());
    }
    // The applied adapters are frozen.
    assert!(fresh.blocks().iter().all(|b| b.parameters().is_empty()));

    // A model of another architecture name is refused, as llama.cpp does.
    let mut other = file.clone();
    other.arch = "gemma3".into();
    assert!(apply_lora_file(&mut piq2_model(), &other).is_err());
    // Shapes that do not fit the base are refused.
    let mut wrong = file.clone();
    wrong.adapters[0].name = "blk.0.ffn_down.weight".into();
    assert!(apply_lora_file(&mut piq2_model(), &wrong).is_err());
    let mut missing = file;
    missing.adapters[0].name = "blk.0.nothing.weight".into();
    assert!(apply_lora_file(&mut piq2_model(), &missing).is_err());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn merging_adds_scaled_b_a_and_reencodes() {
    let (student, _) = trained();
    let fq = FakeQuant::by_name("piq2", Ste::LearnedStepSize).unwrap();
    for l in adapted(&student) {
        let ad = l.lora().unwrap();
        let (n_out, n_in) = l.weight().var().as_tensor().dims2().unwrap();
        let r = ad.rank();
        assert_eq!(ad.scale(), 8.0 / 4.0);
        let (a, b) = (
            flat(ad.a().var().as_tensor()),
            flat(ad.b().var().as_tensor()),
        );
        assert!(b.iter().any(|&x| x != 0.0), "{} trained", l.name());
        let w = flat(&l.effective_weight().unwrap());
        let merged = flat(&merged_weight(l).unwrap());
        for i in 0..n_out {
            for j in 0..n_in {
                let ba: f32 = (0..r).map(|k| b[i * r + k] * a[k * n_in + j]).sum();
                let want = w[i * n_in + j] + 2.0 * ba;
                let got = merged[i * n_in + j];
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                    "{}",
                    l.name()
                );
            }
        }
    }
    // Re-encoded at the trained scales: decodes to the fake quantization of
    // the merged weights at the file's f16 scales.
    let ex = merge_lora(&student, None).unwrap();
    assert_eq!(ex.len(), 6);
    for (e, l) in ex.iter().zip(adapted(&student)) {
        assert_eq!(e.name, l.name());
        assert_eq!(e.type_id, fq.format().type_id());
        let merged = merged_weight(l).unwrap();
        let (_, s) = l.quant().unwrap();
        let s16 = s
            .var()
            .as_tensor()
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let mut dec = vec![0f32; merged.elem_count()];
        fq.format().dequantize(&e.bytes, &mut dec).unwrap();
        assert_eq!(dec, flat(&fq.apply(&merged, &s16).unwrap()), "{}", e.name);
    }
    // Or with another format's encoder: q8_0 keeps the merged weights to
    // within its step.
    let q8 = gguftool_quant::registry::by_name("q8_0").unwrap();
    for (e, l) in merge_lora(&student, Some(q8))
        .unwrap()
        .iter()
        .zip(adapted(&student))
    {
        let merged = flat(&merged_weight(l).unwrap());
        let mut dec = vec![0f32; merged.len()];
        q8.dequantize(&e.bytes, &mut dec).unwrap();
        let big = merged.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = merged
            .iter()
            .zip(&dec)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= big / 127.0, "{}: {err} of {big}", e.name);
    }
}

fn write_raw(path: &Path, md: &Metadata, tensors: &[(&str, Vec<u64>)]) {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, d)| TensorSpec {
            name: n.to_string(),
            ggml_type: 0,
            n_bytes: d.iter().product::<u64>() * 4,
            dims: d.clone(),
        })
        .collect();
    let f = std::fs::File::create(path).unwrap();
    let mut w = GgufWriter::begin(
        f,
        md,
        specs.clone(),
        &gguftool_gguf::validate::StandardTypes,
    )
    .unwrap();
    for s in &specs {
        w.write_tensor_data(&vec![0u8; s.n_bytes as usize]).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn the_reader_rejects_what_llama_cpp_rejects() {
    let good = || {
        let mut md = Metadata::new();
        md.set("general.architecture", Value::String("llama".into()));
        md.set("general.type", Value::String("adapter".into()));
        md.set("adapter.type", Value::String("lora".into()));
        md.set("adapter.lora.alpha", Value::F32(2.0));
        md
    };
    let path = tmp("raw.gguf");
    let pair = [
        ("blk.0.attn_q.weight.lora_a", vec![64, 2]),
        ("blk.0.attn_q.weight.lora_b", vec![2, 64]),
    ];
    write_raw(&path, &good(), &pair);
    let f = read_lora_gguf(&path).unwrap();
    assert_eq!((f.adapters[0].rank, f.alpha), (2, 2.0));
    // Norm tensors are skipped, like llama.cpp.
    write_raw(
        &path,
        &good(),
        &[
            pair[0].clone(),
            pair[1].clone(),
            ("blk.0.attn_norm.weight", vec![64]),
        ],
    );
    assert_eq!(read_lora_gguf(&path).unwrap().adapters.len(), 1);

    let mut md = good();
    md.set("general.type", Value::String("model".into()));
    write_raw(&path, &md, &pair);
    assert!(read_lora_gguf(&path).is_err());
    let mut md = good();
    md.set("adapter.type", Value::String("control_vector".into()));
    write_raw(&path, &md, &pair);
    assert!(read_lora_gguf(&path).is_err());
    let mut md = good();
    md.set("adapter.lora.alpha", Value::U32(2));
    write_raw(&path, &md, &pair);
    assert!(read_lora_gguf(&path).is_err());
    // One factor alone, a transposed A, an unknown suffix.
    write_raw(&path, &good(), &pair[..1]);
    assert!(read_lora_gguf(&path).is_err());
    write_raw(
        &path,
        &good(),
        &[("blk.0.attn_q.weight.lora_a", vec![2, 64]), pair[1].clone()],
    );
    assert!(read_lora_gguf(&path).is_err());
    write_raw(
        &path,
        &good(),
        &[
            pair[0].clone(),
            pair[1].clone(),
            ("blk.0.attn_q.weight", vec![64, 64]),
        ],
    );
    assert!(read_lora_gguf(&path).is_err());
    std::fs::remove_file(&path).unwrap();
    // Writing a model without adapters is an error and leaves nothing behind.
    let out = tmp("none.gguf");
    assert!(write_lora_gguf(&model(), &out, None).is_err());
    assert!(!out.exists());
}
