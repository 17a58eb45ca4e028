//! End-to-end distillation (`QUALITY.md` 3b step 5; EfficientQAT's E2E-QP,
//! Chen et al. 2024, arXiv 2407.11062; Gemma 3's QAT uses the unquantized
//! model's probabilities as targets the same way): the quantized
//! [`CandleModel`] (student) is trained to match the full-precision model
//! (teacher) on whole sequences.
//!
//! Loss per batch of `n` positions (Hinton et al. 2015, "Distilling the
//! Knowledge in a Neural Network"):
//! `k T^2 / n * sum_pos KL(softmax(z_t / T) || softmax(z_s / T))`
//! `+ w / n' * sum_pos -log softmax(z_s)[next token]`
//! with `T` the temperature, `k` the distillation weight, `w` the
//! cross-entropy weight and `n'` the positions that have a next token in
//! their sequence. Trained: quantizer
//! scales and norm gains (the block norms and the final norm), optionally the
//! latent weights and the LoRA adapters attached to the student
//! ([`crate::lora`]); the embedding and output matrices stay frozen.
//!
//! **Memory.** The output head and the loss run in chunks of
//! [`LossConfig::chunk_positions`] positions: the student's final hidden
//! states are computed once with the autograd graph, detached, and each
//! chunk's logits get the loss's gradient in closed form
//! (`T (softmax(z_s/T) - softmax(z_t/T))` for the KD term,
//! `softmax(z_s) - onehot` for the cross-entropy), sent back through the
//! head alone to the chunk's hidden states (and the final norm gain); a
//! second backward through the blocks from the assembled hidden-state
//! gradient gives every block parameter's gradient. This is the exact
//! gradient of the whole-batch loss (a test holds it equal to the autograd
//! of the unchunked graph, [`distill_loss`]), and no `[positions, n_vocab]`
//! tensor larger than `chunk_positions x n_vocab` exists at any time: about
//! a dozen such f32 tensors live at the peak of a chunk (measured: 12 at
//! `T = 2` with cross-entropy), so Gemma's 262,144-token vocabulary at 64
//! positions per chunk needs about 0.8 GB, independent of the batch.
//! Chunking the vocabulary as well is not needed: one position's row is
//! 1 MiB even for Gemma.
//!
//! **Teacher targets.** The teacher's full distribution is used (exact KL,
//! no top-k truncation). What is cached is not the logits (`n_vocab` floats
//! per position, 1 MiB for Gemma) but the teacher's normalised final hidden
//! states (`n_embd` floats per position, [`TeacherTargets`]); each chunk's
//! teacher logits are recomputed from them with the frozen output matrix,
//! which costs one extra output-head product per chunk (about a third of the
//! student's head forward and backward) and keeps memory at `n_embd` floats
//! per cached position. The teacher's blocks run once, before training, so
//! a teacher cloned from the student before quantization (sharing storage)
//! is fine.
//!
//! **Optimizer.** Adam ([`CandleAdam`]) with step sizes relative to each
//! parameter tensor's initial root mean square (as [`crate::blockwise`]),
//! except LoRA factors (absolute; `B` starts at zero). The held-out KL is
//! measured every [`DistillConfig::eval_every`] steps and the best state is
//! kept (the initial state counts as step 0, so training never makes the
//! held-out KL worse). [`DistillConfig::grad_accum`] micro-batches are
//! averaged into one step.
//!
//! **Checkpoints.** [`distill_resumable`] hands its whole state between two
//! steps to its [`DistillHooks`] on request ([`DistillCheckpoint`]: trained
//! parameters, kept snapshot, Adam's moments and counter, the shuffling
//! position, the evaluations and losses so far); a run resumed from it
//! ends bit for bit where the uninterrupted run ends. [`distill`] is the
//! same run without checkpoints.

use crate::blockwise::{export_blocks, Control, ExportedTensor};
use crate::candle_adam::CandleAdam;
use crate::candle_model::{CandleModel, Parameter};
use crate::engine_error::{EngineError, EngineResult};
use candle_core::{DType, Tensor, Var, D};
use gguftool_quant::hadamard::SplitMix64;
use std::time::Instant;

/// What the loss is and how it is chunked.
#[derive(Debug, Clone, PartialEq)]
pub struct LossConfig {
    /// Distillation temperature `T` (> 0; 1: the plain distributions).
    pub temperature: f64,
    /// Weight `k` of the distillation term (>= 0; 0: pure cross-entropy).
    pub kd_weight: f64,
    /// Weight `w` of the next-token cross-entropy (>= 0; 0: pure KD).
    pub ce_weight: f64,
    /// Positions per output-head chunk (>= 1); bounds the largest tensor
    /// to `chunk_positions x n_vocab` floats.
    pub chunk_positions: usize,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            kd_weight: 1.0,
            ce_weight: 0.0,
            chunk_positions: 64,
        }
    }
}

impl LossConfig {
    fn validate(&self) -> EngineResult<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(EngineError::BadInput(
                "distillation temperature must be finite and > 0".into(),
            ));
        }
        if !(self.ce_weight.is_finite() && self.ce_weight >= 0.0) {
            return Err(EngineError::BadInput(
                "cross-entropy weight must be finite and >= 0".into(),
            ));
        }
        if !(self.kd_weight.is_finite() && self.kd_weight >= 0.0) {
            return Err(EngineError::BadInput(
                "distillation weight must be finite and >= 0".into(),
            ));
        }
        if self.kd_weight + self.ce_weight <= 0.0 {
            return Err(EngineError::BadInput(
                "the distillation and cross-entropy weights are both 0".into(),
            ));
        }
        if self.chunk_positions == 0 {
            return Err(EngineError::BadInput(
                "chunk_positions must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The parts of a batch's loss (means as in the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LossParts {
    /// `T^2 *` mean KL(teacher || student) at temperature `T` (unweighted),
    /// nats.
    pub kd: f64,
    /// Mean next-token cross-entropy of the student (unweighted), nats.
    pub ce: f64,
    /// `kd_weight * kd + ce_weight * ce`.
    pub total: f64,
}

/// The teacher's normalised final hidden states `[n_seqs, seq, n_embd]`
/// (after the final RMSNorm, before the output matrix) for a set of
/// equal-length sequences: the distillation targets, `n_embd` floats per
/// position (see the module documentation).
#[derive(Debug, Clone)]
pub struct TeacherTargets {
    tokens: Tensor,
    normed: Tensor,
}

impl TeacherTargets {
    /// Runs `teacher` over `seqs` (equal lengths) in batches of
    /// `batch_size` sequences, without gradients.
    ///
    /// # Errors
    /// Empty or ragged sequences, ids outside the vocabulary, a zero batch
    /// size, candle errors.
    pub fn new(teacher: &CandleModel, seqs: &[Vec<u32>], batch_size: usize) -> EngineResult<Self> {
        if batch_size == 0 {
            return Err(EngineError::BadInput(
                "batch size must be at least 1".into(),
            ));
        }
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let tokens = teacher.token_tensor(&refs)?;
        let n = seqs.len();
        let mut outs = Vec::new();
        let mut i = 0;
        while i < n {
            let k = batch_size.min(n - i);
            let h = teacher.hidden(&tokens.narrow(0, i, k)?)?.detach();
            outs.push(teacher.final_norm(&h)?.detach());
            i += k;
        }
        Ok(Self {
            tokens,
            normed: Tensor::cat(&outs, 0)?,
        })
    }

    /// Sequences held.
    pub fn len(&self) -> usize {
        self.tokens.dims()[0]
    }

    /// Whether no sequence is held (never: [`TeacherTargets::new`] needs one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token ids `[n_seqs, seq]` (u32).
    pub fn tokens(&self) -> &Tensor {
        &self.tokens
    }

    /// Normalised teacher hidden states `[n_seqs, seq, n_embd]`.
    pub fn normed(&self) -> &Tensor {
        &self.normed
    }

    /// The sequences at `idx` (token ids and targets).
    ///
    /// # Errors
    /// Indices out of range, candle errors.
    pub fn select(&self, idx: &[usize]) -> EngineResult<(Tensor, Tensor)> {
        if let Some(&i) = idx.iter().find(|&&i| i >= self.len()) {
            return Err(EngineError::BadInput(format!(
                "sequence {i} of {}",
                self.len()
            )));
        }
        let ix = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            self.tokens.device(),
        )?;
        Ok((
            self.tokens.index_select(&ix, 0)?,
            self.normed.index_select(&ix, 0)?,
        ))
    }
}

/// `log softmax` over the last dimension (max-shifted; the shift is a
/// constant for the gradient).
fn log_softmax(z: &Tensor) -> EngineResult<Tensor> {
    let mx = z.max_keepdim(D::Minus1)?.detach();
    let s = z.broadcast_sub(&mx)?;
    let lse = s.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(s.broadcast_sub(&lse)?)
}

/// Next-token labels of the flattened positions of `tokens` `[b, t]`:
/// `(label, 1.0)` where a next token exists, `(0, 0.0)` at the last
/// position of each sequence.
fn labels(tokens: &Tensor) -> EngineResult<(Vec<u32>, Vec<f32>)> {
    let (b, t) = tokens.dims2()?;
    let ids = tokens.flatten_all()?.to_vec1::<u32>()?;
    let mut lab = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for s in 0..b {
        for p in 0..t {
            if p + 1 < t {
                lab.push(ids[s * t + p + 1]);
                mask.push(1.0);
            } else {
                lab.push(0);
                mask.push(0.0);
            }
        }
    }
    Ok((lab, mask))
}

/// Sums of the loss terms over a chunk of positions: student logits `zs`
/// and teacher logits `zt` `[c, n_vocab]`, labels and mask `[c]`.
/// Returns (sum of KL at `T`, sum of masked cross-entropy) as graph scalars.
fn chunk_sums(
    zs: &Tensor,
    zt: &Tensor,
    lab: &Tensor,
    mask: &Tensor,
    temperature: f64,
    want_ce: bool,
) -> EngineResult<(Tensor, Option<Tensor>)> {
    let (zs_t, zt_t) = if temperature == 1.0 {
        (zs.clone(), zt.clone())
    } else {
        ((zs / temperature)?, (zt / temperature)?)
    };
    let log_q = log_softmax(&zs_t)?;
    let log_p = log_softmax(&zt_t.detach())?.detach();
    let p = log_p.exp()?;
    let kl = (p * (log_p - &log_q)?)?.sum_all()?;
    let ce = if want_ce {
        let lq1 = if temperature == 1.0 {
            log_q
        } else {
            log_softmax(zs)?
        };
        let picked = lq1.gather(&lab.unsqueeze(1)?, 1)?.squeeze(1)?;
        Some((picked * mask)?.sum_all()?.neg()?)
    } else {
        None
    };
    Ok((kl, ce))
}

/// The loss sums of a chunk and their gradient with respect to the student
/// logits, in closed form (no autograd graph over `[c, n_vocab]`):
/// with `q = softmax(zs / T)`, `p = softmax(zt / T)`,
/// `d(T^2 KL)/dzs = T (q - p)` and `d CE/dzs = softmax(zs) - onehot(label)`
/// (Hinton et al. 2015, section 2). `zs`, `zt` `[c, n_vocab]` (detached),
/// `lab`/`mask` the chunk's labels; `kd_w`/`ce_w` multiply the KL sum (at
/// `T`, before the `T^2`) and the cross-entropy sum. Returns (KL sum, CE
/// sum, gradient of `kd_w * T^2 * KL + ce_w * CE`).
#[allow(clippy::too_many_arguments)]
fn chunk_closed_form(
    zs: &Tensor,
    zt: &Tensor,
    lab: &[u32],
    mask: &[f32],
    temperature: f64,
    kd_w: f64,
    ce_w: f64,
) -> EngineResult<(f64, f64, Tensor)> {
    let (c, nv) = zs.dims2()?;
    let (log_q, p, kl) = {
        let (a, b) = if temperature == 1.0 {
            (zs.clone(), zt.clone())
        } else {
            ((zs / temperature)?, (zt / temperature)?)
        };
        let log_q = log_softmax(&a)?;
        let log_p = log_softmax(&b)?;
        let p = log_p.exp()?;
        let kl = scalar(&(&p * (log_p - &log_q)?)?.sum_all()?)?;
        (log_q, p, kl)
    };
    let q = log_q.exp()?;
    // d(T^2 KL)/dzs = T^2 * (q - p) / T.
    let mut g = ((q.clone() - p)? * (kd_w * temperature))?;
    let mut ce = 0.0;
    if ce_w > 0.0 {
        let (lq1, q1) = if temperature == 1.0 {
            (log_q, q)
        } else {
            let l = log_softmax(zs)?;
            let e = l.exp()?;
            (l, e)
        };
        let dev = zs.device();
        let lt = Tensor::from_vec(lab.to_vec(), (c, 1), dev)?;
        let mt = Tensor::from_vec(mask.to_vec(), (c, 1), dev)?;
        let picked = lq1.gather(&lt, 1)?;
        ce = -scalar(&(picked * &mt)?.sum_all()?)?;
        let mut onehot = vec![0f32; c * nv];
        for (i, (&l, &m)) in lab.iter().zip(mask).enumerate() {
            onehot[i * nv + l as usize] = m;
        }
        let oh = Tensor::from_vec(onehot, (c, nv), dev)?;
        g = (g + ((q1.broadcast_mul(&mt)? - oh)? * ce_w)?)?;
    }
    Ok((kl, ce, g))
}

fn scalar(t: &Tensor) -> EngineResult<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Counts of one batch used to turn sums into means.
fn denominators(lab_mask: &[f32]) -> (f64, f64) {
    let n = lab_mask.len() as f64;
    let n_ce = lab_mask.iter().filter(|&&m| m > 0.0).count() as f64;
    (n, n_ce.max(1.0))
}

/// The distillation loss of one batch as a single graph over the whole
/// batch's logits `[b, t, n_vocab]`: the reference [`loss_and_grads`]
/// is checked against, and usable when the vocabulary is small.
/// `tokens` `[b, t]` (u32); `teacher_normed` `[b, t, n_embd]` from
/// [`TeacherTargets`].
///
/// # Errors
/// A configuration out of range, shapes that do not match, candle errors.
pub fn distill_loss(
    student: &CandleModel,
    teacher: &CandleModel,
    tokens: &Tensor,
    teacher_normed: &Tensor,
    cfg: &LossConfig,
) -> EngineResult<Tensor> {
    cfg.validate()?;
    let (b, t) = tokens.dims2()?;
    let nv = student.hparams().n_vocab;
    let zs = student.forward(tokens)?.reshape((b * t, nv))?;
    let zt = teacher
        .project(teacher_normed)?
        .reshape((b * t, nv))?
        .detach();
    let (lab, mask) = labels(tokens)?;
    let (n, n_ce) = denominators(&mask);
    let dev = student.device();
    let lab = Tensor::from_vec(lab, b * t, dev)?;
    let mask = Tensor::from_vec(mask, b * t, dev)?;
    let want_ce = cfg.ce_weight > 0.0;
    let (kl, ce) = chunk_sums(&zs, &zt, &lab, &mask, cfg.temperature, want_ce)?;
    let mut loss = (kl * (cfg.kd_weight * cfg.temperature * cfg.temperature / n))?;
    if let Some(ce) = ce {
        loss = (loss + (ce * (cfg.ce_weight / n_ce))?)?;
    }
    Ok(loss)
}

/// The chunked loss of one batch and its gradient with respect to each of
/// `vars` (`None` where the loss does not depend on it), computed as the
/// module documentation describes: the largest tensor is
/// `chunk_positions x n_vocab`. `tokens` `[b, t]` (u32), `teacher_normed`
/// `[b, t, n_embd]` from [`TeacherTargets`].
///
/// # Errors
/// A configuration out of range, shapes that do not match, candle errors.
pub fn loss_and_grads(
    student: &CandleModel,
    teacher: &CandleModel,
    tokens: &Tensor,
    teacher_normed: &Tensor,
    vars: &[Var],
    cfg: &LossConfig,
) -> EngineResult<(LossParts, Vec<Option<Tensor>>)> {
    let (b, t) = tokens.dims2()?;
    let d = student.hparams().n_embd;
    let h = student.hidden(tokens)?;
    let head = head_stage(
        student,
        teacher,
        &h.detach(),
        tokens,
        teacher_normed,
        vars,
        cfg,
    )?;
    let mut grads = head.grads;
    // Second stage: through the blocks, from dL/dh.
    if h.track_op() {
        let gh = head.hidden_grad.reshape((b, t, d))?;
        let g = (h * gh)?.sum_all()?.backward()?;
        for (i, v) in vars.iter().enumerate() {
            if let Some(gv) = g.get(v.as_tensor()) {
                accumulate(&mut grads[i], gv)?;
            }
        }
    }
    Ok((head.loss, grads))
}

fn accumulate(slot: &mut Option<Tensor>, g: &Tensor) -> EngineResult<()> {
    *slot = Some(match slot.take() {
        Some(a) => (a + g)?,
        None => g.detach(),
    });
    Ok(())
}

/// What [`head_stage`] returns.
#[derive(Debug, Clone)]
pub struct HeadStage {
    /// The batch's loss.
    pub loss: LossParts,
    /// The loss's gradient with respect to the final hidden states,
    /// `[b * t, n_embd]`.
    pub hidden_grad: Tensor,
    /// The gradient of each variable through the head alone (the final
    /// norm gain; `None` for the others).
    pub grads: Vec<Option<Tensor>>,
}

/// The first stage of [`loss_and_grads`]: the output head and the loss of
/// the student's final hidden states `hidden` `[b, t, n_embd]` (detached),
/// chunk by chunk, each chunk's graph freed before the next. The loss's
/// gradient with respect to a chunk's logits is computed in closed form
/// and sent back through the head alone, so a chunk holds a handful of
/// `[chunk_positions, n_vocab]` tensors (no graph over the softmaxes).
/// Memory beyond the inputs: those and the `[b * t, n_embd]` hidden-state
/// gradient.
///
/// # Errors
/// A configuration out of range, shapes that do not match, candle errors.
pub fn head_stage(
    student: &CandleModel,
    teacher: &CandleModel,
    hidden: &Tensor,
    tokens: &Tensor,
    teacher_normed: &Tensor,
    vars: &[Var],
    cfg: &LossConfig,
) -> EngineResult<HeadStage> {
    cfg.validate()?;
    let (b, t) = tokens.dims2()?;
    let d = student.hparams().n_embd;
    if teacher_normed.dims() != [b, t, d] || hidden.dims() != [b, t, d] {
        return Err(EngineError::BadInput(format!(
            "hidden states {:?} and teacher targets {:?} for tokens [{b}, {t}] of width {d}",
            hidden.dims(),
            teacher_normed.dims()
        )));
    }
    let rows = b * t;
    let hd = hidden.detach().reshape((rows, d))?;
    let tn = teacher_normed.reshape((rows, d))?;
    let (lab, mask) = labels(tokens)?;
    let (n, n_ce) = denominators(&mask);
    let t2 = cfg.temperature * cfg.temperature;

    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut gh = Vec::new();
    let (mut kd_sum, mut ce_sum) = (0f64, 0f64);
    let mut s = 0;
    while s < rows {
        let c = cfg.chunk_positions.min(rows - s);
        let hv = Var::from_tensor(&hd.narrow(0, s, c)?)?;
        let zs = student.head(hv.as_tensor())?;
        let zt = teacher.project(&tn.narrow(0, s, c)?)?.detach();
        let (kl, ce, gz) = chunk_closed_form(
            &zs.detach(),
            &zt,
            &lab[s..s + c],
            &mask[s..s + c],
            cfg.temperature,
            cfg.kd_weight / n,
            cfg.ce_weight / n_ce,
        )?;
        drop(zt);
        kd_sum += kl;
        ce_sum += ce;
        let g = (zs * gz)?.sum_all()?.backward()?;
        gh.push(match g.get(hv.as_tensor()) {
            Some(x) => x.detach(),
            None => hv.as_tensor().zeros_like()?,
        });
        for (i, v) in vars.iter().enumerate() {
            if let Some(gv) = g.get(v.as_tensor()) {
                accumulate(&mut grads[i], gv)?;
            }
        }
        s += c;
    }
    let kd = t2 * kd_sum / n;
    let ce = ce_sum / n_ce;
    Ok(HeadStage {
        loss: LossParts {
            kd,
            ce,
            total: cfg.kd_weight * kd + cfg.ce_weight * ce,
        },
        hidden_grad: Tensor::cat(&gh, 0)?,
        grads,
    })
}

/// Held-out agreement of student and teacher.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EvalStats {
    /// Mean KL(teacher || student) per position at temperature 1, nats
    /// (llama.cpp's `--kl-divergence` statistic).
    pub kl: f64,
    /// Mean next-token negative log-likelihood of the student, nats
    /// (`exp` of it is the perplexity over these positions).
    pub nll: f64,
    /// Fraction of positions where the student's most likely token is the
    /// teacher's.
    pub top1_agreement: f64,
    /// Positions measured.
    pub positions: usize,
}

/// Measures `student` against `targets` (chunked as `cfg`, no gradients),
/// in batches of `batch_size` sequences.
///
/// # Errors
/// A zero batch size or chunk, candle errors.
pub fn evaluate(
    student: &CandleModel,
    teacher: &CandleModel,
    targets: &TeacherTargets,
    batch_size: usize,
    chunk_positions: usize,
) -> EngineResult<EvalStats> {
    if batch_size == 0 || chunk_positions == 0 {
        return Err(EngineError::BadInput(
            "batch size and chunk must be at least 1".into(),
        ));
    }
    let n_seq = targets.len();
    let d = student.hparams().n_embd;
    let (mut kl, mut nll, mut agree, mut pos, mut n_ce) = (0f64, 0f64, 0usize, 0usize, 0f64);
    let mut i = 0;
    while i < n_seq {
        let k = batch_size.min(n_seq - i);
        let idx: Vec<usize> = (i..i + k).collect();
        let (tokens, tn) = targets.select(&idx)?;
        let (b, t) = tokens.dims2()?;
        let rows = b * t;
        let h = student.hidden(&tokens)?.detach().reshape((rows, d))?;
        let tn = tn.reshape((rows, d))?;
        let (lab, mask) = labels(&tokens)?;
        n_ce += mask.iter().filter(|&&m| m > 0.0).count() as f64;
        let dev = student.device();
        let lab = Tensor::from_vec(lab, rows, dev)?;
        let mask = Tensor::from_vec(mask, rows, dev)?;
        let mut s = 0;
        while s < rows {
            let c = chunk_positions.min(rows - s);
            let zs = student.head(&h.narrow(0, s, c)?)?.detach();
            let zt = teacher.project(&tn.narrow(0, s, c)?)?.detach();
            let (k_sum, ce) = chunk_sums(
                &zs,
                &zt,
                &lab.narrow(0, s, c)?,
                &mask.narrow(0, s, c)?,
                1.0,
                true,
            )?;
            kl += scalar(&k_sum)?;
            nll += ce.map(|c| scalar(&c)).transpose()?.unwrap_or(0.0);
            let a = zs.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let bb = zt.argmax(D::Minus1)?.to_vec1::<u32>()?;
            agree += a.iter().zip(&bb).filter(|(x, y)| x == y).count();
            s += c;
        }
        pos += rows;
        i += k;
    }
    Ok(EvalStats {
        kl: kl / pos as f64,
        nll: nll / n_ce.max(1.0),
        top1_agreement: agree as f64 / pos as f64,
        positions: pos,
    })
}

/// Options of [`distill`].
#[derive(Debug, Clone, PartialEq)]
pub struct DistillConfig {
    /// The loss and its chunking.
    pub loss: LossConfig,
    /// Adam step size of scales and norm gains, relative to each parameter
    /// tensor's initial root mean square.
    pub learning_rate: f64,
    /// Adam step size of latent weights, relative as above.
    pub weight_learning_rate: f64,
    /// Adam step size of LoRA factors (absolute).
    pub lora_learning_rate: f64,
    /// Train the quantizer scales.
    pub learn_scales: bool,
    /// Train the norm gains (every block's and the final one).
    pub learn_norms: bool,
    /// Train the latent weights of quantized matrices.
    pub learn_weights: bool,
    /// Train the attached LoRA adapters.
    pub learn_lora: bool,
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per micro-batch (one forward and backward pass).
    pub batch_size: usize,
    /// Micro-batches whose gradients are averaged into one optimizer step
    /// (>= 1).
    pub grad_accum: usize,
    /// Held-out evaluation every this many steps (and after the last).
    pub eval_every: usize,
    /// Global gradient-norm clip (`None`: none).
    pub clip: Option<f64>,
    /// Shuffling seed.
    pub seed: u64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            loss: LossConfig::default(),
            learning_rate: 1e-3,
            weight_learning_rate: 1e-4,
            lora_learning_rate: 1e-3,
            learn_scales: true,
            learn_norms: true,
            learn_weights: false,
            learn_lora: true,
            steps: 100,
            batch_size: 4,
            grad_accum: 1,
            eval_every: 25,
            clip: None,
            seed: 0x5eed,
        }
    }
}

impl DistillConfig {
    fn validate(&self) -> EngineResult<()> {
        self.loss.validate()?;
        let bad = |m: &str| Err(EngineError::BadInput(format!("distillation config: {m}")));
        for (v, name) in [
            (self.learning_rate, "learning_rate"),
            (self.weight_learning_rate, "weight_learning_rate"),
            (self.lora_learning_rate, "lora_learning_rate"),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(&format!("{name} must be finite and >= 0"));
            }
        }
        if self.batch_size == 0 || self.eval_every == 0 || self.grad_accum == 0 {
            return bad("batch_size, grad_accum and eval_every must be at least 1");
        }
        Ok(())
    }
}

/// One progress event of [`distill`] and [`distill_resumable`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct DistillProgress {
    /// Steps done.
    pub step: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
    /// The loss of the step's batches (before its update; the mean over
    /// its micro-batches).
    pub loss: LossParts,
    /// Training positions of this step.
    pub tokens: usize,
    /// Held-out statistics, when measured after this step.
    pub heldout: Option<EvalStats>,
}

/// What [`distill`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DistillReport {
    /// Held-out statistics of the initial state.
    pub initial: EvalStats,
    /// Held-out statistics of the kept state.
    pub best: EvalStats,
    /// The kept step (0: the initial state).
    pub best_step: usize,
    /// `(step, held-out statistics)` of every evaluation.
    pub evals: Vec<(usize, EvalStats)>,
    /// Training loss per step.
    pub train_loss: Vec<LossParts>,
    /// Trained parameter tensors and their element count.
    pub trained_tensors: usize,
    /// Trained elements.
    pub trained_elements: usize,
    /// Training positions processed.
    pub tokens: usize,
    /// Wall time of the training steps (evaluations excluded), seconds
    /// (summed over the sessions of a resumed run).
    pub train_seconds: f64,
    /// Wall time in all (targets, evaluations, training), seconds (of the
    /// last session when resumed).
    pub seconds: f64,
}

fn rms(t: &Tensor) -> EngineResult<f64> {
    Ok(scalar(&t.sqr()?.mean_all()?)?.sqrt())
}

/// [`select_parameters`] with each variable's name ([`Parameter::name`]):
/// `(name, variable, step size)`, in the same order.
///
/// # Errors
/// candle errors.
pub fn select_named_parameters(
    student: &mut CandleModel,
    cfg: &DistillConfig,
) -> EngineResult<Vec<(String, Var, f64)>> {
    for b in student.blocks_mut() {
        b.set_norms_trainable(cfg.learn_norms);
        for l in b.linears_mut() {
            l.set_trainable(cfg.learn_scales, cfg.learn_weights);
            if let Some(lo) = l.lora_mut() {
                lo.set_trainable(cfg.learn_lora);
            }
        }
    }
    student.set_output_norm_trainable(cfg.learn_norms);
    let mut out = Vec::new();
    let rel = |p: &Parameter, lr: f64| -> EngineResult<(String, Var, f64)> {
        Ok((
            p.name().to_string(),
            p.var().clone(),
            lr * rms(p.var().as_tensor())?.max(1e-12),
        ))
    };
    for b in student.blocks() {
        for l in b.linears() {
            if let Some((_, s)) = l.quant() {
                if s.trainable() {
                    out.push(rel(s, cfg.learning_rate)?);
                }
            }
            if l.weight().trainable() {
                out.push(rel(l.weight(), cfg.weight_learning_rate)?);
            }
            if let Some(lo) = l.lora() {
                for p in [lo.a(), lo.b()] {
                    if p.trainable() {
                        out.push((
                            p.name().to_string(),
                            p.var().clone(),
                            cfg.lora_learning_rate,
                        ));
                    }
                }
            }
        }
        for p in b.norms() {
            if p.trainable() {
                out.push(rel(p, cfg.learning_rate)?);
            }
        }
    }
    if student.output_norm().trainable() {
        out.push(rel(student.output_norm(), cfg.learning_rate)?);
    }
    Ok(out)
}

/// Sets the student's trainable flags from `cfg` (scales, latent weights,
/// norms, adapters) and lists the trained variables with their Adam step
/// sizes (see [`DistillConfig`]), in model order: per block each matrix's
/// scales, latent weights and LoRA factors, then the block's norms; the
/// final norm last.
///
/// # Errors
/// candle errors.
pub fn select_parameters(
    student: &mut CandleModel,
    cfg: &DistillConfig,
) -> EngineResult<Vec<(Var, f64)>> {
    Ok(select_named_parameters(student, cfg)?
        .into_iter()
        .map(|(_, v, lr)| (v, lr))
        .collect())
}

/// Freezes every parameter of `student` (the fake quantization and the
/// adapters stay).
pub fn freeze_all(student: &mut CandleModel) {
    for b in student.blocks_mut() {
        b.set_norms_trainable(false);
        for l in b.linears_mut() {
            l.freeze();
        }
    }
    student.set_output_norm_trainable(false);
}

/// The whole state of a [`distill_resumable`] run between two optimizer
/// steps: resuming from it continues bit for bit. Tensors are named with a
/// prefix and the parameter's name ([`Parameter::name`]): `cur.` the
/// current values of the trained parameters, `best.` the kept (best
/// held-out) snapshot, `adam_m.`/`adam_v.` Adam's moments. Written and
/// read as GGUF by [`crate::checkpoint`].
#[derive(Debug, Clone, PartialEq)]
pub struct DistillCheckpoint {
    /// Identifies the run (model, text, student, configuration); set and
    /// checked by the caller, empty from [`distill_resumable`].
    pub fingerprint: String,
    /// Free text the caller stores with the checkpoint (e.g. the reports
    /// of an earlier stage of the same run); empty from
    /// [`distill_resumable`].
    pub notes: String,
    /// Optimizer steps done.
    pub step: usize,
    /// Shuffled orders of the training sequences drawn so far.
    pub shuffles: usize,
    /// What is left of the drawn orders (training sequence indices).
    pub order: Vec<u32>,
    /// Adam's step counter.
    pub adam_t: u64,
    /// Absolute Adam step size of each trained parameter, in `cur.` order.
    pub step_sizes: Vec<f64>,
    /// `(step, held-out statistics)` of every evaluation so far (step 0:
    /// the initial state).
    pub evals: Vec<(usize, EvalStats)>,
    /// The kept step (one of `evals`).
    pub best_step: usize,
    /// Training loss per step so far.
    pub train_loss: Vec<LossParts>,
    /// Training positions processed so far.
    pub tokens: usize,
    /// Wall time of the training steps so far, seconds.
    pub train_seconds: f64,
    /// Named tensors (see the type documentation): name, shape, values.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl DistillCheckpoint {
    /// Held-out statistics at `step`, when evaluated there.
    pub fn eval_at(&self, step: usize) -> Option<EvalStats> {
        self.evals.iter().find(|(s, _)| *s == step).map(|(_, e)| *e)
    }
}

/// Callbacks of [`distill_resumable`]; every method has a do-nothing
/// default.
pub trait DistillHooks {
    /// After each optimizer step (and its evaluation, when one is due).
    fn step(&mut self, progress: &DistillProgress) -> Control {
        let _ = progress;
        Control::Continue
    }

    /// A checkpoint asked for by [`DistillHooks::step`].
    ///
    /// # Errors
    /// Whatever stops the run (e.g. the checkpoint could not be written).
    fn checkpoint(&mut self, checkpoint: &DistillCheckpoint) -> EngineResult<()> {
        let _ = checkpoint;
        Ok(())
    }
}

/// How [`distill_resumable`] ended.
#[derive(Debug, Clone)]
pub enum DistillOutcome {
    /// Every step done; the student holds the kept state, frozen.
    Finished(DistillReport),
    /// [`DistillHooks::step`] asked to stop after this many steps (a
    /// checkpoint was handed to [`DistillHooks::checkpoint`]); the student
    /// holds the current state.
    Stopped {
        /// Optimizer steps done.
        step: usize,
    },
}

/// A uniformly shuffled `0..n` (Fisher-Yates, `n - 1` draws).
fn shuffled(rng: &mut SplitMix64, n: usize) -> Vec<usize> {
    let mut o: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        o.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    o
}

/// Trains `student` to match `teacher` (see the module documentation) on
/// `train` sequences for `cfg.steps` Adam steps of `cfg.grad_accum`
/// micro-batches of `cfg.batch_size` sequences (reshuffled every pass),
/// keeping the state with the lowest held-out KL on `heldout`. Sequences
/// are token ids of one length per set. On return the student holds the
/// kept state, all parameters frozen.
///
/// # Errors
/// Empty or ragged sequence sets, ids outside the vocabulary, a
/// configuration out of range, nothing to train, candle errors.
pub fn distill(
    student: &mut CandleModel,
    teacher: &CandleModel,
    train: &[Vec<u32>],
    heldout: &[Vec<u32>],
    cfg: &DistillConfig,
    progress: &mut dyn FnMut(&DistillProgress),
) -> EngineResult<DistillReport> {
    struct P<'a>(&'a mut dyn FnMut(&DistillProgress));
    impl DistillHooks for P<'_> {
        fn step(&mut self, p: &DistillProgress) -> Control {
            (self.0)(p);
            Control::Continue
        }
    }
    match distill_resumable(
        student,
        teacher,
        train,
        heldout,
        cfg,
        None,
        &mut P(progress),
    )? {
        DistillOutcome::Finished(r) => Ok(r),
        DistillOutcome::Stopped { .. } => Err(EngineError::BadInput("stopped".into())),
    }
}

/// [`distill`] with checkpoints: after every step `hooks` may ask for a
/// [`DistillCheckpoint`] or to stop, and a run started from `resume` (a
/// checkpoint of a run with the same student start, teacher, data and
/// configuration) continues bit for bit: it ends in the same state as the
/// run that was not interrupted. The student must be in its starting
/// state (as the interrupted run began) when resuming; the checkpoint
/// overwrites the trained parameters after the teacher targets are taken.
///
/// # Errors
/// As [`distill`]; a checkpoint that does not fit the run; errors of the
/// hooks.
pub fn distill_resumable(
    student: &mut CandleModel,
    teacher: &CandleModel,
    train: &[Vec<u32>],
    heldout: &[Vec<u32>],
    cfg: &DistillConfig,
    resume: Option<&DistillCheckpoint>,
    hooks: &mut dyn DistillHooks,
) -> EngineResult<DistillOutcome> {
    cfg.validate()?;
    if train.is_empty() || heldout.is_empty() {
        return Err(EngineError::BadInput(
            "distillation needs training and held-out sequences".into(),
        ));
    }
    if student.hparams().n_vocab != teacher.hparams().n_vocab
        || student.hparams().n_embd != teacher.hparams().n_embd
    {
        return Err(EngineError::BadInput(
            "student and teacher differ in vocabulary or width".into(),
        ));
    }
    let start = Instant::now();
    let bs = cfg.batch_size;
    let chunk = cfg.loss.chunk_positions;
    let train_t = TeacherTargets::new(teacher, train, bs)?;
    let held_t = TeacherTargets::new(teacher, heldout, bs)?;
    let params = select_named_parameters(student, cfg)?;
    if params.is_empty() {
        return Err(EngineError::BadInput(
            "distillation: nothing to train (no quantized matrix, norm or adapter selected)".into(),
        ));
    }
    let trained_elements = params.iter().map(|(_, v, _)| v.elem_count()).sum();
    let names: Vec<String> = params.iter().map(|(n, _, _)| n.clone()).collect();
    let vars: Vec<Var> = params.iter().map(|(_, v, _)| v.clone()).collect();
    let snapshot = || -> EngineResult<Vec<Tensor>> {
        Ok(vars
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?)
    };
    let n = train.len();
    let per_batch = bs.min(n);

    // The run's state: fresh, or restored from the checkpoint.
    let mut step = 0usize;
    let mut shuffles = 0usize;
    let mut order: Vec<usize> = Vec::new();
    let mut evals: Vec<(usize, EvalStats)>;
    let mut best: (EvalStats, usize, Vec<Tensor>);
    let mut train_loss: Vec<LossParts> = Vec::with_capacity(cfg.steps);
    let mut tokens = 0usize;
    let mut train_seconds = 0.0;
    let mut adam;
    match resume {
        None => {
            adam = CandleAdam::new(
                params.iter().map(|(_, v, lr)| (v.clone(), *lr)).collect(),
                cfg.clip,
            )?;
            let initial = evaluate(student, teacher, &held_t, bs, chunk)?;
            best = (initial, 0, snapshot()?);
            evals = vec![(0, initial)];
        }
        Some(c) => {
            let misfit = |m: String| {
                EngineError::BadInput(format!(
                    "checkpoint (step {} of a distillation run) does not fit this run: {m}",
                    c.step
                ))
            };
            let n_cur = c
                .tensors
                .iter()
                .filter(|(t, _, _)| t.starts_with("cur."))
                .count();
            if c.step > cfg.steps
                || c.step_sizes.len() != vars.len()
                || n_cur != vars.len()
                || c.train_loss.len() != c.step
                || c.order.iter().any(|&i| i as usize >= n)
            {
                return Err(misfit(format!(
                    "{} steps of {}, {} parameters for {}, {} sequences",
                    c.step,
                    cfg.steps,
                    n_cur,
                    vars.len(),
                    n
                )));
            }
            let best_stats = c
                .eval_at(c.best_step)
                .ok_or_else(|| misfit(format!("no evaluation at the kept step {}", c.best_step)))?;
            if c.evals.first().map(|e| e.0) != Some(0) {
                return Err(misfit("no evaluation of the initial state".into()));
            }
            adam = CandleAdam::new(
                vars.iter()
                    .cloned()
                    .zip(c.step_sizes.iter().copied())
                    .collect(),
                cfg.clip,
            )?;
            let b = crate::named_tensors::restore_training(
                &c.tensors,
                names.iter().map(String::as_str),
                &mut adam,
                c.adam_t,
            )?;
            step = c.step;
            shuffles = c.shuffles;
            order = c.order.iter().map(|&i| i as usize).collect();
            evals = c.evals.clone();
            best = (best_stats, c.best_step, b);
            train_loss.extend_from_slice(&c.train_loss);
            tokens = c.tokens;
            train_seconds = c.train_seconds;
        }
    }
    // The shuffling generator, advanced past the orders already drawn.
    let mut rng = SplitMix64::new(cfg.seed);
    for _ in 0..shuffles {
        shuffled(&mut rng, n);
    }
    while step < cfg.steps {
        step += 1;
        let t0 = Instant::now();
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let (mut kd, mut ce, mut total) = (0f64, 0f64, 0f64);
        let mut step_tokens = 0;
        for _ in 0..cfg.grad_accum {
            if order.len() < per_batch {
                order.extend(shuffled(&mut rng, n));
                shuffles += 1;
            }
            let idx: Vec<usize> = order.drain(..per_batch).collect();
            let (tok, tn) = train_t.select(&idx)?;
            let (parts, g) = loss_and_grads(student, teacher, &tok, &tn, &vars, &cfg.loss)?;
            step_tokens += tok.elem_count();
            kd += parts.kd;
            ce += parts.ce;
            total += parts.total;
            if cfg.grad_accum == 1 {
                grads = g;
            } else {
                let w = 1.0 / cfg.grad_accum as f64;
                for (slot, gi) in grads.iter_mut().zip(g) {
                    if let Some(gi) = gi {
                        accumulate(slot, &(gi * w)?)?;
                    }
                }
            }
        }
        let k = cfg.grad_accum as f64;
        let parts = if cfg.grad_accum == 1 {
            LossParts { kd, ce, total }
        } else {
            LossParts {
                kd: kd / k,
                ce: ce / k,
                total: total / k,
            }
        };
        adam.step(&grads)?;
        train_seconds += t0.elapsed().as_secs_f64();
        tokens += step_tokens;
        train_loss.push(parts);
        let heldout_stats = if step.is_multiple_of(cfg.eval_every) || step == cfg.steps {
            let e = evaluate(student, teacher, &held_t, bs, chunk)?;
            evals.push((step, e));
            if e.kl < best.0.kl {
                best = (e, step, snapshot()?);
            }
            Some(e)
        } else {
            None
        };
        let ctl = hooks.step(&DistillProgress {
            step,
            total_steps: cfg.steps,
            loss: parts,
            tokens: step_tokens,
            heldout: heldout_stats,
        });
        if ctl != Control::Continue {
            let tensors = crate::named_tensors::training_entries(
                names.iter().map(String::as_str),
                &adam,
                &best.2,
            )?;
            let ck = DistillCheckpoint {
                fingerprint: String::new(),
                notes: String::new(),
                step,
                shuffles,
                order: order.iter().map(|&i| i as u32).collect(),
                adam_t: adam.steps() as u64,
                step_sizes: adam.step_sizes(),
                evals: evals.clone(),
                best_step: best.1,
                train_loss: train_loss.clone(),
                tokens,
                train_seconds,
                tensors,
            };
            hooks.checkpoint(&ck)?;
            if ctl == Control::Stop {
                return Ok(DistillOutcome::Stopped { step });
            }
        }
    }
    for (v, t) in vars.iter().zip(&best.2) {
        v.set(t)?;
    }
    freeze_all(student);
    Ok(DistillOutcome::Finished(DistillReport {
        initial: evals[0].1,
        best: best.0,
        best_step: best.1,
        evals,
        train_loss,
        trained_tensors: vars.len(),
        trained_elements,
        tokens,
        train_seconds,
        seconds: start.elapsed().as_secs_f64(),
    }))
}

/// GGML's F32 type id.
const GGML_F32: u32 = 0;

/// What end-to-end distillation changed, for writing:
/// [`crate::blockwise::export_blocks`] (every quantized matrix encoded with
/// its format, the norm gains of the blocks holding one) and, when any
/// matrix is quantized, the final norm gain `output_norm.weight` (f32).
///
/// # Errors
/// As [`crate::blockwise::export_blocks`].
pub fn export_student(model: &CandleModel) -> EngineResult<Vec<ExportedTensor>> {
    let mut out = export_blocks(model)?;
    if !out.is_empty() {
        let v = crate::candle_op::host_f32(model.output_norm().var().as_tensor())?;
        out.push(ExportedTensor {
            name: model.output_norm().name().to_string(),
            type_id: GGML_F32,
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        });
    }
    Ok(out)
}
