//! The ggml tensor type table: every id llama.cpp has assigned, with block
//! geometry, including ids that were removed and must be rejected.
//!
//! Sizes follow ggml's C structs (`ggml-common.h`). One deliberate
//! difference from gguf-py 0.19: its table lists Q8_1 as 40 bytes per block,
//! whereas ggml's `block_q8_1` is two halves plus 32 bytes = 36.

/// Whether a ggml type id can appear in a valid file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeStatus {
    /// A current type.
    Active,
    /// A type id that llama.cpp has removed (files using it no longer load).
    Removed,
}

/// Geometry of one ggml tensor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlTypeInfo {
    /// Numeric id as stored in GGUF tensor infos.
    pub id: u32,
    /// Upstream name, e.g. `Q4_K`.
    pub name: &'static str,
    /// Elements per block.
    pub block_size: u32,
    /// Bytes per block.
    pub type_size: u32,
    /// Active or removed.
    pub status: TypeStatus,
}

impl GgmlTypeInfo {
    /// Bits per weight, counting every stored byte.
    pub fn bits_per_weight(&self) -> f64 {
        self.type_size as f64 * 8.0 / self.block_size as f64
    }
}

const fn active(id: u32, name: &'static str, block_size: u32, type_size: u32) -> GgmlTypeInfo {
    GgmlTypeInfo {
        id,
        name,
        block_size,
        type_size,
        status: TypeStatus::Active,
    }
}

const fn removed(id: u32, name: &'static str) -> GgmlTypeInfo {
    GgmlTypeInfo {
        id,
        name,
        block_size: 0,
        type_size: 0,
        status: TypeStatus::Removed,
    }
}

/// Every ggml type id up to the highest one assigned upstream, indexed by id.
pub const GGML_TYPES: &[GgmlTypeInfo] = &[
    active(0, "F32", 1, 4),
    active(1, "F16", 1, 2),
    active(2, "Q4_0", 32, 18),
    active(3, "Q4_1", 32, 20),
    removed(4, "Q4_2"),
    removed(5, "Q4_3"),
    active(6, "Q5_0", 32, 22),
    active(7, "Q5_1", 32, 24),
    active(8, "Q8_0", 32, 34),
    active(9, "Q8_1", 32, 36),
    active(10, "Q2_K", 256, 84),
    active(11, "Q3_K", 256, 110),
    active(12, "Q4_K", 256, 144),
    active(13, "Q5_K", 256, 176),
    active(14, "Q6_K", 256, 210),
    active(15, "Q8_K", 256, 292),
    active(16, "IQ2_XXS", 256, 66),
    active(17, "IQ2_XS", 256, 74),
    active(18, "IQ3_XXS", 256, 98),
    active(19, "IQ1_S", 256, 50),
    active(20, "IQ4_NL", 32, 18),
    active(21, "IQ3_S", 256, 110),
    active(22, "IQ2_S", 256, 82),
    active(23, "IQ4_XS", 256, 136),
    active(24, "I8", 1, 1),
    active(25, "I16", 1, 2),
    active(26, "I32", 1, 4),
    active(27, "I64", 1, 8),
    active(28, "F64", 1, 8),
    active(29, "IQ1_M", 256, 56),
    active(30, "BF16", 1, 2),
    removed(31, "Q4_0_4_4"),
    removed(32, "Q4_0_4_8"),
    removed(33, "Q4_0_8_8"),
    active(34, "TQ1_0", 256, 54),
    active(35, "TQ2_0", 256, 66),
    removed(36, "IQ4_NL_4_4"),
    removed(37, "IQ4_NL_4_8"),
    removed(38, "IQ4_NL_8_8"),
    active(39, "MXFP4", 32, 17),
    active(40, "NVFP4", 64, 36),
    active(41, "Q1_0", 128, 18),
    active(42, "Q2_0", 64, 18),
];

/// First id of the private range where gguftool's own formats live.
///
/// llama.cpp assigns ids densely from 0 (42 is the highest in the llama.cpp
/// vendored by llama-cpp-python 0.3.36, 41 in gguf-py 0.19; more will come); the private range starts far above so upstream growth
/// never collides with it.
pub const PRIVATE_TYPE_ID_BASE: u32 = 0x4000;
/// Last id (inclusive) of the private range.
pub const PRIVATE_TYPE_ID_END: u32 = 0x4fff;

/// Looks up a standard ggml type by id (usable in constants, so format
/// plugins can take their geometry from this table at compile time).
pub const fn ggml_type(id: u32) -> Option<&'static GgmlTypeInfo> {
    if (id as usize) < GGML_TYPES.len() {
        Some(&GGML_TYPES[id as usize])
    } else {
        None
    }
}

/// Looks up an active standard ggml type by (case-insensitive) name.
pub fn ggml_type_by_name(name: &str) -> Option<&'static GgmlTypeInfo> {
    GGML_TYPES
        .iter()
        .find(|t| t.status == TypeStatus::Active && t.name.eq_ignore_ascii_case(name))
}

/// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`) for a file whose
/// matrices are mostly of standard type `id`; None for types without one.
pub fn llama_ftype(id: u32) -> Option<u32> {
    Some(match id {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 3,
        8 => 7,
        6 => 8,
        7 => 9,
        10 => 10,
        11 => 12,
        12 => 15,
        13 => 17,
        14 => 18,
        20 => 25,
        23 => 30,
        30 => 32,
        34 => 36,
        35 => 37,
        39 => 38,
        40 => 39,
        41 => 40,
        42 => 41,
        _ => return None,
    })
}

/// Ids of the standard float types.
pub mod ids {
    /// F32.
    pub const F32: u32 = 0;
    /// F16.
    pub const F16: u32 = 1;
    /// BF16.
    pub const BF16: u32 = 30;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_indexed_by_id() {
        for (i, t) in GGML_TYPES.iter().enumerate() {
            assert_eq!(t.id as usize, i, "{}", t.name);
        }
    }

    #[test]
    fn sizes_match_known_layouts() {
        assert_eq!(ggml_type(35).unwrap().bits_per_weight(), 2.0625);
        assert_eq!(ggml_type(34).unwrap().bits_per_weight(), 1.6875);
        assert_eq!(ggml_type(12).unwrap().bits_per_weight(), 4.5);
        assert_eq!(ggml_type(4).unwrap().status, TypeStatus::Removed);
        assert_eq!(ggml_type(42).unwrap().name, "Q2_0");
        assert!(ggml_type(43).is_none());
        assert_eq!(ggml_type_by_name("q4_k").unwrap().id, 12);
        assert!(ggml_type_by_name("q4_2").is_none());
    }
}
