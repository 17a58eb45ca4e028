//! The allocator keeps the budget and is within one upgrade of the optimum
//! (checked against brute force); sensitivity ranks formats sensibly.

use gguftool_mixed::{allocate, CandidateError, TensorSensitivity};
use proptest::prelude::*;

fn tensor(i: usize, elements: u64, opts: &[(u64, f64)]) -> TensorSensitivity {
    let names = ["a", "b", "c", "d"];
    let mut options: Vec<CandidateError> = opts
        .iter()
        .enumerate()
        .map(|(k, &(bpw, error))| CandidateError {
            format: names[k],
            bits: bpw * elements,
            error,
        })
        .collect();
    options.sort_by_key(|o| o.bits);
    TensorSensitivity {
        index: i,
        name: format!("t{i}"),
        elements,
        options,
    }
}

/// Least total error over every assignment using at most `budget` bits.
fn brute_force(ts: &[TensorSensitivity], budget: u64) -> Option<f64> {
    fn go(ts: &[TensorSensitivity], budget: u64) -> Option<f64> {
        let Some((t, rest)) = ts.split_first() else {
            return Some(0.0);
        };
        t.options
            .iter()
            .filter(|o| o.bits <= budget)
            .filter_map(|o| go(rest, budget - o.bits).map(|e| e + o.error))
            .min_by(f64::total_cmp)
    }
    go(ts, budget)
}

proptest! {
    #[test]
    fn within_budget_and_within_one_upgrade_of_optimal(
        specs in proptest::collection::vec(
            (1u64..5, proptest::collection::vec(0.0f64..10.0, 4)), 1..6),
        budget_bpw in 2.0f64..6.0,
    ) {
        // Four formats at 2, 3, 4, 8 bpw; errors made decreasing in bits.
        let ts: Vec<TensorSensitivity> = specs.iter().enumerate().map(|(i, (scale, errs))| {
            let mut e = errs.clone();
            e.sort_by(|a, b| b.total_cmp(a));
            let opts: Vec<(u64, f64)> = [2u64, 3, 4, 8].iter().zip(&e).map(|(&b, &x)| (b, x)).collect();
            tensor(i, 64 * scale, &opts)
        }).collect();
        let elements: u64 = ts.iter().map(|t| t.elements).sum();
        let budget = (budget_bpw * elements as f64).floor() as u64;
        match allocate(&ts, budget_bpw) {
            Err(_) => prop_assert!(budget < 2 * elements),
            Ok(a) => {
                let used: u64 = a.choices.iter().map(|c| c.bits).sum();
                prop_assert!(used <= budget);
                let opt = brute_force(&ts, budget).unwrap();
                prop_assert!(a.total_error >= opt - 1e-9);
                // Lagrangian bound: no worse than the optimum with one largest step less.
                let step = ts.iter().map(|t| t.options.last().unwrap().bits - t.options[0].bits).max().unwrap();
                if let Some(opt_less) = brute_force(&ts, budget.saturating_sub(step)) {
                    prop_assert!(a.total_error <= opt_less + 1e-9, "{} vs {}", a.total_error, opt_less);
                }
            }
        }
    }
}

#[test]
fn sensitive_tensors_get_the_bits() {
    // Same size; tensor 1 loses far more at low bits.
    let ts = vec![
        tensor(0, 1000, &[(2, 1.0), (4, 0.5), (8, 0.4)]),
        tensor(1, 1000, &[(2, 100.0), (4, 10.0), (8, 1.0)]),
    ];
    let a = allocate(&ts, 5.0).unwrap();
    assert_eq!(a.choices[0].format, "a");
    assert_eq!(a.choices[1].format, "c");
    assert_eq!(a.bits_per_weight, 5.0);
    assert_eq!(a.total_error, 2.0);
}

#[test]
fn impossible_budget_is_an_error() {
    let ts = vec![tensor(0, 100, &[(2, 1.0), (8, 0.1)])];
    let e = allocate(&ts, 1.5).unwrap_err();
    assert!(e.contains("below the smallest"), "{e}");
}
