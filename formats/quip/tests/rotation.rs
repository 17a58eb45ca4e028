//! The rotation is orthonormal: inverse exact to float tolerance, norms kept,
//! and the rotated importance equals the brute-force diagonal of U D U^T.

use gguftool_quip::rotation::{fwht, Rotation, SplitMix64};
use proptest::prelude::*;

fn vector(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| r.next_normal() as f32).collect()
}

/// The dense matrix U (column j = U e_j).
fn dense(rot: &Rotation) -> Vec<Vec<f32>> {
    let n = rot.len();
    (0..n)
        .map(|j| {
            let mut e = vec![0f32; n];
            e[j] = 1.0;
            rot.forward(&mut e);
            e
        })
        .collect()
}

#[test]
fn fwht_matches_the_sylvester_matrix() {
    let x = vector(8, 1);
    let mut y = x.clone();
    fwht(&mut y);
    for (i, yi) in y.iter().enumerate() {
        let want: f32 = (0..8)
            .map(|j| {
                if (i & j).count_ones() % 2 == 0 {
                    x[j]
                } else {
                    -x[j]
                }
            })
            .sum();
        assert!((yi - want).abs() < 1e-5, "{i}: {yi} vs {want}");
    }
}

#[test]
fn columns_are_orthonormal_for_mixed_lengths() {
    // 640 = 128 * 5 (Gemma's hidden size), 576 = 64 * 9 (SmolLM2), 96 = 32 * 3.
    for n in [64usize, 96, 576, 640] {
        let rot = Rotation::new(n, 7).unwrap();
        assert_eq!(rot.mixes_blocks(), !n.is_power_of_two());
        let u = dense(&rot);
        for a in (0..n).step_by(7) {
            for b in (0..n).step_by(5) {
                let d: f32 = u[a].iter().zip(&u[b]).map(|(x, y)| x * y).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((d - want).abs() < 1e-4, "n={n} <u{a},u{b}> = {d}");
            }
        }
    }
}

#[test]
fn every_output_mixes_the_whole_row_when_blocks_are_mixed() {
    let rot = Rotation::new(640, 3).unwrap();
    let mut e = vec![0f32; 640];
    e[0] = 1.0;
    rot.forward(&mut e);
    let nonzero = e.iter().filter(|v| v.abs() > 1e-7).count();
    assert_eq!(nonzero, 640);
}

#[test]
fn rotated_importance_is_the_diagonal_of_u_d_ut() {
    for n in [128usize, 384] {
        let rot = Rotation::new(n, 11).unwrap();
        let imp: Vec<f32> = vector(n, 5).iter().map(|v| v.abs() + 0.1).collect();
        let got = rot.rotated_importance(&imp);
        let u = dense(&rot); // u[j] = column j, so U[i][j] = u[j][i].
        for i in 0..n {
            let want: f32 = (0..n).map(|j| u[j][i].powi(2) * imp[j]).sum();
            assert!(
                (got[i] - want).abs() < 1e-4 * want.max(1.0),
                "n={n} i={i}: {} vs {want}",
                got[i]
            );
        }
    }
}

#[test]
fn seeds_give_different_rotations_and_the_same_seed_the_same() {
    let x = vector(256, 9);
    let (mut a, mut b, mut c) = (x.clone(), x.clone(), x.clone());
    Rotation::new(256, 1).unwrap().forward(&mut a);
    Rotation::new(256, 1).unwrap().forward(&mut b);
    Rotation::new(256, 2).unwrap().forward(&mut c);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

proptest! {
    #[test]
    fn inverse_undoes_forward(blocks in 1usize..40, pow in 0u32..4, seed in any::<u64>()) {
        let n = blocks * (16 << pow);
        let rot = Rotation::new(n, seed).unwrap();
        let x = vector(n, seed ^ 1);
        let mut y = x.clone();
        rot.forward(&mut y);
        let nx: f32 = x.iter().map(|v| v * v).sum();
        let ny: f32 = y.iter().map(|v| v * v).sum();
        prop_assert!((nx - ny).abs() <= 1e-4 * nx, "norm {nx} -> {ny}");
        rot.inverse(&mut y);
        for (a, b) in x.iter().zip(&y) {
            prop_assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
        }
    }
}
