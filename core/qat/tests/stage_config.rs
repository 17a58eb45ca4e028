//! The stage configurations of `gguftool qat` (e2e, lora, all, and the
//! block and per-tensor stages' refusal of the distillation's fields):
//! each translates its fields into the library's settings and names the
//! field it refuses.

use gguftool_formats as _;
use gguftool_qat::config::QatConfig;

#[test]
fn stage_configs_translate_their_fields_and_refuse_the_others() {
    use gguftool_qat::config::{
        all_default_config, block_default_config, e2e_default_config, lora_default_config,
    };
    let with_format = |c: QatConfig| QatConfig {
        format: "piq2".into(),
        ..c
    };
    // e2e: the distillation's fields.
    let mut c = with_format(e2e_default_config());
    c.steps = 7;
    c.eval_every = 3;
    c.head_chunk = 5;
    c.temperature = 2.0;
    c.loss.distill = 0.5;
    c.loss.task = 0.25;
    c.gradient_accumulation = 2;
    let d = c.to_e2e().unwrap();
    assert_eq!((d.steps, d.eval_every, d.grad_accum), (7, 3, 2));
    assert_eq!(d.loss.chunk_positions, 5);
    assert_eq!(
        (d.loss.temperature, d.loss.kd_weight, d.loss.ce_weight),
        (2.0, 0.5, 0.25)
    );
    assert!(
        (d.learning_rate - 1e-3).abs() < 1e-9,
        "scales: scale_learning_rate"
    );
    assert!(
        (d.weight_learning_rate - 1e-4).abs() < 1e-9,
        "weights: learning_rate"
    );
    assert!(d.learn_scales && d.learn_norms && !d.learn_weights && !d.learn_lora);
    // Fields the e2e stage does not use, and bad values, name the field.
    let e2e = with_format(e2e_default_config());
    for (f, field) in [
        (
            QatConfig {
                epochs: 5,
                ..e2e.clone()
            },
            "epochs",
        ),
        (
            QatConfig {
                warmup_steps: 1,
                ..e2e.clone()
            },
            "warmup_steps",
        ),
        (
            QatConfig {
                max_blocks: Some(1),
                ..e2e.clone()
            },
            "max_blocks",
        ),
        (
            QatConfig {
                lora: lora_default_config().lora,
                ..e2e.clone()
            },
            "lora",
        ),
        (
            QatConfig {
                steps: 0,
                ..e2e.clone()
            },
            "steps",
        ),
        (
            QatConfig {
                eval_every: 0,
                ..e2e.clone()
            },
            "eval_every",
        ),
        (
            QatConfig {
                head_chunk: 0,
                ..e2e.clone()
            },
            "head_chunk",
        ),
    ] {
        assert_eq!(f.to_e2e().unwrap_err().field, field);
    }
    // lora: only the adapters, their step absolute.
    let l = with_format(lora_default_config());
    let (d, lc) = l.to_lora().unwrap();
    assert!(d.learn_lora && !d.learn_scales && !d.learn_norms && !d.learn_weights);
    assert!((d.lora_learning_rate - 5e-4).abs() < 1e-9);
    assert_eq!((lc.rank, lc.alpha, lc.targets.len()), (8, 16.0, 7));
    for (f, field) in [
        (
            QatConfig {
                learn_weights: true,
                ..l.clone()
            },
            "learn_weights",
        ),
        (
            QatConfig {
                learn_norms: true,
                ..l.clone()
            },
            "learn_norms",
        ),
        (
            QatConfig {
                scale_learning_rate: Some(1e-3),
                ..l.clone()
            },
            "scale_learning_rate",
        ),
        (
            QatConfig {
                lora: None,
                ..l.clone()
            },
            "lora",
        ),
    ] {
        assert_eq!(f.to_lora().unwrap_err().field, field);
    }
    // A [lora] table with only a rank takes the other defaults.
    let t = QatConfig::from_toml("format = \"piq2\"\n[lora]\nrank = 4\n").unwrap();
    let lo = t.lora.unwrap();
    assert_eq!((lo.rank, lo.alpha, lo.targets.len()), (4, 16.0, 7));
    // all: both stages' settings from one configuration.
    let a = with_format(all_default_config());
    let (b, d) = a.to_all().unwrap();
    assert_eq!(
        b,
        with_format(block_default_config()).to_blockwise().unwrap()
    );
    assert_eq!(d.steps, 100);
    assert!(
        (d.learning_rate - 5e-3).abs() < 1e-9,
        "the block stage's scale step"
    );
    // The block and per-tensor stages refuse the distillation's fields.
    let blk = with_format(block_default_config());
    assert_eq!(
        QatConfig { steps: 5, ..blk }
            .to_blockwise()
            .unwrap_err()
            .field,
        "steps"
    );
    let pt = with_format(QatConfig::default());
    assert_eq!(
        QatConfig {
            head_chunk: 8,
            ..pt
        }
        .check_per_tensor()
        .unwrap_err()
        .field,
        "head_chunk"
    );
}
