//! The vocabulary: token texts, scores and attributes, special ids, BPE
//! ranks, and the defaults and fix-ups llama.cpp applies when loading.

use crate::error::{Error, Result};
use crate::pre_tokenize::PreTokenizer;
use crate::vocab_data::VocabData;
use std::collections::{BTreeSet, HashMap};

/// A token id (an index into the vocabulary).
pub type TokenId = u32;

/// Token attribute bits (llama.cpp's `llama_token_attr`).
pub mod attr {
    /// No type given or an unknown type id.
    pub const UNDEFINED: u32 = 0;
    /// The unknown token (type 2).
    pub const UNKNOWN: u32 = 1 << 0;
    /// Unused (type 5).
    pub const UNUSED: u32 = 1 << 1;
    /// Normal text token (type 1).
    pub const NORMAL: u32 = 1 << 2;
    /// Control token (type 3), split out of text only with `parse_special`.
    pub const CONTROL: u32 = 1 << 3;
    /// User-defined token (type 4), always split out of text.
    pub const USER_DEFINED: u32 = 1 << 4;
    /// Byte-fallback token `<0xXX>` (type 6).
    pub const BYTE: u32 = 1 << 5;
    /// Whitespace before the token is removed when it is split out.
    pub const LSTRIP: u32 = 1 << 7;
    /// Whitespace after the token is removed when it is split out.
    pub const RSTRIP: u32 = 1 << 8;
}

/// Which tokenizer algorithm the vocabulary uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Model {
    /// SentencePiece (`tokenizer.ggml.model` = `llama`): score-ordered merges, byte fallback.
    Spm,
    /// GPT-2 byte-level BPE (`gpt2`) with its pre-tokenizer.
    Bpe(PreTokenizer),
}

/// Special token ids after defaults and range checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Specials {
    /// Beginning of sequence.
    pub bos: Option<TokenId>,
    /// End of sequence.
    pub eos: Option<TokenId>,
    /// End of turn (from the key, else detected by text).
    pub eot: Option<TokenId>,
    /// End of message.
    pub eom: Option<TokenId>,
    /// Unknown.
    pub unk: Option<TokenId>,
    /// Separator.
    pub sep: Option<TokenId>,
    /// Padding.
    pub pad: Option<TokenId>,
    /// Mask.
    pub mask: Option<TokenId>,
    /// Fill-in-the-middle prefix.
    pub fim_pre: Option<TokenId>,
    /// Fill-in-the-middle suffix.
    pub fim_suf: Option<TokenId>,
    /// Fill-in-the-middle middle.
    pub fim_mid: Option<TokenId>,
    /// Fill-in-the-middle pad.
    pub fim_pad: Option<TokenId>,
    /// Fill-in-the-middle repository.
    pub fim_rep: Option<TokenId>,
    /// Fill-in-the-middle file separator.
    pub fim_sep: Option<TokenId>,
}

/// A loaded vocabulary.
#[derive(Debug, Clone)]
pub struct Vocab {
    pub(crate) model: Model,
    pub(crate) texts: Vec<String>,
    pub(crate) scores: Vec<f32>,
    pub(crate) attrs: Vec<u32>,
    pub(crate) token_to_id: HashMap<String, TokenId>,
    /// Merge part text -> part number.
    pub(crate) merge_parts: HashMap<String, u32>,
    /// (left part, right part) -> rank.
    pub(crate) ranks: HashMap<(u32, u32), u32>,
    /// Tokens split out of raw text, longest text first.
    pub(crate) special_cache: Vec<TokenId>,
    pub(crate) specials: Specials,
    /// End-of-generation tokens (EOS, EOT, EOM, FIM pad/rep/sep and the
    /// known end texts), as llama.cpp's `special_eog_ids`.
    pub(crate) eog: BTreeSet<TokenId>,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
}

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "<end_of_utterance>",
];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
    "<PRE>",
    "\u{2581}<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
    "<SUF>",
    "\u{2581}<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
    "<MID>",
    "\u{2581}<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

impl Vocab {
    /// Builds a vocabulary from metadata, applying llama.cpp's defaults for
    /// absent keys and its per-model fix-ups of token attributes.
    pub fn new(data: &VocabData) -> Result<Self> {
        let n = data.tokens.len();
        if n == 0 || n > i32::MAX as usize {
            return Err(Error::BadVocabSize { count: n });
        }
        let model = match data.model.as_str() {
            "llama" => Model::Spm,
            "gpt2" => Model::Bpe(PreTokenizer::from_name(data.pre.as_deref())?),
            other => {
                return Err(Error::UnknownModel {
                    model: other.to_string(),
                })
            }
        };
        if let Some(s) = &data.scores {
            if s.len() < n {
                return Err(Error::LengthMismatch {
                    key: "tokenizer.ggml.scores",
                    tokens: n,
                    found: s.len(),
                });
            }
        }
        if let Some(t) = &data.token_types {
            if t.len() < n {
                return Err(Error::LengthMismatch {
                    key: "tokenizer.ggml.token_type",
                    tokens: n,
                    found: t.len(),
                });
            }
        }

        let mut texts = Vec::with_capacity(n);
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in data.tokens.iter().enumerate() {
            let text = if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t.clone()
            };
            token_to_id.insert(text.clone(), i as TokenId);
            texts.push(text);
        }
        let scores = match &data.scores {
            Some(s) => s[..n].to_vec(),
            None => vec![0.0; n],
        };
        let mut attrs: Vec<u32> = match &data.token_types {
            Some(t) => t[..n].iter().map(|&ty| type_to_attr(ty)).collect(),
            None => vec![attr::NORMAL; n],
        };

        let (mut merge_parts, mut ranks) = (HashMap::new(), HashMap::new());
        let (default_bos, default_eos, default_unk);
        let mut add_bos;
        let mut add_space_prefix;
        match &model {
            Model::Spm => {
                (default_bos, default_eos, default_unk) = (Some(1), Some(2), Some(0));
                add_bos = true;
                add_space_prefix = true;
            }
            Model::Bpe(pre) => {
                (default_bos, default_eos, default_unk) = (Some(11), Some(11), None);
                add_bos = pre.default_add_bos;
                add_space_prefix = false;
                let merges = data.merges.as_ref().ok_or(Error::MissingKey {
                    key: "tokenizer.ggml.merges",
                })?;
                for (index, m) in merges.iter().enumerate() {
                    // The separator is the first space after the first byte (a merge may start with one).
                    let split = m
                        .as_bytes()
                        .iter()
                        .skip(1)
                        .position(|&b| b == b' ')
                        .map(|p| p + 1);
                    let Some(pos) = split else {
                        return Err(Error::MalformedMerge {
                            index,
                            merge: m.clone(),
                        });
                    };
                    let (left, right) = (&m[..pos], &m[pos + 1..]);
                    for part in [left, right] {
                        if !token_to_id.contains_key(part) {
                            return Err(Error::MergeUnknownToken {
                                index,
                                part: part.to_string(),
                            });
                        }
                    }
                    let next = merge_parts.len() as u32;
                    let l = *merge_parts.entry(left.to_string()).or_insert(next);
                    let next = merge_parts.len() as u32;
                    let r = *merge_parts.entry(right.to_string()).or_insert(next);
                    ranks.entry((l, r)).or_insert(index as u32);
                }
            }
        }
        if let Some(v) = data.add_space_prefix {
            add_space_prefix = v;
        }

        let in_range = |id: Option<TokenId>| id.filter(|&i| (i as usize) < n);
        let pick = |default: Option<TokenId>, key: Option<u32>| match key {
            Some(k) if (k as usize) < n => Some(k),
            _ => in_range(default),
        };
        let ids = &data.ids;
        let mut specials = Specials {
            bos: pick(default_bos, ids.bos),
            eos: pick(default_eos, ids.eos),
            eot: pick(None, ids.eot),
            eom: pick(None, ids.eom),
            unk: pick(default_unk, ids.unk),
            sep: pick(None, ids.sep),
            pad: pick(None, ids.pad),
            mask: pick(None, ids.mask),
            fim_pre: pick(None, ids.fim_pre),
            fim_suf: pick(None, ids.fim_suf),
            fim_mid: pick(None, ids.fim_mid),
            fim_pad: pick(None, ids.fim_pad),
            fim_rep: pick(None, ids.fim_rep),
            fim_sep: pick(None, ids.fim_sep),
        };
        if let Some(v) = data.add_bos {
            add_bos = v;
        }
        let add_eos = data.add_eos.unwrap_or(false);

        // Unique texts in id order (the last id of a duplicated text wins, as in the lookup map).
        let mut unique: Vec<(TokenId, &str)> = token_to_id
            .iter()
            .map(|(t, &id)| (id, t.as_str()))
            .collect();
        unique.sort_unstable_by_key(|&(id, _)| id);

        // Detect EOT/EOM/FIM tokens by text when no key names them; they become control tokens.
        {
            let s = &mut specials;
            let slots: [(&mut Option<TokenId>, &[&str]); 8] = [
                (&mut s.eot, EOT_TEXTS),
                (&mut s.eom, &["<|eom_id|>"]),
                (&mut s.fim_pre, FIM_PRE_TEXTS),
                (&mut s.fim_suf, FIM_SUF_TEXTS),
                (&mut s.fim_mid, FIM_MID_TEXTS),
                (&mut s.fim_pad, FIM_PAD_TEXTS),
                (&mut s.fim_rep, FIM_REP_TEXTS),
                (&mut s.fim_sep, FIM_SEP_TEXTS),
            ];
            for (slot, names) in slots {
                if slot.is_some() {
                    continue;
                }
                if let Some(&(id, _)) = unique.iter().find(|(_, t)| names.contains(t)) {
                    *slot = Some(id);
                    attrs[id as usize] |= attr::CONTROL;
                }
            }
        }
        for &(id, t) in &unique {
            let a = &mut attrs[id as usize];
            if *a & attr::CONTROL != 0 && t.contains("unused") {
                *a |= attr::UNUSED;
            }
        }
        // End-of-generation tokens are control tokens.
        let mut eog: BTreeSet<TokenId> = [specials.fim_pad, specials.fim_rep, specials.fim_sep]
            .into_iter()
            .flatten()
            .collect();
        for &(id, t) in &unique {
            if EOG_TEXTS.contains(&t) {
                eog.insert(id);
                attrs[id as usize] |= attr::CONTROL;
            }
        }
        for &(id, t) in &unique {
            if matches!(
                t,
                "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
            ) {
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend(
            [specials.eos, specials.eot, specials.eom]
                .into_iter()
                .flatten(),
        );
        let find_eog = |want: &[&str]| -> Option<TokenId> {
            eog.iter()
                .copied()
                .rev()
                .find(|&id| want.contains(&texts[id as usize].as_str()))
        };
        let has_return = find_eog(&["<|return|>"]).is_some();
        let has_call = find_eog(&["<|call|>", "<|calls|>"]).is_some();
        let has_flush = find_eog(&["<|flush|>"]).is_some();
        let end = find_eog(&["<|end|>"]).filter(|_| has_call && (has_return || has_flush));
        let plain_s =
            find_eog(&["<|tool_response>", "<|plamo:eos|>"]).and_then(|_| find_eog(&["</s>"]));
        // Neither is an end of generation any more (llama.cpp erases both).
        if let Some(end) = end {
            attrs[end as usize] = attr::USER_DEFINED;
            eog.remove(&end);
        }
        if let Some(s) = plain_s {
            attrs[s as usize] = attr::NORMAL;
            eog.remove(&s);
        }

        let mut special_cache: Vec<TokenId> = (0..n as TokenId)
            .filter(|&id| {
                attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        // Longest text first. llama.cpp's sort is unstable; ties keep id order here.
        special_cache.sort_by_key(|&id| std::cmp::Reverse(texts[id as usize].len()));

        // Per-model strip attributes (llama.cpp sets these by name; they are not in GGUF).
        let name = data.general_name.as_deref().unwrap_or("").to_lowercase();
        let pre = data.pre.as_deref().unwrap_or("");
        let set = |attrs: &mut Vec<u32>, text: &str, bit: u32, on: bool| {
            if let Some(&id) = token_to_id.get(text) {
                let a = &mut attrs[id as usize];
                *a = if on { *a | bit } else { *a & !bit };
            }
        };
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"]
            .iter()
            .any(|p| pre.contains(p))
        {
            set(&mut attrs, "<mask>", attr::LSTRIP, true);
        } else if name.contains("phi-3") || name.contains("phi3") {
            for &id in &special_cache {
                attrs[id as usize] |= attr::RSTRIP;
            }
            set(&mut attrs, "</s>", attr::RSTRIP, true);
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                set(&mut attrs, t, attr::RSTRIP, false);
            }
        } else if name.contains("modern-bert") {
            set(&mut attrs, "[MASK]", attr::LSTRIP, true);
        }

        Ok(Self {
            model,
            texts,
            scores,
            attrs,
            token_to_id,
            merge_parts,
            ranks,
            special_cache,
            specials,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Always false: a vocabulary has at least one token.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The tokenizer algorithm.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The stored text of token `id`.
    pub fn text(&self, id: TokenId) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    /// The score of token `id`.
    pub fn score(&self, id: TokenId) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    /// The attribute bits of token `id` (see [`attr`]).
    pub fn attr(&self, id: TokenId) -> Option<u32> {
        self.attrs.get(id as usize).copied()
    }

    /// The id whose text is `text` (the last such id).
    pub fn token_id(&self, text: &str) -> Option<TokenId> {
        self.token_to_id.get(text).copied()
    }

    /// Special token ids.
    pub fn specials(&self) -> &Specials {
        &self.specials
    }

    /// Whether `id` ends generation (llama.cpp's `llama_vocab_is_eog`).
    pub fn is_eog(&self, id: TokenId) -> bool {
        self.eog.contains(&id)
    }

    /// The end-of-generation tokens, ascending.
    pub fn eog_ids(&self) -> impl Iterator<Item = TokenId> + '_ {
        self.eog.iter().copied()
    }

    /// Whether tokenizing with `add_special` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether tokenizing with `add_special` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether SentencePiece text gets a leading space after BOS or a special token.
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// The BPE rank of merging `left` and `right`.
    pub(crate) fn rank(&self, left: &str, right: &str) -> Option<u32> {
        let l = *self.merge_parts.get(left)?;
        let r = *self.merge_parts.get(right)?;
        self.ranks.get(&(l, r)).copied()
    }

    /// The byte-fallback token for `b`: `<0xXX>`, else the one-byte text.
    pub(crate) fn byte_to_token(&self, b: u8) -> Result<TokenId> {
        let hex = format!("<0x{b:02X}>");
        if let Some(id) = self.token_id(&hex) {
            return Ok(id);
        }
        if b.is_ascii() {
            if let Some(id) = self.token_id(&(b as char).to_string()) {
                return Ok(id);
            }
        }
        Err(Error::NoByteToken { byte: b })
    }
}

fn type_to_attr(ty: i32) -> u32 {
    match ty {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => attr::UNDEFINED,
    }
}
