//! `convert --format mixed`: printing the recipe's allocation (the planning
//! lives in `gguftool_mixed` behind the registry's recipe interface, and in
//! `gguftool_convert::recipe`).

use crate::escape::escape_for_terminal as esc;
use gguftool_quant::recipe::Allocation;

/// Prints the allocation table.
pub fn print_allocation(alloc: &Allocation) {
    let nw = alloc
        .choices
        .iter()
        .map(|c| esc(&c.name).chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let fw = alloc
        .choices
        .iter()
        .map(|c| c.format.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!(
        "{:<nw$} {:>12} {:<fw$} {:>8} {:>14}",
        "tensor", "elements", "format", "bpw", "est. error"
    );
    for c in &alloc.choices {
        println!(
            "{:<nw$} {:>12} {:<fw$} {:>8.4} {:>14.6e}",
            esc(&c.name),
            c.elements,
            c.format,
            c.bits as f64 / c.elements.max(1) as f64,
            c.error
        );
    }
    let mut by_format: Vec<(&str, u64)> = Vec::new();
    for c in &alloc.choices {
        match by_format.iter_mut().find(|(f, _)| *f == c.format) {
            Some((_, n)) => *n += c.elements,
            None => by_format.push((c.format, c.elements)),
        }
    }
    let total: u64 = alloc.choices.iter().map(|c| c.elements).sum();
    let shares: Vec<String> = by_format
        .iter()
        .map(|(f, n)| format!("{f} {:.1}%", 100.0 * *n as f64 / total.max(1) as f64))
        .collect();
    println!(
        "\nallocated {} tensors at {:.4} bpw (elements: {}); estimated total error {:.6e}\n",
        alloc.choices.len(),
        alloc.bits_per_weight,
        shares.join(", "),
        alloc.total_error
    );
}
