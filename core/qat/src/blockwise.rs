//! Block-wise reconstruction (OmniQuant / EfficientQAT Block-AP style,
//! `QUALITY.md` 3b-3c): each transformer block's fake-quantized copy is
//! trained with Adam to reproduce the full-precision block's outputs on
//! cached calibration activations (mean squared error), block after block.
//!
//! - Each matrix starts where [`Hooks::init`] says (default: the
//!   full-precision weights with the format's `init_scales`; see
//!   [`crate::init`] for the GPTQ start); trained are the scales,
//!   optionally the norm gains and the latent weights.
//! - [`train_blocks`] reports each step to its [`Hooks`], which may ask for
//!   a [`Checkpoint`] (the whole state between two steps) or stop; a run
//!   resumed from a checkpoint continues bit for bit.
//! - Targets: the full-precision block applied to full-precision inputs.
//!   Inputs of the quantized block: the outputs of the already trained
//!   quantized blocks ([`BlockwiseConfig::quantized_inputs`], so later
//!   blocks learn to correct earlier errors) or the full-precision inputs.
//! - The best epoch on held-out sequences is kept (the initial state
//!   counts as epoch 0, so training never makes the held-out error worse).
//! - [`export_blocks`] encodes the trained matrices with the format's
//!   `export`.

use crate::candle_adam::CandleAdam;
use crate::candle_model::{Block, CandleModel, Parameter, QLinear};
use crate::candle_op::FakeQuant;
use crate::engine_error::{EngineError, EngineResult};
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use gguftool_quant::hadamard::SplitMix64;
use std::time::Instant;

/// The error [`train_blocks`] minimizes between the quantized block's
/// outputs `y` and the full-precision ones `t` (`[n, seq, d]`), and by which
/// it picks the kept epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockLoss {
    /// `mean((y - t)^2)`: every residual-stream channel weighs by its
    /// magnitude, so a few large-magnitude channels (Gemma; SmolLM2 from
    /// block 11) decide it.
    Mse,
    /// `mean((y / rms(y) - t / rms(t))^2)`, each position divided by its RMS
    /// over `d` (+1e-6 under the root): the error as the next RMSNorm sees
    /// it, blind to a position's overall scale, where an error along a
    /// dominant channel counts by its relative size. The default: as good
    /// as `Mse` on SmolLM2-135M piq2 (67.72 against 67.91) and much
    /// better on Gemma-3-270M q2_quip (39.74 against 51.38; RESULTS.md).
    #[default]
    RmsNormalized,
}

impl BlockLoss {
    /// The name used by the configuration and `--block-loss`.
    pub fn name(self) -> &'static str {
        match self {
            BlockLoss::Mse => "mse",
            BlockLoss::RmsNormalized => "rms-normalized",
        }
    }

    /// The loss of `y` against `t`, both `[n, seq, d]`, as a scalar tensor
    /// (differentiable in `y`).
    ///
    /// # Errors
    /// Shape mismatch.
    pub fn of(self, y: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            BlockLoss::Mse => (y - t)?.sqr()?.mean_all(),
            BlockLoss::RmsNormalized => {
                let norm = |x: &Tensor| -> candle_core::Result<Tensor> {
                    let r = (x.sqr()?.mean_keepdim(candle_core::D::Minus1)? + 1e-6)?.sqrt()?;
                    x.broadcast_div(&r)
                };
                (norm(y)? - norm(t)?)?.sqr()?.mean_all()
            }
        }
    }
}

/// Options of [`reconstruct_blocks`] and [`train_blocks`].
#[derive(Debug, Clone, PartialEq)]
pub struct BlockwiseConfig {
    /// Adam step size of scales and norm gains, relative to each
    /// parameter tensor's initial root mean square (1e-3: steps of about
    /// 0.1 % of a typical value).
    pub learning_rate: f64,
    /// Adam step size of latent weights, relative as above.
    pub weight_learning_rate: f64,
    /// Train the latent weights too (else only scales and, optionally, norms).
    pub learn_weights: bool,
    /// Train the norm gains of the block.
    pub learn_norms: bool,
    /// Passes over the calibration sequences per block.
    pub epochs: usize,
    /// Sequences per micro-batch (one forward and backward pass).
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient norm of a step to this value.
    pub grad_clip: Option<f64>,
    /// Steps of linear learning-rate warm-up at the start of each block.
    pub warmup_steps: usize,
    /// Decoupled weight decay of the latent weights (AdamW), per unit step.
    pub weight_decay: f64,
    /// Feed each block the outputs of the trained quantized blocks before it
    /// (else the full-precision activations).
    pub quantized_inputs: bool,
    /// Shuffling seed: the order of epoch `e` of block `b` is drawn from a
    /// generator seeded by `(seed, b, e)`.
    pub seed: u64,
    /// Train only the first this many blocks (`None`: all); later blocks
    /// stay full precision.
    pub max_blocks: Option<usize>,
    /// The error minimized and reported (the reports' "MSE" fields).
    pub loss: BlockLoss,
}

impl Default for BlockwiseConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-3,
            weight_learning_rate: 1e-4,
            learn_weights: false,
            learn_norms: true,
            epochs: 4,
            batch_size: 4,
            grad_accum: 1,
            grad_clip: None,
            warmup_steps: 0,
            weight_decay: 0.0,
            quantized_inputs: true,
            seed: 0x5eed,
            max_blocks: None,
            loss: BlockLoss::RmsNormalized,
        }
    }
}

impl BlockwiseConfig {
    fn validate(&self) -> EngineResult<()> {
        let bad = |m: &str| Err(EngineError::BadInput(format!("block-wise config: {m}")));
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return bad("learning_rate must be finite and >= 0");
        }
        if !(self.weight_learning_rate.is_finite() && self.weight_learning_rate >= 0.0) {
            return bad("weight_learning_rate must be finite and >= 0");
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("grad_accum must be at least 1");
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return bad("grad_clip must be finite and > 0");
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay must be finite and >= 0");
        }
        Ok(())
    }

    /// Optimizer steps per epoch for `n` calibration sequences.
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size.max(1))
            .div_ceil(self.grad_accum.max(1))
    }
}

/// What training did to one block.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BlockReport {
    /// Layer index.
    pub layer: usize,
    /// Calibration MSE at the initial scales.
    pub initial_train_mse: f64,
    /// Held-out MSE at the initial scales.
    pub initial_heldout_mse: f64,
    /// Held-out MSE after each epoch.
    pub epoch_heldout_mse: Vec<f64>,
    /// Held-out MSE of the kept state.
    pub best_heldout_mse: f64,
    /// The kept epoch (0: the initial state).
    pub best_epoch: usize,
    /// Calibration MSE of the kept state.
    pub final_train_mse: f64,
    /// Mean square of the full-precision block outputs on held-out data
    /// (to read the MSEs relative to it; 1 under
    /// [`BlockLoss::RmsNormalized`]).
    pub heldout_target_power: f64,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Wall time, seconds (of the last session when resumed).
    pub seconds: f64,
}

/// The starting point of one matrix, chosen by [`Hooks::init`].
#[derive(Debug, Clone, Default)]
pub struct LinearInit {
    /// Latent weights replacing the full-precision ones (`[n_out, n_in]`
    /// row-major), e.g. the GPTQ rounding decoded.
    pub latent: Option<Vec<f32>>,
    /// Per-input-column importance for the format's `init_scales`.
    pub importance: Option<Vec<f32>>,
    /// The scales `latent` was decoded with (`[n_out, n_in / group]`, as
    /// [`FakeQuant::stored_scales`] reads them), the start when re-deriving
    /// does not reproduce `latent` ([`QLinear::quantize_from`]).
    pub stored_scales: Option<Tensor>,
}

/// One optimizer step, as [`Hooks::step`] sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// Block being trained.
    pub layer: usize,
    /// Blocks trained in all.
    pub n_layers: usize,
    /// Epoch (1-based).
    pub epoch: usize,
    /// Optimizer steps of the whole run so far (this one included).
    pub global_step: usize,
    /// Optimizer steps of the whole run.
    pub total_steps: usize,
    /// Mean squared error of this step's batches (before the update).
    pub loss: f64,
    /// Calibration tokens this step processed.
    pub tokens: usize,
}

/// What to do after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Hand a [`Checkpoint`] to [`Hooks::checkpoint`], then go on.
    Checkpoint,
    /// Hand a [`Checkpoint`] to [`Hooks::checkpoint`], then return
    /// [`Outcome::Stopped`].
    Stop,
}

/// Callbacks of [`train_blocks`]; every method has a do-nothing default.
pub trait Hooks {
    /// The starting point of matrix `linear` of block `layer` (called when
    /// the block is quantized, also for blocks restored from a checkpoint).
    ///
    /// # Errors
    /// Whatever stops the run.
    fn init(&mut self, layer: usize, linear: &QLinear) -> EngineResult<LinearInit> {
        let _ = (layer, linear);
        Ok(LinearInit::default())
    }

    /// After each optimizer step.
    fn step(&mut self, info: &StepInfo) -> Control {
        let _ = info;
        Control::Continue
    }

    /// A checkpoint asked for by [`Hooks::step`].
    ///
    /// # Errors
    /// Whatever stops the run (e.g. the checkpoint could not be written).
    fn checkpoint(&mut self, checkpoint: &Checkpoint) -> EngineResult<()> {
        let _ = checkpoint;
        Ok(())
    }

    /// After each block.
    fn block_done(&mut self, report: &BlockReport) {
        let _ = report;
    }
}

/// How [`train_blocks`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every block trained; the reports in block order.
    Finished(Vec<BlockReport>),
    /// [`Hooks::step`] asked to stop, after this many steps of the run.
    Stopped {
        /// Optimizer steps of the whole run so far.
        global_step: usize,
    },
}

/// The whole state of a run between two optimizer steps: resuming from it
/// ([`train_blocks`] with `resume`) continues bit for bit. Tensors are
/// named with a prefix: `done.` the kept parameters of finished blocks,
/// `cur.` the current parameters of the block in training, `best.` its
/// best held-out snapshot, `adam_m.`/`adam_v.` Adam's moments.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Identifies the run (model, text, format, configuration); set and
    /// checked by the caller, empty from [`train_blocks`].
    pub fingerprint: String,
    /// Block in training.
    pub layer: usize,
    /// Its epoch (1-based).
    pub epoch: usize,
    /// Optimizer steps done in this epoch.
    pub pos: usize,
    /// This epoch's order of the calibration sequences (the shuffling
    /// generator's draw for `(seed, layer, epoch)`).
    pub order: Vec<u32>,
    /// Optimizer steps taken in this block.
    pub block_steps: usize,
    /// Optimizer steps of the whole run.
    pub global_step: usize,
    /// Adam's step counter.
    pub adam_t: u64,
    /// Absolute step size of each current parameter, in `cur.` order.
    pub step_sizes: Vec<f64>,
    /// Calibration MSE of the block at its initial state.
    pub initial_train_mse: f64,
    /// Held-out MSE at its initial state.
    pub initial_heldout_mse: f64,
    /// Held-out MSE after each finished epoch.
    pub epoch_heldout_mse: Vec<f64>,
    /// Best held-out MSE so far and its epoch.
    pub best: (f64, usize),
    /// Reports of the finished blocks.
    pub reports: Vec<BlockReport>,
    /// Named tensors (see the type documentation): name, shape, values.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Checkpoint {
    fn tensor(&self, name: &str, like: &Tensor) -> EngineResult<Tensor> {
        crate::named_tensors::find_tensor(&self.tensors, name, like)
    }
}

fn rms(t: &Tensor) -> EngineResult<f64> {
    Ok(t.sqr()?.mean_all()?.to_scalar::<f32>()?.sqrt() as f64)
}

fn as_refs(s: &[Vec<u32>]) -> Vec<&[u32]> {
    s.iter().map(Vec::as_slice).collect()
}

/// Applies `block` to `x` `[n, seq, d]` in batches of `bs` sequences,
/// without gradients.
fn apply_detached(block: &Block, x: &Tensor, bs: usize) -> EngineResult<Tensor> {
    let n = x.dim(0)?;
    let mut outs = Vec::new();
    let mut i = 0;
    while i < n {
        let k = bs.min(n - i);
        outs.push(block.forward(&x.narrow(0, i, k)?)?.detach());
        i += k;
    }
    Ok(Tensor::cat(&outs, 0)?)
}

fn mse(
    block: &Block,
    x: &Tensor,
    target: &Tensor,
    bs: usize,
    loss: BlockLoss,
) -> EngineResult<f64> {
    let y = apply_detached(block, x, bs)?;
    Ok(loss.of(&y, target)?.to_scalar::<f32>()? as f64)
}

fn snapshot(params: &[&Parameter]) -> EngineResult<Vec<Tensor>> {
    Ok(params
        .iter()
        .map(|p| p.var().as_tensor().copy())
        .collect::<candle_core::Result<_>>()?)
}

/// The order of the calibration sequences in epoch `epoch` of block `layer`.
fn epoch_order(seed: u64, layer: usize, epoch: usize, n: usize) -> Vec<usize> {
    let mix = ((layer as u64) << 32 | epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut rng = SplitMix64::new(seed ^ mix);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    order
}

/// Quantizes block `il` of `model` from each matrix's [`Hooks::init`] and
/// marks its parameters trainable as `cfg` says.
fn quantize_block(
    model: &mut CandleModel,
    il: usize,
    fq: FakeQuant,
    cfg: &BlockwiseConfig,
    hooks: &mut dyn Hooks,
) -> EngineResult<()> {
    quantize_block_from(model, il, fq, cfg.learn_weights, hooks)?;
    model.blocks_mut()[il].set_norms_trainable(cfg.learn_norms);
    Ok(())
}

/// Wraps every matrix of block `il` of `model` in `fq`'s fake quantization,
/// each from the starting point [`Hooks::init`] gives (latent weights and
/// importance for the initial scales); the latent weights are trainable
/// when `learn_weights`, the scales always. The same starting points as
/// [`train_blocks`] takes, e.g. for the blocks it does not train.
///
/// # Errors
/// `il` out of range, errors of the hook, initial weights of another size,
/// matrices the format cannot hold.
pub fn quantize_block_from(
    model: &mut CandleModel,
    il: usize,
    fq: FakeQuant,
    learn_weights: bool,
    hooks: &mut dyn Hooks,
) -> EngineResult<()> {
    if il >= model.blocks().len() {
        return Err(EngineError::BadInput(format!(
            "block {il} of {}",
            model.blocks().len()
        )));
    }
    let dev = model.device().clone();
    let mut inits = Vec::with_capacity(7);
    for l in model.blocks()[il].linears() {
        inits.push(hooks.init(il, l)?);
    }
    let block = &mut model.blocks_mut()[il];
    for (l, init) in block.linears_mut().iter_mut().zip(inits) {
        let latent = match init.latent {
            Some(v) => {
                let dims = l.weight().var().as_tensor().dims().to_vec();
                if v.len() != dims.iter().product::<usize>() {
                    return Err(EngineError::BadInput(format!(
                        "{}: {} initial weights for a {dims:?} matrix",
                        l.name(),
                        v.len()
                    )));
                }
                Some(Tensor::from_vec(v, dims, &dev)?)
            }
            None => None,
        };
        l.quantize_from(
            fq,
            latent,
            init.stored_scales,
            init.importance.as_deref(),
            learn_weights,
        )?;
    }
    Ok(())
}

/// The training state of the block in training.
struct BlockRun<'a> {
    block: &'a Block,
    params: Vec<&'a Parameter>,
    adam: CandleAdam,
    epoch: usize,
    pos: usize,
    order: Vec<usize>,
    steps: usize,
    initial: (f64, f64),
    epoch_heldout_mse: Vec<f64>,
    best: (f64, usize, Vec<Tensor>),
}

/// Trains every block of `model` in turn (see the module documentation),
/// starting from `resume` when given, calling `hooks` along the way.
/// Sequences are token ids of one length (calibration and held-out may
/// differ). When finished, the model's blocks are quantized with the
/// trained parameters (all frozen again).
///
/// A run resumed from a checkpoint of a run with the same model, data,
/// format, configuration and hooks produces the same parameters, bit for
/// bit, as the run that was not interrupted.
///
/// # Errors
/// Empty or ragged token sets, ids outside the vocabulary, a configuration
/// out of range, a checkpoint that does not fit, matrices the format
/// cannot hold, errors of the hooks, candle errors.
pub fn train_blocks(
    model: &mut CandleModel,
    fq: FakeQuant,
    calib: &[Vec<u32>],
    heldout: &[Vec<u32>],
    cfg: &BlockwiseConfig,
    resume: Option<&Checkpoint>,
    hooks: &mut dyn Hooks,
) -> EngineResult<Outcome> {
    cfg.validate()?;
    if calib.is_empty() || heldout.is_empty() {
        return Err(EngineError::BadInput(
            "block-wise reconstruction needs calibration and held-out sequences".into(),
        ));
    }
    let ct = model.token_tensor(&as_refs(calib))?;
    let ht = model.token_tensor(&as_refs(heldout))?;
    let mut x_fp = model.embed(&ct)?.detach();
    let mut h_fp = model.embed(&ht)?.detach();
    let mut x_q = x_fp.clone();
    let mut h_q = h_fp.clone();
    let bs = cfg.batch_size;
    let n = calib.len();
    let seq_len = calib[0].len();
    let n_blocks = model
        .blocks()
        .len()
        .min(cfg.max_blocks.unwrap_or(usize::MAX));
    let steps_per_epoch = cfg.steps_per_epoch(n);
    let total_steps = n_blocks * cfg.epochs * steps_per_epoch;
    if let Some(c) = resume {
        if c.layer >= n_blocks
            || c.epoch == 0
            || c.epoch > cfg.epochs
            || c.pos > steps_per_epoch
            || c.order.len() != n
            || c.order.iter().any(|&i| i as usize >= n)
            || c.reports.len() != c.layer
        {
            return Err(EngineError::BadInput(format!(
                "checkpoint (block {}, epoch {}, step {}, {} sequences) does not fit this run ({n_blocks} blocks, {} epochs of {steps_per_epoch} steps, {n} sequences)",
                c.layer,
                c.epoch,
                c.pos,
                c.order.len(),
                cfg.epochs
            )));
        }
    }
    let start_layer = resume.map_or(0, |c| c.layer);
    let mut reports = resume.map(|c| c.reports.clone()).unwrap_or_default();
    let mut global_step = resume.map_or(0, |c| c.global_step);
    // Kept parameters of the finished blocks (for checkpoints).
    let mut done: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for il in 0..n_blocks {
        let start = Instant::now();
        let fp_block = model.blocks()[il].clone();
        let y_fp = apply_detached(&fp_block, &x_fp, bs)?;
        let hy_fp = apply_detached(&fp_block, &h_fp, bs)?;
        drop(fp_block);
        quantize_block(model, il, fq, cfg, hooks)?;
        let block = &model.blocks()[il];
        let params = block.parameters();
        let (xin, hin) = if cfg.quantized_inputs {
            (&x_q, &h_q)
        } else {
            (&x_fp, &h_fp)
        };
        if il < start_layer {
            let c = resume.expect("start_layer > 0 only when resuming");
            for p in &params {
                let t = c.tensor(&format!("done.{}", p.name()), p.var().as_tensor())?;
                p.var().set(&t)?;
            }
        } else {
            let resume_here = resume.filter(|c| c.layer == il);
            let mut vars = Vec::with_capacity(params.len());
            let mut decay = Vec::with_capacity(params.len());
            for (k, p) in params.iter().enumerate() {
                let weight = block.linears().iter().any(|l| std::ptr::eq(l.weight(), *p));
                let lr = match resume_here {
                    Some(c) => *c.step_sizes.get(k).ok_or_else(|| {
                        EngineError::BadInput("checkpoint: step sizes missing".into())
                    })?,
                    None => {
                        let base = if weight {
                            cfg.weight_learning_rate
                        } else {
                            cfg.learning_rate
                        };
                        base * rms(p.var().as_tensor())?.max(1e-12)
                    }
                };
                vars.push((p.var().clone(), lr));
                decay.push(weight);
            }
            let mut adam = CandleAdam::new(vars, cfg.grad_clip)?.with_weight_decay(decay)?;
            let mut run = match resume_here {
                None => {
                    let initial = (
                        mse(block, xin, &y_fp, bs, cfg.loss)?,
                        mse(block, hin, &hy_fp, bs, cfg.loss)?,
                    );
                    BlockRun {
                        block,
                        best: (initial.1, 0, snapshot(&params)?),
                        params,
                        adam,
                        epoch: 1,
                        pos: 0,
                        order: Vec::new(),
                        steps: 0,
                        initial,
                        epoch_heldout_mse: Vec::new(),
                    }
                }
                Some(c) => {
                    if c.step_sizes.len() != params.len() {
                        return Err(EngineError::BadInput(format!(
                            "checkpoint: {} step sizes for {} parameters",
                            c.step_sizes.len(),
                            params.len()
                        )));
                    }
                    let best = crate::named_tensors::restore_training(
                        &c.tensors,
                        params.iter().map(|p| p.name()),
                        &mut adam,
                        c.adam_t,
                    )?;
                    done = c
                        .tensors
                        .iter()
                        .filter(|(n, _, _)| n.starts_with("done."))
                        .cloned()
                        .collect();
                    BlockRun {
                        block,
                        params,
                        adam,
                        epoch: c.epoch,
                        pos: c.pos,
                        order: c.order.iter().map(|&i| i as usize).collect(),
                        steps: c.block_steps,
                        initial: (c.initial_train_mse, c.initial_heldout_mse),
                        epoch_heldout_mse: c.epoch_heldout_mse.clone(),
                        best: (c.best.0, c.best.1, best),
                    }
                }
            };
            while run.epoch <= cfg.epochs {
                if run.pos == 0 {
                    run.order = epoch_order(cfg.seed, il, run.epoch, n);
                }
                let batches: Vec<&[usize]> = run.order.chunks(bs).collect();
                let groups: Vec<&[&[usize]]> = batches.chunks(cfg.grad_accum).collect();
                while run.pos < groups.len() {
                    let group = groups[run.pos];
                    let group_seqs: usize = group.iter().map(|b| b.len()).sum();
                    let mut acc: Vec<Option<Tensor>> = vec![None; run.params.len()];
                    let mut loss_sum = 0f64;
                    for chunk in group {
                        let idx = Tensor::from_vec(
                            chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                            chunk.len(),
                            xin.device(),
                        )?;
                        let x = xin.index_select(&idx, 0)?;
                        let t = y_fp.index_select(&idx, 0)?;
                        let part = chunk.len() as f64 / group_seqs as f64;
                        let loss = (cfg.loss.of(&run.block.forward(&x)?, &t)? * part)?;
                        loss_sum += loss.to_scalar::<f32>()? as f64;
                        let grads: GradStore = loss.backward()?;
                        for (a, p) in acc.iter_mut().zip(&run.params) {
                            if let Some(g) = grads.get(p.var().as_tensor()) {
                                let g = g.detach();
                                *a = Some(match a.take() {
                                    None => g,
                                    Some(s) => (s + g)?,
                                });
                            }
                        }
                    }
                    let warm = if cfg.warmup_steps > 0 {
                        ((run.steps + 1) as f64 / cfg.warmup_steps as f64).min(1.0)
                    } else {
                        1.0
                    };
                    run.adam.step_scaled(&acc, warm, cfg.weight_decay)?;
                    run.steps += 1;
                    run.pos += 1;
                    global_step += 1;
                    let ctl = hooks.step(&StepInfo {
                        layer: il,
                        n_layers: n_blocks,
                        epoch: run.epoch,
                        global_step,
                        total_steps,
                        loss: loss_sum,
                        tokens: group_seqs * seq_len,
                    });
                    if ctl != Control::Continue {
                        let mut tensors = done.clone();
                        tensors.extend(crate::named_tensors::training_entries(
                            run.params.iter().map(|p| p.name()),
                            &run.adam,
                            &run.best.2,
                        )?);
                        let ck = Checkpoint {
                            fingerprint: String::new(),
                            layer: il,
                            epoch: run.epoch,
                            pos: run.pos,
                            order: run.order.iter().map(|&i| i as u32).collect(),
                            block_steps: run.steps,
                            global_step,
                            adam_t: run.adam.steps() as u64,
                            step_sizes: run.adam.step_sizes(),
                            initial_train_mse: run.initial.0,
                            initial_heldout_mse: run.initial.1,
                            epoch_heldout_mse: run.epoch_heldout_mse.clone(),
                            best: (run.best.0, run.best.1),
                            reports: reports.clone(),
                            tensors,
                        };
                        hooks.checkpoint(&ck)?;
                        if ctl == Control::Stop {
                            return Ok(Outcome::Stopped { global_step });
                        }
                    }
                }
                let h = mse(run.block, hin, &hy_fp, bs, cfg.loss)?;
                run.epoch_heldout_mse.push(h);
                if h < run.best.0 {
                    run.best = (h, run.epoch, snapshot(&run.params)?);
                }
                run.epoch += 1;
                run.pos = 0;
            }
            for (p, t) in run.params.iter().zip(&run.best.2) {
                p.var().set(t)?;
            }
            let final_train_mse = mse(block, xin, &y_fp, bs, cfg.loss)?;
            let heldout_target_power = match cfg.loss {
                BlockLoss::Mse => hy_fp.sqr()?.mean_all()?.to_scalar::<f32>()? as f64,
                BlockLoss::RmsNormalized => 1.0,
            };
            let r = BlockReport {
                layer: il,
                initial_train_mse: run.initial.0,
                initial_heldout_mse: run.initial.1,
                epoch_heldout_mse: run.epoch_heldout_mse,
                best_heldout_mse: run.best.0,
                best_epoch: run.best.1,
                final_train_mse,
                heldout_target_power,
                steps: run.steps,
                seconds: start.elapsed().as_secs_f64(),
            };
            hooks.block_done(&r);
            reports.push(r);
        }
        let block = &model.blocks()[il];
        for p in block.parameters() {
            done.push(crate::named_tensors::named(
                "done.",
                p.name(),
                p.var().as_tensor(),
            )?);
        }
        if cfg.quantized_inputs {
            x_q = apply_detached(block, &x_q, bs)?;
            h_q = apply_detached(block, &h_q, bs)?;
        }
        x_fp = y_fp;
        h_fp = hy_fp;
        let block = &mut model.blocks_mut()[il];
        block.set_norms_trainable(false);
        for l in block.linears_mut() {
            l.freeze();
        }
    }
    Ok(Outcome::Finished(reports))
}

/// [`train_blocks`] without checkpoints, starting at the format's initial
/// scales of the full-precision weights; `progress` sees each block's
/// report.
///
/// # Errors
/// As [`train_blocks`].
pub fn reconstruct_blocks(
    model: &mut CandleModel,
    fq: FakeQuant,
    calib: &[Vec<u32>],
    heldout: &[Vec<u32>],
    cfg: &BlockwiseConfig,
    progress: &mut dyn FnMut(&BlockReport),
) -> EngineResult<Vec<BlockReport>> {
    struct P<'a>(&'a mut dyn FnMut(&BlockReport));
    impl Hooks for P<'_> {
        fn block_done(&mut self, r: &BlockReport) {
            (self.0)(r)
        }
    }
    match train_blocks(model, fq, calib, heldout, cfg, None, &mut P(progress))? {
        Outcome::Finished(r) => Ok(r),
        Outcome::Stopped { .. } => Err(EngineError::BadInput("stopped".into())),
    }
}

/// A tensor to write into the output GGUF in place of the source's.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedTensor {
    /// GGUF tensor name.
    pub name: String,
    /// ggml type id of `bytes` (the format's, or 0 = F32 for norm gains).
    pub type_id: u32,
    /// Tensor data, GGUF order.
    pub bytes: Vec<u8>,
}

/// GGML's F32 type id.
const GGML_F32: u32 = 0;

/// What block-wise training changed, for writing: every quantized matrix
/// encoded with its format's `export`, and the norm gains (f32) of the
/// blocks holding one, in block order.
///
/// # Errors
/// As [`crate::candle_op::FakeQuant::export`].
pub fn export_blocks(model: &CandleModel) -> EngineResult<Vec<ExportedTensor>> {
    let mut out = Vec::new();
    for b in model.blocks() {
        let mut any = false;
        for l in b.linears() {
            if let (Some(bytes), Some((fq, _))) = (l.export()?, l.quant()) {
                any = true;
                out.push(ExportedTensor {
                    name: l.name().to_string(),
                    type_id: fq.format().type_id(),
                    bytes,
                });
            }
        }
        if any {
            for p in b.norms() {
                let v = crate::candle_op::host_f32(p.var().as_tensor())?;
                out.push(ExportedTensor {
                    name: p.name().to_string(),
                    type_id: GGML_F32,
                    bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                });
            }
        }
    }
    Ok(out)
}
