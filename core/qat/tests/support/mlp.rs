#![allow(dead_code)] // shared by tests and the example; each uses a part
//! The end-to-end reference for QAT: a character-level MLP language model
//! (context of `ctx` characters, one-hot, two hidden ReLU layers), trained
//! in full precision, then quantized by PTQ, by QAT with the full-precision
//! model distilling into the student, or by LoRA on a frozen PTQ base.
//!
//! The first layer (a per-position character embedding) stays in full
//! precision, as BitNet keeps its embeddings; the hidden and output layers
//! are quantized.

use gguftool_qat::config::{LossWeights, QatConfig};
use gguftool_qat::loss::{cross_entropy, distillation};
use gguftool_qat::train::{Param, ParamKind, Trainable};
use gguftool_quant::format::{quantize, Format, Ste};
use gguftool_quant::hadamard::{Rotation, SplitMix64};

/// Examples of next-character prediction.
#[derive(Debug, Clone)]
pub struct CharData {
    /// Alphabet size.
    pub vocab: usize,
    /// Characters of context.
    pub ctx: usize,
    /// `n * ctx` context indices.
    pub inputs: Vec<u16>,
    /// `n` next-character indices.
    pub labels: Vec<u16>,
}

impl CharData {
    /// Examples from text: the `vocab - 1` most frequent bytes get their own
    /// index, every other byte shares the last one.
    pub fn from_text(text: &[u8], ctx: usize, vocab: usize) -> Self {
        let mut counts = [0usize; 256];
        text.iter().for_each(|&b| counts[b as usize] += 1);
        let mut order: Vec<usize> = (0..256).collect();
        order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
        let mut index = [(vocab - 1) as u16; 256];
        for (i, &b) in order.iter().take(vocab - 1).enumerate() {
            index[b] = i as u16;
        }
        let ids: Vec<u16> = text.iter().map(|&b| index[b as usize]).collect();
        Self::from_ids(&ids, ctx, vocab)
    }

    /// Text from a random order-2 Markov chain with peaked transitions
    /// (a deterministic synthetic language), `n` examples.
    pub fn markov(n: usize, vocab: usize, ctx: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let table: Vec<Vec<f64>> = (0..vocab * vocab)
            .map(|_| {
                let w: Vec<f64> = (0..vocab).map(|_| rng.next_f64().powi(4)).collect();
                let s: f64 = w.iter().sum();
                w.iter().map(|v| v / s).collect()
            })
            .collect();
        let mut ids = vec![0u16, 1];
        while ids.len() < n + ctx {
            let k = ids.len();
            let row = &table[ids[k - 2] as usize * vocab + ids[k - 1] as usize];
            let (mut u, mut next) = (rng.next_f64(), vocab - 1);
            for (i, p) in row.iter().enumerate() {
                if u < *p {
                    next = i;
                    break;
                }
                u -= p;
            }
            ids.push(next as u16);
        }
        Self::from_ids(&ids, ctx, vocab)
    }

    fn from_ids(ids: &[u16], ctx: usize, vocab: usize) -> Self {
        let n = ids.len().saturating_sub(ctx);
        let mut inputs = Vec::with_capacity(n * ctx);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            inputs.extend_from_slice(&ids[i..i + ctx]);
            labels.push(ids[i + ctx]);
        }
        Self {
            vocab,
            ctx,
            inputs,
            labels,
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True without examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Every `k`-th example held out (for stationary synthetic data), and the rest.
    pub fn split_every(&self, k: usize) -> (Self, Self) {
        let (mut a, mut b) = (self.part(&[]), self.part(&[]));
        for i in 0..self.len() {
            let dst = if i % k.max(1) == 0 { &mut b } else { &mut a };
            dst.inputs
                .extend_from_slice(&self.inputs[i * self.ctx..(i + 1) * self.ctx]);
            dst.labels.push(self.labels[i]);
        }
        (a, b)
    }

    fn part(&self, idx: &[usize]) -> Self {
        Self {
            vocab: self.vocab,
            ctx: self.ctx,
            inputs: idx
                .iter()
                .flat_map(|&i| {
                    self.inputs[i * self.ctx..(i + 1) * self.ctx]
                        .iter()
                        .copied()
                })
                .collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// The first `frac` of the examples and the rest.
    pub fn split(&self, frac: f64) -> (Self, Self) {
        let k = ((self.len() as f64) * frac) as usize;
        let part = |a: usize, b: usize| Self {
            vocab: self.vocab,
            ctx: self.ctx,
            inputs: self.inputs[a * self.ctx..b * self.ctx].to_vec(),
            labels: self.labels[a..b].to_vec(),
        };
        (part(0, k), part(k, self.len()))
    }
}

/// How a layer's effective weight is made.
enum Mode {
    /// `W` itself.
    Float,
    /// `Q(W)` by a format's differentiable quantizer, optionally in a rotated basis.
    FakeQuant {
        format: &'static dyn Format,
        scales: Vec<f32>,
        grad_s: Vec<f32>,
        ste: Ste,
        learn_weights: bool,
        rotation: Option<Rotation>,
    },
    /// A frozen base plus `alpha / r * B A`.
    Lora {
        rank: usize,
        scale: f32,
        a: Vec<f32>,
        b: Vec<f32>,
        grad_a: Vec<f32>,
        grad_b: Vec<f32>,
    },
}

/// A dense layer `y = W x + b`.
pub struct Linear {
    out: usize,
    inp: usize,
    w: Vec<f32>,
    bias: Vec<f32>,
    grad_w: Vec<f32>,
    grad_bias: Vec<f32>,
    /// Effective weight of the current step, and its gradient.
    eff: Vec<f32>,
    grad_eff: Vec<f32>,
    mode: Mode,
}

impl Linear {
    fn new(out: usize, inp: usize, rng: &mut SplitMix64) -> Self {
        let k = (2.0 / inp as f64).sqrt();
        let w: Vec<f32> = (0..out * inp)
            .map(|_| (rng.next_normal() * k) as f32)
            .collect();
        Self {
            out,
            inp,
            grad_w: vec![0.0; w.len()],
            eff: w.clone(),
            grad_eff: vec![0.0; w.len()],
            w,
            bias: vec![0.0; out],
            grad_bias: vec![0.0; out],
            mode: Mode::Float,
        }
    }

    /// Computes the effective weight for this step.
    fn prepare(&mut self) {
        match &self.mode {
            Mode::Float => self.eff.copy_from_slice(&self.w),
            Mode::FakeQuant {
                format,
                scales,
                rotation,
                ..
            } => {
                let dq = format.differentiable().expect("checked at construction");
                let per_row = self.inp / dq.group_size();
                for (r, (w, e)) in self
                    .w
                    .chunks_exact(self.inp)
                    .zip(self.eff.chunks_exact_mut(self.inp))
                    .enumerate()
                {
                    dq.forward(w, &scales[r * per_row..(r + 1) * per_row], e);
                    if let Some(rot) = rotation {
                        rot.inverse(e);
                    }
                }
            }
            Mode::Lora {
                rank, scale, a, b, ..
            } => {
                self.eff.copy_from_slice(&self.w);
                for o in 0..self.out {
                    for k in 0..*rank {
                        let bk = scale * b[o * rank + k];
                        let ar = &a[k * self.inp..(k + 1) * self.inp];
                        for (e, av) in self.eff[o * self.inp..(o + 1) * self.inp]
                            .iter_mut()
                            .zip(ar)
                        {
                            *e += bk * av;
                        }
                    }
                }
            }
        }
    }

    fn zero_grads(&mut self) {
        self.grad_eff.iter_mut().for_each(|g| *g = 0.0);
        self.grad_bias.iter_mut().for_each(|g| *g = 0.0);
    }

    fn forward(&self, x: &[f32], y: &mut [f32]) {
        for (o, yo) in y.iter_mut().enumerate() {
            let row = &self.eff[o * self.inp..(o + 1) * self.inp];
            *yo = self.bias[o] + row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        }
    }

    /// Accumulates weight/bias gradients and returns dL/dx.
    fn backward(&mut self, x: &[f32], gy: &[f32], gx: Option<&mut [f32]>) {
        for (o, &g) in gy.iter().enumerate() {
            if g == 0.0 {
                continue;
            }
            self.grad_bias[o] += g;
            for (ge, xv) in self.grad_eff[o * self.inp..(o + 1) * self.inp]
                .iter_mut()
                .zip(x)
            {
                *ge += g * xv;
            }
        }
        if let Some(gx) = gx {
            gx.iter_mut().for_each(|v| *v = 0.0);
            for (o, &g) in gy.iter().enumerate() {
                if g == 0.0 {
                    continue;
                }
                for (gv, wv) in gx
                    .iter_mut()
                    .zip(&self.eff[o * self.inp..(o + 1) * self.inp])
                {
                    *gv += g * wv;
                }
            }
        }
    }

    /// Maps the effective-weight gradient to the parameters' gradients.
    fn finish_backward(&mut self, batch: f32) {
        self.grad_eff.iter_mut().for_each(|g| *g /= batch);
        self.grad_bias.iter_mut().for_each(|g| *g /= batch);
        match &mut self.mode {
            Mode::Float => self.grad_w.copy_from_slice(&self.grad_eff),
            Mode::FakeQuant {
                format,
                scales,
                grad_s,
                ste,
                rotation,
                ..
            } => {
                let dq = format.differentiable().expect("checked at construction");
                let per_row = self.inp / dq.group_size();
                let mut g = vec![0f32; self.inp];
                for r in 0..self.out {
                    g.copy_from_slice(&self.grad_eff[r * self.inp..(r + 1) * self.inp]);
                    if let Some(rot) = rotation {
                        rot.forward(&mut g);
                    }
                    let range = r * per_row..(r + 1) * per_row;
                    dq.backward(
                        &self.w[r * self.inp..(r + 1) * self.inp],
                        &scales[range.clone()],
                        &g,
                        *ste,
                        &mut self.grad_w[r * self.inp..(r + 1) * self.inp],
                        &mut grad_s[range],
                    );
                }
            }
            Mode::Lora {
                rank,
                scale,
                a,
                b,
                grad_a,
                grad_b,
            } => {
                let (r, inp) = (*rank, self.inp);
                grad_a.iter_mut().for_each(|g| *g = 0.0);
                grad_b.iter_mut().for_each(|g| *g = 0.0);
                for o in 0..self.out {
                    let ge = &self.grad_eff[o * inp..(o + 1) * inp];
                    for k in 0..r {
                        let ar = &a[k * inp..(k + 1) * inp];
                        grad_b[o * r + k] =
                            *scale * ge.iter().zip(ar).map(|(x, y)| x * y).sum::<f32>();
                        let bk = *scale * b[o * r + k];
                        for (ga, g) in grad_a[k * inp..(k + 1) * inp].iter_mut().zip(ge) {
                            *ga += bk * g;
                        }
                    }
                }
            }
        }
    }

    fn params(&mut self) -> Vec<Param<'_>> {
        let mut v = Vec::new();
        match &mut self.mode {
            Mode::Float => {
                v.push(Param::new(ParamKind::Weight, &mut self.w, &mut self.grad_w));
                v.push(Param::new(
                    ParamKind::Weight,
                    &mut self.bias,
                    &mut self.grad_bias,
                ));
            }
            Mode::FakeQuant {
                scales,
                grad_s,
                learn_weights,
                ..
            } => {
                v.push(Param::new(ParamKind::Scale, scales, grad_s));
                if *learn_weights {
                    v.push(Param::new(ParamKind::Weight, &mut self.w, &mut self.grad_w));
                }
                v.push(Param::new(
                    ParamKind::Weight,
                    &mut self.bias,
                    &mut self.grad_bias,
                ));
            }
            Mode::Lora {
                a,
                b,
                grad_a,
                grad_b,
                ..
            } => {
                v.push(Param::new(ParamKind::Adapter, a, grad_a));
                v.push(Param::new(ParamKind::Adapter, b, grad_b));
            }
        }
        v
    }
}

/// The reference model.
pub struct Mlp {
    vocab: usize,
    ctx: usize,
    layers: Vec<Linear>,
}

/// Loss and accuracy on a data set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Eval {
    /// Mean cross-entropy (nats).
    pub loss: f32,
    /// Fraction of examples whose argmax is the label.
    pub accuracy: f32,
}

impl Mlp {
    /// A randomly initialized model with `hidden` units per hidden layer.
    pub fn new(vocab: usize, ctx: usize, hidden: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        Self {
            vocab,
            ctx,
            layers: vec![
                Linear::new(hidden, ctx * vocab, &mut rng),
                Linear::new(hidden, hidden, &mut rng),
                Linear::new(vocab, hidden, &mut rng),
            ],
        }
    }

    /// Layers after the first (the quantized ones).
    fn quantized_layers(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layers.iter_mut().skip(1)
    }

    fn prepare(&mut self) {
        self.layers.iter_mut().for_each(Linear::prepare);
    }

    /// Logits for example `i` of `data`, with the activations kept.
    fn forward(&self, data: &CharData, i: usize, acts: &mut [Vec<f32>; 3], logits: &mut [f32]) {
        let l1 = &self.layers[0];
        // One-hot input: the first layer sums one column per context position.
        let h1 = &mut acts[0];
        h1.copy_from_slice(&l1.bias);
        for (p, &c) in data.inputs[i * self.ctx..(i + 1) * self.ctx]
            .iter()
            .enumerate()
        {
            let col = p * self.vocab + c as usize;
            for (o, h) in h1.iter_mut().enumerate() {
                *h += l1.eff[o * l1.inp + col];
            }
        }
        h1.iter_mut().for_each(|v| *v = v.max(0.0));
        let (a0, rest) = acts.split_at_mut(1);
        self.layers[1].forward(&a0[0], &mut rest[0]);
        rest[0].iter_mut().for_each(|v| *v = v.max(0.0));
        self.layers[2].forward(&rest[0], logits);
    }

    /// Loss and accuracy on `data` (effective weights recomputed first).
    pub fn evaluate(&mut self, data: &CharData) -> Eval {
        self.prepare();
        let h = self.layers[1].inp;
        let mut acts = [vec![0f32; h], vec![0f32; h], vec![]];
        let mut logits = vec![0f32; self.vocab];
        let (mut loss, mut hits) = (0f64, 0usize);
        for i in 0..data.len() {
            self.forward(data, i, &mut acts, &mut logits);
            let label = data.labels[i] as usize;
            loss += cross_entropy(&logits, label, 0.0, &mut vec![0.0; self.vocab]) as f64;
            let arg = logits
                .iter()
                .enumerate()
                .fold(0, |b, (k, v)| if *v > logits[b] { k } else { b });
            hits += usize::from(arg == label);
        }
        Eval {
            loss: (loss / data.len().max(1) as f64) as f32,
            accuracy: hits as f32 / data.len().max(1) as f32,
        }
    }

    /// Post-training quantization: the quantized layers' weights replaced
    /// by their encoding with `format` (decoded), kept in full precision mode.
    pub fn ptq(&self, format: &dyn Format) -> Self {
        let mut m = self.clone_float();
        for l in m.quantized_layers() {
            let mut enc = vec![0u8; l.w.len() / format.block_size() * format.type_size()];
            if quantize(format, &l.w, None, &mut enc).is_ok() {
                let _ = format.dequantize(&enc, &mut l.w);
            }
        }
        m
    }

    /// A full-precision copy.
    pub fn clone_float(&self) -> Self {
        Self {
            vocab: self.vocab,
            ctx: self.ctx,
            layers: self
                .layers
                .iter()
                .map(|l| Linear {
                    out: l.out,
                    inp: l.inp,
                    w: l.w.clone(),
                    bias: l.bias.clone(),
                    grad_w: vec![0.0; l.w.len()],
                    eff: l.w.clone(),
                    grad_eff: vec![0.0; l.w.len()],
                    grad_bias: vec![0.0; l.out],
                    mode: Mode::Float,
                })
                .collect(),
        }
    }

    /// A QAT student: the quantized layers fake-quantized with `cfg.format`
    /// (scales initialized like the encoder), latent weights from `self`.
    pub fn qat_student(&self, cfg: &QatConfig) -> Option<Self> {
        let format = gguftool_quant::registry::by_name(&cfg.format)?;
        let dq = format.differentiable()?;
        let mut m = self.clone_float();
        let mut rng_seed = cfg.seed;
        for l in m.quantized_layers() {
            if !l.inp.is_multiple_of(dq.group_size()) {
                return None;
            }
            let rotation = if cfg.incoherence {
                rng_seed = rng_seed.wrapping_add(1);
                let rot = Rotation::new(l.inp, rng_seed)?;
                l.w.chunks_exact_mut(l.inp).for_each(|r| rot.forward(r));
                Some(rot)
            } else {
                None
            };
            let mut scales = vec![0f32; l.w.len() / dq.group_size()];
            dq.init_scales(&l.w, None, &mut scales);
            l.mode = Mode::FakeQuant {
                format,
                grad_s: vec![0.0; scales.len()],
                scales,
                ste: cfg.ste,
                learn_weights: cfg.learn_weights,
                rotation,
            };
        }
        Some(m)
    }

    /// A LoRA student on a frozen PTQ base: `rank`-`alpha` adapters on the
    /// quantized layers; B starts at zero, so training starts from PTQ.
    pub fn lora_student(&self, format: &dyn Format, rank: usize, alpha: f32, seed: u64) -> Self {
        let mut m = self.ptq(format);
        let mut rng = SplitMix64::new(seed);
        for l in m.quantized_layers() {
            let k = 1.0 / (l.inp as f64).sqrt();
            l.mode = Mode::Lora {
                rank,
                scale: alpha / rank as f32,
                a: (0..rank * l.inp)
                    .map(|_| (rng.next_normal() * k) as f32)
                    .collect(),
                b: vec![0.0; l.out * rank],
                grad_a: vec![0.0; rank * l.inp],
                grad_b: vec![0.0; l.out * rank],
            };
        }
        m
    }
}

/// A model being trained on `data`, optionally distilled from `teacher`.
pub struct Student<'a> {
    /// The model.
    pub model: Mlp,
    /// The full-precision teacher (needed when `loss.distill > 0`).
    pub teacher: Option<&'a Mlp>,
    /// Training examples.
    pub data: &'a CharData,
    /// Loss weights.
    pub loss: LossWeights,
    /// Distillation temperature.
    pub temperature: f32,
}

impl Trainable for Student<'_> {
    fn examples(&self) -> usize {
        self.data.len()
    }

    fn forward_backward(&mut self, batch: &[usize]) -> f32 {
        let m = &mut self.model;
        m.prepare();
        m.layers.iter_mut().for_each(Linear::zero_grads);
        let h = m.layers[1].inp;
        let v = m.vocab;
        let mut acts = [vec![0f32; h], vec![0f32; h], vec![]];
        let mut t_acts = [vec![0f32; h], vec![0f32; h], vec![]];
        let (mut logits, mut t_logits) = (vec![0f32; v], vec![0f32; v]);
        let (mut g2, mut g1) = (vec![0f32; h], vec![0f32; h]);
        let mut total = 0f64;
        for &i in batch {
            m.forward(self.data, i, &mut acts, &mut logits);
            let mut g = vec![0f32; v];
            let label = self.data.labels[i] as usize;
            let mut loss = 0f32;
            if self.loss.task > 0.0 {
                loss += self.loss.task * cross_entropy(&logits, label, self.loss.task, &mut g);
            }
            if let (Some(t), true) = (self.teacher, self.loss.distill > 0.0) {
                t.forward(self.data, i, &mut t_acts, &mut t_logits);
                loss += self.loss.distill
                    * distillation(
                        &logits,
                        &t_logits,
                        self.temperature,
                        self.loss.distill,
                        &mut g,
                    );
            }
            total += loss as f64;
            // Backward through output, ReLU, hidden, ReLU, one-hot first layer.
            m.layers[2].backward(&acts[1], &g, Some(&mut g2));
            for (gv, a) in g2.iter_mut().zip(&acts[1]) {
                if *a <= 0.0 {
                    *gv = 0.0;
                }
            }
            m.layers[1].backward(&acts[0], &g2, Some(&mut g1));
            for (gv, a) in g1.iter_mut().zip(&acts[0]) {
                if *a <= 0.0 {
                    *gv = 0.0;
                }
            }
            let l1 = &mut m.layers[0];
            for (p, &c) in self.data.inputs[i * m.ctx..(i + 1) * m.ctx]
                .iter()
                .enumerate()
            {
                let col = p * v + c as usize;
                for (o, &gv) in g1.iter().enumerate() {
                    l1.grad_eff[o * l1.inp + col] += gv;
                }
            }
            l1.grad_bias.iter_mut().zip(&g1).for_each(|(b, g)| *b += g);
        }
        let b = batch.len().max(1) as f32;
        m.layers.iter_mut().for_each(|l| l.finish_backward(b));
        (total / batch.len().max(1) as f64) as f32
    }

    fn parameters(&mut self) -> Vec<Param<'_>> {
        let lora = self
            .model
            .layers
            .iter()
            .any(|l| matches!(l.mode, Mode::Lora { .. }));
        let mut v = Vec::new();
        for (k, l) in self.model.layers.iter_mut().enumerate() {
            // With LoRA the base (first layer included) is frozen.
            if lora && k == 0 {
                continue;
            }
            v.extend(l.params());
        }
        v
    }
}
