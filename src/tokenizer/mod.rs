//! Tokenizers read from GGUF metadata: `gpt2` byte-level BPE with merges (GPT-2's pre-tokenizer, `smollm`'s
//! that isolates every digit first, or Llama-3's `llama-bpe`) and `llama` SentencePiece-style BPE by scores
//! with byte fallback. The same two
//! kinds are read from a Hugging Face checkpoint's `tokenizer.json` or SentencePiece `tokenizer.model`
//! ([`Tokenizer::from_hf_dir`]); each format encodes as its own library does (llama.cpp for GGUF, `tokenizers`
//! for `tokenizer.json`, SentencePiece for `tokenizer.model`, except that control tokens written in the text
//! are matched there too, as the other two do).
//!
//! Special tokens (types CONTROL, USER_DEFINED and UNKNOWN, e.g. `<|im_start|>`) written in the input are
//! matched whole, leftmost-longest, as llama.cpp and transformers do. BOS/EOS are added by
//! [`Tokenizer::encode`] only when `add_special` is set AND the file's `tokenizer.ggml.add_bos_token` /
//! `add_eos_token` say so.
//!
//! ```no_run
//! # fn main() -> mobilellm_kernels::Result<()> {
//! use mobilellm_kernels::model::gguf::GgufFile;
//! use mobilellm_kernels::tokenizer::Tokenizer;
//! let gguf = GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let tok = Tokenizer::from_gguf(&gguf)?;
//! let ids = tok.encode("The capital of France is", true);
//! assert_eq!(ids, [504, 3575, 282, 4649, 314]);
//! let prompt = tok.chat_prompt(&[("user", "What is 2+3?")], true)?;
//! let mut stream = tok.stream_decoder();
//! let text: String = ids.iter().map(|&id| stream.push(id)).collect();
//! # Ok(()) }
//! ```

mod bpe;
mod chat;
mod hf;
mod merge;
mod sentencepiece;
mod spm;
mod stop;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

pub use chat::{ChatTemplate, Date, CHATML};
pub use stop::StopStrings;

use crate::error::{Error, Result};
use crate::model::gguf::{GgufFile, GgufWriter, MetaValue, ValueType};

/// Which algorithm a tokenizer uses (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// `gpt2`: byte-level BPE with ranked merges.
    Gpt2,
    /// `llama`: SentencePiece BPE by piece scores, `▁` for spaces, `<0xXX>` byte fallback.
    Llama,
}

/// Token types (`tokenizer.ggml.token_type`, llama.cpp's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// 0
    Undefined,
    /// 1: an ordinary piece.
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: control tokens (`<s>`, `<|im_start|>`), matched whole in the input.
    Control,
    /// 4: added tokens, matched whole in the input.
    UserDefined,
    /// 5
    Unused,
    /// 6: `<0xXX>` byte tokens.
    Byte,
}

impl TokenType {
    /// From llama.cpp's number (unknown numbers read as `Undefined`).
    pub fn from_i64(v: i64) -> Self {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
    /// llama.cpp's number.
    pub fn number(self) -> i32 {
        match self {
            TokenType::Undefined => 0,
            TokenType::Normal => 1,
            TokenType::Unknown => 2,
            TokenType::Control => 3,
            TokenType::UserDefined => 4,
            TokenType::Unused => 5,
            TokenType::Byte => 6,
        }
    }
    /// Whether the token is matched whole in input text and decoded as its literal text.
    pub fn is_special(self) -> bool {
        matches!(self, TokenType::Control | TokenType::UserDefined | TokenType::Unknown)
    }
}

/// Everything a tokenizer is built from (the `tokenizer.*` keys of a GGUF file).
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    /// `tokenizer.ggml.model`.
    pub kind: TokenizerKind,
    /// `tokenizer.ggml.pre` (gpt2 only: absent, `gpt-2`, `smollm` or `llama-bpe`).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the text of each id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (empty: all normal).
    pub token_types: Vec<TokenType>,
    /// `tokenizer.ggml.scores` (llama; empty: all zero).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges`, `"left right"` in rank order (gpt2; for llama, given only by an HF
    /// `tokenizer.json`: then they, not the scores, decide the merges).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (default: true for llama, false for gpt2).
    pub add_bos: bool,
    /// `tokenizer.ggml.add_eos_token` (default false).
    pub add_eos: bool,
    /// Where a llama tokenizer puts `▁` in front of text (`tokenizer.ggml.add_space_prefix`, default true for
    /// llama: [`SpacePrefix::EverySegment`]; gpt2 tokenizers add none).
    pub space_prefix: SpacePrefix,
    /// Whether user-defined tokens split text without starting a new segment for [`Vocab::space_prefix`]
    /// (SentencePiece, and the pieces an HF `Split` pre-tokenizer isolates); false: every token matched in
    /// the text starts a segment (llama.cpp, and the added tokens of an HF `tokenizer.json`).
    pub isolate_user_defined: bool,
    /// Whether a pre-token (gpt2) or a piece of text between special tokens (llama) that is itself a token
    /// is taken whole, before any merge (HF `ignore_merges`; llama.cpp's `llama-bpe`).
    pub ignore_merges: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// How special tokens are matched in text, for those whose HF `added_tokens` entry sets `lstrip`,
    /// `rstrip` or `single_word` (the others match exactly where written).
    pub added_token_flags: HashMap<u32, AddedTokenFlags>,
}

/// The matching flags of an HF added token (`tokenizers`' `AddedToken`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddedTokenFlags {
    /// The whitespace before the token is part of the match (dropped from the text).
    pub lstrip: bool,
    /// The whitespace after the token is part of the match.
    pub rstrip: bool,
    /// Matched only where no word character (alphanumeric or `_`) touches it on either side.
    pub single_word: bool,
}

impl Vocab {
    /// Reads the `tokenizer.*` keys of a GGUF file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Vocab> {
        let model_key = "tokenizer.ggml.model";
        let kind = match gguf.get_str(model_key)? {
            Some("gpt2") => TokenizerKind::Gpt2,
            Some("llama") => TokenizerKind::Llama,
            Some(other) => return Err(Error::invalid(model_key, other, "`gpt2` or `llama`")),
            None => return Err(Error::invalid(model_key, "absent", "`gpt2` or `llama`")),
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            let Some(items) = gguf.get_array(key)? else { return Ok(Vec::new()) };
            items
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_str().map(str::to_owned).ok_or_else(|| bad_item(key, i, v, "string")))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(Error::invalid("tokenizer.ggml.tokens", "absent or empty", "the vocabulary"));
        }
        let merges = strings("tokenizer.ggml.merges")?;
        let type_key = "tokenizer.ggml.token_type";
        let token_types = match gguf.get_array(type_key)? {
            None => Vec::new(),
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_i64().map(TokenType::from_i64).ok_or_else(|| bad_item(type_key, i, v, "integer")))
                .collect::<Result<_>>()?,
        };
        let score_key = "tokenizer.ggml.scores";
        let scores = match gguf.get_array(score_key)? {
            None => Vec::new(),
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_f64().map(|f| f as f32).ok_or_else(|| bad_item(score_key, i, v, "number")))
                .collect::<Result<_>>()?,
        };
        let id = |key: &str| -> Result<Option<u32>> {
            // Some converters write -1 (as i32) for "none".
            match gguf.get(key) {
                Some(v) if v.as_i64().is_some_and(|x| x < 0) => Ok(None),
                _ => Ok(gguf.get_u64(key)?.map(|x| x.min(u32::MAX as u64) as u32)),
            }
        };
        let llama = kind == TokenizerKind::Llama;
        let pre = gguf.get_str("tokenizer.ggml.pre")?.map(str::to_owned);
        // llama.cpp takes a whole pre-token that is a token for Llama-3's pre-tokenizer (as its tokenizer.json says).
        let ignore_merges = matches!(pre.as_deref(), Some("llama-bpe" | "llama3"));
        Ok(Vocab {
            kind,
            pre,
            tokens,
            token_types,
            scores,
            merges,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            add_bos: gguf.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(llama),
            add_eos: gguf.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            space_prefix: match gguf.get_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(llama) {
                true => SpacePrefix::EverySegment,
                false => SpacePrefix::Never,
            },
            isolate_user_defined: false,
            added_token_flags: HashMap::new(),
            ignore_merges,
            chat_template: gguf.get_str("tokenizer.chat_template")?.map(str::to_owned),
        })
    }
}

impl Vocab {
    /// This vocabulary with `[PAD{id}]` tokens of type [`TokenType::Unused`] (score 0) appended up to
    /// `size` ids, as llama.cpp's converter fills a model's embedding rows that no token uses (GGUF readers
    /// take the vocabulary size from the token list). More tokens than `size` is an error.
    pub fn padded_to(&self, size: usize) -> Result<Vocab> {
        let n = self.tokens.len();
        if n > size {
            return Err(Error::invalid(
                "tokenizer vocabulary",
                format!("{n} tokens"),
                format!("at most the model's {size}"),
            ));
        }
        let mut vocab = self.clone();
        if vocab.token_types.is_empty() && n < size {
            vocab.token_types = vec![TokenType::Normal; n];
        }
        for id in n..size {
            vocab.tokens.push(format!("[PAD{id}]"));
            vocab.token_types.push(TokenType::Unused);
            if !vocab.scores.is_empty() {
                vocab.scores.push(0.0);
            }
        }
        Ok(vocab)
    }

    /// Writes the `tokenizer.*` keys [`Vocab::from_gguf`] reads. Returns what GGUF cannot say, one line each
    /// (empty: the file's tokenizer encodes as this one): HF added-token flags, `Metaspace` prepend schemes
    /// other than always / never, `ignore_merges` without the `llama-bpe` pre-tokenizer that implies it, and
    /// user-defined tokens that do not start a segment.
    pub fn write_gguf(&self, w: &mut GgufWriter) -> Vec<String> {
        let llama = self.kind == TokenizerKind::Llama;
        w.meta("tokenizer.ggml.model", MetaValue::String(if llama { "llama" } else { "gpt2" }.into()));
        if let Some(pre) = &self.pre {
            w.meta("tokenizer.ggml.pre", MetaValue::String(pre.clone()));
        }
        w.meta_strings("tokenizer.ggml.tokens", &self.tokens);
        if !self.token_types.is_empty() {
            let types = self.token_types.iter().map(|t| MetaValue::I32(t.number())).collect();
            w.meta("tokenizer.ggml.token_type", MetaValue::Array(ValueType::I32, types));
        }
        if !self.scores.is_empty() {
            let scores = self.scores.iter().map(|s| MetaValue::F32(*s)).collect();
            w.meta("tokenizer.ggml.scores", MetaValue::Array(ValueType::F32, scores));
        }
        if !self.merges.is_empty() {
            w.meta_strings("tokenizer.ggml.merges", &self.merges);
        }
        for (key, id) in [("bos", self.bos), ("eos", self.eos), ("unknown", self.unk)] {
            if let Some(id) = id {
                w.meta(&format!("tokenizer.ggml.{key}_token_id"), MetaValue::U32(id));
            }
        }
        w.meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(self.add_bos))
            .meta("tokenizer.ggml.add_eos_token", MetaValue::Bool(self.add_eos));
        let mut lost = Vec::new();
        match self.space_prefix {
            SpacePrefix::Never => {
                w.meta("tokenizer.ggml.add_space_prefix", MetaValue::Bool(false));
            }
            SpacePrefix::EverySegment => {
                w.meta("tokenizer.ggml.add_space_prefix", MetaValue::Bool(true));
            }
            other => {
                w.meta("tokenizer.ggml.add_space_prefix", MetaValue::Bool(true));
                lost.push(format!("space prefix {other:?} (written as before every segment)"));
            }
        }
        if let Some(template) = &self.chat_template {
            w.meta("tokenizer.chat_template", MetaValue::String(template.clone()));
        }
        let implied = matches!(self.pre.as_deref(), Some("llama-bpe" | "llama3"));
        if self.ignore_merges != implied {
            lost.push(format!("ignore_merges {} with pre-tokenizer {:?}", self.ignore_merges, self.pre));
        }
        if self.isolate_user_defined
            && self.space_prefix != SpacePrefix::Never
            && self.token_types.contains(&TokenType::UserDefined)
        {
            lost.push("user-defined tokens that do not start a segment for the space prefix".into());
        }
        let mut flagged: Vec<_> = self.added_token_flags.keys().copied().collect();
        flagged.sort_unstable();
        if !flagged.is_empty() {
            lost.push(format!("lstrip / rstrip / single_word flags of added tokens {flagged:?}"));
        }
        if llama && !self.merges.is_empty() {
            lost.push("merges of a llama tokenizer (this crate reads them; llama.cpp merges by scores)".into());
        }
        lost
    }
}

/// Where a llama (SentencePiece-style) tokenizer adds the `▁` that stands for a leading space. The text is cut
/// into segments at the special tokens written in it (see [`Vocab::isolate_user_defined`]); the space goes
/// in front of a segment's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpacePrefix {
    /// No space is added.
    Never,
    /// Before every segment (llama.cpp's `add_space_prefix`, SentencePiece's `add_dummy_prefix`, an HF
    /// `Prepend("▁")` normalizer).
    EverySegment,
    /// Before every segment that does not start with a space already (HF `Metaspace`, `prepend_scheme:
    /// always`).
    EverySegmentUnlessSpace,
    /// Only before the first segment, when the text starts with neither a space nor a special token (HF
    /// `Metaspace`, `prepend_scheme: first`).
    FirstSegmentUnlessSpace,
}

impl SpacePrefix {
    /// Whether segment `segment` (0 = the text's start), whose text starts with a space or not, gets `▁`.
    fn applies(self, segment: usize, starts_with_space: bool) -> bool {
        match self {
            SpacePrefix::Never => false,
            SpacePrefix::EverySegment => true,
            SpacePrefix::EverySegmentUnlessSpace => !starts_with_space,
            SpacePrefix::FirstSegmentUnlessSpace => segment == 0 && !starts_with_space,
        }
    }
}

impl Vocab {
    /// Reads an HF `tokenizer.json` (the `tokenizers` library's format; `name` names it in errors). BOS / EOS
    /// come from its post-processor; [`Vocab::apply_tokenizer_config`] adds what `tokenizer_config.json` says.
    pub fn from_tokenizer_json(json: &str, name: &str) -> Result<Vocab> {
        hf::vocab_from_json(json, name)
    }

    /// Reads a SentencePiece `tokenizer.model` (BPE models with the identity normalizer; `name` names it in
    /// errors).
    pub fn from_sentencepiece(bytes: &[u8], name: &str) -> Result<Vocab> {
        sentencepiece::vocab_from_model(bytes, name)
    }

    /// Applies an HF `tokenizer_config.json`: its BOS / EOS / UNK tokens, `add_bos_token` / `add_eos_token`
    /// and chat template, where it gives them.
    pub fn apply_tokenizer_config(&mut self, json: &str, name: &str) -> Result<()> {
        hf::apply_config(self, json, name)
    }
}

fn bad_item(key: &str, i: usize, v: &MetaValue, expected: &str) -> Error {
    Error::invalid(format!("{key}[{i}]"), format!("{v:?}"), expected)
}

/// A tokenizer built from GGUF metadata.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: Vocab,
    token_to_id: HashMap<String, u32>,
    /// Special tokens by first byte, longest first.
    special_by_byte: HashMap<u8, Vec<u32>>,
    model: Model,
    chat: ChatTemplate,
}

#[derive(Debug, Clone)]
enum Model {
    Gpt2(Box<bpe::Gpt2>),
    Llama(Box<spm::Spm>),
}

enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
        Self::from_vocab(Vocab::from_gguf(gguf)?)
    }

    /// Reads the tokenizer of a Hugging Face checkpoint directory: `tokenizer.json` (the `tokenizers`
    /// library's format), or else SentencePiece's `tokenizer.model`, then `special_tokens_map.json` and
    /// `tokenizer_config.json` (BOS, EOS,
    /// `add_bos_token`, chat template) and `chat_template.jinja` where present. `Ok(None)` when the directory
    /// has neither tokenizer file. A file whose pre-tokenizer or normalizer this crate cannot reproduce is an
    /// error naming that part (see the module docs for what is read).
    ///
    /// ```no_run
    /// # fn main() -> mobilellm_kernels::Result<()> {
    /// use mobilellm_kernels::tokenizer::Tokenizer;
    /// if let Some(tok) = Tokenizer::from_hf_dir("checkpoints/MobileLLM-125M")? {
    ///     let ids = tok.encode("Hello", true);
    ///     println!("{ids:?} -> {:?}", tok.decode(&ids));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Option<Tokenizer>> {
        let dir = dir.as_ref();
        let read = |name: &str| -> Result<Option<(Vec<u8>, String)>> {
            let path = dir.join(name);
            let shown = path.display().to_string();
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some((bytes, shown))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(Error::Io { path: shown, source }),
            }
        };
        let text = |(bytes, path): (Vec<u8>, String)| {
            String::from_utf8(bytes).map_err(|_| Error::format(path.as_str(), "not UTF-8 text")).map(|t| (t, path))
        };
        let mut vocab = if let Some(file) = read("tokenizer.json")? {
            let (json, path) = text(file)?;
            Vocab::from_tokenizer_json(&json, &path)?
        } else if let Some((bytes, path)) = read("tokenizer.model")? {
            Vocab::from_sentencepiece(&bytes, &path)?
        } else {
            return Ok(None);
        };
        if let Some(file) = read("chat_template.jinja")? {
            vocab.chat_template = Some(text(file)?.0);
        }
        // Older checkpoints name their special tokens in special_tokens_map.json; tokenizer_config.json wins.
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            if let Some(file) = read(name)? {
                let (json, path) = text(file)?;
                vocab.apply_tokenizer_config(&json, &path)?;
            }
        }
        Self::from_vocab(vocab).map(Some)
    }

    /// Builds a tokenizer from its parts (checks lengths and ids).
    pub fn from_vocab(mut vocab: Vocab) -> Result<Tokenizer> {
        let n = vocab.tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(Error::invalid("vocabulary size", n, "1..2^32 tokens"));
        }
        if vocab.token_types.is_empty() {
            vocab.token_types = vec![TokenType::Normal; n];
        }
        if vocab.scores.is_empty() {
            vocab.scores = vec![0.0; n];
        }
        if vocab.token_types.len() != n {
            return Err(Error::invalid("tokenizer.ggml.token_type length", vocab.token_types.len(), n));
        }
        if vocab.scores.len() != n {
            return Err(Error::invalid("tokenizer.ggml.scores length", vocab.scores.len(), n));
        }
        for (what, id) in [("bos", vocab.bos), ("eos", vocab.eos), ("unk", vocab.unk)] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(Error::invalid(format!("{what} token id"), id, format!("< vocabulary size {n}")));
            }
        }
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in vocab.tokens.iter().enumerate() {
            // First id wins on duplicates, as in llama.cpp.
            token_to_id.entry(t.clone()).or_insert(i as u32);
        }
        let mut special_by_byte: HashMap<u8, Vec<u32>> = HashMap::new();
        for (i, (t, ty)) in vocab.tokens.iter().zip(&vocab.token_types).enumerate() {
            if ty.is_special() && !t.is_empty() {
                special_by_byte.entry(t.as_bytes()[0]).or_default().push(i as u32);
            }
        }
        for ids in special_by_byte.values_mut() {
            ids.sort_by_key(|&id| (std::cmp::Reverse(vocab.tokens[id as usize].len()), id));
        }
        let model = match vocab.kind {
            TokenizerKind::Gpt2 => Model::Gpt2(Box::new(bpe::Gpt2::new(&vocab, &token_to_id)?)),
            TokenizerKind::Llama => Model::Llama(Box::new(spm::Spm::new(&vocab, &token_to_id)?)),
        };
        let chat = ChatTemplate::from_file(vocab.chat_template.as_deref());
        Ok(Tokenizer { vocab, token_to_id, special_by_byte, model, chat })
    }

    /// The tokenizer's parts.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }
    /// `gpt2` or `llama`.
    pub fn kind(&self) -> TokenizerKind {
        self.vocab.kind
    }
    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab.tokens.len()
    }
    /// Beginning-of-sequence id.
    pub fn bos(&self) -> Option<u32> {
        self.vocab.bos
    }
    /// End-of-sequence id (the stop token).
    pub fn eos(&self) -> Option<u32> {
        self.vocab.eos
    }
    /// The text of a token.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize).map(String::as_str)
    }
    /// The id of a token text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }
    /// Whether `id` is a special (control / user-defined / unknown) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.vocab.token_types.get(id as usize).is_some_and(|t| t.is_special())
    }
    /// How chat prompts are built.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.chat
    }

    /// Encodes text. Special tokens written in the text are matched whole. With `add_special`, BOS and EOS
    /// are added where the file's `add_bos_token` / `add_eos_token` say so.
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.vocab.add_bos {
            out.extend(self.vocab.bos);
        }
        let fragments = self.split_special(text);
        match &self.model {
            Model::Gpt2(m) => {
                for f in &fragments {
                    match f {
                        Fragment::Text(t) => m.encode(t, &self.token_to_id, &mut out),
                        Fragment::Token(id) => out.push(*id),
                    }
                }
            }
            Model::Llama(m) => {
                let prefix = self.vocab.space_prefix;
                let (mut segment, mut segment_start) = (0, true);
                for f in &fragments {
                    match *f {
                        Fragment::Text(t) => {
                            let space = segment_start && prefix.applies(segment, t.starts_with(' '));
                            m.encode(t, space, &self.vocab, &self.token_to_id, &mut out);
                            segment_start = false;
                        }
                        Fragment::Token(id) => {
                            let isolated = self.vocab.isolate_user_defined
                                && self.vocab.token_types[id as usize] == TokenType::UserDefined;
                            if !isolated {
                                out.push(id);
                                segment += 1;
                                segment_start = true;
                                continue;
                            }
                            // A segment that starts with an isolated piece: the space stands alone before it.
                            if segment_start && prefix.applies(segment, false) {
                                m.encode("", true, &self.vocab, &self.token_to_id, &mut out);
                            }
                            out.push(id);
                            segment_start = false;
                        }
                    }
                }
            }
        }
        if add_special && self.vocab.add_eos {
            out.extend(self.vocab.eos);
        }
        out
    }

    /// Encodes text that continues a text already encoded: special tokens written in it are not matched,
    /// and there is no BOS, EOS or SentencePiece space prefix (which belong to the start of a text). The
    /// ids spell `text` where the vocabulary can (a byte-level vocabulary always can).
    pub fn encode_continuation(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        match &self.model {
            Model::Gpt2(m) => m.encode(text, &self.token_to_id, &mut out),
            Model::Llama(m) => m.encode(text, false, &self.vocab, &self.token_to_id, &mut out),
        }
        out
    }

    fn split_special<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut out = Vec::new();
        let (mut start, mut i) = (0, 0);
        let bytes = text.as_bytes();
        let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        while i < bytes.len() {
            let hit = self.special_by_byte.get(&bytes[i]).and_then(|ids| {
                ids.iter().copied().find(|&id| text[i..].starts_with(self.vocab.tokens[id as usize].as_str()))
            });
            let end = hit.map_or(i, |id| i + self.vocab.tokens[id as usize].len());
            let flags = hit.and_then(|id| self.vocab.added_token_flags.get(&id)).copied().unwrap_or_default();
            // A single-word token touching a word character is no match (HF checks the match as found).
            let single_word_ok =
                !flags.single_word || !(is_word(text[..i].chars().next_back()) || is_word(text[end..].chars().next()));
            match hit {
                Some(id) if single_word_ok => {
                    let mut before = &text[start..i];
                    if flags.lstrip {
                        before = before.trim_end();
                    }
                    if !before.is_empty() {
                        out.push(Fragment::Text(before));
                    }
                    out.push(Fragment::Token(id));
                    i = end;
                    if flags.rstrip {
                        i = text.len() - text[i..].trim_start().len();
                    }
                    start = i;
                }
                _ => {
                    i += 1;
                    while i < bytes.len() && !text.is_char_boundary(i) {
                        i += 1;
                    }
                }
            }
        }
        if start < bytes.len() {
            out.push(Fragment::Text(&text[start..]));
        }
        out
    }

    /// The bytes a token stands for (special tokens: their literal text). Ids outside the vocabulary give
    /// no bytes.
    pub fn token_bytes(&self, id: u32) -> Cow<'_, [u8]> {
        let Some(text) = self.vocab.tokens.get(id as usize) else { return Cow::Borrowed(&[]) };
        let ty = self.vocab.token_types[id as usize];
        if ty.is_special() {
            return Cow::Borrowed(text.as_bytes());
        }
        match &self.model {
            Model::Gpt2(m) => Cow::Owned(m.token_bytes(text)),
            Model::Llama(_) => spm::token_bytes(text, ty),
        }
    }

    /// Decodes ids to text (special tokens as their text; invalid UTF-8 as U+FFFD; ids outside the vocabulary
    /// are skipped: use [`Tokenizer::try_decode`] to reject them). For `llama` files with a space prefix, the
    /// space the encoder added in front of the first piece is removed.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(&self.token_bytes(id));
        }
        if self.vocab.kind == TokenizerKind::Llama
            && self.vocab.space_prefix != SpacePrefix::Never
            && ids.first().is_some_and(|&id| !self.is_special(id))
            && bytes.first() == Some(&b' ')
        {
            bytes.remove(0);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Like [`Tokenizer::decode`], but an id outside the vocabulary is an error.
    pub fn try_decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        Ok(self.decode(ids))
    }

    /// Errors on the first id outside the vocabulary.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            Some(id) => Err(Error::invalid("token id", id, format!("< vocabulary size {}", self.vocab_size()))),
            None => Ok(()),
        }
    }

    /// A decoder for generated ids, one at a time, that holds bytes back until they form valid UTF-8.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder { tokenizer: self, pending: Vec::new() }
    }

    /// Renders a chat with the file's template (ChatML when it has none) as transformers'
    /// `apply_chat_template` does (see [`ChatTemplate`]), dated today in UTC, with this vocabulary's BOS and
    /// EOS texts. A template that does not parse or that raises is an error naming the problem.
    pub fn chat_prompt(&self, messages: &[(&str, &str)], add_generation_prompt: bool) -> Result<String> {
        let text = |id: Option<u32>| id.and_then(|id| self.token(id)).unwrap_or("");
        self.chat.render(messages, add_generation_prompt, (text(self.vocab.bos), text(self.vocab.eos)), Date::today())
    }

    /// [`Tokenizer::chat_prompt`] then [`Tokenizer::encode`] without adding special tokens: the template
    /// writes BOS where it wants one, as transformers' `apply_chat_template` tokenizes.
    pub fn encode_chat(&self, messages: &[(&str, &str)], add_generation_prompt: bool) -> Result<Vec<u32>> {
        Ok(self.encode(&self.chat_prompt(messages, add_generation_prompt)?, false))
    }
}

/// Turns ids into text one at a time, holding back bytes of an incomplete UTF-8 character (a byte-level or
/// `<0xXX>` token can carry part of one) until the rest arrives. Unlike [`Tokenizer::decode`] it never drops
/// a leading space: it is meant for continuations.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one id; returns the text that is now complete (often empty while a character is split).
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(&self.tokenizer.token_bytes(id));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The valid prefix was just checked.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Bytes held back so far (an incomplete character).
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: whatever is held back, with U+FFFD for an incomplete character.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
