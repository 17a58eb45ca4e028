//! Per-token log-softmax with llama.cpp's numerics.

/// llama.cpp's `nearest_int` (round half to even through the 1.5·2^23
/// trick).
pub(crate) fn nearest_int(f: f32) -> i32 {
    let v = f + 12_582_912.0f32;
    ((v.to_bits() & 0x007f_ffff) as i32) - 0x0040_0000
}

/// Max and `Σ expf(l − max)` in f64.
fn max_sum(logits: &[f32]) -> (f32, f64) {
    let mut mx = logits[0];
    for &v in &logits[1..] {
        mx = mx.max(v);
    }
    let mut s = 0.0f64;
    for &v in logits {
        s += (v - mx).exp() as f64;
    }
    (mx, s)
}

/// −log p(tok), as `log_softmax` in perplexity.cpp (no logits file).
pub(crate) fn nll(logits: &[f32], tok: usize) -> f64 {
    let (mx, s) = max_sum(logits);
    -((logits[tok] - mx) as f64 - s.ln())
}

/// −log p(tok), and the record of the logits file written into `rec`
/// (`nv` u16: f32 scale, f32 min log-prob, `n_vocab` codes, padding).
pub(crate) fn nll_and_record(logits: &[f32], tok: usize, rec: &mut [u16]) -> f64 {
    let mut mx = logits[0];
    let mut mn = logits[0];
    for &v in &logits[1..] {
        mx = mx.max(v);
        mn = mn.min(v);
    }
    let mn = mn.max(mx - 16.0);
    let mut s = 0.0f64;
    for &v in logits {
        s += (v - mx).exp() as f64;
    }
    let log_sum_exp = s.ln() as f32;
    let min_log_prob = mn - mx - log_sum_exp;
    let scale = (mx - mn) / 65535.0;
    let sb = scale.to_le_bytes();
    let mb = min_log_prob.to_le_bytes();
    rec[0] = u16::from_le_bytes([sb[0], sb[1]]);
    rec[1] = u16::from_le_bytes([sb[2], sb[3]]);
    rec[2] = u16::from_le_bytes([mb[0], mb[1]]);
    rec[3] = u16::from_le_bytes([mb[2], mb[3]]);
    let codes = &mut rec[4..];
    codes.iter_mut().for_each(|c| *c = 0);
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (c, &v) in codes.iter_mut().zip(logits) {
            *c = if v > mn {
                nearest_int(inv * (v - mn)) as u16
            } else {
                0
            };
        }
    }
    // perplexity.cpp returns max_logit + log_sum_exp - logits[tok] in
    // double from f32 terms.
    (mx as f64) + (log_sum_exp as f64) - (logits[tok] as f64)
}

/// Per-token KL-divergence statistics (perplexity.cpp's
/// `kl_divergence_result`).
#[derive(Debug, Clone, Default)]
pub(crate) struct KldSums {
    pub sum_nll: f64,
    pub sum_nll2: f64,
    pub sum_nll_base: f64,
    pub sum_nll_base2: f64,
    pub sum_nll_nll_base: f64,
    pub sum_kld: f64,
    pub sum_kld2: f64,
    pub sum_p_diff: f64,
    pub sum_p_diff2: f64,
    pub sum_p_diff4: f64,
    pub max_p_diff: f32,
    pub n_same_top: usize,
    pub count: usize,
}

impl KldSums {
    pub(crate) fn add(&mut self, o: &KldSums) {
        self.sum_nll += o.sum_nll;
        self.sum_nll2 += o.sum_nll2;
        self.sum_nll_base += o.sum_nll_base;
        self.sum_nll_base2 += o.sum_nll_base2;
        self.sum_nll_nll_base += o.sum_nll_nll_base;
        self.sum_kld += o.sum_kld;
        self.sum_kld2 += o.sum_kld2;
        self.sum_p_diff += o.sum_p_diff;
        self.sum_p_diff2 += o.sum_p_diff2;
        self.sum_p_diff4 += o.sum_p_diff4;
        self.max_p_diff = self.max_p_diff.max(o.max_p_diff);
        self.n_same_top += o.n_same_top;
        self.count += o.count;
    }
}

/// One token against a base record; returns (KLD, Δp) and accumulates.
pub(crate) fn kld_token(logits: &[f32], base: &[u16], tok: usize, k: &mut KldSums) -> (f64, f32) {
    let n_vocab = logits.len();
    let mut mx = logits[0];
    let mut imax = 0;
    for (i, &v) in logits.iter().enumerate().skip(1) {
        if v > mx {
            mx = v;
            imax = i;
        }
    }
    let mut s = 0.0f64;
    for &v in logits {
        s += (v - mx).exp() as f64;
    }
    let log_sum_exp = s.ln() as f32;
    let scale = f32::from_le_bytes(words(base[0], base[1]));
    let min_log_prob = f32::from_le_bytes(words(base[2], base[3]));
    let q = &base[4..4 + n_vocab];
    let nll = mx + log_sum_exp - logits[tok];
    k.sum_nll += nll as f64;
    k.sum_nll2 += (nll * nll) as f64;
    let nll_base = -(scale * q[tok] as f32 + min_log_prob);
    k.sum_nll_base += nll_base as f64;
    k.sum_nll_base2 += (nll_base * nll_base) as f64;
    k.sum_nll_nll_base += (nll * nll_base) as f64;
    let mxl = mx + log_sum_exp;
    let mut sum = 0.0f64;
    let mut imax_base = 0usize;
    let mut p_max = 0.0f32;
    for i in 0..n_vocab {
        let pl = scale * q[i] as f32 + min_log_prob;
        if i == 0 || pl > p_max {
            p_max = pl;
            imax_base = i;
        }
        if pl > -16.0 {
            let pb = pl.exp();
            sum += (pb * (pl - logits[i] + mxl)) as f64;
        }
    }
    k.sum_kld += sum;
    k.sum_kld2 += sum * sum;
    k.count += 1;
    if imax == imax_base {
        k.n_same_top += 1;
    }
    let p_base = (-nll_base).exp();
    let p = (-nll).exp();
    let pd = p - p_base;
    k.sum_p_diff += pd as f64;
    let pd2 = (pd * pd) as f64;
    k.sum_p_diff2 += pd2;
    k.sum_p_diff4 += pd2 * pd2;
    k.max_p_diff = k.max_p_diff.max(pd.abs());
    (sum, pd)
}

fn words(a: u16, b: u16) -> [u8; 4] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    [a[0], a[1], b[0], b[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_even() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(65535.0), 65535);
        assert_eq!(nearest_int(0.49), 0);
    }

    #[test]
    fn record_round_trips_log_probs() {
        let logits: Vec<f32> = (0..11).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
        let mut rec = vec![0u16; 2 * 6 + 4];
        let v = nll_and_record(&logits, 3, &mut rec);
        assert!((v - nll(&logits, 3)).abs() < 1e-5);
        let mut k = KldSums::default();
        let (kl, _) = kld_token(&logits, &rec, 3, &mut k);
        assert!(kl.abs() < 1e-5, "{kl}");
        assert_eq!(k.n_same_top, 1);
    }
}
