//! The [`BlockGrid`] contract for every registered format that has one:
//! packed codes decode to exactly the values `round` returned, and the
//! two-phase encoding is as good as the format's own encoder.

use gguftool_formats as _;
use gguftool_quant::hadamard::SplitMix64;
use gguftool_quant::registry;

#[test]
fn grid_values_decode_bit_exactly_and_match_the_encoder() {
    let mut rng = SplitMix64::new(3);
    let mut checked = 0;
    for f in registry::all() {
        let Some(grid) = f.block_grid() else {
            continue;
        };
        let (bs, ts) = (f.block_size(), f.type_size());
        let quantizer = f.quantizer().expect("a grid format has an encoder");
        let mut params = vec![0f32; grid.params_per_block()];
        for trial in 0..200 {
            let scale = [1e-3f32, 0.05, 1.0, 30.0][trial % 4];
            let mut x: Vec<f32> = (0..bs).map(|_| scale * rng.next_normal() as f32).collect();
            if trial % 17 == 0 {
                x.iter_mut().for_each(|v| *v = 0.0);
            }
            if trial % 13 == 1 {
                x[trial % bs] *= 20.0;
            }
            let imp: Vec<f32> = (0..bs)
                .map(|j| 0.2 + ((j * 7 + trial) % 5) as f32)
                .collect();
            grid.fit(&x, &imp, &mut params);
            let mut codes = vec![0u8; bs];
            let mut values = vec![0f32; bs];
            for j in 0..bs {
                (codes[j], values[j]) = grid.round(&params, j, x[j]);
            }
            let mut block = vec![0u8; ts];
            grid.pack(&params, &codes, &mut block);
            let mut decoded = vec![0f32; bs];
            f.dequantize(&block, &mut decoded).unwrap();
            for j in 0..bs {
                assert_eq!(
                    decoded[j].to_bits(),
                    values[j].to_bits(),
                    "{} trial {trial} element {j}: {} vs {}",
                    f.name(),
                    decoded[j],
                    values[j]
                );
            }
            // The encoder's own block, for comparison.
            let mut enc = vec![0u8; ts];
            quantizer.quantize_blocks(&x, Some(&imp), &mut enc);
            let mut q = vec![0f32; bs];
            f.dequantize(&enc, &mut q).unwrap();
            let err = |v: &[f32]| -> f64 {
                x.iter()
                    .zip(v)
                    .zip(&imp)
                    .map(|((a, b), w)| (*w as f64) * ((a - b) as f64).powi(2))
                    .sum()
            };
            let (e_grid, e_enc) = (err(&decoded), err(&q));
            assert!(
                e_grid <= e_enc * 1.0001 + 1e-30,
                "{} trial {trial}: grid {e_grid} vs encoder {e_enc}",
                f.name()
            );
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} formats have a block grid");
}
