//! Q2+QuIP's two-phase encoder ([`BlockGrid`]) for blocks of rotated
//! values: the f16 super-scale and the sub-scales first
//! ([`crate::encode::block_scales`]), then each 2-bit code on its own.
//! Packing the codes `round` picks gives exactly the encoder's blocks.

use crate::encode::{block_scales, BlockScales};
use crate::layout::{pack, BLOCK, SUB, SUBS};
use crate::Q2Quip;
use gguftool_quant::format::BlockGrid;

/// Parameters: `d` (its f16 bits as an exact f32 integer) and the sub-scales.
const PARAMS: usize = 1 + SUBS;

fn scales_of(params: &[f32]) -> BlockScales {
    let d_bits = params[0] as u16;
    let df = half::f16::from_bits(d_bits).to_f32();
    let scales: [u8; SUBS] = std::array::from_fn(|k| params[1 + k] as u8);
    BlockScales {
        d_bits,
        scales,
        steps: std::array::from_fn(|k| df * scales[k] as f32),
    }
}

impl<const SB: u32> BlockGrid for Q2Quip<SB> {
    fn params_per_block(&self) -> usize {
        PARAMS
    }

    fn fit(&self, x: &[f32], imp: &[f32], params: &mut [f32]) {
        let bs = block_scales::<SB>(x, imp);
        params[0] = bs.d_bits as f32;
        for (p, &s) in params[1..PARAMS].iter_mut().zip(&bs.scales) {
            *p = s as f32;
        }
    }

    fn round(&self, params: &[f32], j: usize, v: f32) -> (u8, f32) {
        let bs = scales_of(params);
        let c = bs.code(j / SUB, v);
        (c, bs.value(j / SUB, c))
    }

    fn pack(&self, params: &[f32], codes: &[u8], dst: &mut [u8]) {
        let bs = scales_of(params);
        let codes: &[u8; BLOCK] = codes.try_into().expect("a block of codes");
        pack::<SB>(bs.d_bits, &bs.scales, codes, dst);
    }
}
