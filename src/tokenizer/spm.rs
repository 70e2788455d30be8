//! `llama` SentencePiece-style BPE (llama.cpp's `llm_tokenizer_spm`): spaces become `▁`, characters are
//! merged pairwise, always taking the adjacent pair whose merged piece has the highest score (leftmost on
//! ties), and characters that are not pieces fall back to `<0xXX>` byte tokens (or `unk`). A vocabulary with
//! ranked merges (an HF `tokenizer.json`) merges only the listed pairs, the best-ranked first, as the
//! `tokenizers` library does.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasherDefault;

use super::bpe::{pair, PairHasher};
use super::{TokenType, Vocab};

const SPACE: &str = "\u{2581}";

#[derive(Debug, Clone)]
pub(crate) struct Spm {
    byte_ids: [Option<u32>; 256],
    /// `left << 32 | right` -> (rank, merged id), when the vocabulary has ranked merges.
    ranked: Option<HashMap<u64, (u32, u32), BuildHasherDefault<PairHasher>>>,
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    /// The token this symbol is (None: a character outside the vocabulary, for byte fallback).
    id: Option<u32>,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
    id: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    // Max-heap: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
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
    pub(crate) fn new(vocab: &Vocab, token_to_id: &HashMap<String, u32>) -> Self {
        let mut byte_ids = [None; 256];
        for (i, t) in vocab.tokens.iter().enumerate() {
            if let Some(b) = parse_byte_token(t) {
                byte_ids[b as usize].get_or_insert(i as u32);
            }
        }
        let ranked = (!vocab.merges.is_empty()).then(|| {
            let mut merges = HashMap::with_capacity_and_hasher(vocab.merges.len(), Default::default());
            for (rank, m) in vocab.merges.iter().enumerate() {
                // Merges whose parts or result are not tokens never apply (checked format: "left right").
                let Some((l, r)) = m.split_once(' ') else { continue };
                let ids = (token_to_id.get(l), token_to_id.get(r), token_to_id.get(format!("{l}{r}").as_str()));
                if let (Some(&li), Some(&ri), Some(&mi)) = ids {
                    merges.entry(pair(li, ri)).or_insert((rank as u32, mi));
                }
            }
            merges
        });
        Spm { byte_ids, ranked }
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
        let mut syms: Vec<Symbol> = Vec::with_capacity(s.len());
        for (i, (start, c)) in s.char_indices().enumerate() {
            let id = token_to_id.get(&s[start..start + c.len_utf8()]).copied();
            syms.push(Symbol { start, len: c.len_utf8(), id, prev: i.checked_sub(1), next: Some(i + 1) });
        }
        let n = syms.len();
        if let Some(last) = syms.last_mut() {
            last.next = None;
        }
        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Symbol], left: Option<usize>, right: Option<usize>| {
            let (Some(l), Some(r)) = (left, right) else { return };
            let len = syms[l].len + syms[r].len;
            let merged = match &self.ranked {
                // Ranks as scores: rank 0 is the best (exact in f32 below 2^24 merges).
                Some(merges) => match (syms[l].id, syms[r].id) {
                    (Some(li), Some(ri)) => merges.get(&pair(li, ri)).map(|&(rank, id)| (-(rank as f32), id)),
                    _ => None,
                },
                None => {
                    token_to_id.get(&s[syms[l].start..syms[l].start + len]).map(|&id| (vocab.scores[id as usize], id))
                }
            };
            if let Some((score, id)) = merged {
                heap.push(Bigram { score, left: l, right: r, len, id });
            }
        };
        for i in 1..n {
            try_add(&mut heap, &syms, Some(i - 1), Some(i));
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            // Stale entry: one side was merged away or grew since it was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len || l.next != Some(b.right) {
                continue;
            }
            syms[b.left].len += r.len;
            syms[b.left].id = Some(b.id);
            syms[b.right].len = 0;
            syms[b.left].next = r.next;
            if let Some(nx) = r.next {
                syms[nx].prev = Some(b.left);
            }
            try_add(&mut heap, &syms, syms[b.left].prev, Some(b.left));
            try_add(&mut heap, &syms, Some(b.left), syms[b.left].next);
        }
        let mut i = Some(0);
        while let Some(k) = i {
            let sym = syms[k];
            let piece = &s[sym.start..sym.start + sym.len];
            match sym.id {
                Some(id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        match self.byte_ids[b as usize] {
                            Some(id) => out.push(id),
                            None => out.extend(vocab.unk),
                        }
                    }
                }
            }
            i = sym.next;
        }
    }
}
