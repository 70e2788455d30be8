//! CPU twin of `kernels/sample.wgsl`: the same candidate order, the same f32 operations in the same order.
//! See [`crate::ops::sample`] for the algorithm.

use crate::ops::sample::{penalty_entries, MAX_TOP_K};
use crate::ops::StepParams;

/// Everything the pick depended on, for explaining a GPU/CPU difference.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleTrace {
    /// The token picked.
    pub token: u32,
    /// Candidate indices, best first (length `R`: 1 when greedy, else the effective top-k).
    pub candidates: Vec<u32>,
    /// Running sums of the candidate weights (empty when greedy).
    pub cumulative: Vec<f32>,
    /// Candidates kept by top-p (a prefix of `candidates`).
    pub count: usize,
    /// `u * cumulative[count - 1]`: the pick is the first candidate whose running sum exceeds it.
    pub target: f32,
}

/// Monotonic f32 -> u32 key (NaN lowest, below -inf; -0 like +0), as the kernel's `order_key`.
pub fn sample_order_key(v: f32) -> u32 {
    let mut b = v.to_bits();
    if v.is_nan() {
        return 0;
    }
    if b == 0x8000_0000 {
        b = 0;
    }
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

fn pcg(v: u32) -> u32 {
    let s = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277_803_737);
    (w >> 22) ^ w
}

/// The uniform draw in [0, 1) for `seed` (24 bits), bit-identical to the kernel's.
pub fn sample_uniform(seed: u32) -> f32 {
    (pcg(pcg(seed) ^ 0x9E37_79B9) >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// The token the sampling kernel picks from one logits `row` with `params` (see [`sample_trace`]).
pub fn sample(row: &[f32], params: &StepParams) -> u32 {
    sample_trace(row, params).token
}

/// The token the sampling kernel picks with `params.mask` set and `allowed` bound: each id whose bit is
/// clear (word `i / 32`, bit `i % 32`) counts as `-inf`, after any penalty.
pub fn sample_masked(row: &[f32], params: &StepParams, allowed: &[u32]) -> u32 {
    sample_masked_trace(row, params, allowed).token
}

/// [`sample_masked`] with the numbers the pick came from.
pub fn sample_masked_trace(row: &[f32], params: &StepParams, allowed: &[u32]) -> SampleTrace {
    let mut masked = if params.penalty_count > 0 { penalised_row(row, params) } else { row.to_vec() };
    for (i, v) in masked.iter_mut().enumerate() {
        if allowed.get(i / 32).is_none_or(|w| w & (1 << (i % 32)) == 0) {
            *v = f32::NEG_INFINITY;
        }
    }
    sample_trace(&masked, &StepParams { penalty_count: 0, mask: 0, ..*params })
}

/// The candidates the sampling kernel reports with `params.top_logprobs` = `n` (see
/// [`crate::ops::sample::top_candidates`]): the `n` best ids in its order on the row as it ranks it
/// (penalties, then the mask `allowed` if given: word `i / 32`, bit `i % 32`), leaving out any it could not
/// pick (NaN or `-inf` there), each with [`log_probability`] under the raw row, as f32.
pub fn top_logprobs(row: &[f32], params: &StepParams, allowed: Option<&[u32]>, n: usize) -> Vec<(u32, f32)> {
    let mut ranked = if params.penalty_count > 0 { penalised_row(row, params) } else { row.to_vec() };
    if let Some(allowed) = allowed {
        for (i, v) in ranked.iter_mut().enumerate() {
            if allowed.get(i / 32).is_none_or(|w| w & (1 << (i % 32)) == 0) {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    let mut order: Vec<(u32, u32)> = ranked.iter().enumerate().map(|(i, &v)| (sample_order_key(v), i as u32)).collect();
    order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    order
        .iter()
        .take(n)
        .take_while(|&&(key, _)| key > sample_order_key(f32::NEG_INFINITY))
        .map(|&(_, id)| (id, sample_logprob(row, id)))
        .collect()
}

/// What `ops::sample::argmax_rows` writes: each `vocab`-long row's greedy pick, in the sampler's order
/// (the largest [`sample_order_key`], NaN lowest, ties to the lowest index). `vocab` must be at least 1.
pub fn argmax_rows(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits
        .chunks_exact(vocab)
        .map(|row| {
            // `max_by_key` keeps the last of equal keys: scan from the end to keep the first.
            let (i, _) = row.iter().enumerate().rev().max_by_key(|(_, &v)| sample_order_key(v)).unwrap_or((0, &0.0));
            i as u32
        })
        .collect()
}

/// The log-probability of `token` under `row`: log-softmax at temperature 1 of the raw logits, in f64,
/// NaN logits counting as absent (perplexity and scores use it too).
pub fn log_probability(row: &[f32], token: u32) -> f64 {
    let counted = || row.iter().map(|&v| f64::from(v)).filter(|v| !v.is_nan());
    let max = counted().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = counted().map(|v| (v - max).exp()).sum();
    f64::from(row[token as usize]) - max - sum.ln()
}

/// What the sampling kernel writes with `params.logprob` set: [`log_probability`] of the pick, as f32.
pub fn sample_logprob(row: &[f32], token: u32) -> f32 {
    log_probability(row, token) as f32
}

/// The row as the sampling kernel ranks and weighs it: each penalised token's logit `l` becomes
/// `l * scale - offset` (`scale` by the sign of `l`), the same two f32 operations.
pub fn penalised_row(row: &[f32], params: &StepParams) -> Vec<f32> {
    let mut out = row.to_vec();
    let [above, at_or_below] = params.penalty_scale;
    for (token, offset) in penalty_entries(params) {
        if let Some(v) = out.get_mut(token as usize) {
            let scale = if *v > 0.0 { above } else { at_or_below };
            *v = *v * scale - offset;
        }
    }
    out
}

/// The sampling kernel's pick and the numbers it came from. `row` must not be empty.
pub fn sample_trace(row: &[f32], params: &StepParams) -> SampleTrace {
    let penalised;
    let row = if params.penalty_count > 0 {
        penalised = penalised_row(row, params);
        &penalised[..]
    } else {
        row
    };
    // NaN or non-positive temperature: greedy, as the kernel.
    let greedy = params.temperature.is_nan() || params.temperature <= 0.0;
    let rounds = if greedy {
        1
    } else if params.top_k == 0 || params.top_k > MAX_TOP_K {
        MAX_TOP_K as usize
    } else {
        params.top_k as usize
    };
    // (key descending, index ascending): the kernel's exact total order. Only the first `rounds` are
    // wanted: greedy takes the best in one pass; otherwise they are selected (linear), then sorted.
    let candidates: Vec<u32> = if rounds == 1 {
        let mut best = 0;
        for (i, &v) in row.iter().enumerate() {
            if sample_order_key(v) > sample_order_key(row[best]) {
                best = i;
            }
        }
        vec![best as u32]
    } else {
        let mut order: Vec<(u32, u32)> =
            row.iter().enumerate().map(|(i, &v)| (sample_order_key(v), i as u32)).collect();
        let ranks = |a: &(u32, u32), b: &(u32, u32)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        if rounds < order.len() {
            order.select_nth_unstable_by(rounds, ranks);
            order.truncate(rounds);
        }
        order.sort_unstable_by(ranks);
        order.iter().map(|c| c.1).collect()
    };
    let lead = row[candidates[0] as usize];
    let done = |cumulative, count, target| SampleTrace {
        token: candidates[0],
        candidates: candidates.clone(),
        cumulative,
        count,
        target,
    };
    if candidates.len() == 1 || greedy || !lead.is_finite() {
        return done(Vec::new(), 1, 0.0);
    }
    let mut cumulative = Vec::with_capacity(candidates.len());
    let mut weights = Vec::with_capacity(candidates.len());
    let mut total = 0.0f32;
    let mut last_positive = 0;
    for (i, &c) in candidates.iter().enumerate() {
        let v = row[c as usize];
        let w = if v.is_finite() { ((v - lead) / params.temperature).exp() } else { 0.0 };
        if w > 0.0 {
            last_positive = i;
        }
        total += w;
        cumulative.push(total);
        weights.push(w);
    }
    let mut count = candidates.len();
    if params.top_p > 0.0 && params.top_p < 1.0 {
        let limit = params.top_p * total;
        if let Some(i) = cumulative.iter().position(|&c| c >= limit) {
            count = i + 1;
        }
    }
    if params.min_p > 0.0 {
        if let Some(i) = weights[1..count].iter().position(|&w| w < params.min_p) {
            count = i + 1;
        }
    }
    let target = sample_uniform(params.seed) * cumulative[count - 1];
    let pick = cumulative[..count].iter().position(|&c| c > target).unwrap_or(last_positive.min(count - 1));
    SampleTrace { token: candidates[pick], candidates, cumulative, count, target }
}
