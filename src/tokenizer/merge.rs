//! The merge loop both BPE flavours share: adjacent symbols merge, the best-scored pair first (the leftmost
//! of equal scores), until no pair has a merge. A heap of candidate pairs, stale ones skipped when popped,
//! keeps it O(n log n) in the length of the text (rescanning every pair after each merge is O(n²): 170 ms
//! for one 16 000-letter word).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasherDefault;

use super::bpe::{pair, PairHasher};
use crate::error::{Error, Result};

/// `left << 32 | right` -> (rank, merged token).
pub(crate) type RankedMerges = HashMap<u64, (u32, u32), BuildHasherDefault<PairHasher>>;

/// The `"left right"` merges (rank = position) whose parts and result are tokens (others can never apply;
/// llama.cpp skips them too); the first rank of a pair wins. A merge without a space is an error naming it.
pub(crate) fn ranked_merges(merges: &[String], token_to_id: &HashMap<String, u32>) -> Result<RankedMerges> {
    let mut ranked = RankedMerges::with_capacity_and_hasher(merges.len(), Default::default());
    for (rank, m) in merges.iter().enumerate() {
        let Some((l, r)) = m.split_once(' ') else {
            return Err(Error::invalid(format!("tokenizer merges[{rank}]"), format!("{m:?}"), "\"left right\""));
        };
        let ids = (token_to_id.get(l), token_to_id.get(r), token_to_id.get(format!("{l}{r}").as_str()));
        if let (Some(&li), Some(&ri), Some(&mi)) = ids {
            ranked.entry(pair(li, ri)).or_insert((rank as u32, mi));
        }
    }
    Ok(ranked)
}

/// A piece of the text being merged: `len` bytes from `start` (0 once merged into its left neighbour), the
/// token it is (None: a character that is no token, for byte fallback), and its neighbours.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Symbol {
    pub start: usize,
    pub len: usize,
    pub id: Option<u32>,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Candidate {
    score: f64,
    left: usize,
    right: usize,
    /// `left.len + right.len` when queued: a side that merged since has grown, so the entry is stale.
    len: usize,
    id: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    // Max-heap: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// Symbols for consecutive pieces `(start, len, id)`, linked in order.
pub(crate) fn link(pieces: impl Iterator<Item = (usize, usize, Option<u32>)>) -> Vec<Symbol> {
    let mut syms: Vec<Symbol> = pieces
        .enumerate()
        .map(|(i, (start, len, id))| Symbol { start, len, id, prev: i.checked_sub(1), next: Some(i + 1) })
        .collect();
    if let Some(last) = syms.last_mut() {
        last.next = None;
    }
    syms
}

/// Merges until no adjacent pair has a merge; `merge(left, right)` gives a pair's score and merged token.
pub(crate) fn merge_all(syms: &mut [Symbol], merge: impl Fn(&Symbol, &Symbol) -> Option<(f64, u32)>) {
    let mut heap = BinaryHeap::new();
    let try_add = |heap: &mut BinaryHeap<Candidate>, syms: &[Symbol], left: Option<usize>, right: Option<usize>| {
        let (Some(l), Some(r)) = (left, right) else { return };
        if let Some((score, id)) = merge(&syms[l], &syms[r]) {
            heap.push(Candidate { score, left: l, right: r, len: syms[l].len + syms[r].len, id });
        }
    };
    for i in 1..syms.len() {
        try_add(&mut heap, syms, Some(i - 1), Some(i));
    }
    while let Some(c) = heap.pop() {
        let (l, r) = (syms[c.left], syms[c.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != c.len || l.next != Some(c.right) {
            continue;
        }
        syms[c.left].len += r.len;
        syms[c.left].id = Some(c.id);
        syms[c.right].len = 0;
        syms[c.left].next = r.next;
        if let Some(nx) = r.next {
            syms[nx].prev = Some(c.left);
        }
        try_add(&mut heap, syms, syms[c.left].prev, Some(c.left));
        try_add(&mut heap, syms, Some(c.left), syms[c.left].next);
    }
}

/// The symbols left after merging, in order (the first symbol always survives: merges absorb the right side).
pub(crate) fn survivors(syms: &[Symbol]) -> impl Iterator<Item = &Symbol> {
    let mut at = if syms.is_empty() { None } else { Some(0) };
    std::iter::from_fn(move || {
        let sym = &syms[at?];
        at = sym.next;
        Some(sym)
    })
}
