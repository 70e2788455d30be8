// Token sampling from one logits row: greedy argmax, or temperature / top-k / top-p with a seeded hash RNG.
// The sampling parameters come from the per-step parameters (`ops::StepParams`), so the two planned
// dispatches never change between steps. With `params.row == EACH_ROW` every row of the logits is sampled
// with its own parameters, mask, candidate scratch and token slot (grid y = row; batched decoding of
// several sequences); otherwise one row, and grid y is 1.
//
// Candidates are ranked by the exact total order (value descending, index ascending) on an integer key of
// each logit, so candidate selection has no rounding at all and ties go to the lowest index.
//   pass 1 `sample_partial`: one workgroup per chunk of the row finds the chunk's top R candidates, by R rounds
//          of "best element strictly after the previous pick" (a workgroup argmax each round) when R is small,
//          else by a filter that bounds the R-th best and sorts only the logits that pass it (bitonic, in
//          workgroup memory: at most SORT elements, 8 bytes each);
//   pass 2 `sample_merge`: one workgroup merges the groups' sorted lists (a k-way merge) into the global top R,
//          then one invocation computes the weights, the top-p prefix and the pick in a fixed sequential order,
//          exactly as the CPU twin `reference::sample` does.
// R = 1 when greedy (temperature == 0), else top_k (top_k == 0 means MAX_K), or the step's top_logprobs if
// more (the best candidates are then reported with their log-probabilities; sampling still picks among its
// own R). Needs no subgroups.
// Penalised tokens (the step's sorted list) are ranked and weighted by `logit * scale - offset` instead of
// their logit; with `step.mask` set, tokens whose bit in `allowed` is clear rank and weigh as -inf (never
// picked while an allowed token has a finite logit). The logits buffer is left as the model wrote it.

struct Params {
    vocab: u32,
    rows: u32,
    // Row to sample, LAST_OF_STEP for row `step.n - 1`, or EACH_ROW.
    row: u32,
    // Logits per workgroup in pass 1; `groups` of them cover the row.
    chunk: u32,
    groups: u32,
    // Elements of `token` per row (the first row's room when one row is sampled).
    token_stride: u32,
    // Words of `allowed` per row (EACH_ROW; one mask otherwise).
    mask_words: u32,
    _pad: u32,
}

#include step

@group(0) @binding(0) var<uniform> params: Params;
// One entry per sampled row (the step uniform's buffer when one row is sampled). Read-only storage, so
// values read at a workgroup-uniform row stay uniform (barriers depend on them).
@group(0) @binding(1) var<storage, read> steps: array<Step>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
// Per group, MAX_K slots of (key, index); the first R are filled. Then, per group, the chunk's (max logit,
// sum of exp(logit - max)) as f32 bits, when the step asks for the log-probability.
// Rows sampled with EACH_ROW have one such block each.
@group(0) @binding(3) var<storage, read_write> cands: array<vec2<u32>>;
// From element `row * token_stride`: the pick, then the log-probabilities asked for.
@group(0) @binding(4) var<storage, read_write> token: array<u32>;
// One bit per token id (bit i % 32 of word i / 32), read when `step.mask` is set; `mask_words` per row.
@group(0) @binding(5) var<storage, read> allowed: array<u32>;

const LAST_OF_STEP: u32 = 0xFFFFFFFFu;
const EACH_ROW: u32 = 0xFFFFFFFEu;
// The id of a reported candidate slot that holds none.
const NO_TOKEN: u32 = 0xFFFFFFFFu;
// Ranks after every real candidate (no index equals u32::MAX).
const SENTINEL: vec2<u32> = vec2<u32>(0u, 0xFFFFFFFFu);
// Ranks before every real candidate (no logit has key u32::MAX): the threshold before round 0.
const BEFORE_ALL: vec2<u32> = vec2<u32>(0xFFFFFFFFu, 0u);

// Reduction slots for the larger of the two entries' workgroups (WG for pass 1, MAX_GROUPS for pass 2).
var<workgroup> red: array<vec2<u32>, max(WG, MAX_GROUPS)>;
var<workgroup> top: array<vec2<u32>, MAX_K>;

// The step uniform holds this many penalty entries (two per vec4).
const MAX_PENALTIES: u32 = 64u;

// Penalty entry j of `row`'s parameters: (token, offset bits).
fn penalty_entry(row: u32, j: u32) -> vec2<u32> {
    let pair = steps[row].penalties[j / 2u];
    if (j & 1u) == 0u {
        return pair.xy;
    }
    return pair.zw;
}

// Logit i of the row as sampling sees it: -inf when masked out, penalised when i is in the step's list
// (binary search).
fn sampled_logit(row: u32, base: u32, i: u32) -> f32 {
    let v = logits[base + i];
    // One uniform test on the common path (no mask, no penalties): each extra one costs ~5% on lavapipe.
    if (steps[row].mask | steps[row].penalty_count) == 0u {
        return v;
    }
    if steps[row].mask != 0u && (allowed[row * params.mask_words + (i >> 5u)] & (1u << (i & 31u))) == 0u {
        return neg_inf();
    }
    let count = min(steps[row].penalty_count, MAX_PENALTIES);
    if count == 0u {
        return v;
    }
    var lo = 0u;
    var hi = count;
    while lo < hi {
        let mid = (lo + hi) / 2u;
        if penalty_entry(row, mid).x < i {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    if lo == count || penalty_entry(row, lo).x != i {
        return v;
    }
    let scale = select(steps[row].penalty_scale.y, steps[row].penalty_scale.x, v > 0.0);
    return v * scale - bitcast<f32>(penalty_entry(row, lo).y);
}

// Monotonic map f32 -> u32 (larger logit, larger key). NaN maps to 0, below -inf; -0 maps like +0.
fn order_key(v: f32) -> u32 {
    var b = bitcast<u32>(v);
    if (b & 0x7F800000u) == 0x7F800000u && (b & 0x007FFFFFu) != 0u {
        return 0u;
    }
    if b == 0x80000000u {
        b = 0u;
    }
    if (b & 0x80000000u) != 0u {
        return ~b;
    }
    return b | 0x80000000u;
}

fn key_value(k: u32) -> f32 {
    if (k & 0x80000000u) != 0u {
        return bitcast<f32>(k & 0x7FFFFFFFu);
    }
    return bitcast<f32>(~k);
}

// Key of a finite logit (not NaN, not +-inf).
fn key_finite(k: u32) -> bool {
    return (bitcast<u32>(key_value(k)) & 0x7F800000u) != 0x7F800000u;
}

// Whether candidate `a` ranks before `b`.
fn ranks_before(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x > b.x || (a.x == b.x && a.y < b.y);
}

// The best-ranked of every invocation's `c` in a workgroup of `width` (a power of two <= WG); all
// invocations get it. Uniform control flow only.
fn workgroup_best(c: vec2<u32>, lid: u32, width: u32) -> vec2<u32> {
    red[lid] = c;
    workgroupBarrier();
    for (var stride = width / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride && ranks_before(red[lid + stride], red[lid]) {
            red[lid] = red[lid + stride];
        }
        workgroupBarrier();
    }
    let best = red[0];
    workgroupBarrier();
    return best;
}

fn greedy(row: u32) -> bool {
    return !(steps[row].temperature > 0.0);
}

// Candidates sampling picks among: 1 when greedy, else top_k (0 or above MAX_K: MAX_K).
fn sampling_rounds(row: u32) -> u32 {
    if greedy(row) {
        return 1u;
    }
    if steps[row].top_k == 0u || steps[row].top_k > MAX_K {
        return MAX_K;
    }
    return steps[row].top_k;
}

// Candidates kept: those sampling picks among, or the `top_logprobs` to report if more (at most MAX_K).
fn rounds(row: u32) -> u32 {
    return max(sampling_rounds(row), min(steps[row].top_logprobs, MAX_K));
}

// Whether the step reports log-probabilities (of the pick, or of the best candidates).
fn reports_log_sum(row: u32) -> bool {
    return (steps[row].logprob | steps[row].top_logprobs) != 0u;
}

// The first logit of `row` (sampled row `row` of EACH_ROW; else the one row asked for).
fn row_base(row: u32) -> u32 {
    var r = params.row;
    if r == EACH_ROW {
        r = row;
    }
    if r == LAST_OF_STEP {
        r = clamp(steps[row].n, 1u, params.rows) - 1u;
    }
    return min(r, params.rows - 1u) * params.vocab;
}

// Row `row`'s block of `cands` (one block when one row is sampled).
fn cand_base(row: u32) -> u32 {
    return row * params.groups * (MAX_K + 1u);
}

// PCG hash (Jarzynski & Olano 2020), applied twice so consecutive seeds give unrelated draws.
fn pcg(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

// Uniform in [0, 1) with 24 bits: exact in f32 on any device.
fn uniform01(seed: u32) -> f32 {
    return f32(pcg(pcg(seed) ^ 0x9E3779B9u) >> 8u) * (1.0 / 16777216.0);
}

// Candidate `i` of the row: its (penalised) logit's key and its index.
fn chunk_candidate(row: u32, base: u32, i: u32) -> vec2<u32> {
    return vec2<u32>(order_key(sampled_logit(row, base, i)), i);
}

// `c` if it ranks after `threshold` and before `best`, else `best`.
fn better_after(threshold: vec2<u32>, c: vec2<u32>, best: vec2<u32>) -> vec2<u32> {
    if ranks_before(threshold, c) && ranks_before(c, best) {
        return c;
    }
    return best;
}

// Pass-1 candidates by R rounds of a workgroup argmax over the elements ranked after the previous pick:
// 1 barrier tree per round, cheapest for small R (greedy: one round).
fn partial_by_rounds(row: u32, g: u32, start: u32, end: u32, base: u32, r_count: u32, lid: u32) {
    var threshold = BEFORE_ALL;
    for (var k = 0u; k < r_count; k++) {
        var best = SENTINEL;
        // Two loops, so the common one (no penalties, no mask) keeps its plain body (lavapipe, greedy over
        // 49152 logits: 0.35 ms, 0.5 with the penalty lookup inlined in it).
        if steps[row].penalty_count == 0u && steps[row].mask == 0u {
            for (var i = start + lid; i < end; i += WG) {
                best = better_after(threshold, vec2<u32>(order_key(logits[base + i]), i), best);
            }
        } else {
            for (var i = start + lid; i < end; i += WG) {
                best = better_after(threshold, chunk_candidate(row, base, i), best);
            }
        }
        threshold = workgroup_best(best, lid, WG);
        if lid == 0u {
            cands[cand_base(row) + g * MAX_K + k] = threshold;
        }
    }
}

var<workgroup> sorted: array<vec2<u32>, SORT>;
var<workgroup> cand_count: atomic<u32>;
var<workgroup> cand_total: u32;

// Pass 1 by filter splits its chunk into this many runs (run q: logits q, q + RUNS, ...); their maxima bound
// the threshold (at least MAX_K, a power of two <= SORT).
const RUNS: u32 = 128u;
// The filter's candidates fit in `sorted` while a run holds at most SORT / MAX_K logits.
const FILTER_MAX_CHUNK: u32 = RUNS * (SORT / MAX_K);

// Sorts `sorted[0..n]` best first (bitonic; `n` a workgroup-uniform power of two <= SORT).
fn bitonic_sort(n: u32, lid: u32) {
    for (var size = 2u; size <= n; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            for (var t = lid; t < n / 2u; t += WG) {
                let i = (t / stride) * 2u * stride + t % stride;
                let a = sorted[i];
                let b = sorted[i + stride];
                // Blocks with bit `size` clear end up best first; the last merge (size == n) sorts all so.
                if ranks_before(b, a) == ((i & size) == 0u) {
                    sorted[i] = b;
                    sorted[i + stride] = a;
                }
            }
            workgroupBarrier();
        }
    }
}

// Pass-1 candidates by filter, sorting only the logits that can be in the chunk's top R:
//   1. the chunk's RUNS runs each give their best logit; sorting these maxima gives T, the R-th best. Those
//      R maxima are distinct logits ranked at or before T, so the chunk's R best all rank at or before T;
//   2. the logits ranked at or before T lie in those R runs only (any other run's best ranks after T), so
//      at most R * run length <= SORT of them: they are gathered and sorted.
// Typical rows keep about 2R of the chunk's logits, so both sorts are small (RUNS, then next_pow2(count)):
// lavapipe, top-k 40 over 32 000 logits, pass 1 takes 0.7 ms against 4.6 ms for a bitonic sort of the
// whole chunk. Runs are strided so that neighbouring invocations read neighbouring logits.
fn partial_by_filter(row: u32, g: u32, start: u32, end: u32, base: u32, r_count: u32, lid: u32) {
    for (var q = lid; q < RUNS; q += WG) {
        var best = SENTINEL;
        for (var i = start + q; i < end; i += RUNS) {
            let c = chunk_candidate(row, base, i);
            if ranks_before(c, best) {
                best = c;
            }
        }
        sorted[q] = best;
    }
    if lid == 0u {
        atomicStore(&cand_count, 0u);
    }
    workgroupBarrier();
    bitonic_sort(RUNS, lid);
    let threshold = sorted[r_count - 1u];
    workgroupBarrier();
    for (var i = start + lid; i < end; i += WG) {
        let c = chunk_candidate(row, base, i);
        if !ranks_before(threshold, c) {
            let slot = atomicAdd(&cand_count, 1u);
            if slot < SORT {
                sorted[slot] = c;
            }
        }
    }
    workgroupBarrier();
    if lid == 0u {
        cand_total = min(atomicLoad(&cand_count), SORT);
    }
    let count = workgroupUniformLoad(&cand_total);
    let n = 1u << (32u - countLeadingZeros(max(count, r_count) - 1u));
    for (var i = count + lid; i < n; i += WG) {
        sorted[i] = SENTINEL;
    }
    workgroupBarrier();
    bitonic_sort(n, lid);
    for (var k = lid; k < r_count; k += WG) {
        cands[cand_base(row) + g * MAX_K + k] = sorted[k];
    }
}

// -inf (a bitcast is not a constant expression in naga).
fn neg_inf() -> f32 {
    return bitcast<f32>(0xFF800000u);
}

// Whether a logit counts in the log-sum-exp: not NaN, not -inf (tested on the bits: WGSL lets compilers
// assume floats are finite).
fn counts_in_sum(v: f32) -> bool {
    let b = bitcast<u32>(v);
    return (b & 0x7FFFFFFFu) <= 0x7F800000u && b != 0xFF800000u;
}

// Two (max, sum of exp(x - max)) summaries as one; an empty one is (-inf, 0).
fn merge_log_sum(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    if bitcast<u32>(m) == 0xFF800000u {
        return vec2<f32>(neg_inf(), 0.0);
    }
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// The chunk's log-sum-exp summary of the raw logits (NaN and -inf add nothing), into the group's slot after
// the candidate slots. Uniform control flow (barriers).
fn chunk_log_sum(row: u32, g: u32, start: u32, end: u32, base: u32, lid: u32) {
    var acc = vec2<f32>(neg_inf(), 0.0);
    for (var i = start + lid; i < end; i += WG) {
        let v = logits[base + i];
        if counts_in_sum(v) {
            acc = merge_log_sum(acc, vec2<f32>(v, 1.0));
        }
    }
    red[lid] = bitcast<vec2<u32>>(acc);
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            let merged = merge_log_sum(bitcast<vec2<f32>>(red[lid]), bitcast<vec2<f32>>(red[lid + stride]));
            red[lid] = bitcast<vec2<u32>>(merged);
        }
        workgroupBarrier();
    }
    if lid == 0u {
        cands[cand_base(row) + params.groups * MAX_K + g] = red[0];
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn sample_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y;
    let g = wg.x;
    let start = g * params.chunk;
    let end = min(start + params.chunk, params.vocab);
    let base = row_base(row);
    let r_count = rounds(row);
    if reports_log_sum(row) {
        chunk_log_sum(row, g, start, end, base, lid);
    }
    if r_count > FILTER_ABOVE && params.chunk <= FILTER_MAX_CHUNK {
        partial_by_filter(row, g, start, end, base, r_count, lid);
    } else {
        partial_by_rounds(row, g, start, end, base, r_count, lid);
    }
}

// The pick among the sorted candidates `top[0..n]`, one invocation, fixed order (mirrored by the CPU twin).
fn pick(row: u32, n: u32) -> u32 {
    let lead = top[0];
    if n == 1u || greedy(row) || !key_finite(lead.x) {
        return lead.y;
    }
    let m = key_value(lead.x);
    var cum: array<f32, MAX_K>;
    var weight: array<f32, MAX_K>;
    var total = 0.0;
    var last_positive = 0u;
    for (var i = 0u; i < n; i++) {
        let c = top[i];
        var w = 0.0;
        if c.y != SENTINEL.y && key_finite(c.x) {
            w = exp((key_value(c.x) - m) / steps[row].temperature);
        }
        if w > 0.0 {
            last_positive = i;
        }
        total += w;
        cum[i] = total;
        weight[i] = w;
    }
    var count = n;
    if steps[row].top_p > 0.0 && steps[row].top_p < 1.0 {
        let limit = steps[row].top_p * total;
        for (var i = 0u; i < n; i++) {
            if cum[i] >= limit {
                count = i + 1u;
                break;
            }
        }
    }
    // min-p: the weights fall along the candidates (the lead's is 1), so the kept ones are a prefix.
    if steps[row].min_p > 0.0 {
        for (var i = 1u; i < count; i++) {
            if weight[i] < steps[row].min_p {
                count = i;
                break;
            }
        }
    }
    let goal = uniform01(steps[row].seed) * cum[count - 1u];
    for (var i = 0u; i < count; i++) {
        if cum[i] > goal {
            return top[i].y;
        }
    }
    return top[min(last_positive, count - 1u)].y;
}

// A k-way merge of the groups' sorted lists: invocation g holds the head of group g's list; each round the
// best head is taken and its owner (the index is unique across groups) advances. Needs groups <= MAX_GROUPS,
// a power of two <= WG; the small workgroup keeps the R sequential rounds short.
@compute @workgroup_size(MAX_GROUPS)
fn sample_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y;
    let r_count = rounds(row);
    let cand0 = cand_base(row);
    let slot = row * params.token_stride;
    var head = 0u;
    for (var r = 0u; r < r_count; r++) {
        var c = SENTINEL;
        if lid < params.groups && head < r_count {
            c = cands[cand0 + lid * MAX_K + head];
        }
        let best = workgroup_best(c, lid, MAX_GROUPS);
        if c.y != SENTINEL.y && c.y == best.y {
            head += 1u;
        }
        if lid == 0u {
            top[r] = best;
        }
    }
    if lid == 0u {
        let picked = pick(row, sampling_rounds(row));
        token[slot] = picked;
        if reports_log_sum(row) {
            var acc = vec2<f32>(neg_inf(), 0.0);
            for (var g = 0u; g < params.groups; g++) {
                acc = merge_log_sum(acc, bitcast<vec2<f32>>(cands[cand0 + params.groups * MAX_K + g]));
            }
            let log_sum = acc.x + log(acc.y);
            // Elements only within the row's slot (a write past it could land on another row's pick).
            let room = min(params.token_stride, arrayLength(&token) - min(slot, arrayLength(&token)));
            if steps[row].logprob != 0u && room > 1u {
                token[slot + 1u] = bitcast<u32>(logits[row_base(row) + picked] - log_sum);
            }
            // The best candidates as sampling ranks them; one it could never pick (masked, -inf, NaN, or
            // past the vocabulary) is reported as id NO_TOKEN with -inf.
            let shown = min(min(steps[row].top_logprobs, MAX_K), (max(room, 2u) - 2u) / 2u);
            for (var j = 0u; j < shown; j++) {
                let c = top[j];
                // Keys at or below -inf's (0x007FFFFF) are -inf and NaN: compared as bits, not floats.
                let pickable = c.y != SENTINEL.y && c.x > 0x007FFFFFu;
                var lp = neg_inf();
                if pickable {
                    lp = logits[row_base(row) + c.y] - log_sum;
                }
                token[slot + 2u + 2u * j] = select(NO_TOKEN, c.y, pickable);
                token[slot + 3u + 2u * j] = bitcast<u32>(lp);
            }
        }
    }
}

// Greedy picks of every row: `token[r]` is the best-ranked index of row r (the order above: NaN lowest, ties
// to the lowest index). One workgroup per row; no penalties, mask or log-probability. Speculative
// verification reads these `rows` ids back instead of the rows' logits.
@compute @workgroup_size(WG)
fn argmax_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wg.x * params.vocab;
    var best = SENTINEL;
    for (var i = lid; i < params.vocab; i += WG) {
        let c = vec2<u32>(order_key(logits[base + i]), i);
        if ranks_before(c, best) {
            best = c;
        }
    }
    let winner = workgroup_best(best, lid, WG);
    if lid == 0u {
        token[wg.x] = winner.y;
    }
}
