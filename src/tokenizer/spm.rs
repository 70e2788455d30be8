//! `llama` SentencePiece-style BPE (llama.cpp's `llm_tokenizer_spm`): spaces become `▁`, characters are
//! merged pairwise, always taking the adjacent pair whose merged piece has the highest score (leftmost on
//! ties), and characters that are not pieces fall back to `<0xXX>` byte tokens (or `unk`). A vocabulary with
//! ranked merges (an HF `tokenizer.json`) merges only the listed pairs, the best-ranked first, as the
//! `tokenizers` library does.

use std::borrow::Cow;
use std::collections::HashMap;

use super::bpe::pair;
use super::merge;
use super::{TokenType, Vocab};
use crate::error::Result;

const SPACE: &str = "\u{2581}";

#[derive(Debug, Clone)]
pub(crate) struct Spm {
    byte_ids: [Option<u32>; 256],
    /// Ranked merges, for a vocabulary that has them and no scores.
    ranked: Option<merge::RankedMerges>,
}

/// Whether a token is a `<0xXX>` byte token.
pub(crate) fn is_byte_token(text: &str) -> bool {
    parse_byte_token(text).is_some()
}

/// The byte a `<0xXX>` token stands for.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

pub(crate) fn token_bytes(text: &str, ty: TokenType) -> Cow<'_, [u8]> {
    // Some converters write no token types: a normal-looking `<0xXX>` piece is then the byte too.
    if matches!(ty, TokenType::Byte | TokenType::Normal | TokenType::Undefined) {
        if let Some(b) = parse_byte_token(text) {
            return Cow::Owned(vec![b]);
        }
    }
    if text.contains(SPACE) {
        Cow::Owned(text.replace(SPACE, " ").into_bytes())
    } else {
        Cow::Borrowed(text.as_bytes())
    }
}

impl Spm {
    pub(crate) fn new(vocab: &Vocab, token_to_id: &HashMap<String, u32>) -> Result<Self> {
        let mut byte_ids = [None; 256];
        for (i, t) in vocab.tokens.iter().enumerate() {
            if let Some(b) = parse_byte_token(t) {
                byte_ids[b as usize].get_or_insert(i as u32);
            }
        }
        // Scores decide where the vocabulary has them (GGUF, SentencePiece); ranked merges otherwise (HF
        // tokenizer.json), as each format's own library does.
        let scored = vocab.scores.iter().any(|&s| s != 0.0);
        let ranked = match vocab.merges.is_empty() || scored {
            true => None,
            false => Some(merge::ranked_merges(&vocab.merges, token_to_id)?),
        };
        Ok(Spm { byte_ids, ranked })
    }

    pub(crate) fn encode(
        &self,
        text: &str,
        space_prefix: bool,
        vocab: &Vocab,
        token_to_id: &HashMap<String, u32>,
        out: &mut Vec<u32>,
    ) {
        let mut s = String::with_capacity(text.len() + 3);
        if space_prefix {
            s.push(' ');
        }
        s.push_str(text);
        let s = s.replace(' ', SPACE);
        if s.is_empty() {
            return;
        }
        if vocab.ignore_merges {
            // HF `ignore_merges`: a word that is a token is taken whole.
            if let Some(&id) = token_to_id.get(s.as_str()) {
                out.push(id);
                return;
            }
        }
        let mut syms = merge::link(
            s.char_indices()
                .map(|(start, c)| (start, c.len_utf8(), token_to_id.get(&s[start..start + c.len_utf8()]).copied())),
        );
        merge::merge_all(&mut syms, |l, r| match &self.ranked {
            // Ranks as scores: rank 0 is the best.
            Some(merges) => merges.get(&pair(l.id?, r.id?)).map(|&(rank, id)| (-f64::from(rank), id)),
            None => {
                let id = *token_to_id.get(&s[l.start..l.start + l.len + r.len])?;
                Some((f64::from(vocab.scores[id as usize]), id))
            }
        });
        for sym in merge::survivors(&syms) {
            match sym.id {
                Some(id) => out.push(id),
                None => {
                    for b in s[sym.start..sym.start + sym.len].bytes() {
                        match self.byte_ids[b as usize] {
                            Some(id) => out.push(id),
                            None => out.extend(vocab.unk),
                        }
                    }
                }
            }
        }
    }
}
