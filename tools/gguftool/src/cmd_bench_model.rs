//! `gguftool bench --model`: prompt processing and generation speed as
//! llama-bench measures them. `pp<P>`: one batch of P random tokens from an
//! empty cache (logits of the last position); `tg<N>`: N single-token
//! decodes from an empty cache, each with its logits (the first token BOS
//! when the model adds one, else random). One warm-up of each, then
//! `-r` repetitions; tokens/s is the mean over repetitions ± the sample
//! standard deviation.

use crate::{usage, CliError};
use gguftool_model::{Logits, Model, NoHooks};
use gguftool_quant::rng::SplitMix64;
use gguftool_tokenizer::Tokenizer;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

/// Options of the model mode.
pub struct ModelBench<'a> {
    pub model: &'a Path,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub threads: Option<usize>,
    pub reps: usize,
    pub json: bool,
}

fn failed(msg: String) -> CliError {
    CliError::Failed(gguftool_gguf::Error::Other(msg))
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (m, 0.0);
    }
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, v.sqrt())
}

/// Bytes of weights one decoded token reads: every tensor except the
/// embedding table, whose single row is negligible, unless it is also the
/// output head (tied).
pub fn decode_bytes_per_token(model: &Model) -> u64 {
    let f = model.file();
    let h = f.header();
    let tied = h.tensor_index("output.weight").is_none();
    (0..h.tensors.len())
        .filter(|&i| tied || h.tensors[i].name != "token_embd.weight")
        .map(|i| f.tensor_data(i).len() as u64)
        .sum()
}

fn human_size(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

fn human_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else {
        format!("{:.2} M", n as f64 / 1e6)
    }
}

pub fn run(o: ModelBench) -> Result<ExitCode, CliError> {
    if o.reps == 0 {
        return Err(usage("-r 0: at least one repetition"));
    }
    if o.n_prompt == 0 && o.n_gen == 0 {
        return Err(usage("-p 0 -n 0: nothing to measure"));
    }
    let threads = match o.threads {
        Some(0) => return Err(usage("-t 0: at least one thread")),
        Some(t) => t,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let model = Model::open(o.model, threads).map_err(|e| match e {
        gguftool_model::Error::Gguf(g) => CliError::Failed(g),
        e => failed(format!("{}: {e}", o.model.display())),
    })?;
    // BOS for the first generated position, as llama-bench's test_gen.
    let bos = Tokenizer::from_metadata(model.metadata())
        .ok()
        .and_then(|t| gguftool_eval::chunk_bos(&t));
    let nv = model.n_vocab() as u64;
    let mut rng = SplitMix64::new(1);
    let mut cache = model.new_cache((o.n_prompt + o.n_gen).max(1));
    let run_pp = |cache: &mut gguftool_model::KvCache, rng: &mut SplitMix64| {
        let toks: Vec<u32> = (0..o.n_prompt)
            .map(|_| (rng.next_u64() % nv) as u32)
            .collect();
        cache.clear();
        let t = Instant::now();
        model.forward(cache, &toks, Logits::Last, &mut NoHooks)?;
        Ok::<f64, gguftool_model::Error>(t.elapsed().as_secs_f64())
    };
    let run_tg = |cache: &mut gguftool_model::KvCache, rng: &mut SplitMix64, n: usize| {
        cache.clear();
        let mut tok = bos.unwrap_or_else(|| (rng.next_u64() % nv) as u32);
        let t = Instant::now();
        for _ in 0..n {
            let l = model.forward(cache, &[tok], Logits::Last, &mut NoHooks)?;
            tok = gguftool_eval::argmax(&l);
        }
        Ok::<f64, gguftool_model::Error>(t.elapsed().as_secs_f64())
    };
    let err = |e: gguftool_model::Error| failed(format!("{}: {e}", o.model.display()));
    let mut rows: Vec<(String, usize, Vec<f64>)> = Vec::new();
    if o.n_prompt > 0 {
        run_pp(&mut cache, &mut rng).map_err(err)?;
        let ts = (0..o.reps)
            .map(|_| run_pp(&mut cache, &mut rng).map(|s| o.n_prompt as f64 / s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        rows.push((format!("pp{}", o.n_prompt), o.n_prompt, ts));
    }
    if o.n_gen > 0 {
        run_tg(&mut cache, &mut rng, 1).map_err(err)?;
        let ts = (0..o.reps)
            .map(|_| run_tg(&mut cache, &mut rng, o.n_gen).map(|s| o.n_gen as f64 / s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        rows.push((format!("tg{}", o.n_gen), o.n_gen, ts));
    }
    let name = o
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let h = model.file().header();
    let size: u64 = (0..h.tensors.len())
        .map(|i| model.file().tensor_data(i).len() as u64)
        .sum();
    let params: u64 = h.tensors.iter().map(|t| t.n_elements).sum();
    let bpt = decode_bytes_per_token(&model);
    let threads = model.threads();
    if o.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(test, n, ts)| {
                let (m, sd) = mean_sd(ts);
                let is_pp = test.starts_with("pp");
                serde_json::json!({
                    "model": name,
                    "model_size": size,
                    "model_n_params": params,
                    "n_threads": threads,
                    "n_prompt": if is_pp { *n } else { 0 },
                    "n_gen": if is_pp { 0 } else { *n },
                    "test": test,
                    "tokens_per_s": m,
                    "stddev": sd,
                    "samples_ts": ts,
                    "decode_bytes_per_token": bpt,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let sz = human_size(size);
    let pa = human_params(params);
    let nw = name.len().max(5);
    println!(
        "| {:<nw$} | {:>10} | {:>10} | {:>7} | {:>8} | {:>20} |",
        "model", "size", "params", "threads", "test", "t/s"
    );
    println!(
        "| {:-<nw$} | {:->9}: | {:->9}: | {:->6}: | {:->7}: | {:->19}: |",
        "", "", "", "", "", ""
    );
    for (test, _, ts) in &rows {
        let (m, sd) = mean_sd(ts);
        println!(
            "| {name:<nw$} | {sz:>10} | {pa:>10} | {threads:>7} | {test:>8} | {:>20} |",
            format!("{m:.2} ± {sd:.2}")
        );
    }
    if let Some((_, _, ts)) = rows.iter().find(|r| r.0.starts_with("tg")) {
        let (m, _) = mean_sd(ts);
        eprintln!(
            "decode reads {:.1} MB of weights per token: {:.2} GB/s at {m:.2} t/s",
            bpt as f64 / 1e6,
            bpt as f64 * m / 1e9
        );
    }
    Ok(ExitCode::SUCCESS)
}
