//! Block-wise reconstruction (OmniQuant / EfficientQAT Block-AP style,
//! `QUALITY.md` 3b-3c): each transformer block's fake-quantized copy is
//! trained with Adam to reproduce the full-precision block's outputs on
//! cached calibration activations (mean squared error), block after block.
//!
//! - Scales start at the format's `init_scales` (a GPTQ start can replace
//!   them later); trained are the scales, optionally the norm gains and the
//!   latent weights.
//! - Targets: the full-precision block applied to full-precision inputs.
//!   Inputs of the quantized block: the outputs of the already trained
//!   quantized blocks ([`BlockwiseConfig::quantized_inputs`], so later
//!   blocks learn to correct earlier errors) or the full-precision inputs.
//! - The best epoch on held-out sequences is kept (the initial state
//!   counts as epoch 0, so training never makes the held-out error worse).
//! - [`export_blocks`] encodes the trained matrices with the format's
//!   `export`.

use crate::candle_model::{Block, CandleModel, Parameter};
use crate::candle_op::FakeQuant;
use crate::engine_error::{EngineError, EngineResult};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use gguftool_quant::hadamard::SplitMix64;
use std::time::Instant;

/// Options of [`reconstruct_blocks`].
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
    /// Sequences per optimizer step.
    pub batch_size: usize,
    /// Feed each block the outputs of the trained quantized blocks before it
    /// (else the full-precision activations).
    pub quantized_inputs: bool,
    /// Shuffling seed.
    pub seed: u64,
    /// Train only the first this many blocks (`None`: all); later blocks
    /// stay full precision.
    pub max_blocks: Option<usize>,
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
            quantized_inputs: true,
            seed: 0x5eed,
            max_blocks: None,
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
        Ok(())
    }
}

/// What training did to one block.
#[derive(Debug, Clone, serde::Serialize)]
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
    /// (to read the MSEs relative to it).
    pub heldout_target_power: f64,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Adam (Kingma & Ba 2015) on candle variables, each with its own step size.
struct Adam {
    vars: Vec<(Var, f64)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: i32,
}

impl Adam {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    fn new(vars: Vec<(Var, f64)>) -> EngineResult<Self> {
        let m = vars
            .iter()
            .map(|(v, _)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            v: m.clone(),
            m,
            vars,
            t: 0,
        })
    }

    fn step(&mut self, grads: &GradStore) -> EngineResult<()> {
        self.t += 1;
        let c1 = 1.0 - Self::B1.powi(self.t);
        let c2 = 1.0 - Self::B2.powi(self.t);
        for (i, (var, lr)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.detach();
            self.m[i] = ((&self.m[i] * Self::B1)? + (&g * (1.0 - Self::B1))?)?;
            self.v[i] = ((&self.v[i] * Self::B2)? + (g.sqr()? * (1.0 - Self::B2))?)?;
            let upd = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + Self::EPS)?)?;
            let new = (var.as_tensor().detach() - (upd * *lr)?)?;
            var.set(&new)?;
        }
        Ok(())
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

fn mse(block: &Block, x: &Tensor, target: &Tensor, bs: usize) -> EngineResult<f64> {
    let y = apply_detached(block, x, bs)?;
    Ok((y - target)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64)
}

fn snapshot(params: &[&Parameter]) -> EngineResult<Vec<Tensor>> {
    Ok(params
        .iter()
        .map(|p| p.var().as_tensor().copy())
        .collect::<candle_core::Result<_>>()?)
}

/// Trains every block of `model` in turn (see the module documentation):
/// each block's matrices are wrapped in `fq` and its parameters trained
/// on `calib` sequences, the best state on `heldout` sequences kept.
/// Sequences are token ids of one length (calibration and held-out may
/// differ). On return the model's blocks are quantized with the trained
/// parameters (all frozen again).
///
/// # Errors
/// Empty or ragged token sets, ids outside the vocabulary, a configuration
/// out of range, matrices the format cannot hold, candle errors.
pub fn reconstruct_blocks(
    model: &mut CandleModel,
    fq: FakeQuant,
    calib: &[Vec<u32>],
    heldout: &[Vec<u32>],
    cfg: &BlockwiseConfig,
    progress: &mut dyn FnMut(&BlockReport),
) -> EngineResult<Vec<BlockReport>> {
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
    let mut rng = SplitMix64::new(cfg.seed);
    let mut reports = Vec::new();
    let n_blocks = model
        .blocks()
        .len()
        .min(cfg.max_blocks.unwrap_or(usize::MAX));
    for il in 0..n_blocks {
        let start = Instant::now();
        let fp_block = model.blocks()[il].clone();
        let y_fp = apply_detached(&fp_block, &x_fp, bs)?;
        let hy_fp = apply_detached(&fp_block, &h_fp, bs)?;
        let (xin, hin) = if cfg.quantized_inputs {
            (&x_q, &h_q)
        } else {
            (&x_fp, &h_fp)
        };

        let block = &mut model.blocks_mut()[il];
        block.quantize(fq, cfg.learn_weights)?;
        block.set_norms_trainable(cfg.learn_norms);
        let block = &model.blocks()[il];
        let params = block.parameters();
        let mut vars = Vec::with_capacity(params.len());
        for p in &params {
            let weight = block.linears().iter().any(|l| std::ptr::eq(l.weight(), *p));
            let lr = if weight {
                cfg.weight_learning_rate
            } else {
                cfg.learning_rate
            };
            vars.push((p.var().clone(), lr * rms(p.var().as_tensor())?.max(1e-12)));
        }
        let mut adam = Adam::new(vars)?;

        let initial_train_mse = mse(block, xin, &y_fp, bs)?;
        let initial_heldout_mse = mse(block, hin, &hy_fp, bs)?;
        let mut best = (initial_heldout_mse, 0usize, snapshot(&params)?);
        let mut epoch_heldout_mse = Vec::with_capacity(cfg.epochs);
        let mut steps = 0;
        let mut order: Vec<usize> = (0..n).collect();
        for epoch in 1..=cfg.epochs {
            for i in (1..n).rev() {
                order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            for chunk in order.chunks(bs) {
                let idx = Tensor::from_vec(
                    chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                    chunk.len(),
                    xin.device(),
                )?;
                let x = xin.index_select(&idx, 0)?;
                let t = y_fp.index_select(&idx, 0)?;
                let loss = (block.forward(&x)? - t)?.sqr()?.mean_all()?;
                let grads = loss.backward()?;
                adam.step(&grads)?;
                steps += 1;
            }
            let h = mse(block, hin, &hy_fp, bs)?;
            epoch_heldout_mse.push(h);
            if h < best.0 {
                best = (h, epoch, snapshot(&params)?);
            }
        }
        for (p, t) in params.iter().zip(&best.2) {
            p.var().set(t)?;
        }
        let final_train_mse = mse(block, xin, &y_fp, bs)?;
        let heldout_target_power = hy_fp.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
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
        let r = BlockReport {
            layer: il,
            initial_train_mse,
            initial_heldout_mse,
            epoch_heldout_mse,
            best_heldout_mse: best.0,
            best_epoch: best.1,
            final_train_mse,
            heldout_target_power,
            steps,
            seconds: start.elapsed().as_secs_f64(),
        };
        progress(&r);
        reports.push(r);
    }
    Ok(reports)
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
