//! The allocator: a multiple-choice knapsack over tensors (one format each,
//! total bits within budget, least total error), solved by greedy upgrades
//! along each tensor's lower convex hull of (bits, error).

use crate::sensitivity::TensorSensitivity;
use std::collections::BinaryHeap;

pub use gguftool_quant::recipe::{Allocation, Choice};

/// Indices of the lower convex hull of `(bits, error)` points sorted by
/// bits: each step up buys the most error reduction per bit.
fn hull(points: &[(u64, f64)]) -> Vec<usize> {
    let mut h: Vec<usize> = Vec::new();
    for (i, &(b, e)) in points.iter().enumerate() {
        // A point costing more without lowering the error is never useful.
        if h.last().is_some_and(|&l| e >= points[l].1) {
            continue;
        }
        if h.last().is_some_and(|&l| points[l].0 == b) {
            h.pop();
        }
        while h.len() >= 2 {
            let (a, m) = (points[h[h.len() - 2]], points[h[h.len() - 1]]);
            // Remove m when it lies on or above the segment a -> (b, e).
            let cross =
                (m.0 as f64 - a.0 as f64) * (e - a.1) - (m.1 - a.1) * (b as f64 - a.0 as f64);
            if cross <= 0.0 {
                h.pop();
            } else {
                break;
            }
        }
        h.push(i);
    }
    h
}

/// An upgrade from one hull point to the next, ordered by error saved per bit.
#[derive(PartialEq)]
struct Upgrade {
    gain_per_bit: f64,
    tensor: usize,
}

impl Eq for Upgrade {}
impl PartialOrd for Upgrade {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Upgrade {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.gain_per_bit
            .total_cmp(&other.gain_per_bit)
            .then(other.tensor.cmp(&self.tensor))
    }
}

/// Chooses one option per tensor so that total bits <= `budget_bpw` times
/// the total elements and the summed error is least. Errors when a tensor
/// has no option or even the smallest options exceed the budget.
pub fn allocate(tensors: &[TensorSensitivity], budget_bpw: f64) -> Result<Allocation, String> {
    let elements: u64 = tensors.iter().map(|t| t.elements).sum();
    let budget = (budget_bpw * elements as f64).floor() as u64;
    let mut hulls = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.options.is_empty() {
            return Err(format!(
                "tensor {:?}: no candidate format fits its rows",
                t.name
            ));
        }
        let pts: Vec<(u64, f64)> = t.options.iter().map(|o| (o.bits, o.error)).collect();
        hulls.push(hull(&pts));
    }
    let mut pos = vec![0usize; tensors.len()];
    let mut used: u64 = tensors
        .iter()
        .zip(&hulls)
        .map(|(t, h)| t.options[h[0]].bits)
        .sum();
    if used > budget {
        return Err(format!(
            "budget {budget_bpw} bpw is below the smallest candidates ({:.4} bpw)",
            used as f64 / elements.max(1) as f64
        ));
    }
    let step = |k: usize, p: usize| -> Option<(u64, f64)> {
        let h = &hulls[k];
        let (a, b) = (
            &tensors[k].options[h[p]],
            &tensors[k].options[*h.get(p + 1)?],
        );
        Some((b.bits - a.bits, a.error - b.error))
    };
    let mut heap = BinaryHeap::new();
    for k in 0..tensors.len() {
        if let Some((db, de)) = step(k, 0) {
            heap.push(Upgrade {
                gain_per_bit: de / db as f64,
                tensor: k,
            });
        }
    }
    while let Some(Upgrade { tensor: k, .. }) = heap.pop() {
        let Some((db, _)) = step(k, pos[k]) else {
            continue;
        };
        if used + db > budget {
            // Too big now; smaller upgrades of other tensors may still fit.
            continue;
        }
        used += db;
        pos[k] += 1;
        if let Some((db, de)) = step(k, pos[k]) {
            heap.push(Upgrade {
                gain_per_bit: de / db as f64,
                tensor: k,
            });
        }
    }
    let mut chosen: Vec<usize> = (0..tensors.len()).map(|k| hulls[k][pos[k]]).collect();
    // Spend what is left on the single best off-hull move, if any fits.
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for (k, t) in tensors.iter().enumerate() {
            let cur = &t.options[chosen[k]];
            for (o, opt) in t.options.iter().enumerate() {
                if opt.error < cur.error
                    && opt.bits > cur.bits
                    && used + (opt.bits - cur.bits) <= budget
                {
                    let gain = cur.error - opt.error;
                    if best.is_none_or(|(g, _, _)| gain > g) {
                        best = Some((gain, k, o));
                    }
                }
            }
        }
        let Some((_, k, o)) = best else { break };
        used = used + tensors[k].options[o].bits - tensors[k].options[chosen[k]].bits;
        chosen[k] = o;
    }
    let choices: Vec<Choice> = tensors
        .iter()
        .zip(&chosen)
        .map(|(t, &o)| Choice {
            index: t.index,
            name: t.name.clone(),
            format: t.options[o].format,
            bits: t.options[o].bits,
            error: t.options[o].error,
            elements: t.elements,
        })
        .collect();
    Ok(Allocation {
        bits_per_weight: used as f64 / elements.max(1) as f64,
        total_error: choices.iter().map(|c| c.error).sum(),
        choices,
    })
}
