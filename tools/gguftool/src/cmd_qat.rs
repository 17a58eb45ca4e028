//! `gguftool qat`: per-tensor reconstruction QAT of a GGUF model. Every
//! matrix the policy would encode with the QAT format is trained to
//! minimise its importance-weighted output error (imatrix), then exported
//! through the format's encoder; the rest is converted as `convert` would.

use crate::progress::count_bar;
use gguftool_calib::imatrix::Imatrix;
use gguftool_convert::policy::{self, format_by_name, Provenance, QuantPolicy};
use gguftool_convert::{self, TensorAction};
use gguftool_gguf::integrity::sha256_hex;
use gguftool_gguf::write::WriteOptions;
use gguftool_gguf::Error;
use gguftool_gguf::{GgufFile, TensorInfo};
use gguftool_qat::config::QatConfig;
use gguftool_qat::recon::TensorReconstruction;
use gguftool_qat::train::train;
use gguftool_quant::format::Format;
use gguftool_quant::rows::tensor_decoder;
use rayon::prelude::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Options of `gguftool qat`.
#[derive(clap::Args)]
pub struct QatArgs {
    /// Input GGUF file (F32, F16 or BF16 weights).
    pub input: PathBuf,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Format to train and export (one with a differentiable quantizer).
    #[arg(short, long)]
    pub format: String,
    /// llama.cpp importance matrix weighting the reconstruction error.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// QAT configuration (JSON or TOML); the flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Passes over each tensor's rows.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate, relative to each tensor's RMS weight (scales: to
    /// their mean magnitude).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Learn only the scales, not the latent weights.
    #[arg(long)]
    pub scales_only: bool,
    /// Format for output.weight (and a tied token_embd.weight).
    #[arg(long, value_name = "FORMAT", default_value = "q8_0")]
    pub output_tensor_type: String,
    /// Print the per-tensor report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Overwrite an existing output.
    #[arg(long)]
    pub force: bool,
    /// Do not embed an integrity manifest.
    #[arg(long)]
    pub no_seal: bool,
}

/// Outcome for one tensor.
#[derive(Debug, Clone, serde::Serialize)]
struct TensorReport {
    name: String,
    elements: u64,
    /// Weighted relative error of the format's own encoder (PTQ).
    ptq_error: f64,
    /// Before training (fake quant at the initial scales).
    qat_initial_error: f64,
    /// After training, as exported and decoded.
    qat_error: f64,
    /// Whether the QAT export was kept (else the PTQ encoding, which was better).
    kept_qat: bool,
    seconds: f64,
}

fn load_config(a: &QatArgs) -> Result<QatConfig, Error> {
    let mut cfg = match &a.config {
        None => QatConfig {
            learning_rate: 1e-2,
            epochs: 4,
            batch_size: 64,
            loss: gguftool_qat::config::LossWeights {
                distill: 1.0,
                task: 0.0,
            },
            ..QatConfig::default()
        },
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let is_toml = p.extension().is_some_and(|e| e == "toml");
            if is_toml {
                QatConfig::from_toml(&text)
            } else {
                QatConfig::from_json(&text)
            }
            .map_err(|e| Error::Other(format!("{}: {e}", p.display())))?
        }
    };
    cfg.format = a.format.clone();
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(lr) = a.lr {
        cfg.learning_rate = lr;
    }
    if a.scales_only {
        cfg.learn_weights = false;
    }
    if cfg.incoherence {
        return Err(Error::Other(
            "QAT config: incoherence: per-tensor QAT exports through formats without a row transform; use it with the reference model".into(),
        ));
    }
    cfg.validate().map_err(|e| Error::Other(e.to_string()))?;
    Ok(cfg)
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

/// Trains one matrix; returns its encoded bytes and report.
fn train_tensor(
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
        reason: format!("rows of {row_len} do not fit {} groups", format.name()),
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

pub fn run(a: QatArgs) -> Result<ExitCode, crate::CliError> {
    let cfg = load_config(&a)?;
    let format = format_by_name(&cfg.format)?;
    let src = gguftool_quant::registry::open(&a.input)?;
    let imatrix = a
        .imatrix
        .as_deref()
        .map(|p| -> Result<_, Error> {
            let m = Imatrix::load(p)?;
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            Ok((Arc::new(m), sha256_hex(&bytes)))
        })
        .transpose()?;
    let policy = QuantPolicy {
        format,
        allow_requantize: false,
        keep: Vec::new(),
        tensor_types: Vec::new(),
        output_tensor_type: format_by_name(&a.output_tensor_type)?,
        token_embedding_type: None,
        fallback: format_by_name("q8_0")?,
        imatrix: imatrix.as_ref().map(|(m, _)| m.clone()),
    };
    let provenance = Provenance {
        source_sha256: "0".repeat(64),
        imatrix: imatrix.map(|(m, sha)| (sha, m.datasets.clone())),
    };
    let mut plan = policy::plan(&src, &policy, &provenance)?;
    let h = src.header();
    let jobs: Vec<usize> = plan
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            matches!(&t.action, TensorAction::Transcode { target, .. } if target.type_id() == format.type_id())
        })
        .map(|(k, _)| k)
        .collect();
    let pb = count_bar(jobs.len() as u64, &format!("QAT {}", format.name()));
    let start = std::time::Instant::now();
    let results: Vec<(usize, Vec<u8>, TensorReport)> = jobs
        .par_iter()
        .map(|&k| {
            let pt = &plan.tensors[k];
            let t = &h.tensors[pt.source_index];
            let row_len = t.row_len() as usize;
            let w = decode(&src, pt.source_index, t)?;
            // Stacked matrices with one importance slice each are trained
            // per matrix; a single slice is shared.
            let imp = pt.importance.as_deref().map(Vec::as_slice);
            let n_imp = imp.map_or(1, |m| m.len() / row_len.max(1)).max(1);
            let per = w.len() / n_imp;
            let mut bytes = Vec::new();
            let mut total: Option<TensorReport> = None;
            for (m, chunk) in w.chunks(per).enumerate() {
                let slice = imp.map(|v| &v[m * row_len..(m + 1) * row_len]);
                let (b, r) = train_tensor(format, &t.name, chunk.to_vec(), row_len, slice, &cfg)?;
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
            pb.inc(1);
            let report = total.ok_or_else(|| Error::Other(format!("{}: empty tensor", t.name)))?;
            Ok((k, bytes, report))
        })
        .collect::<Result<_, Error>>()?;
    pb.finish_and_clear();
    let train_seconds = start.elapsed().as_secs_f64();
    let mut reports = Vec::with_capacity(results.len());
    for (k, bytes, r) in results {
        plan.tensors[k].action = TensorAction::Encoded(Arc::new(bytes));
        reports.push(r);
    }
    plan.metadata.set(
        "gguftool.qat.config",
        gguftool_gguf::Value::String(cfg.to_toml()),
    );
    let opts = WriteOptions {
        seal: !a.no_seal,
        types: &gguftool_quant::registry::TYPES,
    };
    gguftool_convert::execute_with_source_hash(
        &src,
        &plan,
        &a.output,
        a.force,
        opts,
        Some(policy::KEY_SOURCE_SHA256),
        &|_| {},
    )?;
    let weighted = |f: fn(&TensorReport) -> f64| -> f64 {
        let n: u64 = reports.iter().map(|r| r.elements).sum();
        reports
            .iter()
            .map(|r| f(r) * r.elements as f64)
            .sum::<f64>()
            / n.max(1) as f64
    };
    let (ptq, init, qat) = (
        weighted(|r| r.ptq_error),
        weighted(|r| r.qat_initial_error),
        weighted(|r| r.qat_error),
    );
    let kept = reports.iter().filter(|r| r.kept_qat).count();
    if a.json {
        let out = json!({
            "tensors": reports, "train_seconds": train_seconds,
            "mean_ptq_error": ptq, "mean_qat_initial_error": init, "mean_qat_error": qat,
            "qat_kept": kept, "config": cfg,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "{:<40} {:>12} {:>12} {:>12} {:>12}  kept",
            "tensor", "elements", "PTQ err", "QAT before", "QAT after"
        );
        for r in &reports {
            println!(
                "{:<40} {:>12} {:>12.5} {:>12.5} {:>12.5}  {}",
                r.name,
                r.elements,
                r.ptq_error,
                r.qat_initial_error,
                r.qat_error,
                if r.kept_qat { "qat" } else { "ptq" }
            );
        }
        println!(
            "\n{} tensors in {train_seconds:.1} s; mean weighted relative error: PTQ {ptq:.5}, QAT before {init:.5}, after {qat:.5} (QAT kept for {kept})",
            reports.len()
        );
    }
    eprintln!("wrote {}", a.output.display());
    Ok(ExitCode::SUCCESS)
}
