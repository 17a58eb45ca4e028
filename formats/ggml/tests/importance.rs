//! With skewed importance, the importance-weighted encoders lower the
//! importance-weighted squared error compared with encoding without it.

use gguftool_ggml as _;
use gguftool_quant::format::{quantize, Format};
use gguftool_quant::registry;

/// Deterministic normal samples (xorshift + Box-Muller).
fn normals(n: usize, mut s: u64) -> Vec<f32> {
    let mut u = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (a, b) = (u(), u());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
        })
        .collect()
}

fn weighted_error(f: &dyn Format, x: &[f32], imp: &[f32], use_imp: bool) -> f64 {
    let mut q = vec![0u8; x.len() / f.block_size() * f.type_size()];
    quantize(f, x, use_imp.then_some(imp), &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    f.dequantize(&q, &mut y).unwrap();
    x.iter()
        .zip(&y)
        .zip(imp)
        .map(|((a, b), w)| *w as f64 * (*a as f64 - *b as f64).powi(2))
        .sum()
}

#[test]
fn importance_lowers_weighted_error() {
    let (rows, row_len) = (64, 512);
    let x = normals(rows * row_len, 0x9e37_79b9_7f4a_7c15);
    // Per-column importance spanning orders of magnitude (as an imatrix
    // does), the same for every row.
    let col: Vec<f32> = normals(row_len, 7)
        .iter()
        .map(|v| (2.0 * v).exp())
        .collect();
    let imp: Vec<f32> = (0..rows).flat_map(|_| col.iter().copied()).collect();
    for name in [
        "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
    ] {
        let f = registry::by_name(name).unwrap();
        let plain = weighted_error(f, &x, &imp, false);
        let weighted = weighted_error(f, &x, &imp, true);
        eprintln!("{name}: weighted error {plain:.4} -> {weighted:.4}");
        assert!(
            weighted < plain * 0.97,
            "{name}: importance did not lower the weighted error ({plain} -> {weighted})"
        );
    }
}
