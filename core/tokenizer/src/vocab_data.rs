//! The tokenizer's inputs as plain Rust data, independent of the container
//! they were read from (see `gguf_vocab` for the GGUF reader).

/// Special token ids as stored (`tokenizer.ggml.*_token_id`); `None` when the
/// key is absent. Range checks and per-model defaults are applied by
/// [`crate::Vocab::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialIds {
    /// `tokenizer.ggml.bos_token_id`
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`
    pub eot: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`
    pub eom: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`
    pub unk: Option<u32>,
    /// `tokenizer.ggml.seperator_token_id` (sic)
    pub sep: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`
    pub pad: Option<u32>,
    /// `tokenizer.ggml.mask_token_id`
    pub mask: Option<u32>,
    /// `tokenizer.ggml.fim_pre_token_id` (or the deprecated `prefix_token_id`)
    pub fim_pre: Option<u32>,
    /// `tokenizer.ggml.fim_suf_token_id` (or the deprecated `suffix_token_id`)
    pub fim_suf: Option<u32>,
    /// `tokenizer.ggml.fim_mid_token_id` (or the deprecated `middle_token_id`)
    pub fim_mid: Option<u32>,
    /// `tokenizer.ggml.fim_pad_token_id`
    pub fim_pad: Option<u32>,
    /// `tokenizer.ggml.fim_rep_token_id`
    pub fim_rep: Option<u32>,
    /// `tokenizer.ggml.fim_sep_token_id`
    pub fim_sep: Option<u32>,
}

/// Everything the tokenizer reads from a model's metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VocabData {
    /// `tokenizer.ggml.model`: `llama` (SentencePiece) or `gpt2` (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the BPE pre-tokenizer name.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (at least as long as `tokens` when present).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (at least as long as `tokens` when present).
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: `"left right"` strings in rank order.
    pub merges: Option<Vec<String>>,
    /// Special token ids.
    pub ids: SpecialIds,
    /// `tokenizer.ggml.add_bos_token`
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`
    pub add_space_prefix: Option<bool>,
    /// `general.name`, used only for llama.cpp's per-model token attributes.
    pub general_name: Option<String>,
}
