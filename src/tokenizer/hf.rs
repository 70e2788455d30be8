//! Hugging Face tokenizer files: `tokenizer.json` (the `tokenizers` library's format), read into a [`Vocab`],
//! and the `tokenizer_config.json` / `chat_template.jinja` beside it.
//!
//! Two layouts of a BPE `tokenizer.json` are understood, and each part of the file that would change how
//! text encodes is checked, so a file this module cannot reproduce is an error naming that part:
//! - byte-level (GPT-2, SmolLM2, Llama-3): no normalizer, a `ByteLevel` pre-tokenizer (GPT-2's regex, no
//!   prefix space), optionally after `Digits(individual_digits)`, or Llama-3's `Split` regex then `ByteLevel`;
//! - SentencePiece-style (Llama, MobileLLM): spaces replaced by `▁` (a `Replace` normalizer or `Metaspace`),
//!   the `▁` prefix from `Prepend` or `Metaspace`'s `prepend_scheme`, byte fallback, and literal pieces a
//!   `Split` pre-tokenizer isolates. Its merges are applied by rank, as the library does.

use serde_json::{Map, Value};

use super::bpe::LLAMA3_PATTERN;
use super::{AddedTokenFlags, SpacePrefix, TokenType, TokenizerKind, Vocab};
use crate::error::{Error, Result};

const SPACE: &str = "\u{2581}";

/// Everything a part of the file is compared against is shown cut to this many characters.
const SHOWN: usize = 160;

fn shown(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

fn unsupported(path: &str, part: &str, v: &Value, expected: &str) -> Error {
    Error::invalid(format!("{part} of {path}"), shown(v), expected)
}

fn kind_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The parts of a `Sequence` normalizer or pre-tokenizer (one part: itself; null: none).
fn parts<'a>(v: &'a Value, list_key: &str) -> Vec<&'a Value> {
    match v {
        Value::Null => Vec::new(),
        _ if kind_of(v) == "Sequence" => {
            v.get(list_key).and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
        }
        _ => vec![v],
    }
}

/// The first id whose token is `text` (the file's few named tokens are looked up before any index exists).
fn id_of(tokens: &[String], text: &str) -> Option<u32> {
    tokens.iter().position(|t| t == text).map(|i| i as u32)
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// Reads a `tokenizer.json` (`path` names it in errors).
pub(crate) fn vocab_from_json(text: &str, path: &str) -> Result<Vocab> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| Error::format(path, format!("tokenizer.json is not valid JSON: {e}")))?;
    let null = Value::Null;
    let model = root.get("model").unwrap_or(&null);
    if kind_of(model) != "BPE" {
        return Err(unsupported(path, "model.type", model.get("type").unwrap_or(&null), "\"BPE\""));
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix", "dropout"] {
        if let Some(v) = model.get(key).filter(|v| !v.is_null()) {
            return Err(unsupported(path, &format!("model.{key}"), v, "null"));
        }
    }
    let (tokens, token_types, added_token_flags) = tokens(&root, model, path)?;
    let merges = merges(model, path)?;
    let normalizer = root.get("normalizer").unwrap_or(&null);
    let pre = root.get("pre_tokenizer").unwrap_or(&null);
    let byte_level = parts(pre, "pretokenizers").iter().any(|p| kind_of(p) == "ByteLevel");
    let mut vocab = Vocab {
        kind: TokenizerKind::Gpt2,
        pre: None,
        tokens,
        token_types,
        scores: Vec::new(),
        merges,
        bos: None,
        eos: None,
        unk: None,
        add_bos: false,
        add_eos: false,
        space_prefix: SpacePrefix::Never,
        isolate_user_defined: true,
        ignore_merges: flag(model, "ignore_merges", false),
        chat_template: None,
        added_token_flags,
    };
    if byte_level {
        byte_level_layout(&mut vocab, normalizer, pre, path)?;
    } else {
        sentencepiece_layout(&mut vocab, model, normalizer, pre, path)?;
    }
    if let Some(unk) = model.get("unk_token").and_then(Value::as_str) {
        vocab.unk = id_of(&vocab.tokens, unk);
        // Matched in text only where it is an added token, as the library does.
        if let Some(ty) = vocab.unk.map(|id| &mut vocab.token_types[id as usize]) {
            if *ty == TokenType::Control {
                *ty = TokenType::Unknown;
            }
        }
    }
    post_processor(&mut vocab, root.get("post_processor").unwrap_or(&null), path)?;
    Ok(vocab)
}

/// The token of every id (`model.vocab` and `added_tokens`, which win where both name an id); added tokens
/// are matched whole in the text (type CONTROL), with their `lstrip`, `rstrip` and `single_word` flags.
fn tokens(root: &Value, model: &Value, path: &str) -> Result<(Vec<String>, Vec<TokenType>, AddedFlags)> {
    let Some(vocab) = model.get("vocab").and_then(Value::as_object) else {
        return Err(Error::format(path, "model.vocab is missing or not an object"));
    };
    let mut named: Vec<(u64, &str, TokenType)> = Vec::with_capacity(vocab.len());
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| unsupported(path, &format!("model.vocab[{text:?}]"), id, "a token id"))?;
        named.push((id, text, TokenType::Normal));
    }
    let empty = Vec::new();
    let added = root.get("added_tokens").and_then(Value::as_array).unwrap_or(&empty);
    let mut flags = AddedFlags::new();
    for (i, t) in added.iter().enumerate() {
        let (Some(id), Some(text)) = (t.get("id").and_then(Value::as_u64), t.get("content").and_then(Value::as_str))
        else {
            return Err(unsupported(path, &format!("added_tokens[{i}]"), t, "{\"id\": number, \"content\": string}"));
        };
        named.push((id, text, TokenType::Control));
        let added = AddedTokenFlags {
            lstrip: flag(t, "lstrip", false),
            rstrip: flag(t, "rstrip", false),
            single_word: flag(t, "single_word", false),
        };
        if added != AddedTokenFlags::default() && id <= u64::from(u32::MAX) {
            flags.insert(id as u32, added);
        }
    }
    let n = named.iter().map(|&(id, ..)| id + 1).max().unwrap_or(0);
    if n == 0 || n > u64::from(u32::MAX) || n as usize > 4 * named.len() {
        return Err(Error::invalid(format!("token ids of {path}"), format!("0..{n}"), "a dense range of ids"));
    }
    let mut tokens: Vec<Option<String>> = vec![None; n as usize];
    let mut types = vec![TokenType::Normal; n as usize];
    for (id, text, ty) in named {
        tokens[id as usize] = Some(text.to_owned());
        types[id as usize] = ty;
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| {
            t.ok_or_else(|| Error::invalid(format!("token id {id} of {path}"), "absent", "a token for every id"))
        })
        .collect::<Result<Vec<String>>>()?;
    Ok((tokens, types, flags))
}

type AddedFlags = std::collections::HashMap<u32, AddedTokenFlags>;

/// `model.merges` as `"left right"` strings, from either form the library writes (strings or pairs).
fn merges(model: &Value, path: &str) -> Result<Vec<String>> {
    let empty = Vec::new();
    let list = model.get("merges").and_then(Value::as_array).unwrap_or(&empty);
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let pair = match m {
                Value::String(s) => s.split_once(' ').filter(|(_, r)| !r.contains(' ')),
                Value::Array(a) => match (a.first().and_then(Value::as_str), a.get(1).and_then(Value::as_str)) {
                    (Some(l), Some(r)) if a.len() == 2 && !l.contains(' ') && !r.contains(' ') => Some((l, r)),
                    _ => None,
                },
                _ => None,
            };
            pair.map(|(l, r)| format!("{l} {r}"))
                .ok_or_else(|| unsupported(path, &format!("model.merges[{i}]"), m, "two tokens without spaces"))
        })
        .collect()
}

/// GPT-2 style: bytes as printable characters, GPT-2's regex (optionally every digit on its own first), or
/// Llama-3's regex as a `Split` before a regex-less `ByteLevel`.
fn byte_level_layout(vocab: &mut Vocab, normalizer: &Value, pre: &Value, path: &str) -> Result<()> {
    if !normalizer.is_null() {
        return Err(unsupported(path, "normalizer", normalizer, "null for a byte-level tokenizer"));
    }
    let expected = "ByteLevel (GPT-2 regex, no prefix space), optionally after Digits(individual_digits), \
                    or Split(Llama-3's regex, Isolated) then ByteLevel(use_regex: false)";
    let byte_level = |p: &Value, regex: bool| {
        kind_of(p) == "ByteLevel" && !flag(p, "add_prefix_space", false) && flag(p, "use_regex", true) == regex
    };
    let llama3_split = |p: &Value| {
        kind_of(p) == "Split"
            && p.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str) == Some(LLAMA3_PATTERN)
            && p.get("behavior").and_then(Value::as_str) == Some("Isolated")
            && !flag(p, "invert", false)
    };
    vocab.pre = match parts(pre, "pretokenizers").as_slice() {
        [b] if byte_level(b, true) => Some("gpt2".into()),
        [d, b] if kind_of(d) == "Digits" && flag(d, "individual_digits", false) && byte_level(b, true) => {
            Some("smollm".into())
        }
        [split, b] if llama3_split(split) && byte_level(b, false) => Some("llama-bpe".into()),
        _ => return Err(unsupported(path, "pre_tokenizer", pre, expected)),
    };
    Ok(())
}

/// Llama style: `▁` for spaces, a `▁` prefix by some rule, byte fallback, merges by rank.
fn sentencepiece_layout(vocab: &mut Vocab, model: &Value, normalizer: &Value, pre: &Value, path: &str) -> Result<()> {
    vocab.kind = TokenizerKind::Llama;
    // Without byte fallback the library emits one (fused) unknown token per character; this crate's
    // SentencePiece-style encoder falls back byte by byte.
    if !flag(model, "byte_fallback", false) {
        let shown = model.get("byte_fallback").unwrap_or(&Value::Null);
        return Err(unsupported(path, "model.byte_fallback", shown, "true for a SentencePiece-style tokenizer"));
    }
    let (mut prepend, mut replace, mut double_leading) = (false, false, false);
    for n in parts(normalizer, "normalizers") {
        let string = |key: &str| n.get(key).and_then(|v| v.get("String")).and_then(Value::as_str);
        let regex = |key: &str| n.get(key).and_then(|v| v.get("Regex")).and_then(Value::as_str);
        let content = n.get("content").and_then(Value::as_str);
        match kind_of(n) {
            "Prepend" if n.get("prepend").and_then(Value::as_str) == Some(SPACE) => prepend = true,
            "Replace" if string("pattern") == Some(" ") && content == Some(SPACE) => replace = true,
            // transformers' SentencePiece conversion: a leading `▁` is doubled so `Metaspace` adds its own.
            "Replace" if regex("pattern") == Some("\\A\u{2581}") && content == Some("\u{2581}\u{2581}") => {
                double_leading = true
            }
            _ => {
                return Err(unsupported(
                    path,
                    "normalizer",
                    n,
                    "Prepend(\"▁\"), Replace(\" \", \"▁\") or transformers' leading-▁ Replace",
                ))
            }
        }
    }
    let mut metaspace = None;
    for p in parts(pre, "pretokenizers") {
        match kind_of(p) {
            "Metaspace" if p.get("replacement").and_then(Value::as_str).is_none_or(|r| r == SPACE) => {
                if flag(p, "split", true) {
                    return Err(unsupported(path, "pre_tokenizer Metaspace", p, "split: false"));
                }
                let scheme = match p.get("prepend_scheme").and_then(Value::as_str) {
                    Some(s) => s.to_owned(),
                    // Files from before `prepend_scheme`.
                    None => if flag(p, "add_prefix_space", true) { "always" } else { "never" }.to_owned(),
                };
                metaspace = Some(scheme);
            }
            "Split" => isolate_literals(vocab, p, path)?,
            _ => {
                return Err(unsupported(
                    path,
                    "pre_tokenizer",
                    p,
                    "Metaspace(\"▁\", split: false) and Split of literal pieces (SentencePiece-style), or ByteLevel",
                ))
            }
        }
    }
    if !(replace || metaspace.is_some()) {
        let shown_pre = if pre.is_null() { normalizer } else { pre };
        return Err(unsupported(path, "pre_tokenizer", shown_pre, "spaces replaced by ▁ (Metaspace or Replace)"));
    }
    vocab.space_prefix = match (prepend, metaspace.as_deref(), double_leading) {
        (true, _, _) => SpacePrefix::EverySegment,
        (false, Some("always"), true) => SpacePrefix::EverySegment,
        (false, Some("always"), false) => SpacePrefix::EverySegmentUnlessSpace,
        (false, Some("first"), false) => SpacePrefix::FirstSegmentUnlessSpace,
        (false, Some("never") | None, false) => SpacePrefix::Never,
        (_, scheme, _) => {
            let scheme = Value::String(format!("{scheme:?} with a doubled leading ▁"));
            return Err(unsupported(path, "Metaspace prepend_scheme", &scheme, "always, first or never"));
        }
    };
    for (t, ty) in vocab.tokens.iter().zip(vocab.token_types.iter_mut()) {
        if *ty == TokenType::Normal && super::spm::is_byte_token(t) {
            *ty = TokenType::Byte;
        }
    }
    Ok(())
}

/// A `Split` pre-tokenizer that isolates literal pieces (`a|b|c`, regex-escaped): those tokens become
/// user-defined, split out of the text without starting a new segment.
fn isolate_literals(vocab: &mut Vocab, split: &Value, path: &str) -> Result<()> {
    let expected = "Split(Regex of literal pieces joined by |, Isolated, not inverted)";
    let pattern = split.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str);
    let isolated = split.get("behavior").and_then(Value::as_str) == Some("Isolated") && !flag(split, "invert", false);
    let (Some(pattern), true) = (pattern, isolated) else {
        return Err(unsupported(path, "pre_tokenizer", split, expected));
    };
    let mut literal = String::new();
    let mut chars = pattern.chars();
    let mut pieces = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) if !e.is_alphanumeric() => literal.push(e),
                _ => return Err(unsupported(path, "pre_tokenizer", split, expected)),
            },
            '|' => pieces.push(std::mem::take(&mut literal)),
            '.' | '^' | '$' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' => {
                return Err(unsupported(path, "pre_tokenizer", split, expected))
            }
            _ => literal.push(c),
        }
    }
    pieces.push(literal);
    for piece in pieces {
        let Some(i) = id_of(&vocab.tokens, &piece).map(|i| i as usize) else {
            return Err(Error::invalid(
                format!("Split piece of {path}"),
                format!("{piece:?}"),
                "a token of the vocabulary",
            ));
        };
        if vocab.token_types[i] == TokenType::Normal {
            vocab.token_types[i] = TokenType::UserDefined;
        }
    }
    Ok(())
}

/// BOS / EOS from a `TemplateProcessing` post-processor (`<s> $A`, `$A </s>`); `ByteLevel` adds nothing.
fn post_processor(vocab: &mut Vocab, post: &Value, path: &str) -> Result<()> {
    for p in parts(post, "processors") {
        match kind_of(p) {
            "ByteLevel" => {}
            "TemplateProcessing" => {
                let empty = Vec::new();
                let single = p.get("single").and_then(Value::as_array).unwrap_or(&empty);
                let mut seen_sequence = false;
                for item in single {
                    if item.get("Sequence").is_some() {
                        seen_sequence = true;
                        continue;
                    }
                    let token = item.get("SpecialToken").and_then(|s| s.get("id")).and_then(Value::as_str);
                    let id = token.and_then(|t| id_of(&vocab.tokens, t));
                    let Some(id) = id else {
                        return Err(unsupported(
                            path,
                            "post_processor single",
                            item,
                            "a special token of the vocabulary",
                        ));
                    };
                    let (slot, add) = if seen_sequence {
                        (&mut vocab.eos, &mut vocab.add_eos)
                    } else {
                        (&mut vocab.bos, &mut vocab.add_bos)
                    };
                    if *add {
                        return Err(unsupported(
                            path,
                            "post_processor single",
                            post,
                            "at most one token before and after $A",
                        ));
                    }
                    *slot = Some(id);
                    *add = true;
                }
            }
            _ => return Err(unsupported(path, "post_processor", p, "TemplateProcessing, ByteLevel or null")),
        }
    }
    Ok(())
}

/// A token named in `tokenizer_config.json`: a string or `{"content": ...}`.
fn config_token(config: &Map<String, Value>, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Applies `tokenizer_config.json`: the BOS / EOS / UNK tokens, `add_bos_token` / `add_eos_token`, and the
/// chat template (a string, or a list of named templates of which `default` is taken).
pub(crate) fn apply_config(vocab: &mut Vocab, text: &str, path: &str) -> Result<()> {
    let config: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| Error::format(path, format!("not a JSON object: {e}")))?;
    for (key, slot) in [("bos_token", &mut vocab.bos), ("eos_token", &mut vocab.eos), ("unk_token", &mut vocab.unk)] {
        if let Some(t) = config_token(&config, key) {
            let id = id_of(&vocab.tokens, &t).ok_or_else(|| {
                Error::invalid(format!("{key} of {path}"), format!("{t:?}"), "a token of the vocabulary")
            })?;
            *slot = Some(id);
        }
    }
    if let Some(b) = config.get("add_bos_token").and_then(Value::as_bool) {
        vocab.add_bos = b;
    }
    if let Some(b) = config.get("add_eos_token").and_then(Value::as_bool) {
        vocab.add_eos = b;
    }
    vocab.chat_template = match config.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => {
            let named = |name: &str| {
                list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(name))?.get("template")?.as_str()
            };
            named("default").map(str::to_owned)
        }
        _ => vocab.chat_template.take(),
    };
    Ok(())
}
