//! `gpt2` byte-level BPE: bytes mapped to printable characters (GPT-2's `bytes_to_unicode`), a regex
//! pre-tokenizer, then ranked merges inside each pre-token.

use std::collections::HashMap;
use std::hash::Hasher;

use fancy_regex::Regex;

use super::{merge, Vocab};
use crate::error::{Error, Result};

/// GPT-2's pre-tokenizer regex (as in tokenizers' ByteLevel and llama.cpp).
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama-3's pre-tokenizer regex, as its `tokenizer.json` writes it (llama.cpp's `llama-bpe`): contractions
/// in any case, numbers in groups of up to three digits, newlines kept apart.
pub(crate) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Debug, Clone)]
pub(crate) struct Gpt2 {
    regex: Regex,
    /// A pre-token that is a token is taken whole (HF `ignore_merges`; Llama-3).
    ignore_merges: bool,
    /// GPT-2's printable character of each byte.
    char_of_byte: [char; 256],
    /// `smollm`: every numeric character is its own pre-token before the GPT-2 regex runs.
    split_digits: bool,
    /// Id of the one-character token of each byte (None: the byte is not in the vocabulary and is dropped,
    /// as transformers and llama.cpp do).
    byte_ids: [Option<u32>; 256],
    merges: merge::RankedMerges,
    byte_of_char: HashMap<char, u8>,
}

/// A multiplicative hash for the u64 pair keys (the merge lookup is the hot loop of BPE; SipHash is ~3x slower).
#[derive(Default)]
pub(crate) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 32;
    }
}

pub(crate) fn pair(l: u32, r: u32) -> u64 {
    (u64::from(l) << 32) | u64::from(r)
}

/// GPT-2's reversible byte -> printable character map.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    map
}

impl Gpt2 {
    pub(crate) fn new(vocab: &Vocab, token_to_id: &HashMap<String, u32>) -> Result<Self> {
        let (pattern, split_digits) = match vocab.pre.as_deref() {
            None | Some("gpt-2") | Some("gpt2") => (GPT2_PATTERN, false),
            Some("smollm") => (GPT2_PATTERN, true),
            Some("llama-bpe") | Some("llama3") => (LLAMA3_PATTERN, false),
            Some(other) => {
                return Err(Error::invalid(
                    "tokenizer.ggml.pre",
                    other,
                    "absent, `gpt-2`, `smollm` or `llama-bpe` (gpt2 tokenizers)",
                ))
            }
        };
        let regex = Regex::new(pattern).map_err(|e| Error::invalid("pre-tokenizer regex", e, "a valid regex"))?;
        let chars = bytes_to_unicode();
        let mut byte_ids = [None; 256];
        let mut byte_of_char = HashMap::with_capacity(256);
        for (b, c) in chars.iter().enumerate() {
            byte_ids[b] = token_to_id.get(c.to_string().as_str()).copied();
            byte_of_char.insert(*c, b as u8);
        }
        let merges = merge::ranked_merges(&vocab.merges, token_to_id)?;
        let ignore_merges = vocab.ignore_merges;
        Ok(Gpt2 { regex, ignore_merges, char_of_byte: chars, split_digits, byte_ids, merges, byte_of_char })
    }

    pub(crate) fn encode(&self, text: &str, token_to_id: &HashMap<String, u32>, out: &mut Vec<u32>) {
        if self.split_digits {
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    self.encode_regex(&text[start..i], token_to_id, out);
                    self.encode_regex(&text[i..i + c.len_utf8()], token_to_id, out);
                    start = i + c.len_utf8();
                }
            }
            self.encode_regex(&text[start..], token_to_id, out);
        } else {
            self.encode_regex(text, token_to_id, out);
        }
    }

    fn encode_regex(&self, text: &str, token_to_id: &HashMap<String, u32>, out: &mut Vec<u32>) {
        let mut last = 0;
        for m in self.regex.find_iter(text) {
            // The regex cannot fail on plain text (no backtrack limit is reached by these patterns);
            // on an error the rest is encoded as one piece rather than lost.
            let Ok(m) = m else { break };
            if m.start() > last {
                self.bpe_word(&text[last..m.start()], token_to_id, out);
            }
            self.bpe_word(m.as_str(), token_to_id, out);
            last = m.end();
        }
        if last < text.len() {
            self.bpe_word(&text[last..], token_to_id, out);
        }
    }

    fn bpe_word(&self, word: &str, token_to_id: &HashMap<String, u32>, out: &mut Vec<u32>) {
        if self.ignore_merges {
            let mapped: String = word.bytes().map(|b| self.char_of_byte[b as usize]).collect();
            if let Some(&id) = token_to_id.get(&mapped) {
                out.push(id);
                return;
            }
        }
        // Bytes missing from the vocabulary are dropped, as transformers and llama.cpp do.
        let mut syms = merge::link(
            word.bytes().enumerate().filter_map(|(i, b)| self.byte_ids[b as usize].map(|id| (i, 1, Some(id)))),
        );
        // The best-ranked adjacent pair first (leftmost on ties), as GPT-2 does.
        merge::merge_all(&mut syms, |l, r| {
            self.merges.get(&pair(l.id?, r.id?)).map(|&(rank, id)| (-f64::from(rank), id))
        });
        out.extend(merge::survivors(&syms).filter_map(|s| s.id));
    }

    pub(crate) fn token_bytes(&self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match self.byte_of_char.get(&c) {
                Some(&b) => out.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out
    }
}
