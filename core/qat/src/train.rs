//! The generic training loop: any [`Trainable`] model, AdamW per parameter
//! group, warm-up + cosine schedule, global-norm clipping, deterministic
//! shuffling.

use crate::config::QatConfig;
use crate::optim::{clip_global_norm, AdamW, Schedule};
use gguftool_quant::hadamard::SplitMix64;

/// What a parameter group is (decides its learning rate and decay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Latent weights (learning rate, weight decay).
    Weight,
    /// Quantizer scales (scale learning rate, no decay, `pi_k` parameterization).
    Scale,
    /// Low-rank adapters (learning rate, no decay).
    Adapter,
}

/// One parameter group with its gradient.
pub struct Param<'a> {
    /// Kind.
    pub kind: ParamKind,
    /// Values, updated in place.
    pub values: &'a mut [f32],
    /// Gradients of the last `forward_backward`.
    pub grads: &'a mut [f32],
}

impl<'a> Param<'a> {
    /// A parameter group.
    pub fn new(kind: ParamKind, values: &'a mut [f32], grads: &'a mut [f32]) -> Self {
        Self {
            kind,
            values,
            grads,
        }
    }
}

/// A model the driver can train.
pub trait Trainable {
    /// Number of training examples.
    fn examples(&self) -> usize;
    /// Zeroes the gradients, runs forward (fake-quantized weights) and
    /// backward over the examples in `batch`, and returns their mean loss.
    fn forward_backward(&mut self, batch: &[usize]) -> f32;
    /// The trainable parameter groups, in a fixed order.
    fn parameters(&mut self) -> Vec<Param<'_>>;
}

/// Loss per epoch of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Mean training loss of each epoch.
    pub epoch_loss: Vec<f32>,
    /// Optimizer steps taken.
    pub steps: usize,
}

/// Trains `model` as `cfg` says; `on_step(step, total, loss)` after each step.
pub fn train(
    model: &mut dyn Trainable,
    cfg: &QatConfig,
    on_step: &mut dyn FnMut(usize, usize, f32),
) -> TrainReport {
    let n = model.examples();
    let per_epoch = n.div_ceil(cfg.batch_size).max(1);
    let total = per_epoch * cfg.epochs;
    let sched = |peak| Schedule {
        peak,
        warmup: cfg.warmup_steps,
        total,
    };
    let (w_sched, s_sched) = (sched(cfg.learning_rate), sched(cfg.scale_lr()));
    let mut opts: Vec<AdamW> = model
        .parameters()
        .iter()
        .map(|p| {
            let wd = if p.kind == ParamKind::Weight {
                cfg.weight_decay
            } else {
                0.0
            };
            AdamW::new(p.values.len(), wd)
        })
        .collect();
    // Scales learned as alpha with s = alpha * pi / k.
    let alpha_per_scale = cfg.pi_k.map_or(1.0, |k| std::f32::consts::PI / k);
    let mut rng = SplitMix64::new(cfg.seed ^ 0x0051_a7ee);
    let mut order: Vec<usize> = (0..n).collect();
    let mut report = TrainReport {
        epoch_loss: Vec::with_capacity(cfg.epochs),
        steps: 0,
    };
    for _ in 0..cfg.epochs {
        // Fisher-Yates with the run's generator.
        for i in (1..n).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let mut sum = 0f64;
        for batch in order.chunks(cfg.batch_size) {
            let loss = model.forward_backward(batch);
            sum += loss as f64 * batch.len() as f64;
            let step = report.steps;
            let mut params = model.parameters();
            if let Some(max) = cfg.grad_clip {
                let mut grads: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut *p.grads).collect();
                clip_global_norm(&mut grads, max);
            }
            for (p, opt) in params.iter_mut().zip(opts.iter_mut()) {
                match p.kind {
                    ParamKind::Scale if alpha_per_scale != 1.0 => {
                        let mut alpha: Vec<f32> =
                            p.values.iter().map(|s| s / alpha_per_scale).collect();
                        let g: Vec<f32> = p.grads.iter().map(|g| g * alpha_per_scale).collect();
                        opt.step(&mut alpha, &g, s_sched.lr(step));
                        for (s, a) in p.values.iter_mut().zip(&alpha) {
                            *s = a * alpha_per_scale;
                        }
                    }
                    ParamKind::Scale => opt.step(p.values, p.grads, s_sched.lr(step)),
                    _ => opt.step(p.values, p.grads, w_sched.lr(step)),
                }
            }
            report.steps += 1;
            on_step(report.steps, total, loss);
        }
        report.epoch_loss.push((sum / n.max(1) as f64) as f32);
    }
    report
}
