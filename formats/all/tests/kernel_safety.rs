//! Every registered kernel, at every SIMD level, called through the safe
//! API with wrong lengths and adversarial activations: an error or a
//! number, never a crash or an out-of-bounds read.

use gguftool_formats as _;
use gguftool_quant::activation::{
    Activations, Q8Activations, Q8KActivations, VecDotType, Q8K_BLOCK, Q8_BLOCK,
};
use gguftool_quant::format::{Format, SimdLevel};
use gguftool_quant::kernels::KernelTable;
use gguftool_quant::registry;
use gguftool_quant::rows::DEFAULT_SEED;

/// Row length that is a whole number of blocks for every format and of
/// both activation block sizes.
fn row_len(f: &dyn Format) -> usize {
    let lcm = |a: usize, b: usize| {
        let (mut x, mut y) = (a, b);
        while y != 0 {
            (x, y) = (y, x % y);
        }
        a / x * b
    };
    lcm(lcm(f.block_size(), Q8K_BLOCK), Q8_BLOCK)
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(167).wrapping_add(seed))
        .collect()
}

#[test]
fn the_reported_sigsegv_is_an_error() {
    // Before: `piq2.dot_q8_with(Avx2, &blocks, &Q8Activations { qs: vec![1; 65536],
    // scales: vec![], sums: vec![] })` read scales out of bounds.
    assert!(Q8Activations::from_parts(vec![1; 65536], vec![]).is_err());
    let piq2 = registry::by_name("piq2").expect("piq2 registered");
    let blocks = vec![0u8; 2048 / piq2.block_size() * piq2.type_size()];
    let short = Q8Activations::from_parts(vec![1; 64], vec![1.0, 1.0]).unwrap();
    assert!(piq2.dot_q8_with(SimdLevel::Avx2, &blocks, &short).is_err());
}

#[test]
fn wrong_lengths_are_errors_at_every_level() {
    for f in registry::all() {
        let n = row_len(*f);
        let rb = n / f.block_size() * f.type_size();
        let src = bytes(rb, 7);
        for level in SimdLevel::ALL {
            let name = format!("{} at {level}", f.name());
            // Encoded buffer not whole blocks (when blocks are longer than a byte).
            if f.type_size() > 1 {
                let mut dst = vec![0f32; n];
                assert!(
                    f.dequantize_with(level, &src[..rb - 1], &mut dst).is_err(),
                    "{name}"
                );
            }
            // Output and activations of the wrong length.
            for bad in [0, n - 1, n + 1, 2 * n] {
                let mut dst = vec![0f32; bad];
                assert!(
                    f.dequantize_with(level, &src, &mut dst).is_err(),
                    "{name} {bad}"
                );
                assert!(
                    f.dot_with(level, &src, &vec![1.0; bad]).is_err(),
                    "{name} {bad}"
                );
            }
            for blocks in [0, n / Q8_BLOCK - 1, n / Q8_BLOCK + 1] {
                let q = Q8Activations::from_parts(vec![1; blocks * Q8_BLOCK], vec![1.0; blocks])
                    .unwrap();
                assert!(
                    f.dot_q8_with(level, &src, &q).is_err(),
                    "{name} q8 {blocks}"
                );
            }
            for blocks in [0, n / Q8K_BLOCK + 1] {
                let q = Q8KActivations::from_parts(vec![1; blocks * Q8K_BLOCK], vec![1.0; blocks])
                    .unwrap();
                assert!(
                    f.dot_q8k_with(level, &src, &q).is_err(),
                    "{name} q8k {blocks}"
                );
            }
        }
    }
}

#[test]
fn adversarial_values_never_crash() {
    for f in registry::all() {
        let n = row_len(*f);
        let rb = n / f.block_size() * f.type_size();
        for seed in [0u8, 0xff, 0x80, 0x7c] {
            let src = if seed == 0 {
                vec![0xff; rb]
            } else {
                bytes(rb, seed)
            };
            // Extreme codes and non-finite scales.
            let q8 = Q8Activations::from_parts(
                (0..n)
                    .map(|i| if i % 3 == 0 { -128 } else { 127 })
                    .collect(),
                (0..n / Q8_BLOCK)
                    .map(|i| [f32::NAN, f32::INFINITY, f32::MAX, 0.0, -1e-30][i % 5])
                    .collect(),
            )
            .unwrap();
            let q8k =
                Q8KActivations::from_parts(vec![-128; n], vec![f32::MAX; n / Q8K_BLOCK]).unwrap();
            for level in SimdLevel::ALL {
                let mut dst = vec![0f32; n];
                f.dequantize_with(level, &src, &mut dst).unwrap();
                let _ = f.dot_q8_with(level, &src, &q8).unwrap();
                let _ = f.dot_q8k_with(level, &src, &q8k).unwrap();
                let _ = f.dot_with(level, &src, &vec![f32::NAN; n]).unwrap();
            }
        }
    }
}

#[test]
fn kernel_tables_check_every_input() {
    for f in registry::all() {
        let n = row_len(*f);
        let Ok(table) = KernelTable::new(*f, n, Some(DEFAULT_SEED), SimdLevel::Avx512) else {
            continue; // a row transform that cannot take this length
        };
        let rb = table.row_bytes();
        let rows = bytes(3 * rb, 3);
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let act = table.quantize_activations(&x).unwrap();
        assert_eq!(act.vec_dot_type(), table.vec_dot_type());
        assert!(table.quantize_activations(&x[1..]).is_err());
        assert!(table.dot(&rows[..rb - 1], &act).is_err(), "{}", f.name());
        assert!(table.dot(&rows[..rb], &act).is_ok());
        // Activations of another block type or length.
        for other in [VecDotType::F32, VecDotType::Q8_0, VecDotType::Q8K] {
            if other == table.vec_dot_type() {
                continue;
            }
            let wrong = other.quantize(&x).unwrap();
            assert!(table.dot(&rows[..rb], &wrong).is_err(), "{}", f.name());
        }
        let short = Activations::F32(vec![0.0; n - 1]);
        assert!(table.dot(&rows[..rb], &short).is_err());
        let mut out = vec![0f32; 6];
        table
            .matmul(&rows, &[act.clone(), act.clone()], &mut out)
            .unwrap();
        for r in 0..3 {
            let one = table.dot(&rows[r * rb..(r + 1) * rb], &act).unwrap();
            assert!(out[r] == one || (out[r].is_nan() && one.is_nan()));
            assert!(out[3 + r] == one || (out[3 + r].is_nan() && one.is_nan()));
        }
        assert!(table
            .matmul(&rows, std::slice::from_ref(&act), &mut out)
            .is_err());
        assert!(table.matmul(&rows[1..], &[act], &mut out[..3]).is_err());
    }
}
