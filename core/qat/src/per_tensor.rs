//! Per-tensor reconstruction QAT of a whole model: which matrices to train,
//! training each one (per stacked matrix), keeping the format's own PTQ
//! encoding where QAT does not beat it, and the report.

use crate::config::{LossWeights, QatConfig};
use crate::recon::TensorReconstruction;
use crate::train::train;
use gguftool_gguf::Error;
use gguftool_gguf::{GgufFile, TensorInfo};
use gguftool_quant::format::Format;
use gguftool_quant::rows::tensor_decoder;
use rayon::prelude::*;
use std::sync::Arc;

/// The defaults of per-tensor QAT (`gguftool qat`), for flags and config
/// files alike: the one place they are set.
pub fn default_config() -> QatConfig {
    QatConfig {
        learning_rate: 1e-2,
        epochs: 4,
        batch_size: 64,
        loss: LossWeights {
            distill: 1.0,
            task: 0.0,
        },
        ..QatConfig::default()
    }
}

/// Checks that a configuration suits per-tensor QAT.
///
/// # Errors
/// The validation error, or incoherence (which per-tensor export cannot
/// carry).
pub fn check_config(cfg: &QatConfig) -> Result<(), Error> {
    if cfg.incoherence {
        return Err(Error::Other(
            "QAT config: incoherence: per-tensor QAT exports through formats without a row transform; use it with the reference model".into(),
        ));
    }
    cfg.check_per_tensor()
        .map_err(|e| Error::Other(e.to_string()))
}

/// Outcome for one tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorReport {
    /// Tensor name.
    pub name: String,
    /// Element count.
    pub elements: u64,
    /// Weighted relative error of the format's own encoder (PTQ).
    pub ptq_error: f64,
    /// Before training (fake quant at the initial scales).
    pub qat_initial_error: f64,
    /// After training, as exported and decoded.
    pub qat_error: f64,
    /// Whether the QAT export was kept (else the PTQ encoding, which was better).
    pub kept_qat: bool,
    /// Training time.
    pub seconds: f64,
}

/// One matrix to train: its source index and importance.
#[derive(Debug, Clone)]
pub struct Job {
    /// Index of the tensor in the source file.
    pub source_index: usize,
    /// Per-column importance (`row_len`, or `row_len` per stacked matrix).
    pub importance: Option<Arc<Vec<f32>>>,
}

/// A trained tensor: its encoded bytes and report.
#[derive(Debug, Clone)]
pub struct Trained {
    /// Index of the tensor in the source file.
    pub source_index: usize,
    /// Encoded bytes (QAT export or PTQ, whichever was better).
    pub bytes: Vec<u8>,
    /// The report.
    pub report: TensorReport,
}

/// Element-weighted means over the reports.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    /// Mean PTQ error.
    pub mean_ptq_error: f64,
    /// Mean error before training.
    pub mean_qat_initial_error: f64,
    /// Mean error after training.
    pub mean_qat_error: f64,
    /// Tensors whose QAT export was kept.
    pub qat_kept: usize,
}

/// Summarizes reports (element-weighted means).
pub fn summarize(reports: &[TensorReport]) -> Summary {
    let n: u64 = reports.iter().map(|r| r.elements).sum();
    let weighted = |f: fn(&TensorReport) -> f64| -> f64 {
        reports
            .iter()
            .map(|r| f(r) * r.elements as f64)
            .sum::<f64>()
            / n.max(1) as f64
    };
    Summary {
        mean_ptq_error: weighted(|r| r.ptq_error),
        mean_qat_initial_error: weighted(|r| r.qat_initial_error),
        mean_qat_error: weighted(|r| r.qat_error),
        qat_kept: reports.iter().filter(|r| r.kept_qat).count(),
    }
}

/// Decodes tensor `i` to f32 rows.
fn decode(src: &GgufFile, i: usize, t: &TensorInfo) -> Result<Vec<f32>, Error> {
    let codec = tensor_decoder(src, i)?;
    let mut w = vec![0f32; t.n_elements as usize];
    codec
        .decode(src.tensor_data(i), &mut w)
        .map_err(|source: gguftool_quant::KernelError| Error::Kernel {
            tensor: t.name.clone(),
            source: source.into(),
        })?;
    Ok(w)
}

/// Trains one matrix; returns its encoded bytes and report. Keeps the PTQ
/// encoding when QAT does not lower the error.
pub fn train_matrix(
    format: &'static dyn Format,
    name: &str,
    w: Vec<f32>,
    row_len: usize,
    imp: Option<&[f32]>,
    cfg: &QatConfig,
) -> Result<(Vec<u8>, TensorReport), Error> {
    let start = std::time::Instant::now();
    let kernel_err = |source: gguftool_quant::KernelError| Error::Kernel {
        tensor: name.to_string(),
        source: source.into(),
    };
    let elements = w.len() as u64;
    let full_imp: Option<Vec<f32>> = imp.map(|m| (0..w.len()).map(|k| m[k % row_len]).collect());
    let mut ptq = vec![0u8; w.len() / format.block_size() * format.type_size()];
    gguftool_quant::format::quantize(format, &w, full_imp.as_deref(), &mut ptq)
        .map_err(kernel_err)?;
    let mut prob = TensorReconstruction::new(
        format,
        w,
        row_len,
        imp,
        cfg.granularity,
        cfg.ste,
        cfg.learn_weights,
    )
    .ok_or_else(|| Error::Unsupported {
        tensor: name.to_string(),
        reason: if format.row_transform().is_some() {
            format!(
                "{} rotates rows; per-tensor QAT works in the original basis (use the block-wise or end-to-end engine)",
                format.name()
            )
        } else {
            format!("rows of {row_len} do not fit {} groups", format.name())
        },
    })?;
    let decode_err = |prob: &TensorReconstruction, bytes: &[u8]| -> Result<f64, Error> {
        let mut q = vec![0f32; prob.target().len()];
        format.dequantize(bytes, &mut q).map_err(kernel_err)?;
        Ok(prob.error_of(&q))
    };
    let ptq_error = decode_err(&prob, &ptq)?;
    let qat_initial_error = decode_err(&prob, &prob.export())?;
    // Learning rates relative to the tensor's scale of weights and scales.
    let rms = (prob
        .target()
        .iter()
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        / prob.target().len().max(1) as f64)
        .sqrt() as f32;
    let scaled = QatConfig {
        learning_rate: cfg.learning_rate * rms.max(1e-12),
        scale_learning_rate: Some(cfg.scale_lr() * rms.max(1e-12) * 0.5),
        ..cfg.clone()
    };
    train(&mut prob, &scaled, &mut |_, _, _| {});
    let qat = prob.export();
    let qat_error = decode_err(&prob, &qat)?;
    let kept_qat = qat_error <= ptq_error;
    Ok((
        if kept_qat { qat } else { ptq },
        TensorReport {
            name: name.to_string(),
            elements,
            ptq_error,
            qat_initial_error,
            qat_error,
            kept_qat,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}

/// Trains one tensor: stacked matrices with one importance slice each are
/// trained per matrix; a single slice is shared.
pub fn train_tensor(
    src: &GgufFile,
    format: &'static dyn Format,
    job: &Job,
    cfg: &QatConfig,
) -> Result<Trained, Error> {
    let t = &src.header().tensors[job.source_index];
    let row_len = t.row_len() as usize;
    let w = decode(src, job.source_index, t)?;
    let imp = job.importance.as_deref().map(Vec::as_slice);
    let n_imp = imp.map_or(1, |m| m.len() / row_len.max(1)).max(1);
    let per = w.len() / n_imp;
    let mut bytes = Vec::new();
    let mut total: Option<TensorReport> = None;
    for (m, chunk) in w.chunks(per.max(1)).enumerate() {
        let slice = imp.map(|v| &v[m * row_len..(m + 1) * row_len]);
        let (b, r) = train_matrix(format, &t.name, chunk.to_vec(), row_len, slice, cfg)?;
        bytes.extend_from_slice(&b);
        total = Some(match total {
            None => r,
            Some(p) => TensorReport {
                elements: p.elements + r.elements,
                ptq_error: p.ptq_error + r.ptq_error,
                qat_initial_error: p.qat_initial_error + r.qat_initial_error,
                qat_error: p.qat_error + r.qat_error,
                kept_qat: p.kept_qat && r.kept_qat,
                seconds: p.seconds + r.seconds,
                ..p
            },
        });
    }
    let report = total.ok_or_else(|| Error::Other(format!("{}: empty tensor", t.name)))?;
    Ok(Trained {
        source_index: job.source_index,
        bytes,
        report,
    })
}

/// Trains every job in parallel, in job order; `progress` is called once per
/// finished tensor.
pub fn train_all(
    src: &GgufFile,
    format: &'static dyn Format,
    jobs: &[Job],
    cfg: &QatConfig,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<Trained>, Error> {
    jobs.par_iter()
        .map(|job| {
            let r = train_tensor(src, format, job, cfg);
            progress();
            r
        })
        .collect()
}

/// Which tensors to train: of a conversion plan's tensors, given as
/// `(source index, target type id when transcoded, importance)`, those
/// encoded with the QAT format. Returns (position in the input, job).
pub fn select_jobs(
    format: &dyn Format,
    planned: impl IntoIterator<Item = (usize, Option<u32>, Option<Arc<Vec<f32>>>)>,
) -> Vec<(usize, Job)> {
    planned
        .into_iter()
        .enumerate()
        .filter(|(_, (_, target, _))| *target == Some(format.type_id()))
        .map(|(k, (source_index, _, importance))| {
            (
                k,
                Job {
                    source_index,
                    importance,
                },
            )
        })
        .collect()
}
