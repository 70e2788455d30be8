// Grouped-query attention over the KV cache (`src/kv_cache.rs` layout: per slot `[2][kv_heads][capacity][HD]`,
// K then V). Query head h reads KV head h / G. Scores are pre-scaled by 1/sqrt(HD) (folded into q); online
// softmax in f32. Position and length come from the per-step uniform, so dispatches never change per step.
//
// Entries:
// - `decode`: the last query row of the step (row n-1, position pos+n-1) over context pos+n. One workgroup
//   per (KV head, chunk of the sequence): it reads its K/V once for all G query heads of the group. Without
//   SPLIT there is one chunk (the whole capacity) and it writes the normalised output; with SPLIT it writes
//   (max, sum, unnormalised acc) partials; chunks past the context exit at once (merge skips them).
// - `decode_lanes` (CPU drivers): the same result as `decode`, mapped for SIMD lanes: one workgroup
//   of WL lanes per KV head (with SPLIT, per KV head and chunk, writing partials for `merge`), lane j takes
//   positions j, j+WL, ... with its own online softmax (max, sum and G*HD accumulators in registers), q read
//   once from a uniform (a SIMD gather on lavapipe, where workgroup and storage loads are per-lane loops);
//   the WL partial softmaxes merge once at the end, by subgroup reductions (SUBGROUPS, launcher: the WL
//   lanes are one subgroup) or in workgroup memory. No barrier in the main loop, and each K/V element is
//   read by exactly one lane. (Launcher: HD a multiple of 32 up to 128 and G <= 8, for the register
//   layout below.)
// - `merge`: combines the chunk partials of one query head (flash-decoding's second pass).
// - `prefill`: n query rows at positions pos..pos+n, causal over cache positions 0..pos+n. One workgroup per
//   (query head, WG query rows); each thread owns one query row; K/V tiles of TK positions are staged in
//   workgroup memory and shared by the WG rows.
// - `prefill_lanes` (CPU drivers, SUBGROUPS): the same result as `prefill`, mapped for SIMD lanes (see there).
// BATCH (`decode`, `decode_lanes`, `merge`): rows of different sequences in one dispatch (batched decoding).
// Row r of q is the query of sequence `batch_rows[r].x` at position `batch_rows[r].y`, over that sequence's
// positions 0..=y, which start `seq_stride` elements per sequence into the slot; grid z (merge: y) is the row.

struct Params {
    heads: u32,
    kv_heads: u32,
    capacity: u32,
    chunk_len: u32,
    n_chunks: u32,
    scale: f32,
    // Elements from one sequence to the next in the slot (BATCH).
    seq_stride: u32,
    _pad1: u32,
}

// Mirrors `ops::StepParams`.
#include step

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
#if QUNI
@group(0) @binding(2) var<uniform> qu: array<vec4<f32>, QV4>;
#else
@group(0) @binding(2) var<storage, read> q: array<f32>;
#endif
// F16: the cache holds f16, read as u32 pairs with unpack2x16float (half the loads of f16 elements, which
// lavapipe fetches one per-lane loop each; no shader-f16 needed to read it).
// KVTEX: the slot is an rgba32uint texture of the same bytes (`src/kv_cache.rs`): 16 bytes per texel,
// KV_ROW texels per row; one texel fetch is one SIMD gather on lavapipe.
#if KVTEX
#if IMGREAD
@group(0) @binding(3) var kv_tex: texture_storage_2d<rgba32uint, read>;
#else
@group(0) @binding(3) var kv_tex: texture_2d<u32>;
#endif
const KV_ROW: u32 = 4096u;

fn kv_texel(t: u32) -> vec4<u32> {
#if IMGREAD
    return textureLoad(kv_tex, vec2<u32>(t % KV_ROW, t / KV_ROW));
#else
    return textureLoad(kv_tex, vec2<u32>(t % KV_ROW, t / KV_ROW), 0);
#endif
}
#elif F16
@group(0) @binding(3) var<storage, read> kv: array<u32>;
#else
@group(0) @binding(3) var<storage, read> kv: array<f32>;
#endif

#if F16
// Four f16 from a pair of words.
fn kv_f16x4(pair: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(pair.x), unpack2x16float(pair.y));
}
#endif

// Cache elements i .. i+3 (i a multiple of 4).
fn kv4(i: u32) -> vec4<f32> {
#if KVTEX && F16
    let w = kv_texel(i >> 3u);
    return kv_f16x4(select(w.xy, w.zw, (i & 4u) == 4u));
#elif KVTEX
    return bitcast<vec4<f32>>(kv_texel(i >> 2u));
#elif F16
    let o = i >> 1u;
    return kv_f16x4(vec2<u32>(kv[o], kv[o + 1u]));
#else
    return vec4<f32>(kv[i], kv[i + 1u], kv[i + 2u], kv[i + 3u]);
#endif
}
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;
#if BATCH
@group(0) @binding(6) var<storage, read> batch_rows: array<vec2<u32>>;
#endif

// The i4-th vec4 of q (QUNI: q is a uniform of QV4 vec4, every lane reading the same value).
fn q4(i4: u32) -> vec4<f32> {
#if QUNI
    return qu[i4];
#else
    let i = 4u * i4;
    return vec4<f32>(q[i], q[i + 1u], q[i + 2u], q[i + 3u]);
#endif
}

// A finite "minus infinity": exp(NEG - finite) is exactly 0 and no inf arithmetic is needed.
const NEG: f32 = -3.0e38;
// The V pass of `decode` maps threads to (position lane, head-dim quad): VQ quads of a row side by side
// (coalesced 16-byte loads), PL position lanes taking positions t = lane, lane + PL, ... of each tile, so a
// tile's V rows are read in WG / PL rounds by all threads at once (one thread per dimension looped over all
// WG positions: on an H100 that serial chain of loads cost ~30 µs per tile). QPT quads per thread when a row
// has more quads than the workgroup has threads.
const HQ: u32 = HD / 4u;
const VQ: u32 = min(HQ, WG);
const PL: u32 = WG / VQ;
const QPT: u32 = (HQ + WG - 1u) / WG;

var<workgroup> q_sh: array<vec4<f32>, G * HQ>;
var<workgroup> s_sh: array<f32, G * WG>;
var<workgroup> m_sh: array<f32, G>;
var<workgroup> c_sh: array<f32, G>;
// The position lanes' partial V sums, merged once per workgroup.
var<workgroup> v_sh: array<vec4<f32>, WG>;

fn context_len() -> u32 {
    return min(step.pos + step.n, params.capacity);
}

fn last_row() -> u32 {
    return max(step.n, 1u) - 1u;
}

// What a decode workgroup of dispatch row `z` serves: its query row, context length, the offset of its
// sequence in the slot, and its block of partials (one per row).
struct RowSpan {
    row: u32,
    ctx: u32,
    base: u32,
    part: u32,
}

fn row_span(z: u32) -> RowSpan {
#if BATCH
    let e = batch_rows[z];
    return RowSpan(z, min(e.y + 1u, params.capacity), e.x * params.seq_stride, z);
#else
    return RowSpan(last_row(), context_len(), 0u, 0u);
#endif
}

// Positions per chunk: params.chunk_len, or with chunk_len = 0 the context cut into n_chunks even chunks
// (`decode_lanes` with SPLIT, where the point is equal work per workgroup at every context).
fn chunk_length(ctx: u32) -> u32 {
    return select(params.chunk_len, (ctx + params.n_chunks - 1u) / params.n_chunks, params.chunk_len == 0u);
}

// Quad i of the cache stream at index `base`, zero at and past quad `end` (a key row's end, when HQ is not
// a multiple of the quads read per turn; a tile's positions past the context). The clamped address keeps
// the load in bounds, so every lane issues its loads unconditionally.
fn kv_quad(base: u32, i: u32, end: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), kv4(base + 4u * min(i, end - 1u)), i < end);
}

@compute @workgroup_size(WG)
fn decode(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let kvh = wg.x;
    let chunk = wg.y;
    let span = row_span(wg.z);
    let ctx = span.ctx;
    let row = span.row;
    let start = chunk * chunk_length(ctx);
    let end = min(start + chunk_length(ctx), ctx);
    // Chunks past the context do nothing: `merge` reads only the chunks the context reaches.
    if start >= ctx {
        return;
    }
    let width = params.heads * HD;
    let q0 = (row * width + (kvh * G) * HD) / 4u;
    for (var i = lid; i < G * HQ; i += WG) {
        q_sh[i] = q4(q0 + i) * params.scale;
    }
    if lid < G {
        m_sh[lid] = NEG;
    }
    // This thread's V slot: quads vq + j * WG of the positions lane, lane + PL, ... (threads past PL * VQ,
    // when VQ does not divide WG, only score keys).
    let lane = lid / VQ;
    let vq = lid % VQ;
    let v_live = lane < PL;
    var acc: array<vec4<f32>, G * QPT>;
    // Unnormalised softmax sums of this thread's positions (equal across a lane's threads).
    var lsum: array<f32, G>;
    workgroupBarrier();
    let k_base = span.base + kvh * params.capacity * HD;
    let v_base = span.base + (params.kv_heads + kvh) * params.capacity * HD;
    for (var t0 = start; t0 < end; t0 += WG) {
        let cnt = min(WG, end - t0);
        // 1. One key per thread, scored against all G query heads (the key is read once).
        let p = t0 + lid;
        var dots: array<f32, G>;
        if p < end {
            // Eight quads of the key per turn, all loaded before any is used: a GPU keeps the loads in
            // flight whether or not its compiler unrolls the loop (one quad per turn cost a memory round
            // trip each: on an H100 ~10 µs of a one-position step; four per turn halved the step's time).
            let kb = k_base + p * HD;
            for (var d4 = 0u; d4 < HQ; d4 += 8u) {
                let k = array<vec4<f32>, 8>(kv_quad(kb, d4, HQ), kv_quad(kb, d4 + 1u, HQ), kv_quad(kb, d4 + 2u, HQ),
                                            kv_quad(kb, d4 + 3u, HQ), kv_quad(kb, d4 + 4u, HQ), kv_quad(kb, d4 + 5u, HQ),
                                            kv_quad(kb, d4 + 6u, HQ), kv_quad(kb, d4 + 7u, HQ));
                for (var g = 0u; g < G; g++) {
                    let qb = g * HQ;
                    let qe = qb + HQ - 1u;
                    let a = dot(k[0], q_sh[qb + d4]) + dot(k[1], q_sh[min(qb + d4 + 1u, qe)]);
                    let b = dot(k[2], q_sh[min(qb + d4 + 2u, qe)]) + dot(k[3], q_sh[min(qb + d4 + 3u, qe)]);
                    let c = dot(k[4], q_sh[min(qb + d4 + 4u, qe)]) + dot(k[5], q_sh[min(qb + d4 + 5u, qe)]);
                    let e = dot(k[6], q_sh[min(qb + d4 + 6u, qe)]) + dot(k[7], q_sh[min(qb + d4 + 7u, qe)]);
                    dots[g] += (a + b) + (c + e);
                }
            }
        }
        for (var g = 0u; g < G; g++) {
            s_sh[g * WG + lid] = select(NEG, dots[g], p < end);
        }
        workgroupBarrier();
        // 2. New running max per head, and the factor that rescales what was accumulated so far.
        if lid < G {
            // Four running maxima (positions past cnt repeat the last): a quarter of the dependent steps.
            var m4 = vec4<f32>(NEG);
            let sb = lid * WG;
            for (var j = 0u; j < cnt; j += 4u) {
                m4 = max(m4, vec4<f32>(s_sh[sb + j], s_sh[sb + min(j + 1u, cnt - 1u)], s_sh[sb + min(j + 2u, cnt - 1u)],
                                       s_sh[sb + min(j + 3u, cnt - 1u)]));
            }
            let tmax = max(max(m4.x, m4.y), max(m4.z, m4.w));
            let m_old = m_sh[lid];
            let m_new = max(m_old, tmax);
            c_sh[lid] = exp(m_old - m_new);
            m_sh[lid] = m_new;
        }
        workgroupBarrier();
        // 3. Probabilities (unnormalised).
        for (var g = 0u; g < G; g++) {
            s_sh[g * WG + lid] = select(0.0, exp(s_sh[g * WG + lid] - m_sh[g]), p < end);
        }
        workgroupBarrier();
        // 4. V accumulated by (position lane, quad), read once for all G heads; four positions per round so
        // four loads are in flight (past `cnt`: the last position again, times probability 0).
        for (var g = 0u; g < G; g++) {
            lsum[g] *= c_sh[g];
            for (var j = 0u; j < QPT; j++) {
                acc[g * QPT + j] *= c_sh[g];
            }
        }
        if v_live {
            for (var t = lane; t < cnt; t += 4u * PL) {
                // Written out: the four loads are in flight together (see the key pass).
                let t1 = min(t + PL, cnt - 1u);
                let t2 = min(t + 2u * PL, cnt - 1u);
                let t3 = min(t + 3u * PL, cnt - 1u);
                for (var j = 0u; j < QPT; j++) {
                    let d4 = vq + j * WG;
                    if d4 < HQ {
                        let o = v_base + t0 * HD + 4u * d4;
                        let v0 = kv4(o + t * HD);
                        let v1 = kv4(o + t1 * HD);
                        let v2 = kv4(o + t2 * HD);
                        let v3 = kv4(o + t3 * HD);
                        for (var g = 0u; g < G; g++) {
                            let sg = g * WG;
                            let p0 = s_sh[sg + t];
                            let p1 = select(0.0, s_sh[sg + t1], t + PL < cnt);
                            let p2 = select(0.0, s_sh[sg + t2], t + 2u * PL < cnt);
                            let p3 = select(0.0, s_sh[sg + t3], t + 3u * PL < cnt);
                            let a = fma(vec4<f32>(p0), v0, acc[g * QPT + j]);
                            acc[g * QPT + j] = fma(vec4<f32>(p3), v3, fma(vec4<f32>(p2), v2, fma(vec4<f32>(p1), v1, a)));
                            if j == 0u {
                                lsum[g] += (p0 + p1) + (p2 + p3);
                            }
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }
    // 5. Merge the position lanes, one head at a time through v_sh (s_sh carries the sums).
    for (var g = 0u; g < G; g++) {
        let h = kvh * G + g;
        for (var j = 0u; j < QPT; j++) {
            v_sh[lid] = acc[g * QPT + j];
            if vq == 0u && v_live {
                s_sh[lane] = lsum[g];
            }
            workgroupBarrier();
            let d4 = vq + j * WG;
            if lane == 0u && d4 < HQ {
                var total = v_sh[vq];
                var l = s_sh[0];
                for (var r = 1u; r < PL; r++) {
                    total += v_sh[r * VQ + vq];
                    l += s_sh[r];
                }
#if SPLIT
                let base = ((span.part * params.heads + h) * params.n_chunks + chunk) * (HD + 2u);
                for (var c = 0u; c < 4u; c++) {
                    partials[base + 2u + 4u * d4 + c] = total[c];
                }
                if d4 == 0u {
                    partials[base] = m_sh[g];
                    partials[base + 1u] = l;
                }
#else
                for (var c = 0u; c < 4u; c++) {
                    out[row * width + h * HD + 4u * d4 + c] = total[c] / l;
                }
#endif
            }
            workgroupBarrier();
        }
    }
}

// Register state of the lane kernels (`decode_lanes`, `prefill_lanes`): each lane's q, accumulators and
// online softmax for the G heads of its group. lavapipe moves a function's array to per-lane scratch memory
// (a masked scalar store per lane and element) when any access to it is indexed by a loop counter: it
// decides before it unrolls loops. So no loop touches this state: heads go through the written-out ladder
// in `lanes_heads` (launcher: G <= 8, `LANES_MAX_GROUP`), head dims in 32-dim pieces of 8 written-out
// quads, and every index is a constant once calls are inlined (9/3 heads: decode 3.0-5.9x faster at
// contexts 64-2048 than the same kernel with loops over heads and quads, prefill 1.8-4.3x).
struct LaneState {
    q: array<vec4<f32>, G * HD / 4u>,
    acc: array<vec4<f32>, G * HD / 4u>,
    // Running max and sum of each head's online softmax.
    m: array<f32, G>,
    l: array<f32, G>,
}

// One position's K or V row as up to four 32-dim pieces of 8 quads (pieces past HD unused).
struct LaneRow {
    p0: array<vec4<f32>, 8>,
    p1: array<vec4<f32>, 8>,
    p2: array<vec4<f32>, 8>,
    p3: array<vec4<f32>, 8>,
}

// What `lanes_heads` does for each head.
const LANE_BEGIN: u32 = 0u;
const LANE_POSITION: u32 = 1u;
const LANE_MERGE: u32 = 2u;
const LANE_STORE: u32 = 3u;
const LANE_SHARE: u32 = 4u;

// The lane operation `op` for each head g < G, written out (a loop over g would index the state by its counter).
fn lanes_heads(st: ptr<function, LaneState>, op: u32, a: u32, k: LaneRow, v: LaneRow, masked: bool) {
    lanes_head(st, op, 0u, a, k, v, masked);
    if G > 1u { lanes_head(st, op, 1u, a, k, v, masked); }
    if G > 2u { lanes_head(st, op, 2u, a, k, v, masked); }
    if G > 3u { lanes_head(st, op, 3u, a, k, v, masked); }
    if G > 4u { lanes_head(st, op, 4u, a, k, v, masked); }
    if G > 5u { lanes_head(st, op, 5u, a, k, v, masked); }
    if G > 6u { lanes_head(st, op, 6u, a, k, v, masked); }
    if G > 7u { lanes_head(st, op, 7u, a, k, v, masked); }
}

// Head g: LANE_BEGIN loads q (vec4 index a) scaled; LANE_POSITION folds in one position (K row k, V row v;
// `masked`: score NEG, the softmax unchanged); LANE_MERGE, LANE_STORE and LANE_SHARE hand it on (`lanes_out`).
fn lanes_head(st: ptr<function, LaneState>, op: u32, g: u32, a: u32, k: LaneRow, v: LaneRow, masked: bool) {
    let o = g * HD / 4u;
    if op == LANE_BEGIN {
        (*st).m[g] = NEG;
        lanes_q8(st, o, a + o);
        if HD > 32u { lanes_q8(st, o + 8u, a + o + 8u); }
        if HD > 64u { lanes_q8(st, o + 16u, a + o + 16u); }
        if HD > 96u { lanes_q8(st, o + 24u, a + o + 24u); }
    } else if op == LANE_POSITION {
        var score = lanes_dot8(st, o, k.p0);
        if HD > 32u { score += lanes_dot8(st, o + 8u, k.p1); }
        if HD > 64u { score += lanes_dot8(st, o + 16u, k.p2); }
        if HD > 96u { score += lanes_dot8(st, o + 24u, k.p3); }
        score = select(score, NEG, masked);
        let m_new = max((*st).m[g], score);
        let c = exp((*st).m[g] - m_new);
        let e = exp(score - m_new);
        (*st).l[g] = (*st).l[g] * c + e;
        (*st).m[g] = m_new;
        lanes_acc8(st, o, v.p0, c, e);
        if HD > 32u { lanes_acc8(st, o + 8u, v.p1, c, e); }
        if HD > 64u { lanes_acc8(st, o + 16u, v.p2, c, e); }
        if HD > 96u { lanes_acc8(st, o + 24u, v.p3, c, e); }
    } else if op == LANE_SHARE {
#if !SUBGROUPS
        lane_m[lane_id * G + g] = (*st).m[g];
        lane_l[lane_id * G + g] = (*st).l[g];
#endif
    } else {
        // LANE_STORE: acc / l. LANE_MERGE: the lanes' acc weighted by exp(m - M), summed over the lanes.
        var w = 1.0 / (*st).l[g];
        var big = 0.0;
        var total = 0.0;
#if SUBGROUPS
        if op == LANE_MERGE {
            big = subgroupMax((*st).m[g]);
            w = exp((*st).m[g] - big);
            total = subgroupAdd((*st).l[g] * w);
        }
#endif
        lanes_out8(st, op, g, o, a, w, vec2<f32>(big, total));
        if HD > 32u { lanes_out8(st, op, g, o + 8u, a, w, vec2<f32>(big, total)); }
        if HD > 64u { lanes_out8(st, op, g, o + 16u, a, w, vec2<f32>(big, total)); }
        if HD > 96u { lanes_out8(st, op, g, o + 24u, a, w, vec2<f32>(big, total)); }
    }
}

fn lanes_q8(st: ptr<function, LaneState>, o: u32, q_at: u32) {
    (*st).q[o] = q4(q_at) * params.scale;
    (*st).q[o + 1u] = q4(q_at + 1u) * params.scale;
    (*st).q[o + 2u] = q4(q_at + 2u) * params.scale;
    (*st).q[o + 3u] = q4(q_at + 3u) * params.scale;
    (*st).q[o + 4u] = q4(q_at + 4u) * params.scale;
    (*st).q[o + 5u] = q4(q_at + 5u) * params.scale;
    (*st).q[o + 6u] = q4(q_at + 6u) * params.scale;
    (*st).q[o + 7u] = q4(q_at + 7u) * params.scale;
}

// q quads o .. o+7 dot the 8 quads of k.
fn lanes_dot8(st: ptr<function, LaneState>, o: u32, k: array<vec4<f32>, 8>) -> f32 {
    let a = dot(k[0], (*st).q[o]) + dot(k[1], (*st).q[o + 1u]);
    let b = dot(k[2], (*st).q[o + 2u]) + dot(k[3], (*st).q[o + 3u]);
    let c = dot(k[4], (*st).q[o + 4u]) + dot(k[5], (*st).q[o + 5u]);
    let d = dot(k[6], (*st).q[o + 6u]) + dot(k[7], (*st).q[o + 7u]);
    return (a + b) + (c + d);
}

// acc quads o .. o+7 = acc * c + e * v.
fn lanes_acc8(st: ptr<function, LaneState>, o: u32, v: array<vec4<f32>, 8>, c: f32, e: f32) {
    (*st).acc[o] = fma((*st).acc[o], vec4<f32>(c), e * v[0]);
    (*st).acc[o + 1u] = fma((*st).acc[o + 1u], vec4<f32>(c), e * v[1]);
    (*st).acc[o + 2u] = fma((*st).acc[o + 2u], vec4<f32>(c), e * v[2]);
    (*st).acc[o + 3u] = fma((*st).acc[o + 3u], vec4<f32>(c), e * v[3]);
    (*st).acc[o + 4u] = fma((*st).acc[o + 4u], vec4<f32>(c), e * v[4]);
    (*st).acc[o + 5u] = fma((*st).acc[o + 5u], vec4<f32>(c), e * v[5]);
    (*st).acc[o + 6u] = fma((*st).acc[o + 6u], vec4<f32>(c), e * v[6]);
    (*st).acc[o + 7u] = fma((*st).acc[o + 7u], vec4<f32>(c), e * v[7]);
}

fn lanes_out8(st: ptr<function, LaneState>, op: u32, g: u32, o: u32, a: u32, w: f32, mt: vec2<f32>) {
    lanes_out(st, op, g, o, a, w, mt);
    lanes_out(st, op, g, o + 1u, a, w, mt);
    lanes_out(st, op, g, o + 2u, a, w, mt);
    lanes_out(st, op, g, o + 3u, a, w, mt);
    lanes_out(st, op, g, o + 4u, a, w, mt);
    lanes_out(st, op, g, o + 5u, a, w, mt);
    lanes_out(st, op, g, o + 6u, a, w, mt);
    lanes_out(st, op, g, o + 7u, a, w, mt);
}

// Accumulator quad i (of head g) out of the registers, times w. LANE_STORE (prefill_lanes): to out at
// element a + g * HD + 4 * (i - head start). LANE_MERGE (decode_lanes): with SUBGROUPS summed over the
// lanes and written (or its partial, mt = (M, total)) by one lane; else this lane's quad into workgroup
// memory for the merge there (a = the head being merged: only its quads).
fn lanes_out(st: ptr<function, LaneState>, op: u32, g: u32, i: u32, a: u32, w: f32, mt: vec2<f32>) {
    let d4 = i - g * HD / 4u;
#if !SPLIT
    // (The split variant binds no `out`.)
    if op == LANE_STORE {
        store4(a + g * HD + 4u * d4, (*st).acc[i] * w);
        return;
    }
#endif
#if SUBGROUPS
    let sum = subgroupAdd((*st).acc[i] * w);
    if lane_id == d4 % WL {
        lanes_result(g, 4u * d4, sum, mt.x, mt.y);
    }
#else
    if g == a {
        let x = (*st).acc[i];
        lane_acc[lane_id * HD + 4u * d4] = x.x;
        lane_acc[lane_id * HD + 4u * d4 + 1u] = x.y;
        lane_acc[lane_id * HD + 4u * d4 + 2u] = x.z;
        lane_acc[lane_id * HD + 4u * d4 + 3u] = x.w;
    }
#endif
}

// out[at .. at+4] = x.
fn store4(at: u32, x: vec4<f32>) {
    out[at] = x.x;
    out[at + 1u] = x.y;
    out[at + 2u] = x.z;
    out[at + 3u] = x.w;
}

// The 8 quads of the cache at index i .. i+31: `broadcast`, one loaded by each of lanes 0..7 and broadcast
// (prefill_lanes, every lane at the same position); else each lane's own (decode_lanes, own positions).
fn lanes_quads(i: u32, broadcast: bool) -> array<vec4<f32>, 8> {
#if SUBGROUPS
    if broadcast {
        return kv_quads8(i, lane_id);
    }
#endif
    return kv_own8(i);
}

// The cache row at index i (HD elements) as 32-dim pieces.
fn lanes_row(i: u32, broadcast: bool) -> LaneRow {
    var r: LaneRow;
    r.p0 = lanes_quads(i, broadcast);
    if HD > 32u { r.p1 = lanes_quads(i + 32u, broadcast); }
    if HD > 64u { r.p2 = lanes_quads(i + 64u, broadcast); }
    if HD > 96u { r.p3 = lanes_quads(i + 96u, broadcast); }
    return r;
}

// One position into the lane's softmax: K row at kb, V row at vb. `masked` (past the lane's row, causal):
// score NEG, leaving the softmax as it was.
fn lanes_position(st: ptr<function, LaneState>, kb: u32, vb: u32, broadcast: bool, masked: bool) {
    lanes_heads(st, LANE_POSITION, 0u, lanes_row(kb, broadcast), lanes_row(vb, broadcast), masked);
}

// The 8 quads of the cache at index i .. i+31 read by this lane alone (decode_lanes: one position each).
fn kv_own8(i: u32) -> array<vec4<f32>, 8> {
#if KVTEX && F16
    // i is a multiple of 32: four whole texels of 8 f16, each fetched once (kv4 per quad fetched each
    // texel twice, and a texel fetch is a ~100-instruction call on lavapipe that LLVM does not merge).
    let t = i >> 3u;
    let a = kv_texel(t);
    let b = kv_texel(t + 1u);
    let c = kv_texel(t + 2u);
    let d = kv_texel(t + 3u);
    return array<vec4<f32>, 8>(kv_f16x4(a.xy), kv_f16x4(a.zw), kv_f16x4(b.xy), kv_f16x4(b.zw), kv_f16x4(c.xy),
                               kv_f16x4(c.zw), kv_f16x4(d.xy), kv_f16x4(d.zw));
#else
    return array<vec4<f32>, 8>(kv4(i), kv4(i + 4u), kv4(i + 8u), kv4(i + 12u), kv4(i + 16u), kv4(i + 20u),
                               kv4(i + 24u), kv4(i + 28u));
#endif
}

// This lane's index in its workgroup (decode_lanes) or among the 8 that load a position's quads (prefill_lanes).
var<private> lane_id: u32;
// decode_lanes' KV head and (SPLIT) chunk, for `lanes_result` at the end of the head ladder.
var<private> lane_kvh: u32;
var<private> lane_chunk: u32;
// decode_lanes' output row and block of partials (`RowSpan`).
var<private> lane_row: u32;
var<private> lane_part: u32;

// Head g's merged quad at dim d of this workgroup (`decode_lanes`): M = big, sum of l exp(m - M) = total.
fn lanes_result(g: u32, d: u32, sum: vec4<f32>, big: f32, total: f32) {
    let width = params.heads * HD;
#if SPLIT
    // This chunk's (max, sum, unnormalised acc) for `merge`, as `decode` writes them.
    let base = ((lane_part * params.heads + lane_kvh * G + g) * params.n_chunks + lane_chunk) * (HD + 2u);
    partials[base + 2u + d] = sum.x;
    partials[base + 3u + d] = sum.y;
    partials[base + 4u + d] = sum.z;
    partials[base + 5u + d] = sum.w;
    if d == 0u {
        partials[base] = big;
        partials[base + 1u] = total;
    }
#else
    store4(lane_row * width + (lane_kvh * G + g) * HD + d, sum / total);
#endif
}

#if !SUBGROUPS
var<workgroup> lane_m: array<f32, WL * G>;
var<workgroup> lane_l: array<f32, WL * G>;
var<workgroup> lane_acc: array<f32, WL * HD>;
#endif

@compute @workgroup_size(WL)
fn decode_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let kvh = wg.x;
    lane_kvh = kvh;
    lane_id = lid;
    let span = row_span(wg.z);
    lane_row = span.row;
    lane_part = span.part;
    let ctx = span.ctx;
#if SPLIT
    let chunk = wg.y;
    lane_chunk = chunk;
    let start = chunk * chunk_length(ctx);
    let end = min(start + chunk_length(ctx), ctx);
    if start >= ctx {
        return;
    }
#else
    let start = 0u;
    let end = ctx;
#endif
    let width = params.heads * HD;
    // q of head (kvh*G + g), dims d..d+3, as a vec4 index into the uniform (HD and width are multiples of 4).
    let q0 = (span.row * width + kvh * G * HD) / 4u;
    let k_base = span.base + kvh * params.capacity * HD;
    let v_base = span.base + (params.kv_heads + kvh) * params.capacity * HD;
    var st: LaneState;
    var none: LaneRow;
    lanes_heads(&st, LANE_BEGIN, q0, none, none, false);
    for (var p = start + lid; p < end; p += WL) {
        lanes_position(&st, k_base + p * HD, v_base + p * HD, false, false);
    }
    // Merge the WL lanes' softmaxes: out = sum_j acc_j exp(m_j - M) / sum_j l_j exp(m_j - M). Lanes that got
    // no position hold m = NEG, l = 0, acc = 0 and drop out (ctx >= 1, so M is finite).
#if SUBGROUPS
    // Launcher: the WL lanes are one subgroup. No barrier, so the driver needs no coroutine frame either.
    lanes_heads(&st, LANE_MERGE, 0u, none, none, false);
#else
    lanes_heads(&st, LANE_SHARE, 0u, none, none, false);
    for (var g = 0u; g < G; g++) {
        // Each lane's state goes through workgroup memory one head at a time (lane_acc holds one head).
        lanes_heads(&st, LANE_MERGE, g, none, none, false);
        workgroupBarrier();
        var big = NEG;
        for (var j = 0u; j < WL; j++) {
            big = max(big, lane_m[j * G + g]);
        }
        var total = 0.0;
        for (var j = 0u; j < WL; j++) {
            total += lane_l[j * G + g] * exp(lane_m[j * G + g] - big);
        }
        for (var d = 4u * lid; d < HD; d += 4u * WL) {
            var sum = vec4<f32>(0.0);
            for (var j = 0u; j < WL; j++) {
                let x = vec4<f32>(lane_acc[j * HD + d], lane_acc[j * HD + d + 1u], lane_acc[j * HD + d + 2u],
                                  lane_acc[j * HD + d + 3u]);
                sum = fma(x, vec4<f32>(exp(lane_m[j * G + g] - big)), sum);
            }
            lanes_result(g, d, sum, big, total);
        }
        workgroupBarrier();
    }
#endif
}

// `merge` runs MWG threads (the launcher: 8 on CPU drivers, where a wider workgroup runs its SIMD batches as
// coroutines that switch at every barrier of the trees below; 64 on GPUs), mapped like `decode`'s V pass.
const MVQ: u32 = min(HQ, MWG);
const MPL: u32 = MWG / MVQ;
const MQPT: u32 = (HQ + MWG - 1u) / MWG;

@compute @workgroup_size(MWG)
fn merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.x;
    let span = row_span(wg.y);
    let ctx = span.ctx;
    let used = min((ctx + chunk_length(ctx) - 1u) / chunk_length(ctx), params.n_chunks);
    let first = (span.part * params.heads + h) * params.n_chunks;
    // The chunks spread over the threads at every step (a thread looping over all of them waits out one
    // load latency per chunk, three times): the maxima and the sums by trees in s_sh, the weighted V rows by
    // (chunk lane, quad) like `decode`'s V pass, the lanes merged through v_sh.
    var m = NEG;
    for (var c = lid; c < used; c += MWG) {
        m = max(m, partials[(first + c) * (HD + 2u)]);
    }
    s_sh[lid] = m;
    workgroupBarrier();
    for (var s = MWG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            s_sh[lid] = max(s_sh[lid], s_sh[lid + s]);
        }
        workgroupBarrier();
    }
    m = s_sh[0];
    workgroupBarrier();
    var l = 0.0;
    for (var c = lid; c < used; c += MWG) {
        let base = (first + c) * (HD + 2u);
        l += partials[base + 1u] * exp(partials[base] - m);
    }
    s_sh[lid] = l;
    workgroupBarrier();
    for (var s = MWG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            s_sh[lid] += s_sh[lid + s];
        }
        workgroupBarrier();
    }
    l = s_sh[0];
    let lane = lid / MVQ;
    let vq = lid % MVQ;
    let width = params.heads * HD;
    let row = span.row;
    for (var j = 0u; j < MQPT; j++) {
        let d = 4u * (vq + j * MVQ);
        var sum = vec4<f32>(0.0);
        if lane < MPL && d < HD {
            for (var c = lane; c < used; c += MPL) {
                let base = (first + c) * (HD + 2u);
                let o = base + 2u + d;
                let v = vec4<f32>(partials[o], partials[o + 1u], partials[o + 2u], partials[o + 3u]);
                sum = fma(vec4<f32>(exp(partials[base] - m)), v, sum);
            }
        }
        v_sh[lid] = sum;
        workgroupBarrier();
        if lane == 0u && d < HD {
            for (var r = 1u; r < MPL; r++) {
                sum += v_sh[r * MVQ + vq];
            }
            for (var c = 0u; c < 4u; c++) {
                out[row * width + h * HD + d + c] = sum[c] / l;
            }
        }
        workgroupBarrier();
    }
}

// Tiles and the fallback's per-thread state in vec4: where a thread's q and accumulator rows are indexed by
// a loop counter (head dims PRE_REGS does not take), a driver that does not unroll the loop keeps them in
// memory (not registers), one access per element; vec4 quarters those accesses and the tile loads.
var<workgroup> k_tile: array<vec4<f32>, TK * HQ>;
var<workgroup> v_tile: array<vec4<f32>, TK * HQ>;

// Where HD is a multiple of 32 up to 128, `prefill` keeps its row's q and accumulator in `lq` / `lacc`,
// touched only at constant indices, 8 quads per written-out call, and folds
// each position into the softmax as it is scored (no score array indexed by a position counter). On an
// H100 the loop-indexed form cost ~140 µs per layer for a 64-token prefill, half the prefill.
const PRE_REGS: bool = HD % 32u == 0u && HD <= 128u;
var<private> lq: array<vec4<f32>, HD / 4u>;
var<private> lacc: array<vec4<f32>, HD / 4u>;

// q quads o .. o+7 (o constant at every call) from vec4 q0 + o, scaled.
fn pre_load8(o: u32, q0: u32) {
    lq[o] = q4(q0 + o) * params.scale;
    lq[o + 1u] = q4(q0 + o + 1u) * params.scale;
    lq[o + 2u] = q4(q0 + o + 2u) * params.scale;
    lq[o + 3u] = q4(q0 + o + 3u) * params.scale;
    lq[o + 4u] = q4(q0 + o + 4u) * params.scale;
    lq[o + 5u] = q4(q0 + o + 5u) * params.scale;
    lq[o + 6u] = q4(q0 + o + 6u) * params.scale;
    lq[o + 7u] = q4(q0 + o + 7u) * params.scale;
}

// q quads o .. o+7 times k_tile quads kt + o .. (four independent products, then a tree).
fn pre_dot8(o: u32, kt: u32) -> f32 {
    let k = kt + o;
    let a = fma(lq[o], k_tile[k], lq[o + 1u] * k_tile[k + 1u]);
    let b = fma(lq[o + 2u], k_tile[k + 2u], lq[o + 3u] * k_tile[k + 3u]);
    let c = fma(lq[o + 4u], k_tile[k + 4u], lq[o + 5u] * k_tile[k + 5u]);
    let d = fma(lq[o + 6u], k_tile[k + 6u], lq[o + 7u] * k_tile[k + 7u]);
    let s = (a + b) + (c + d);
    return (s.x + s.y) + (s.z + s.w);
}

// Accumulator quads o .. o+7 = acc * c + p * v_tile quads vt + o ..
fn pre_acc8(o: u32, c: f32, p: f32, vt: u32) {
    let v = vt + o;
    let pv = vec4<f32>(p);
    lacc[o] = fma(pv, v_tile[v], lacc[o] * c);
    lacc[o + 1u] = fma(pv, v_tile[v + 1u], lacc[o + 1u] * c);
    lacc[o + 2u] = fma(pv, v_tile[v + 2u], lacc[o + 2u] * c);
    lacc[o + 3u] = fma(pv, v_tile[v + 3u], lacc[o + 3u] * c);
    lacc[o + 4u] = fma(pv, v_tile[v + 4u], lacc[o + 4u] * c);
    lacc[o + 5u] = fma(pv, v_tile[v + 5u], lacc[o + 5u] * c);
    lacc[o + 6u] = fma(pv, v_tile[v + 6u], lacc[o + 6u] * c);
    lacc[o + 7u] = fma(pv, v_tile[v + 7u], lacc[o + 7u] * c);
}

// out quads o .. o+7 of the row at float index i = accumulator / l.
fn pre_store8(o: u32, i: u32, l: f32) {
    store4(i + 4u * o, lacc[o] / l);
    store4(i + 4u * (o + 1u), lacc[o + 1u] / l);
    store4(i + 4u * (o + 2u), lacc[o + 2u] / l);
    store4(i + 4u * (o + 3u), lacc[o + 3u] / l);
    store4(i + 4u * (o + 4u), lacc[o + 4u] / l);
    store4(i + 4u * (o + 5u), lacc[o + 5u] / l);
    store4(i + 4u * (o + 6u), lacc[o + 6u] / l);
    store4(i + 4u * (o + 7u), lacc[o + 7u] / l);
}

// One position (its K and V at tile quad t * HQ) into the row's softmax (m, l) held in pre_ml.
var<private> pre_ml: vec2<f32>;
fn pre_position(t: u32) {
    let kt = t * HQ;
    var sc = pre_dot8(0u, kt);
    if HD > 32u {
        sc += pre_dot8(8u, kt);
    }
    if HD > 64u {
        sc += pre_dot8(16u, kt);
    }
    if HD > 96u {
        sc += pre_dot8(24u, kt);
    }
    let m_new = max(pre_ml.x, sc);
    let c = exp(pre_ml.x - m_new);
    let p = exp(sc - m_new);
    pre_ml = vec2<f32>(m_new, pre_ml.y * c + p);
    pre_acc8(0u, c, p, kt);
    if HD > 32u {
        pre_acc8(8u, c, p, kt);
    }
    if HD > 64u {
        pre_acc8(16u, c, p, kt);
    }
    if HD > 96u {
        pre_acc8(24u, c, p, kt);
    }
}

@compute @workgroup_size(WG)
fn prefill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.x;
    let kvh = h / G;
    let n = step.n;
    let r0 = wg.y * WG;
    if r0 >= n {
        return; // the whole workgroup: uniform
    }
    let r = r0 + lid;
    let live = r < n;
    let qpos = step.pos + r;
    // Keys this workgroup needs: up to its last row's position (causal).
    let last = min(step.pos + min(r0 + WG, n), params.capacity);
    let width = params.heads * HD;
    var qv: array<vec4<f32>, HQ>;
    var acc: array<vec4<f32>, HQ>;
    let q0 = (r * width + h * HD) / 4u;
    if live {
        if PRE_REGS {
            pre_load8(0u, q0);
            if HD > 32u {
                pre_load8(8u, q0);
            }
            if HD > 64u {
                pre_load8(16u, q0);
            }
            if HD > 96u {
                pre_load8(24u, q0);
            }
        } else {
            for (var d4 = 0u; d4 < HQ; d4++) {
                qv[d4] = q4(q0 + d4) * params.scale;
            }
        }
    }
    pre_ml = vec2<f32>(NEG, 0.0);
    var m = NEG;
    var l = 0.0;
    let k_base = kvh * params.capacity * HD;
    let v_base = (params.kv_heads + kvh) * params.capacity * HD;
    for (var t0 = 0u; t0 < last; t0 += TK) {
        // Four quads of K and of V per thread per turn, loaded before any is stored (eight loads in flight).
        // Quads of positions past `last` are zero, never read by a live position.
        let kb = k_base + t0 * HD;
        let vb = v_base + t0 * HD;
        let end = min(TK, last - t0) * HQ;
        for (var i0 = lid; i0 < TK * HQ; i0 += 4u * WG) {
            let i1 = i0 + WG;
            let i2 = i0 + 2u * WG;
            let i3 = i0 + 3u * WG;
            let k0 = kv_quad(kb, i0, end);
            let k1 = kv_quad(kb, i1, end);
            let k2 = kv_quad(kb, i2, end);
            let k3 = kv_quad(kb, i3, end);
            let v0 = kv_quad(vb, i0, end);
            let v1 = kv_quad(vb, i1, end);
            let v2 = kv_quad(vb, i2, end);
            let v3 = kv_quad(vb, i3, end);
            k_tile[i0] = k0;
            v_tile[i0] = v0;
            if i1 < TK * HQ {
                k_tile[i1] = k1;
                v_tile[i1] = v1;
            }
            if i2 < TK * HQ {
                k_tile[i2] = k2;
                v_tile[i2] = v2;
            }
            if i3 < TK * HQ {
                k_tile[i3] = k3;
                v_tile[i3] = v3;
            }
        }
        workgroupBarrier();
        let cnt = min(TK, last - t0);
        if PRE_REGS {
            // Causal: this row's positions in the tile are t0 .. min(cnt, qpos - t0 + 1).
            let own = select(0u, min(cnt, qpos + 1u - t0), qpos >= t0);
            for (var t = 0u; t < own; t++) {
                pre_position(t);
            }
        } else {
            var s: array<f32, TK>;
            var tmax = NEG;
            for (var t = 0u; t < cnt; t++) {
                var sc = NEG;
                if t0 + t <= qpos {
                    var sc4 = vec4<f32>(0.0);
                    for (var d4 = 0u; d4 < HQ; d4++) {
                        sc4 = fma(qv[d4], k_tile[t * HQ + d4], sc4);
                    }
                    sc = (sc4.x + sc4.y) + (sc4.z + sc4.w);
                }
                s[t] = sc;
                tmax = max(tmax, sc);
            }
            let m_new = max(m, tmax);
            let c = exp(m - m_new);
            l *= c;
            for (var d4 = 0u; d4 < HQ; d4++) {
                acc[d4] *= c;
            }
            for (var t = 0u; t < cnt; t++) {
                let p = select(0.0, exp(s[t] - m_new), t0 + t <= qpos);
                l += p;
                for (var d4 = 0u; d4 < HQ; d4++) {
                    acc[d4] = fma(vec4<f32>(p), v_tile[t * HQ + d4], acc[d4]);
                }
            }
            m = m_new;
        }
        workgroupBarrier();
    }
    if live {
        let i = r * width + h * HD;
        if PRE_REGS {
            pre_store8(0u, i, pre_ml.y);
            if HD > 32u {
                pre_store8(8u, i, pre_ml.y);
            }
            if HD > 64u {
                pre_store8(16u, i, pre_ml.y);
            }
            if HD > 96u {
                pre_store8(24u, i, pre_ml.y);
            }
        } else {
            for (var d4 = 0u; d4 < HQ; d4++) {
                store4(i + 4u * d4, acc[d4] / l);
            }
        }
    }
}

#if SUBGROUPS
// The 8 quads of K or V at cache index i .. i+31 (i a multiple of 32), one loaded by each of lanes 0..7
// (`lane` = subgroup index & 7) and broadcast to all: each cache element is loaded once per workgroup.
fn kv_quads8(i: u32, lane: u32) -> array<vec4<f32>, 8> {
    let own = kv4(i + 4u * lane);
    return array<vec4<f32>, 8>(subgroupBroadcast(own, 0u), subgroupBroadcast(own, 1u), subgroupBroadcast(own, 2u),
                               subgroupBroadcast(own, 3u), subgroupBroadcast(own, 4u), subgroupBroadcast(own, 5u),
                               subgroupBroadcast(own, 6u), subgroupBroadcast(own, 7u));
}

// `prefill_lanes` (CPU drivers; launcher: subgroups of 8+ lanes, HD a multiple of 32 up to 128): the same
// result as `prefill`, mapped for SIMD lanes. One workgroup of 8 lanes per (KV head, 8 query rows); a lane
// owns one row and all G query heads of the group, with q, the online softmax and the G*HD accumulators in
// registers. The workgroup walks the positions its last row needs; each position's K and V arrive one
// quad per lane by subgroup broadcasts (on lavapipe every storage load is a per-lane loop: this loads each
// element once instead of once per row, and there is no workgroup memory and no barrier). Positions past
// a lane's own (causal) score NEG and leave its softmax unchanged. Register state: see `lq` above.
@compute @workgroup_size(8)
fn prefill_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32) {
    let kvh = wg.x;
    let n = step.n;
    let r0 = wg.y * 8u;
    if r0 >= n {
        return; // the whole workgroup: uniform
    }
    lane_id = sg_lane & 7u;
    // Rows past n redo the last row (not stored), so every lane runs the same loop.
    let row = r0 + lane_id;
    let r = min(row, n - 1u);
    let qpos = step.pos + r;
    let last = min(step.pos + min(r0 + 8u, n), params.capacity);
    let width = params.heads * HD;
    let q0 = (r * width + kvh * G * HD) / 4u;
    var st: LaneState;
    var none: LaneRow;
    lanes_heads(&st, LANE_BEGIN, q0, none, none, false);
    let k_base = kvh * params.capacity * HD;
    let v_base = (params.kv_heads + kvh) * params.capacity * HD;
    for (var p = 0u; p < last; p++) {
        lanes_position(&st, k_base + p * HD, v_base + p * HD, true, p > qpos);
    }
    if row < n {
        lanes_heads(&st, LANE_STORE, r * width + kvh * G * HD, none, none, false);
    }
}
#endif
