//! End-to-end distillation of a real model on calibration text: held-out
//! KL to the full-precision model before and after, tokens per second.
//!
//! ```text
//! cargo run --release -p gguftool-qat --example e2e_distill -- MODEL.gguf TEXT.txt \
//!     [--format piq2] [--seqs 64] [--heldout 8] [--len 64] [--steps 200] \
//!     [--batch 2] [--lr 1e-3] [--chunk 64] [--temp 1] [--ce 0] \
//!     [--eval-every 50] [--learn-weights] [--wlr 1e-4] \
//!     [--lora-rank R --lora-alpha A --lora-lr 1e-4 --lora-out FILE.gguf]
//! ```
//!
//! Every block matrix is fake-quantized with the format at its initial
//! scales (no block-wise step first), then distilled from the unquantized
//! model. The text is tokenized with the model's tokenizer and cut into
//! sequences of `--len`: the first `--seqs` train, the next `--heldout`
//! choose the kept step and measure (so the final figure is slightly
//! optimistic). With `--lora-rank`, adapters on every block matrix are
//! trained over the frozen quantized base instead of scales and norms, and
//! `--lora-out` writes them as a llama.cpp LoRA GGUF. Use calibration text,
//! never evaluation text.

use gguftool_formats as _;
use gguftool_model::Model;
use gguftool_qat::candle_model::CandleModel;
use gguftool_qat::candle_op::FakeQuant;
use gguftool_qat::e2e::{distill, evaluate, DistillConfig, LossConfig, TeacherTargets};
use gguftool_qat::lora::{attach_lora, LoraConfig};
use gguftool_quant::format::Ste;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: e2e_distill MODEL.gguf TEXT.txt [options] (see the source)");
        std::process::exit(2);
    }
    let opt = |name: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let num =
        |name: &str, d: usize| -> usize { opt(name).and_then(|v| v.parse().ok()).unwrap_or(d) };
    let fnum = |name: &str, d: f64| -> f64 { opt(name).and_then(|v| v.parse().ok()).unwrap_or(d) };
    let format = opt("--format").unwrap_or("piq2");
    let (n_train, n_held, len) = (num("--seqs", 64), num("--heldout", 8), num("--len", 64));

    let model = Model::open(&args[0], 0)?;
    let tok = gguftool_tokenizer::Tokenizer::from_metadata(model.metadata())?;
    let text = std::fs::read_to_string(&args[1])?;
    let ids = tok.tokenize(&text, false, false)?;
    let seqs = gguftool_eval::bos_chunks(&ids, len, gguftool_eval::chunk_bos(&tok));
    if seqs.len() < n_train + n_held {
        return Err(format!(
            "{} tokens make {} sequences of {len}; need {}",
            ids.len(),
            seqs.len(),
            n_train + n_held
        )
        .into());
    }
    let (train, held) = (&seqs[..n_train], &seqs[n_train..n_train + n_held]);
    let dev = candle_core::Device::Cpu;
    let teacher = CandleModel::from_model(&model, &dev)?;
    // Shares storage with the teacher: the teacher only runs before the
    // first update (see gguftool_qat::e2e).
    let mut student = teacher.clone();
    let fq = FakeQuant::by_name(format, Ste::LearnedStepSize)?;
    for b in student.blocks_mut() {
        b.quantize(fq, false)?;
    }
    let lora_rank = num("--lora-rank", 0);
    if lora_rank > 0 {
        let names = attach_lora(
            &mut student,
            &LoraConfig {
                rank: lora_rank,
                alpha: fnum("--lora-alpha", 2.0 * lora_rank as f64) as f32,
                ..LoraConfig::default()
            },
        )?;
        println!("LoRA rank {lora_rank} on {} matrices", names.len());
    }
    let batch = num("--batch", 2);
    let cfg = DistillConfig {
        loss: LossConfig {
            temperature: fnum("--temp", 1.0),
            ce_weight: fnum("--ce", 0.0),
            chunk_positions: num("--chunk", 64),
            ..LossConfig::default()
        },
        learning_rate: fnum("--lr", 1e-3),
        weight_learning_rate: fnum("--wlr", 1e-4),
        lora_learning_rate: fnum("--lora-lr", 1e-4),
        learn_scales: lora_rank == 0,
        learn_norms: lora_rank == 0,
        learn_weights: args.iter().any(|a| a == "--learn-weights"),
        learn_lora: lora_rank > 0,
        steps: num("--steps", 200),
        batch_size: batch,
        eval_every: num("--eval-every", 50),
        ..DistillConfig::default()
    };
    println!(
        "{}: {format}, {n_train}x{len} training and {n_held}x{len} held-out tokens, {cfg:?}",
        args[0]
    );
    let t = Instant::now();
    let ht = TeacherTargets::new(&teacher, held, batch)?;
    let fp = evaluate(&teacher, &teacher, &ht, batch, cfg.loss.chunk_positions)?;
    println!(
        "full precision held-out NLL {:.4} (PPL {:.2}); teacher pass + eval {:.1?}",
        fp.nll,
        fp.nll.exp(),
        t.elapsed()
    );
    let t = Instant::now();
    let mut last = Instant::now();
    let report = distill(&mut student, &teacher, train, held, &cfg, &mut |p| {
        if let Some(e) = &p.heldout {
            println!(
                "step {:4}: batch loss {:.4e}; held-out KL {:.4e}, NLL {:.4} (PPL {:.2}), top-1 {:.3}; {:.1?} since the last eval",
                p.step,
                p.loss.total,
                e.kl,
                e.nll,
                e.nll.exp(),
                e.top1_agreement,
                last.elapsed()
            );
            last = Instant::now();
        }
    })?;
    let r = &report;
    println!(
        "held-out KL {:.4e} -> {:.4e} (kept step {}), NLL {:.4} -> {:.4} (PPL {:.2} -> {:.2}; full precision {:.2}), top-1 {:.3} -> {:.3}",
        r.initial.kl,
        r.best.kl,
        r.best_step,
        r.initial.nll,
        r.best.nll,
        r.initial.nll.exp(),
        r.best.nll.exp(),
        fp.nll.exp(),
        r.initial.top1_agreement,
        r.best.top1_agreement
    );
    println!(
        "{} trained tensors ({} elements); {} training tokens in {:.1} s of steps = {:.1} tokens/s ({:.2} s/step); {:.1} s in all",
        r.trained_tensors,
        r.trained_elements,
        r.tokens,
        r.train_seconds,
        r.tokens as f64 / r.train_seconds,
        r.train_seconds / r.train_loss.len().max(1) as f64,
        t.elapsed().as_secs_f64()
    );
    if let Some(out) = opt("--lora-out") {
        let n = gguftool_qat::lora_gguf::write_lora_gguf(&student, out, Some("e2e_distill"))?;
        println!("wrote {n} adapters to {out}");
    }
    Ok(())
}
