//! PiQ block layout (see docs/FORMATS.md).
//!
//! A block holds 32 weights: `alpha` (f16), then the low two bits of every
//! code (8 bytes: byte `i`, bits `2k..2k+1` hold element `8k + i`), then for
//! PiQ3 the third bit of every code (4 bytes, little-endian u32, bit `j` is
//! element `j`). Element `j` decodes to `alpha * pi / k * (code_j - offset)`.

/// Weights per block.
pub const BLOCK: usize = 32;
/// Bytes of the f16 scale.
pub const SCALE_BYTES: usize = 2;
/// Bytes of the low two bits of the codes.
pub const QL_BYTES: usize = 8;
/// Bytes of the third bit of the codes (PiQ3 only).
pub const QH_BYTES: usize = 4;

/// Geometry and grid of one PiQ variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PiqSpec {
    /// Bits per code (2 or 3).
    pub bits: u32,
    /// The pi divisor: step = alpha * pi / k.
    pub k: f32,
    /// Code-to-level offset: level = code - offset.
    pub offset: f32,
}

impl PiqSpec {
    /// Number of codes.
    pub const fn n_codes(&self) -> u32 {
        1 << self.bits
    }

    /// Bytes per block.
    pub const fn type_size(&self) -> usize {
        SCALE_BYTES + QL_BYTES + if self.bits == 3 { QH_BYTES } else { 0 }
    }

    /// pi / k as f32 (the decode multiplies the f16 alpha by this).
    pub fn pi_over_k(&self) -> f32 {
        std::f32::consts::PI / self.k
    }

    /// Level of `code`.
    #[inline]
    pub fn level(&self, code: u8) -> f32 {
        code as f32 - self.offset
    }
}

/// Packs 32 codes into the block's code bytes (after the scale).
pub fn pack_codes(spec: &PiqSpec, codes: &[u8; BLOCK], out: &mut [u8]) {
    for i in 0..QL_BYTES {
        out[i] = (codes[i] & 3)
            | ((codes[i + 8] & 3) << 2)
            | ((codes[i + 16] & 3) << 4)
            | ((codes[i + 24] & 3) << 6);
    }
    if spec.bits == 3 {
        let mut qh = 0u32;
        for (j, &c) in codes.iter().enumerate() {
            qh |= (((c >> 2) & 1) as u32) << j;
        }
        out[QL_BYTES..QL_BYTES + QH_BYTES].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Unpacks the 32 codes of a block's code bytes.
#[inline]
pub fn unpack_codes(spec: &PiqSpec, bytes: &[u8]) -> [u8; BLOCK] {
    let mut codes = [0u8; BLOCK];
    let qh = if spec.bits == 3 {
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]])
    } else {
        0
    };
    for (j, c) in codes.iter_mut().enumerate() {
        *c = ((bytes[j % 8] >> (2 * (j / 8))) & 3) | ((((qh >> j) & 1) as u8) << 2);
    }
    codes
}
