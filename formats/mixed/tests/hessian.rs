//! The `mixed` recipe on full input Hessians: where the inputs are
//! correlated, `tr(dW H dW^T)` ranks tensors differently from the diagonal
//! importance, and allocating on it gives a lower Hessian-measured error at
//! the same budget.

use gguftool_ggml as _;
use gguftool_gguf::validate::StandardTypes;
use gguftool_gguf::write::{GgufWriter, TensorSpec};
use gguftool_gguf::GgufFile;
use gguftool_mixed::{sensitivity, Mixed};
use gguftool_quant::recipe::{
    Allocation, HessianFn, Objective, QuadraticForm, Recipe, RecipeRequest,
};
use gguftool_quant::registry;
use gguftool_quant::rng::SplitMix64;
use std::sync::Arc;

/// A dense symmetric matrix.
struct Dense {
    n: usize,
    h: Vec<f64>,
}

impl QuadraticForm for Dense {
    fn width(&self) -> usize {
        self.n
    }
    fn eval_rows(&self, d: &[f32]) -> f64 {
        d.chunks_exact(self.n)
            .map(|d| {
                (0..self.n)
                    .map(|i| {
                        let hd: f64 = (0..self.n)
                            .map(|j| self.h[i * self.n + j] * d[j] as f64)
                            .sum();
                        hd * d[i] as f64
                    })
                    .sum::<f64>()
            })
            .sum()
    }
    fn diagonal(&self) -> Vec<f32> {
        (0..self.n).map(|i| self.h[i * self.n + i] as f32).collect()
    }
}

const N: usize = 256;
const ROWS: usize = 16;
const TENSORS: usize = 8;

/// `H = X^T X` of inputs dominated by one direction `u` (every column
/// correlated with it) plus white noise, and weights that are, for even
/// tensors, orthogonal to `u` (their output is small, so their relative
/// noise is large) and, for odd tensors, mostly along `u`. The diagonal of
/// `H` is alike for both kinds and cannot tell them apart.
fn model() -> (GgufFile, Vec<Dense>) {
    let mut rng = SplitMix64::new(11);
    let mut specs = Vec::new();
    let mut data = Vec::new();
    let mut hs = Vec::new();
    for k in 0..TENSORS {
        let u: Vec<f64> = (0..N).map(|_| rng.next_normal()).collect();
        let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        let u: Vec<f64> = u.iter().map(|x| x / norm).collect();
        let (a, b) = (50.0 * N as f64, 1.0);
        let h: Vec<f64> = (0..N * N)
            .map(|ij| a * u[ij / N] * u[ij % N] + if ij / N == ij % N { b } else { 0.0 })
            .collect();
        hs.push(Dense { n: N, h });
        let mut w = Vec::with_capacity(ROWS * N);
        for _ in 0..ROWS {
            let mut r: Vec<f64> = (0..N).map(|_| rng.next_normal()).collect();
            let along: f64 = r.iter().zip(&u).map(|(x, y)| x * y).sum();
            let c = if k % 2 == 0 {
                0.0
            } else {
                3.0 * rng.next_normal()
            };
            r.iter_mut()
                .zip(&u)
                .for_each(|(x, y)| *x += (c - along) * y);
            w.extend(r.iter().map(|x| (0.02 * x) as f32));
        }
        specs.push(TensorSpec {
            name: format!("blk.{k}.ffn_up.weight"),
            ggml_type: 0,
            dims: vec![N as u64, ROWS as u64],
            n_bytes: (ROWS * N * 4) as u64,
        });
        data.push(w);
    }
    let md = gguftool_gguf::Metadata::new();
    let mut wr =
        GgufWriter::begin(std::io::Cursor::new(Vec::new()), &md, specs, &StandardTypes).unwrap();
    for w in &data {
        let b: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        wr.write_tensor_data(&b).unwrap();
    }
    let bytes = wr.finish().unwrap().into_inner();
    (
        GgufFile::from_bytes("synthetic", bytes, &registry::TYPES).unwrap(),
        hs,
    )
}

#[test]
fn hessian_allocation_beats_the_diagonal_one_on_correlated_inputs() {
    let (src, hs) = model();
    let cands = [
        registry::by_name("q4_0").unwrap(),
        registry::by_name("q8_0").unwrap(),
    ];
    let tensors: Vec<usize> = (0..TENSORS).collect();
    let diag: Vec<Arc<Vec<f32>>> = hs.iter().map(|h| Arc::new(h.diagonal())).collect();
    let importance = |i: usize| Some(diag[i].clone());
    let hessian = |i: usize| hs.get(i).map(|h| h as &dyn QuadraticForm);
    let hessian_fn: &HessianFn = &hessian;
    // Half the tensors can have q8_0.
    let bpw = (4.5 + 8.5) / 2.0;
    for objective in [Objective::Relative, Objective::Absolute] {
        let assign = |use_h: bool| -> Allocation {
            Mixed
                .assign(&RecipeRequest {
                    source: &src,
                    tensors: &tensors,
                    importance: &importance,
                    hessian: use_h.then_some(hessian_fn),
                    bits_per_weight: bpw,
                    candidates: &cands,
                    sample_rows: ROWS as u64,
                    objective,
                    progress: &|_, _| {},
                })
                .unwrap()
        };
        let (with_h, with_diag) = (assign(true), assign(false));
        // Both allocations scored by tr(dW H dW^T) under the objective.
        let imps: Vec<_> = tensors.iter().map(|&i| (i, importance(i))).collect();
        let sens = sensitivity(
            &src,
            &imps,
            Some(hessian_fn),
            &cands,
            ROWS as u64,
            objective,
            &|| {},
        )
        .unwrap();
        let score = |a: &Allocation| -> f64 {
            a.choices
                .iter()
                .zip(&sens)
                .map(|(c, s)| {
                    s.options
                        .iter()
                        .find(|o| o.format == c.format)
                        .unwrap()
                        .error
                })
                .sum()
        };
        let (eh, ed) = (score(&with_h), score(&with_diag));
        let formats = |a: &Allocation| a.choices.iter().map(|c| c.format).collect::<Vec<_>>();
        println!(
            "{objective:?}: hessian {eh:.4e} {:?}, diagonal {ed:.4e} {:?}",
            formats(&with_h),
            formats(&with_diag)
        );
        assert!(with_h.bits_per_weight <= bpw && with_diag.bits_per_weight <= bpw);
        assert!(
            (with_h.total_error - eh).abs() <= 1e-9 * eh,
            "the recipe's own error is tr(dW H dW^T)"
        );
        assert!(eh < 0.9 * ed, "{eh} vs {ed}");
        assert_ne!(formats(&with_h), formats(&with_diag));
        if objective == Objective::Relative {
            // The orthogonal (even) tensors get the bits on the Hessian only.
            assert!(eh < 0.5 * ed, "{eh} vs {ed}");
            for c in &with_h.choices {
                let even = c.index % 2 == 0;
                assert_eq!(c.format == "q8_0", even, "{}", c.name);
            }
        }
    }
}

#[test]
fn a_hessian_of_the_wrong_width_is_an_error_naming_the_tensor() {
    let (src, _) = model();
    let small = Dense {
        n: 4,
        h: vec![1.0; 16],
    };
    let hessian = |_: usize| Some(&small as &dyn QuadraticForm);
    let e = sensitivity(
        &src,
        &[(3, None)],
        Some(&hessian),
        &[registry::by_name("q4_0").unwrap()],
        4,
        Objective::Relative,
        &|| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("blk.3.ffn_up.weight") && e.contains("width 4"),
        "{e}"
    );
}
