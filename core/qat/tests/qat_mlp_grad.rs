//! The reference MLP's backward pass matches finite differences.

#[path = "support/mlp.rs"]
mod mlp;

use gguftool_qat::config::LossWeights;
use gguftool_qat::train::Trainable;
use mlp::{CharData, Mlp, Student};

#[test]
fn mlp_gradients_match_finite_differences() {
    let data = CharData::markov(40, 8, 8, 3);
    let mut s = Student {
        model: Mlp::new(8, 8, 64, 5),
        teacher: None,
        data: &data,
        loss: LossWeights {
            distill: 0.0,
            task: 1.0,
        },
        temperature: 1.0,
    };
    let batch: Vec<usize> = (0..10).collect();
    s.forward_backward(&batch);
    let grads: Vec<Vec<f32>> = s.parameters().iter().map(|p| p.grads.to_vec()).collect();
    let n_groups = grads.len();
    let mut checked = 0;
    for g in 0..n_groups {
        for idx in [0usize, 7, 33] {
            let h = 1e-3f32;
            let orig = {
                let mut ps = s.parameters();
                if idx >= ps[g].values.len() {
                    continue;
                }
                let o = ps[g].values[idx];
                ps[g].values[idx] = o + h;
                o
            };
            let lp = s.forward_backward(&batch);
            s.parameters()[g].values[idx] = orig - h;
            let lm = s.forward_backward(&batch);
            s.parameters()[g].values[idx] = orig;
            let fd = (lp - lm) / (2.0 * h);
            let an = grads[g][idx];
            assert!(
                (fd - an).abs() < 2e-3 + 0.05 * an.abs(),
                "group {g} idx {idx}: fd {fd} vs {an}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 12);
}
