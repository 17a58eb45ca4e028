//! Writes a LoRA GGUF that visibly changes a model, and prints the
//! perplexity with and without it as llama-perplexity computes it, from
//! the candle model: run llama.cpp's `llama-perplexity -m MODEL -f TEXT -c
//! CTX --chunks N [--lora OUT]` and compare, to check that llama.cpp reads
//! the file with our orientation and scale.
//!
//! ```text
//! cargo run --release -p gguftool-qat --example lora_llama_check -- \
//!     MODEL.gguf TEXT.txt OUT.gguf [--ctx 128] [--chunks 4] [--rank 4] [--std 0.02]
//! ```
//!
//! Adapters of rank `--rank` go on every `attn_q` and `ffn_down` matrix,
//! `A` as LoRA initialises it and `B` Gaussian with standard deviation
//! `--std` (a trained adapter's magnitude), alpha = 2 * rank. Perplexity as
//! llama-perplexity: the text tokenized whole, chunks of `--ctx` tokens
//! (the first replaced by BOS when the model adds one), each scoring its
//! second half.

use candle_core::{Tensor, D};
use gguftool_formats as _;
use gguftool_model::Model;
use gguftool_qat::candle_model::{CandleModel, LoraAdapter};
use gguftool_qat::lora::{is_target, new_adapter, LoraConfig};
use gguftool_quant::hadamard::SplitMix64;

/// llama-perplexity's estimate over `chunks` (`exp` of the mean NLL of
/// positions `ctx/2 .. ctx-1` of each chunk).
fn ppl(m: &CandleModel, chunks: &[Vec<u32>]) -> Result<f64, Box<dyn std::error::Error>> {
    let (mut nll, mut n) = (0f64, 0usize);
    for c in chunks {
        let ctx = c.len();
        let first = ctx / 2;
        let logits = m.forward(&m.token_tensor(&[c])?)?.squeeze(0)?; // [ctx, V]
        let l = logits.narrow(0, first, ctx - 1 - first)?;
        let mx = l.max_keepdim(D::Minus1)?;
        let lse = (l.broadcast_sub(&mx)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &mx)?;
        let next = Tensor::from_vec(c[first + 1..].to_vec(), (ctx - 1 - first, 1), l.device())?;
        nll += (lse - l.gather(&next, 1)?)?.sum_all()?.to_scalar::<f32>()? as f64;
        n += ctx - 1 - first;
    }
    Ok((nll / n as f64).exp())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!(
            "usage: lora_llama_check MODEL.gguf TEXT.txt OUT.gguf [options] (see the source)"
        );
        std::process::exit(2);
    }
    let opt = |name: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let num =
        |name: &str, d: usize| -> usize { opt(name).and_then(|v| v.parse().ok()).unwrap_or(d) };
    let (ctx, n_chunks, rank) = (num("--ctx", 128), num("--chunks", 4), num("--rank", 4));
    let std: f64 = opt("--std").and_then(|v| v.parse().ok()).unwrap_or(0.02);

    let model = Model::open(&args[0], 0)?;
    let tok = gguftool_tokenizer::Tokenizer::from_metadata(model.metadata())?;
    let text = std::fs::read_to_string(&args[1])?;
    let ids = tok.tokenize(&text, true, false)?;
    let mut chunks = gguftool_eval::bos_chunks(&ids, ctx, gguftool_eval::chunk_bos(&tok));
    chunks.truncate(n_chunks);
    let mut cm = CandleModel::from_model(&model, &candle_core::Device::Cpu)?;
    let base = ppl(&cm, &chunks)?;
    let cfg = LoraConfig {
        rank,
        alpha: 2.0 * rank as f32,
        targets: vec!["attn_q".into(), "ffn_down".into()],
        seed: 1,
    };
    let mut rng = SplitMix64::new(2);
    let mut n = 0;
    for b in cm.blocks_mut() {
        for l in b.linears_mut() {
            if !is_target(&cfg, l.name()) {
                continue;
            }
            let fresh = new_adapter(l, rank, cfg.alpha, 3 + n as u64)?;
            let (n_out, _) = l.weight().var().as_tensor().dims2()?;
            let bv: Vec<f32> = (0..n_out * rank)
                .map(|_| (rng.next_normal() * std) as f32)
                .collect();
            let bt = Tensor::from_vec(bv, (n_out, rank), &candle_core::Device::Cpu)?;
            let a = fresh.a().var().as_tensor().clone();
            l.attach_lora(LoraAdapter::new(l.name(), a, bt, cfg.alpha, false)?)?;
            n += 1;
        }
    }
    let with = ppl(&cm, &chunks)?;
    let written = gguftool_qat::lora_gguf::write_lora_gguf(&cm, &args[2], Some("lora check"))?;
    println!(
        "{} chunks of {ctx}: PPL without the adapter {base:.4}, with it {with:.4} ({n} adapters of rank {rank}, {written} written to {})",
        chunks.len(),
        args[2]
    );
    Ok(())
}
