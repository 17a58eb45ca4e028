//! Block-wise reconstruction of a real model on calibration text, with
//! timings and the held-out next-token loss before and after.
//!
//! ```text
//! cargo run --release -p gguftool-qat --example blockwise -- MODEL.gguf TEXT.txt \
//!     [--format piq2] [--blocks N] [--seqs 16] [--heldout 4] [--len 128] \
//!     [--epochs 2] [--batch 4] [--lr 5e-3] [--learn-weights] [--wlr 1e-4]
//! ```
//!
//! The text is tokenized with the model's own tokenizer and cut into
//! sequences: the first `--seqs` calibrate, the next `--heldout` select the
//! epoch and measure the loss. Only the first `--blocks` blocks are
//! quantized (default: all). Use calibration text, never evaluation text.
//! The held-out sequences also choose each block's kept epoch, so the
//! final loss is slightly optimistic. Per-block seconds include computing
//! the targets and the held-out evaluations.

use candle_core::{Tensor, D};
use gguftool_formats as _;
use gguftool_model::Model;
use gguftool_qat::blockwise::{reconstruct_blocks, BlockwiseConfig};
use gguftool_qat::candle_model::CandleModel;
use gguftool_qat::candle_op::FakeQuant;
use gguftool_quant::format::Ste;
use std::time::Instant;

/// Mean next-token negative log-likelihood (nats) over `seqs`.
fn nll(m: &CandleModel, seqs: &[Vec<u32>]) -> Result<f64, Box<dyn std::error::Error>> {
    let mut total = 0f64;
    let mut count = 0usize;
    for s in seqs {
        let t = m.token_tensor(&[s])?;
        let logits = m.forward(&t)?.squeeze(0)?; // [T, V]
        let n = s.len() - 1;
        let l = logits.narrow(0, 0, n)?;
        let mx = l.max_keepdim(D::Minus1)?;
        let lse = (l.broadcast_sub(&mx)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &mx)?;
        let next = Tensor::from_vec(s[1..].to_vec(), (n, 1), l.device())?;
        let picked = l.gather(&next, 1)?;
        total += (lse - picked)?.sum_all()?.to_scalar::<f32>()? as f64;
        count += n;
    }
    Ok(total / count as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: blockwise MODEL.gguf TEXT.txt [options] (see the source)");
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
    let fnum = |name: &str, d: f64| -> f64 { opt(name).and_then(|v| v.parse().ok()).unwrap_or(d) };
    let format = opt("--format").unwrap_or("piq2");
    let (n_cal, n_held, len) = (num("--seqs", 16), num("--heldout", 4), num("--len", 128));

    let model = Model::open(&args[0], 0)?;
    let tok = gguftool_tokenizer::Tokenizer::from_metadata(model.metadata())?;
    let text = std::fs::read_to_string(&args[1])?;
    let ids = tok.tokenize(&text, false, false)?;
    // As llama-perplexity: each chunk's first token becomes BOS when the
    // model adds one (Gemma yes, SmolLM2 no).
    let seqs = gguftool_eval::bos_chunks(&ids, len, gguftool_eval::chunk_bos(&tok));
    if seqs.len() < n_cal + n_held {
        return Err(format!(
            "{} tokens make {} sequences of {len}; need {}",
            ids.len(),
            seqs.len(),
            n_cal + n_held
        )
        .into());
    }
    let (calib, held) = (&seqs[..n_cal], &seqs[n_cal..n_cal + n_held]);
    let dev = candle_core::Device::Cpu;
    let mut cm = CandleModel::from_model(&model, &dev)?;
    let n_blocks = num("--blocks", cm.blocks().len());
    let cfg = BlockwiseConfig {
        learning_rate: fnum("--lr", 5e-3),
        weight_learning_rate: fnum("--wlr", 1e-4),
        learn_weights: args.iter().any(|a| a == "--learn-weights"),
        epochs: num("--epochs", 2),
        batch_size: num("--batch", 4),
        max_blocks: Some(n_blocks),
        ..BlockwiseConfig::default()
    };
    let fq = FakeQuant::by_name(format, Ste::LearnedStepSize)?;
    println!(
        "{}: {format}, {n_blocks} of {} blocks, {n_cal}x{len} calibration and {n_held}x{len} held-out tokens, {cfg:?}",
        args[0],
        cm.blocks().len()
    );

    let t = Instant::now();
    let nll_fp = nll(&cm, held)?;
    let t_eval = t.elapsed();
    let mut init = cm.clone();
    for b in init.blocks_mut().iter_mut().take(n_blocks) {
        b.quantize(fq, false)?;
    }
    let nll_init = nll(&init, held)?;
    drop(init);

    // One block step's parts: forward, and forward + backward, on a batch.
    {
        let mut b = cm.blocks()[0].clone();
        b.quantize(fq, cfg.learn_weights)?;
        b.set_norms_trainable(true);
        let bs = cfg.batch_size.min(n_cal);
        let toks: Vec<&[u32]> = calib[..bs].iter().map(Vec::as_slice).collect();
        let x = cm.embed(&cm.token_tensor(&toks)?)?.detach();
        let t = Instant::now();
        let y = b.forward(&x)?;
        let tf = t.elapsed();
        let t = Instant::now();
        let _ = b.forward(&x)?.sqr()?.mean_all()?.backward()?;
        let tfb = t.elapsed();
        let _ = y;
        println!("block 0 on {bs}x{len} tokens: forward {tf:.2?}, forward+backward {tfb:.2?}");
    }

    let t = Instant::now();
    let reports = reconstruct_blocks(&mut cm, fq, calib, held, &cfg, &mut |r| {
        println!(
            "block {:2}: train MSE {:.4e} -> {:.4e}, held-out {:.4e} -> {:.4e} (epoch {}, target power {:.3e}), {} steps in {:.1} s ({:.0} ms/step)",
            r.layer,
            r.initial_train_mse,
            r.final_train_mse,
            r.initial_heldout_mse,
            r.best_heldout_mse,
            r.best_epoch,
            r.heldout_target_power,
            r.steps,
            r.seconds,
            1e3 * r.seconds / r.steps.max(1) as f64
        );
    })?;
    let secs = t.elapsed().as_secs_f64();
    let nll_q = nll(&cm, held)?;
    let steps: usize = reports.iter().map(|r| r.steps).sum();
    println!(
        "total {secs:.1} s, {steps} steps; {:.0} calibration token-epochs/s per block",
        (n_cal * len * cfg.epochs * reports.len()) as f64 / secs
    );
    println!(
        "held-out NLL (nats/token): full precision {nll_fp:.4} (PPL {:.2}), quantized at init {nll_init:.4} (PPL {:.2}), after block-wise {nll_q:.4} (PPL {:.2}); one eval pass {:.2?}",
        nll_fp.exp(),
        nll_init.exp(),
        nll_q.exp(),
        t_eval
    );
    Ok(())
}
