//! `llama` SentencePiece-style BPE (llama.cpp's `llm_tokenizer_spm`): spaces become `▁`, characters are
//! merged pairwise, always taking the adjacent pair whose merged piece has the highest score (leftmost on
//! ties), and characters that are not pieces fall back to `<0xXX>` byte tokens (or `unk`).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::{TokenType, Vocab};

const SPACE: &str = "\u{2581}";

#[derive(Debug, Clone)]
pub(crate) struct Spm {
    byte_ids: [Option<u32>; 256],
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
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
    pub(crate) fn new(vocab: &Vocab) -> Self {
        let mut byte_ids = [None; 256];
        for (i, t) in vocab.tokens.iter().enumerate() {
            if let Some(b) = parse_byte_token(t) {
                byte_ids[b as usize].get_or_insert(i as u32);
            }
        }
        Spm { byte_ids }
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
        let mut syms: Vec<Symbol> = Vec::with_capacity(s.len());
        for (i, (start, c)) in s.char_indices().enumerate() {
            syms.push(Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) });
        }
        let n = syms.len();
        if let Some(last) = syms.last_mut() {
            last.next = None;
        }
        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Symbol], left: Option<usize>, right: Option<usize>| {
            let (Some(l), Some(r)) = (left, right) else { return };
            let piece = &s[syms[l].start..syms[r].start + syms[r].len];
            if let Some(&id) = token_to_id.get(piece) {
                heap.push(Bigram { score: vocab.scores[id as usize], left: l, right: r, len: piece.len() });
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
            match token_to_id.get(piece) {
                Some(&id) => out.push(id),
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
