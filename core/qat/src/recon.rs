//! Per-tensor reconstruction QAT: learn the scales (and optionally the
//! latent weights) of one matrix to minimise the importance-weighted output
//! error `sum_rows sum_j imp_j (W_ij - Q(w)_ij)^2`, normalised by
//! `sum imp W^2`, where `imp` holds the inputs' mean squares (an imatrix).

use crate::config::Granularity;
use crate::train::{Param, ParamKind, Trainable};
use gguftool_quant::format::{DifferentiableQuantizer, Format, Ste};

/// One matrix as a [`Trainable`]: each row is an example.
pub struct TensorReconstruction<'a> {
    format: &'a dyn Format,
    dq: &'a dyn DifferentiableQuantizer,
    row_len: usize,
    target: Vec<f32>,
    imp: Vec<f32>,
    norm: f64,
    latent: Vec<f32>,
    grad_w: Vec<f32>,
    /// One per group, or a single one (per-tensor granularity).
    scales: Vec<f32>,
    grad_s: Vec<f32>,
    granularity: Granularity,
    ste: Ste,
    learn_weights: bool,
}

impl<'a> TensorReconstruction<'a> {
    /// Sets up `w` (`rows * row_len`, rows a multiple of the format's group)
    /// with per-column importance `imp` (`row_len` values; `None` = uniform).
    /// Scales start where the encoder's initialization puts them. `None`
    /// when the format has no differentiable quantizer, rotates rows (its
    /// quantizer works in the rotated basis), or the rows do not fit.
    pub fn new(
        format: &'a dyn Format,
        w: Vec<f32>,
        row_len: usize,
        imp: Option<&[f32]>,
        granularity: Granularity,
        ste: Ste,
        learn_weights: bool,
    ) -> Option<Self> {
        let dq = format.differentiable()?;
        // A row-transformed format's quantizer works on rotated rows; this
        // reconstruction (and its export) is in the original basis.
        if format.row_transform().is_some() {
            return None;
        }
        let g = dq.group_size();
        if row_len == 0 || !row_len.is_multiple_of(g) || !w.len().is_multiple_of(row_len) {
            return None;
        }
        let imp: Vec<f32> = imp.map_or_else(|| vec![1.0; row_len], |m| m.to_vec());
        let full_imp: Vec<f32> = (0..w.len()).map(|i| imp[i % row_len]).collect();
        let mut scales = vec![0f32; w.len() / g];
        dq.init_scales(&w, Some(&full_imp), &mut scales);
        if granularity == Granularity::Tensor {
            let mean = scales.iter().map(|s| s.abs()).sum::<f32>() / scales.len().max(1) as f32;
            scales = vec![mean];
        }
        let norm = w
            .iter()
            .enumerate()
            .map(|(i, v)| imp[i % row_len] as f64 * (*v as f64).powi(2))
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
        Some(Self {
            format,
            dq,
            row_len,
            grad_w: vec![0.0; w.len()],
            latent: w.clone(),
            target: w,
            imp,
            norm,
            grad_s: vec![0.0; scales.len()],
            scales,
            granularity,
            ste,
            learn_weights,
        })
    }

    fn row_scales(&self, row: usize) -> Vec<f32> {
        let per_row = self.row_len / self.dq.group_size();
        match self.granularity {
            Granularity::Block => self.scales[row * per_row..(row + 1) * per_row].to_vec(),
            Granularity::Tensor => vec![self.scales[0]; per_row],
        }
    }

    /// Normalised weighted error of decoded values `q` against the original.
    pub fn error_of(&self, q: &[f32]) -> f64 {
        self.target
            .iter()
            .zip(q)
            .enumerate()
            .map(|(i, (a, b))| self.imp[i % self.row_len] as f64 * (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            / self.norm
    }

    /// The trained tensor encoded with the format (the QAT export).
    pub fn export(&self) -> Vec<u8> {
        let bs = self.format.block_size();
        let per_row = self.row_len / bs * self.format.type_size();
        let mut out = vec![0u8; self.target.len() / self.row_len * per_row];
        for (r, (w, dst)) in self
            .latent
            .chunks_exact(self.row_len)
            .zip(out.chunks_exact_mut(per_row))
            .enumerate()
        {
            self.dq.export(w, &self.row_scales(r), dst);
        }
        out
    }

    /// The original weights.
    pub fn target(&self) -> &[f32] {
        &self.target
    }

    /// Per-column importance.
    pub fn importance(&self) -> &[f32] {
        &self.imp
    }
}

impl Trainable for TensorReconstruction<'_> {
    fn examples(&self) -> usize {
        self.target.len() / self.row_len
    }

    fn forward_backward(&mut self, batch: &[usize]) -> f32 {
        self.grad_w.iter_mut().for_each(|g| *g = 0.0);
        self.grad_s.iter_mut().for_each(|g| *g = 0.0);
        let n = self.row_len;
        let per_row = n / self.dq.group_size();
        let mut q = vec![0f32; n];
        let mut g_out = vec![0f32; n];
        let mut gs = vec![0f32; per_row];
        let mut loss = 0f64;
        // Scale the loss so a batch's mean matches the whole-tensor objective.
        let rows = self.examples() as f64;
        for &r in batch {
            let s = self.row_scales(r);
            let w = &self.latent[r * n..(r + 1) * n];
            self.dq.forward(w, &s, &mut q);
            for j in 0..n {
                let d = (q[j] - self.target[r * n + j]) as f64;
                let wt = self.imp[j] as f64;
                loss += wt * d * d;
                g_out[j] = (2.0 * wt * d * rows / self.norm) as f32;
            }
            let gw = &mut self.grad_w[r * n..(r + 1) * n];
            self.dq.backward(w, &s, &g_out, self.ste, gw, &mut gs);
            match self.granularity {
                Granularity::Block => {
                    self.grad_s[r * per_row..(r + 1) * per_row].copy_from_slice(&gs)
                }
                Granularity::Tensor => self.grad_s[0] += gs.iter().sum::<f32>(),
            }
        }
        let b = batch.len().max(1) as f32;
        self.grad_w.iter_mut().for_each(|g| *g /= b);
        self.grad_s.iter_mut().for_each(|g| *g /= b);
        (loss * rows / self.norm / batch.len().max(1) as f64) as f32
    }

    fn parameters(&mut self) -> Vec<Param<'_>> {
        let mut v = vec![Param::new(
            ParamKind::Scale,
            &mut self.scales,
            &mut self.grad_s,
        )];
        if self.learn_weights {
            v.push(Param::new(
                ParamKind::Weight,
                &mut self.latent,
                &mut self.grad_w,
            ));
        }
        v
    }
}
