//! KL divergence against a llama.cpp logits file (`--kl-divergence`).

use crate::nll::{kld_token, KldSums};
use crate::{run_chunk, Error, Result};
use gguftool_model::Model;
use rayon::prelude::*;
use std::fmt::Write as _;
use std::io::Read;

/// The running figures after one chunk (one line of llama.cpp's table).
#[derive(Debug, Clone)]
pub struct KldChunk {
    /// 1-based chunk number.
    pub chunk: usize,
    /// The line, formatted as llama.cpp prints it.
    pub line: String,
}

/// The final statistics.
#[derive(Debug, Clone)]
pub struct KldResult {
    /// Mean KLD.
    pub mean_kld: f64,
    /// Its uncertainty.
    pub mean_kld_unc: f64,
    /// Mean PPL of the model.
    pub ppl: f64,
    /// Mean PPL of the base.
    pub ppl_base: f64,
    /// Fraction of tokens whose top token agrees.
    pub same_top: f64,
    /// Tokens scored.
    pub count: usize,
    /// Chunks evaluated.
    pub n_chunk: usize,
    /// Tokens run through the model.
    pub tokens_processed: usize,
    /// llama.cpp's statistics blocks (empty below 100 tokens, as llama.cpp).
    pub report: String,
}

/// The header line printed before the per-chunk lines.
pub const CHUNK_HEADER: &str = "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p";

fn read_i32(r: &mut dyn Read) -> Result<i32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)
        .map_err(|e| Error::LogitsFile(format!("truncated header: {e}")))?;
    Ok(i32::from_le_bytes(b))
}

fn mean_unc(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let f = sum / count as f64;
    let df = sum2 / count as f64 - f * f;
    let df = if df > 0.0 && count > 10 {
        (df / (count - 1) as f64).sqrt()
    } else {
        0.0
    };
    (f, df)
}

fn covariance(a: f64, b: f64, ab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let c = count as f64;
    (ab / c - (a / c) * (b / c)) / (c - 1.0)
}

fn percentile(v: &[f32], fraction: f32) -> f32 {
    if fraction <= 0.0 {
        return v[0];
    }
    if fraction >= 1.0 {
        return v[v.len() - 1];
    }
    let mut p = fraction * (v.len() - 1) as f32;
    let ip = p as usize;
    p -= ip as f32;
    (1.0 - p) * v[ip] + p * v[(ip + 1).min(v.len() - 1)]
}

fn median(v: &[f32]) -> f32 {
    let n = v.len();
    if n.is_multiple_of(2) {
        0.5 * (v[n / 2] + v[n / 2 - 1])
    } else {
        v[n / 2]
    }
}

fn chunk_line(chunk: usize, k: &KldSums) -> String {
    let mut s = format!("{chunk:4}");
    let lp = mean_unc(k.sum_nll, k.sum_nll2, k.count);
    let ppl = lp.0.exp();
    let _ = write!(s, "    {:9.4} ± {:9.4}", ppl, ppl * lp.1);
    let lpb = mean_unc(k.sum_nll_base, k.sum_nll_base2, k.count);
    let cov = covariance(k.sum_nll, k.sum_nll_base, k.sum_nll_nll_base, k.count);
    let ratio = lp.0 - lpb.0;
    let ratio_unc = (lp.1 * lp.1 + lpb.1 * lpb.1 - 2.0 * cov).sqrt();
    let _ = write!(s, "    {:10.5} ± {:10.5}", ratio, ratio_unc);
    let kl = mean_unc(k.sum_kld, k.sum_kld2, k.count);
    let _ = write!(s, "    {:10.5} ± {:10.5}", kl.0, kl.1);
    let mse = mean_unc(k.sum_p_diff2, k.sum_p_diff4, k.count);
    let rms = mse.0.sqrt();
    let rms_unc = 0.5 / rms * mse.1;
    let _ = write!(s, "    {:6.3} ± {:6.3} %", 100.0 * rms, 100.0 * rms_unc);
    let top = k.n_same_top as f64 / k.count as f64;
    let top_unc = (top * (1.0 - top) / (k.count as f64 - 1.0)).sqrt();
    let _ = write!(s, "    {:6.3} ± {:6.3} %", 100.0 * top, 100.0 * top_unc);
    s
}

fn report(k: &KldSums, kld_v: &mut [f32], pd_v: &mut [f32]) -> String {
    let mut o = String::new();
    if k.count < 100 {
        return o;
    }
    kld_v.sort_by(f32::total_cmp);
    pd_v.sort_by(f32::total_cmp);
    let lp = mean_unc(k.sum_nll, k.sum_nll2, k.count);
    let ppl = lp.0.exp();
    let ppl_unc = ppl * lp.1;
    let _ = writeln!(o, "====== Perplexity statistics ======");
    let _ = writeln!(
        o,
        "Mean PPL(Q)                   : {ppl:10.6} ± {ppl_unc:10.6}"
    );
    let lpb = mean_unc(k.sum_nll_base, k.sum_nll_base2, k.count);
    let pplb = lpb.0.exp();
    let pplb_unc = pplb * lpb.1;
    let _ = writeln!(
        o,
        "Mean PPL(base)                : {pplb:10.6} ± {pplb_unc:10.6}"
    );
    let cov = covariance(k.sum_nll, k.sum_nll_base, k.sum_nll_nll_base, k.count);
    let cor = cov / (lp.1 * lpb.1);
    let _ = writeln!(o, "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%", 100.0 * cor);
    let ratio = lp.0 - lpb.0;
    let ratio_unc = (lp.1 * lp.1 + lpb.1 * lpb.1 - 2.0 * cov).sqrt();
    let _ = writeln!(
        o,
        "Mean ln(PPL(Q)/PPL(base))     : {ratio:10.6} ± {ratio_unc:10.6}"
    );
    let r = ratio.exp();
    let _ = writeln!(
        o,
        "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}",
        r,
        r * ratio_unc
    );
    let pcov = ppl * pplb * cov;
    let _ = writeln!(
        o,
        "Mean PPL(Q)-PPL(base)         : {:10.6} ± {:10.6}",
        ppl - pplb,
        (ppl_unc * ppl_unc + pplb_unc * pplb_unc - 2.0 * pcov).sqrt()
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "====== KL divergence statistics ======");
    let kl = mean_unc(k.sum_kld, k.sum_kld2, k.count);
    let _ = writeln!(o, "Mean    KLD: {:10.6} ± {:10.6}", kl.0, kl.1);
    let _ = writeln!(o, "Maximum KLD: {:10.6}", kld_v[kld_v.len() - 1]);
    for (label, f) in [
        ("99.9%", 0.999f32),
        ("99.0%", 0.990),
        ("95.0%", 0.950),
        ("90.0%", 0.900),
    ] {
        let _ = writeln!(o, "{label}   KLD: {:10.6}", percentile(kld_v, f));
    }
    let _ = writeln!(o, "Median  KLD: {:10.6}", median(kld_v));
    for (label, f) in [
        ("10.0%", 0.100f32),
        (" 5.0%", 0.050),
        (" 1.0%", 0.010),
        (" 0.1%", 0.001),
    ] {
        let _ = writeln!(o, "{label}   KLD: {:10.6}", percentile(kld_v, f));
    }
    let _ = writeln!(o, "Minimum KLD: {:10.6}", kld_v[0]);
    let _ = writeln!(o);
    let _ = writeln!(o, "====== Token probability statistics ======");
    let pd = mean_unc(k.sum_p_diff, k.sum_p_diff2, k.count);
    let _ = writeln!(
        o,
        "Mean    Δp: {:6.3} ± {:5.3} %",
        100.0 * pd.0,
        100.0 * pd.1
    );
    let _ = writeln!(o, "Maximum Δp: {:6.3}%", 100.0 * pd_v[pd_v.len() - 1]);
    for (label, f) in [
        ("99.9%", 0.999f32),
        ("99.0%", 0.990),
        ("95.0%", 0.950),
        ("90.0%", 0.900),
        ("75.0%", 0.750),
    ] {
        let _ = writeln!(o, "{label}   Δp: {:6.3}%", 100.0 * percentile(pd_v, f));
    }
    let _ = writeln!(o, "Median  Δp: {:6.3}%", 100.0 * median(pd_v));
    for (label, f) in [
        ("25.0%", 0.250f32),
        ("10.0%", 0.100),
        (" 5.0%", 0.050),
        (" 1.0%", 0.010),
        (" 0.1%", 0.001),
    ] {
        let _ = writeln!(o, "{label}   Δp: {:6.3}%", 100.0 * percentile(pd_v, f));
    }
    let _ = writeln!(o, "Minimum Δp: {:6.3}%", 100.0 * pd_v[0]);
    let mse = mean_unc(k.sum_p_diff2, k.sum_p_diff4, k.count);
    let rms = mse.0.sqrt();
    let _ = writeln!(
        o,
        "RMS Δp    : {:6.3} ± {:5.3} %",
        100.0 * rms,
        100.0 * 0.5 / rms * mse.1
    );
    let top = k.n_same_top as f64 / k.count as f64;
    let _ = writeln!(
        o,
        "Same top p: {:6.3} ± {:5.3} %",
        100.0 * top,
        100.0 * (top * (1.0 - top) / (k.count as f64 - 1.0)).sqrt()
    );
    o
}

/// KL divergence of `model` against the base logits file read from
/// `base` (llama.cpp's format, ours or llama.cpp's). The tokens come from
/// the file; `bos` is written over each chunk's first token. `n_batch`:
/// positions per forward batch. `on_chunk` gets each table line.
///
/// # Errors
/// A malformed or truncated file, a vocabulary that differs from the
/// model's, model errors.
pub fn kl_divergence(
    model: &Model,
    base: &mut dyn Read,
    bos: Option<u32>,
    n_batch: usize,
    on_chunk: &mut dyn FnMut(&KldChunk),
) -> Result<KldResult> {
    let mut magic = [0u8; 8];
    base.read_exact(&mut magic)
        .map_err(|_| Error::LogitsFile("too short to be a logits file".into()))?;
    if &magic != b"_logits_" {
        return Err(Error::LogitsFile(
            "does not start with `_logits_` (not a llama.cpp logits file)".into(),
        ));
    }
    let n_ctx = read_i32(base)?;
    let n_vocab = read_i32(base)?;
    let n_chunk = read_i32(base)?;
    if n_ctx < 4 || n_vocab < 1 || n_chunk < 1 {
        return Err(Error::LogitsFile(format!(
            "bad header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}"
        )));
    }
    let (n_ctx, n_vocab, n_chunk) = (n_ctx as usize, n_vocab as usize, n_chunk as usize);
    if n_vocab != model.n_vocab() {
        return Err(Error::LogitsFile(format!(
            "vocabulary of {n_vocab} tokens, the model has {}",
            model.n_vocab()
        )));
    }
    let n_tok = n_ctx
        .checked_mul(n_chunk)
        .filter(|&n| n <= 1 << 28)
        .ok_or_else(|| Error::LogitsFile("token count out of range".into()))?;
    let mut raw = vec![0u8; n_tok * 4];
    base.read_exact(&mut raw)
        .map_err(|_| Error::LogitsFile("truncated token list".into()))?;
    let tokens: Vec<u32> = raw
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .map(|t| {
            u32::try_from(t)
                .ok()
                .filter(|&t| (t as usize) < n_vocab)
                .ok_or_else(|| Error::LogitsFile(format!("token id {t} out of range")))
        })
        .collect::<Result<_>>()?;
    let first = n_ctx / 2;
    let n_score = n_ctx - 1 - first;
    let nv = 2 * n_vocab.div_ceil(2) + 4;
    let mut cache = model.new_cache(n_ctx);
    let mut sums = KldSums::default();
    let mut kld_v = Vec::with_capacity(n_score * n_chunk);
    let mut pd_v = Vec::with_capacity(n_score * n_chunk);
    let mut rec_bytes = vec![0u8; n_score * nv * 2];
    let n_batch = n_batch.clamp(1, n_ctx);
    for i in 0..n_chunk {
        let start = i * n_ctx;
        let logits = run_chunk(
            model,
            &mut cache,
            &tokens[start..start + n_ctx],
            bos,
            n_batch,
        )?;
        base.read_exact(&mut rec_bytes).map_err(|_| {
            Error::LogitsFile(format!("truncated: failed reading log-probs for chunk {i}"))
        })?;
        let recs: Vec<u16> = rec_bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        let targets = &tokens[start + first + 1..start + n_ctx];
        let per: Vec<(KldSums, f64, f32)> = logits
            .par_chunks(n_vocab)
            .zip(recs.par_chunks(nv))
            .zip(targets.par_iter())
            .map(|((row, rec), &t)| {
                let mut k = KldSums::default();
                let (kl, pd) = kld_token(row, rec, t as usize, &mut k);
                (k, kl, pd)
            })
            .collect();
        for (k, kl, pd) in per {
            sums.add(&k);
            kld_v.push(kl as f32);
            pd_v.push(pd);
        }
        on_chunk(&KldChunk {
            chunk: i + 1,
            line: chunk_line(i + 1, &sums),
        });
    }
    let kl = mean_unc(sums.sum_kld, sums.sum_kld2, sums.count);
    let ppl = mean_unc(sums.sum_nll, sums.sum_nll2, sums.count).0.exp();
    let ppl_base = mean_unc(sums.sum_nll_base, sums.sum_nll_base2, sums.count)
        .0
        .exp();
    let rep = report(&sums, &mut kld_v, &mut pd_v);
    Ok(KldResult {
        mean_kld: kl.0,
        mean_kld_unc: kl.1,
        ppl,
        ppl_base,
        same_top: sums.n_same_top as f64 / sums.count.max(1) as f64,
        count: sums.count,
        n_chunk,
        tokens_processed: n_chunk * n_ctx,
        report: rep,
    })
}
