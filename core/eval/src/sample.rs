//! Token sampling for generation: greedy at temperature 0, else top-k, then
//! top-p, then temperature, softmax and a draw from
//! [`gguftool_quant::rng::SplitMix64`] (llama.cpp's default chain without
//! the penalties, typical-p, min-p and XTC stages).
//!
//! NaN logits never panic: they count as minus infinity. A row with no
//! finite logit samples its first token.

use gguftool_quant::rng::SplitMix64;

/// Sampling parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerParams {
    /// Temperature; `<= 0` is greedy (argmax).
    pub temp: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest most-likely set whose probability mass is at least
    /// `top_p` (`>= 1`: all).
    pub top_p: f32,
}

impl Default for SamplerParams {
    /// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95.
    fn default() -> Self {
        Self {
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
        }
    }
}

/// The index of the largest logit (the first of equals; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > bv {
            bv = v;
            best = i;
        }
    }
    best as u32
}

/// A sampler with its random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplerParams,
    rng: SplitMix64,
    /// (logit, id), reused between calls.
    cand: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler drawing from a stream seeded with `seed`.
    pub fn new(params: SamplerParams, seed: u64) -> Self {
        Self {
            params,
            rng: SplitMix64::new(seed),
            cand: Vec::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Picks a token from one row of logits (`n_vocab` values).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if p.temp.is_nan() || p.temp <= 0.0 {
            return argmax(logits);
        }
        let cand = &mut self.cand;
        cand.clear();
        cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite() || **v == f32::INFINITY)
                .map(|(i, &v)| (v, i as u32)),
        );
        if cand.is_empty() {
            return 0;
        }
        // Descending logit, ascending id among equals.
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, order);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(order);
        if p.top_p < 1.0 {
            let keep = top_p_len(cand, p.top_p);
            cand.truncate(keep);
        }
        // Temperature, softmax, draw.
        let mx = cand[0].0;
        if mx == f32::INFINITY {
            return cand[0].1;
        }
        let mut sum = 0.0f64;
        let probs: Vec<f64> = cand
            .iter()
            .map(|&(v, _)| {
                let e = (((v - mx) / p.temp) as f64).exp();
                sum += e;
                e
            })
            .collect();
        let mut u = self.rng.next_f64() * sum;
        for (pr, &(_, id)) in probs.iter().zip(cand.iter()) {
            if u < *pr {
                return id;
            }
            u -= pr;
        }
        cand[cand.len() - 1].1
    }
}

/// How many of the candidates (sorted by descending logit) top-p keeps: the
/// smallest prefix whose softmax mass (temperature 1) reaches `p`, at least one.
fn top_p_len(cand: &[(f32, u32)], p: f32) -> usize {
    let mx = cand[0].0;
    if mx == f32::INFINITY {
        return 1;
    }
    let e: Vec<f64> = cand.iter().map(|&(v, _)| ((v - mx) as f64).exp()).collect();
    let total: f64 = e.iter().sum();
    let mut cum = 0.0;
    for (i, x) in e.iter().enumerate() {
        cum += x / total;
        if cum >= p as f64 {
            return i + 1;
        }
    }
    cand.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temp: f32, top_k: usize, top_p: f32) -> SamplerParams {
        SamplerParams { temp, top_k, top_p }
    }

    fn row(seed: u64, n: usize) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..n).map(|_| (r.next_normal() * 3.0) as f32).collect()
    }

    #[test]
    fn temperature_zero_and_top_k_one_are_greedy() {
        for s in 0..20 {
            let l = row(s, 300);
            let a = argmax(&l);
            assert_eq!(Sampler::new(params(0.0, 40, 0.95), s).sample(&l), a);
            assert_eq!(Sampler::new(params(-1.0, 0, 1.0), s).sample(&l), a);
            let mut k1 = Sampler::new(params(1.5, 1, 1.0), s);
            for _ in 0..10 {
                assert_eq!(k1.sample(&l), a);
            }
        }
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 (logits as log2).
        let l: Vec<f32> = [3.0f32, 2.0, 1.0, 0.0, 0.0]
            .iter()
            .map(|v| v * std::f32::consts::LN_2)
            .collect();
        let mut cand: Vec<(f32, u32)> = l.iter().enumerate().map(|(i, &v)| (v, i as u32)).collect();
        cand.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(top_p_len(&cand, 0.5), 1);
        assert_eq!(top_p_len(&cand, 0.51), 2);
        assert_eq!(top_p_len(&cand, 0.75), 2);
        assert_eq!(top_p_len(&cand, 0.8), 3);
        assert_eq!(top_p_len(&cand, 0.0), 1);
        // Draws stay inside the kept set.
        let mut s = Sampler::new(params(1.0, 0, 0.75), 9);
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            seen[s.sample(&l) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
        assert_eq!(seen[2] + seen[3] + seen[4], 0, "{seen:?}");
        // Renormalised: 2/3 and 1/3.
        let f = seen[0] as f64 / 2000.0;
        assert!((f - 2.0 / 3.0).abs() < 0.05, "{seen:?}");
    }

    #[test]
    fn top_k_limits_candidates() {
        let l = row(3, 1000);
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        let top: Vec<u32> = idx[..5].iter().map(|&i| i as u32).collect();
        let mut s = Sampler::new(params(5.0, 5, 1.0), 1);
        for _ in 0..500 {
            assert!(top.contains(&s.sample(&l)));
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let l = row(5, 500);
        let draw = |seed| {
            let mut s = Sampler::new(SamplerParams::default(), seed);
            (0..50).map(|_| s.sample(&l)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn nan_and_infinite_logits_do_not_panic() {
        let mut l = row(1, 100);
        l[7] = f32::NAN;
        l[8] = f32::NEG_INFINITY;
        for p in [
            params(0.0, 0, 1.0),
            params(0.8, 40, 0.95),
            params(1.0, 0, 0.5),
        ] {
            let t = Sampler::new(p, 0).sample(&l);
            assert!(t != 7 && t != 8, "{t}");
        }
        let nan = vec![f32::NAN; 10];
        assert_eq!(Sampler::new(params(0.8, 40, 0.95), 0).sample(&nan), 0);
        assert_eq!(Sampler::new(params(0.0, 40, 0.95), 0).sample(&nan), 0);
        let mut inf = vec![0.0f32; 10];
        inf[4] = f32::INFINITY;
        assert_eq!(Sampler::new(params(0.8, 0, 0.95), 0).sample(&inf), 4);
        assert_eq!(Sampler::new(params(0.0, 0, 0.95), 0).sample(&inf), 4);
        assert_eq!(Sampler::new(params(0.8, 3, 0.95), 0).sample(&[]), 0);
    }
}
