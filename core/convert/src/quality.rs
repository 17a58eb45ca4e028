//! Quantization quality: per-tensor RMSE and SQNR between two files with the
//! same tensors (an original and its quantized version), streamed in chunks.

use gguftool_gguf::error::{Error, Result};
use gguftool_gguf::GgufFile;
use gguftool_quant::rows::{tensor_decoder, RowCodec};
use rayon::prelude::*;

/// Elements decoded per chunk per side.
const CHUNK: usize = 1 << 20;

/// Error statistics of one tensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorQuality {
    /// Tensor name.
    pub name: String,
    /// Type in the quantized file.
    pub quant_type: String,
    /// Element count.
    pub elements: u64,
    /// Stored bits per weight in the quantized file.
    pub bits_per_weight: f64,
    /// Sum of squared original values.
    pub signal: f64,
    /// Sum of squared differences.
    pub noise: f64,
    /// Root-mean-square error.
    pub rmse: f64,
    /// Signal-to-quantization-noise ratio in dB (infinite when exact).
    pub sqnr_db: f64,
}

/// Aggregate over a set of tensors.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Tensors included.
    pub tensors: usize,
    /// Elements included.
    pub elements: u64,
    /// Bits per weight over the included tensors.
    pub bits_per_weight: f64,
    /// RMSE over all included elements.
    pub rmse: f64,
    /// Total signal over total noise, in dB.
    pub sqnr_db: f64,
}

fn sqnr(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// Decodes elements `start..start + out.len()` (whole rows) of tensor `i`
/// with its decoder `codec`.
fn decode_range(
    f: &GgufFile,
    i: usize,
    codec: &RowCodec,
    start: usize,
    out: &mut [f32],
) -> Result<()> {
    let row_bytes = codec.row_bytes();
    let bytes = &f.tensor_data(i)
        [start / codec.row_len() * row_bytes..(start + out.len()) / codec.row_len() * row_bytes];
    codec
        .decode(bytes, out)
        .map_err(|source: gguftool_quant::KernelError| Error::Kernel {
            tensor: f.header().tensors[i].name.clone(),
            source: source.into(),
        })
}

fn compare_tensor(
    orig: &GgufFile,
    oi: usize,
    quant: &GgufFile,
    qi: usize,
) -> Result<TensorQuality> {
    let (to, tq) = (&orig.header().tensors[oi], &quant.header().tensors[qi]);
    if to.dims != tq.dims {
        return Err(Error::Other(format!(
            "tensor {:?}: shape {:?} vs {:?}",
            to.name, to.dims, tq.dims
        )));
    }
    // Chunks hold whole rows (so whole blocks of both types, and whole
    // rows for formats with a row transform).
    let n = to.n_elements as usize;
    let row_len = (to.row_len() as usize).max(1);
    let step = CHUNK.div_ceil(row_len) * row_len;
    let (mut signal, mut noise) = (0f64, 0f64);
    let (mut a, mut b) = (vec![0f32; step.min(n)], vec![0f32; step.min(n)]);
    // Decoders are built once per tensor (a row transform is prepared
    // there), and only when there is something to decode.
    if n > 0 {
        let (ca, cb) = (tensor_decoder(orig, oi)?, tensor_decoder(quant, qi)?);
        let mut start = 0;
        while start < n {
            let len = step.min(n - start);
            decode_range(orig, oi, &ca, start, &mut a[..len])?;
            decode_range(quant, qi, &cb, start, &mut b[..len])?;
            for (x, y) in a[..len].iter().zip(&b[..len]) {
                signal += (*x as f64).powi(2);
                noise += (*x as f64 - *y as f64).powi(2);
            }
            start += len;
        }
    }
    Ok(TensorQuality {
        name: tq.name.clone(),
        quant_type: tq.type_name.to_string(),
        elements: tq.n_elements,
        bits_per_weight: tq.bits_per_weight(),
        signal,
        noise,
        rmse: if n > 0 {
            (noise / n as f64).sqrt()
        } else {
            0.0
        },
        sqnr_db: sqnr(signal, noise),
    })
}

/// Compares every tensor of `quant` with the same-named tensor of `orig`.
pub fn compare(orig: &GgufFile, quant: &GgufFile) -> Result<Vec<TensorQuality>> {
    let pairs: Vec<(usize, usize)> = quant
        .header()
        .tensors
        .iter()
        .enumerate()
        .map(|(qi, t)| {
            orig.header()
                .tensor_index(&t.name)
                .map(|oi| (oi, qi))
                .ok_or_else(|| {
                    Error::Other(format!("tensor {:?} is not in the original file", t.name))
                })
        })
        .collect::<Result<_>>()?;
    pairs
        .into_par_iter()
        .map(|(oi, qi)| compare_tensor(orig, oi, quant, qi))
        .collect()
}

/// Aggregates the tensors for which `include` holds.
pub fn summarize(rows: &[TensorQuality], include: impl Fn(&TensorQuality) -> bool) -> Summary {
    let sel: Vec<&TensorQuality> = rows.iter().filter(|r| include(r)).collect();
    let elements: u64 = sel.iter().map(|r| r.elements).sum();
    let bits: f64 = sel
        .iter()
        .map(|r| r.bits_per_weight * r.elements as f64)
        .sum();
    let (signal, noise) = sel
        .iter()
        .fold((0.0, 0.0), |(s, n), r| (s + r.signal, n + r.noise));
    Summary {
        tensors: sel.len(),
        elements,
        bits_per_weight: if elements > 0 {
            bits / elements as f64
        } else {
            0.0
        },
        rmse: if elements > 0 {
            (noise / elements as f64).sqrt()
        } else {
            0.0
        },
        sqnr_db: sqnr(signal, noise),
    }
}
