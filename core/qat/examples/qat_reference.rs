//! The QAT reference run: a character-level MLP trained in full precision,
//! then PTQ, QAT (distilled from the full-precision model) and LoRA-QAT at
//! ternary and 2 bits. Prints a Markdown table of held-out loss/accuracy.
//!
//! `cargo run --release -p gguftool-qat --example qat_reference -- [TEXT_FILE] [--quick]`
//! Without a file, a synthetic order-2 Markov language is used.

#[path = "../tests/support/mlp.rs"]
mod mlp;

use gguftool_formats as _;
use gguftool_qat::config::{LossWeights, QatConfig};
use gguftool_qat::train::train;
use gguftool_quant::format::Ste;
use gguftool_quant::registry;
use mlp::{CharData, Eval, Mlp, Student};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let file = args.iter().find(|a| !a.starts_with("--"));
    let (vocab, ctx, hidden) = (32, 8, if quick { 64 } else { 128 });
    let (train_set, test_set) = match file {
        // Text: the last 10% held out.
        Some(p) => {
            let text = std::fs::read(p)?;
            let limit = if quick { 60_000 } else { 400_000 };
            CharData::from_text(&text[..text.len().min(limit)], ctx, vocab).split(0.9)
        }
        // Synthetic: every 10th example held out.
        None => CharData::markov(if quick { 8_000 } else { 40_000 }, vocab, ctx, 7).split_every(10),
    };
    println!(
        "{} training and {} held-out examples, vocab {vocab}, context {ctx}, hidden {hidden}",
        train_set.len(),
        test_set.len()
    );

    let base = QatConfig {
        epochs: if quick { 10 } else { 8 },
        learning_rate: if quick { 1e-2 } else { 4e-3 },
        batch_size: 64,
        warmup_steps: 50,
        loss: LossWeights {
            distill: 0.0,
            task: 1.0,
        },
        ..QatConfig::default()
    };
    let t = Instant::now();
    let mut fp = Student {
        model: Mlp::new(vocab, ctx, hidden, 1),
        teacher: None,
        data: &train_set,
        loss: base.loss,
        temperature: 1.0,
    };
    train(&mut fp, &base, &mut |_, _, _| {});
    let mut teacher = fp.model;
    let fp_eval = teacher.evaluate(&test_set);
    println!(
        "full precision trained in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut rows: Vec<(String, Eval)> = vec![("full precision".into(), fp_eval)];

    for fmt in ["ternary", "piq2"] {
        let format = registry::by_name(fmt).ok_or("format not linked")?;
        rows.push((
            format!("PTQ {fmt}"),
            teacher.ptq(format).evaluate(&test_set),
        ));
        let cfg = QatConfig {
            format: fmt.into(),
            ste: Ste::LearnedStepSize,
            epochs: if quick { 5 } else { 4 },
            learning_rate: 2e-3,
            scale_learning_rate: Some(2e-3),
            loss: LossWeights {
                distill: 1.0,
                task: 0.0,
            },
            temperature: 2.0,
            ..base.clone()
        };
        cfg.validate()?;
        let t = Instant::now();
        let mut student = Student {
            model: teacher.qat_student(&cfg).ok_or("student")?,
            teacher: Some(&teacher),
            data: &train_set,
            loss: cfg.loss,
            temperature: cfg.temperature,
        };
        train(&mut student, &cfg, &mut |_, _, _| {});
        rows.push((
            format!("QAT {fmt} (KD, T=2, LSQ)"),
            student.model.evaluate(&test_set),
        ));
        eprintln!("QAT {fmt}: {:.1} s", t.elapsed().as_secs_f64());
        let lora_cfg = QatConfig {
            learning_rate: 5e-3,
            ..cfg.clone()
        };
        let mut lora = Student {
            model: teacher.lora_student(format, 8, 16.0, 3),
            teacher: Some(&teacher),
            data: &train_set,
            loss: cfg.loss,
            temperature: cfg.temperature,
        };
        train(&mut lora, &lora_cfg, &mut |_, _, _| {});
        rows.push((
            format!("LoRA-QAT {fmt} (rank 8, alpha 16, frozen PTQ base)"),
            lora.model.evaluate(&test_set),
        ));
    }
    println!("\n| model | held-out loss (nats) | accuracy |\n|---|---|---|");
    for (name, e) in &rows {
        println!("| {name} | {:.4} | {:.2}% |", e.loss, 100.0 * e.accuracy);
    }
    Ok(())
}
