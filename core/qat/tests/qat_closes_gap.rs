//! QAT on the reference model beats PTQ: at 2 bits (PiQ2) and ternary it
//! closes at least half of the gap between PTQ and full precision.

#[path = "support/mlp.rs"]
mod mlp;

use gguftool_formats as _;
use gguftool_qat::config::{LossWeights, QatConfig};
use gguftool_qat::train::train;
use gguftool_quant::format::Ste;
use gguftool_quant::registry;
use mlp::{CharData, Mlp, Student};

#[test]
fn qat_closes_at_least_half_of_the_ptq_gap() {
    let (vocab, ctx, hidden) = (8, 4, 64);
    let (train_set, test_set) = CharData::markov(8000, vocab, ctx, 11).split_every(10);
    let fp_cfg = QatConfig {
        epochs: 12,
        learning_rate: 1e-2,
        batch_size: 64,
        loss: LossWeights {
            distill: 0.0,
            task: 1.0,
        },
        ..QatConfig::default()
    };
    let mut fp = Student {
        model: Mlp::new(vocab, ctx, hidden, 1),
        teacher: None,
        data: &train_set,
        loss: fp_cfg.loss,
        temperature: 1.0,
    };
    let report = train(&mut fp, &fp_cfg, &mut |_, _, _| {});
    assert!(report.epoch_loss.last() < report.epoch_loss.first());
    let mut teacher = fp.model;
    let full = teacher.evaluate(&test_set).loss;
    for fmt in ["piq2", "ternary"] {
        let format = registry::by_name(fmt).unwrap();
        let ptq = teacher.ptq(format).evaluate(&test_set).loss;
        let cfg = QatConfig {
            format: fmt.into(),
            ste: Ste::LearnedStepSize,
            epochs: 6,
            learning_rate: 2e-3,
            loss: LossWeights {
                distill: 1.0,
                task: 0.0,
            },
            temperature: 2.0,
            ..fp_cfg.clone()
        };
        cfg.validate().unwrap();
        let mut student = Student {
            model: teacher.qat_student(&cfg).unwrap(),
            teacher: Some(&teacher),
            data: &train_set,
            loss: cfg.loss,
            temperature: cfg.temperature,
        };
        train(&mut student, &cfg, &mut |_, _, _| {});
        let qat = student.model.evaluate(&test_set).loss;
        let mut lora = Student {
            model: teacher.lora_student(format, 4, 8.0, 3),
            teacher: Some(&teacher),
            data: &train_set,
            loss: cfg.loss,
            temperature: cfg.temperature,
        };
        train(
            &mut lora,
            &QatConfig {
                learning_rate: 5e-3,
                ..cfg.clone()
            },
            &mut |_, _, _| {},
        );
        let lora = lora.model.evaluate(&test_set).loss;
        eprintln!("{fmt}: full {full:.4}, PTQ {ptq:.4}, QAT {qat:.4}, LoRA-QAT {lora:.4}");
        assert!(
            lora < ptq - 0.25 * (ptq - full),
            "{fmt}: LoRA-QAT {lora:.4} vs PTQ {ptq:.4}"
        );
        assert!(
            ptq > full + 0.02,
            "{fmt}: PTQ should hurt ({ptq} vs {full})"
        );
        assert!(
            ptq - qat >= 0.5 * (ptq - full),
            "{fmt}: QAT {qat:.4} closes less than half of the gap (full {full:.4}, PTQ {ptq:.4})"
        );
    }
}
