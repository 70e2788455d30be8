// Fused pre-attention block for a batch of n positions from pos (both from the step uniform):
// RMSNorm of the input row (recomputed by every workgroup: hidden <= 1600), the fused Q|K|V projection
// (weight rows: heads*HD query rows, then kv_heads*HD key rows, then kv_heads*HD value rows), RoPE on Q and
// K from a precomputed cos/sin table, Q to a scratch tensor [n, heads*HD], K and V straight into the KV
// cache slot (`[2][kv_heads][capacity][HD]`, f16 under F16) at their positions.
// One workgroup per (16 rows = 8 RoPE pairs of a Q|K|V head, token row); 4 threads per output row.
// Also here: `rope_cache` (the tail after a separate GEMV/GEMM) and, with LANES, `qkv_rope_lanes` (CPU
// drivers: lanes own whole rows; see the end of the file).
#if F16
enable f16;
alias kv_t = f16;
#else
alias kv_t = f32;
#endif

struct Params {
    desc: WeightDesc,
    heads: u32,
    kv_heads: u32,
    hidden: u32,
    capacity: u32,
    eps: f32,
    // Elements from one sequence to the next in the slot (`rope_cache` with BATCH).
    seq_stride: u32,
    _pad1: u32,
    _pad2: u32,
}

// Mirrors `ops::StepParams`.
#include step

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
#if LANES
// x (XUV4 vec4: the dispatch's token rows) and the norm weight (NUV4 vec4) as uniforms: on lavapipe a
// uniform load is a SIMD gather, a storage load a per-lane loop.
@group(0) @binding(2) var<uniform> xu: array<vec4<f32>, XUV4>;
@group(0) @binding(3) var<uniform> norm_u: array<vec4<f32>, NUV4>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> norm_w: array<f32>;
#endif
#if WTEX
#if IMGREAD
@group(0) @binding(4) var weights_tex: texture_storage_2d<rgba32uint, read>;
#else
@group(0) @binding(4) var weights_tex: texture_2d<u32>;
#endif
#else
@group(0) @binding(4) var<storage, read> weights: array<u32>;
#endif
@group(0) @binding(5) var<storage, read> rope_cs: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> q_out: array<f32>;
// KVTEX: the slot is an rgba32uint texture of the same bytes (`src/kv_cache.rs`), written whole texels at
// a time (K/V rows of a workgroup's RoPE pairs, or of a `rope_cache` row).
#if KVTEX
@group(0) @binding(7) var kv_store: texture_storage_2d<rgba32uint, write>;
const KV_ROW: u32 = 4096u;
#else
@group(0) @binding(7) var<storage, read_write> kv: array<kv_t>;
#endif

#include reduce
#include weights

// The normalised input row, zero-padded to whole 32-column blocks (XV4 vec4 = 4 * XV4 columns).
var<workgroup> x_sh: array<vec4<f32>, XV4>;
// Per-thread partial dot products, then the workgroup's RPW outputs.
var<workgroup> part_sh: array<f32, WG>;
var<workgroup> y_sh: array<f32, RPW>;

// Rows per workgroup: PAIRS RoPE pairs (both elements of a pair in the same workgroup); TPR threads per row
// split its 32-column blocks (adjacent threads read adjacent blocks).
const PAIRS: u32 = 8u;
const RPW: u32 = 2u * PAIRS;
const TPR: u32 = WG / RPW;

// Element index within the head of local row j (0..RPW) of pair group `grp`: rows 0..PAIRS are the first
// elements of pairs, PAIRS..RPW the second ones.
fn elem_of(grp: u32, j: u32) -> u32 {
    let p = grp * PAIRS + (j % PAIRS);
    let second = j >= PAIRS;
#if ROPE_INTERLEAVED
    return 2u * p + select(0u, 1u, second);
#else
    return p + select(0u, HD / 2u, second);
#endif
}

#if !LANES
@compute @workgroup_size(WG)
fn qkv_rope(@builtin(workgroup_id) wg: vec3<u32>, lanes: Lanes) {
    let lid = lanes.lid;
    // max: the launcher runs this entry only for HD a multiple of RPW, but rope_cache shares the module, and
    // a constant HD / RPW of 0 (HD 4, 8, 12) would make `wg.x / groups_per_head` fail validation.
    let groups_per_head = max(HD / RPW, 1u);
    let slot = wg.x / groups_per_head;
    let grp = wg.x % groups_per_head;
    let r = wg.y;
    let pos = step.pos + r;
    // Uniform exits: rows past this step's n, and (never, once the planner checked) past the cache.
    if r >= step.n || pos >= params.capacity {
        return;
    }
    let hidden = params.hidden;
    let nv4 = params.desc.blocks * 8u;
    var ss = 0.0;
    for (var i = lid; i < nv4; i += WG) {
        var v = vec4<f32>(0.0);
        for (var c = 0u; c < 4u; c++) {
            let col = i * 4u + c;
            if col < hidden {
                v[c] = x[r * hidden + col];
            }
        }
        x_sh[i] = v;
        ss += dot(v, v);
    }
    let total = workgroup_sum(ss, lanes);
    let inv_rms = inverseSqrt(total / f32(hidden) + params.eps);
    for (var i = lid; i < nv4; i += WG) {
        var w = vec4<f32>(0.0);
        for (var c = 0u; c < 4u; c++) {
            let col = i * 4u + c;
            if col < hidden {
                w[c] = norm_w[col];
            }
        }
        x_sh[i] = x_sh[i] * inv_rms * w;
    }
    workgroupBarrier();
    let j = lid / TPR;
    let lane = lid % TPR;
    let row = slot * HD + elem_of(grp, j);
    var acc = 0.0;
    for (var b = lane; b < params.desc.blocks; b += TPR) {
        let o = b * 8u;
        let xb = array<vec4<f32>, 8>(x_sh[o], x_sh[o + 1u], x_sh[o + 2u], x_sh[o + 3u], x_sh[o + 4u], x_sh[o + 5u],
                                     x_sh[o + 6u], x_sh[o + 7u]);
        acc += weight_dot32(params.desc, row, b, weight_block_x(xb));
    }
    part_sh[lid] = acc;
    workgroupBarrier();
    if lid < RPW {
        var sum = 0.0;
        for (var t = 0u; t < TPR; t++) {
            sum += part_sh[lid * TPR + t];
        }
        y_sh[lid] = sum;
    }
    workgroupBarrier();
#if KVTEX
    // K/V rows go to the texture slot whole texels at a time: rotate into rot_sh, then write texels.
    if slot >= params.heads {
        if lid < PAIRS {
            let ab = rotate_pair(slot, pos, grp * PAIRS + lid, y_sh[lid], y_sh[lid + PAIRS]);
            rot_sh[lid] = ab.x;
            rot_sh[lid + PAIRS] = ab.y;
        }
        workgroupBarrier();
        if lid < RPW / EPT {
            store_group_texel(slot, pos, grp, lid);
        }
        return;
    }
#endif
    if lid < PAIRS {
        store_pair(slot, r, pos, grp * PAIRS + lid, elem_of(grp, lid), elem_of(grp, lid + PAIRS), y_sh[lid],
                   y_sh[lid + PAIRS]);
    }
}
#endif

// RoPE pair `p` (first element a, second b) of head slot `slot` at position pos, rotated (V: unchanged).
fn rotate_pair(slot: u32, pos: u32, p: u32, a: f32, b: f32) -> vec2<f32> {
    if slot >= params.heads + params.kv_heads {
        return vec2<f32>(a, b);
    }
    let cs = rope_cs[pos * (HD / 2u) + p];
    return vec2<f32>(a * cs.x - b * cs.y, a * cs.y + b * cs.x);
}

// RoPE pair `p` (elements ia, ib of head slot `slot`, token row r at position pos) and its destination:
// Q rows to q_out, K and V rows to the cache (V is not rotated).
fn store_pair(slot: u32, r: u32, pos: u32, p: u32, ia: u32, ib: u32, a0: f32, b0: f32) {
    let ab = rotate_pair(slot, pos, p, a0, b0);
    let a = ab.x;
    let b = ab.y;
    if slot < params.heads {
        let base = (r * params.heads + slot) * HD;
        q_out[base + ia] = a;
        q_out[base + ib] = b;
    } else {
#if !KVTEX
        let base = kv_row(slot, pos);
        kv[base + ia] = kv_t(a);
        kv[base + ib] = kv_t(b);
#endif
    }
}

#if KVTEX
#if F16
const EPT: u32 = 8u; // elements per texel
#else
const EPT: u32 = 4u;
#endif

// Element e of K/V head slot `slot` (K rotated) for the row at `base` of qkv_in, at position pos.
fn rope_elem(slot: u32, pos: u32, base: u32, e: u32) -> f32 {
    return rope_rotated(slot, pos, e, qkv_in[base + e], qkv_in[base + rope_partner(e)]);
}
#endif

// The element that element e of a head forms its RoPE pair with.
fn rope_partner(e: u32) -> u32 {
#if ROPE_INTERLEAVED
    return e ^ 1u;
#else
    return select(e - HD / 2u, e + HD / 2u, e < HD / 2u);
#endif
}

// Element e of head slot `slot` at position pos after RoPE (V: unchanged), from its value `own` and its
// partner's `other`.
fn rope_rotated(slot: u32, pos: u32, e: u32, own: f32, other: f32) -> f32 {
#if ROPE_INTERLEAVED
    let first = (e & 1u) == 0u;
    let p = e / 2u;
#else
    let first = e < HD / 2u;
    let p = select(e - HD / 2u, e, first);
#endif
    let ab = rotate_pair(slot, pos, p, select(other, own, first), select(own, other, first));
    return select(ab.y, ab.x, first);
}

// BATCH (`rope_cache`): row r of the dispatch is sequence `batch_rows[r].x` at position `batch_rows[r].y`,
// written `seq_stride` elements per sequence into the slot (batched decoding of several sequences).
#if BATCH
@group(0) @binding(9) var<storage, read> batch_rows: array<vec2<u32>>;
var<private> seq_base: u32;
#endif

// Offset in the cache slot (in elements) of K/V head slot `slot`'s row at position pos.
fn kv_row(slot: u32, pos: u32) -> u32 {
    var kvh = slot - params.heads;
    var part = 0u;
    if kvh >= params.kv_heads {
        kvh -= params.kv_heads;
        part = 1u;
    }
#if BATCH
    return seq_base + ((part * params.kv_heads + kvh) * params.capacity + pos) * HD;
#else
    return ((part * params.kv_heads + kvh) * params.capacity + pos) * HD;
#endif
}

#if KVTEX
// Elements first .. first+EPT-1 (`v`) of K/V head slot `slot` at position pos: one texel of the slot.
fn write_texel(slot: u32, pos: u32, first: u32, v: array<f32, EPT>) {
#if F16
    let w = vec4<u32>(pack2x16float(vec2<f32>(v[0], v[1])), pack2x16float(vec2<f32>(v[2], v[3])),
                      pack2x16float(vec2<f32>(v[4], v[5])), pack2x16float(vec2<f32>(v[6], v[7])));
#else
    let w = bitcast<vec4<u32>>(vec4<f32>(v[0], v[1], v[2], v[3]));
#endif
    let texel = (kv_row(slot, pos) + first) / EPT;
    textureStore(kv_store, vec2<u32>(texel % KV_ROW, texel / KV_ROW), w);
}

// Texel t of a K/V head row, from the row at `base` of qkv_in (rope_cache).
fn store_texel(slot: u32, pos: u32, base: u32, t: u32) {
    var v: array<f32, EPT>;
    for (var k = 0u; k < EPT; k++) {
        v[k] = rope_elem(slot, pos, base, t * EPT + k);
    }
    write_texel(slot, pos, t * EPT, v);
}

// The qkv_rope workgroup's rotated K/V rows (local row order, as y_sh), for its texel writers.
var<workgroup> rot_sh: array<f32, RPW>;

// Texel t (< RPW / EPT) of the workgroup's elements: halves, two runs of PAIRS consecutive elements (local
// rows 0..PAIRS and PAIRS..RPW); interleaved, RPW consecutive elements alternating the two halves of y_sh.
fn store_group_texel(slot: u32, pos: u32, grp: u32, t: u32) {
    var v: array<f32, EPT>;
    for (var k = 0u; k < EPT; k++) {
        let m = t * EPT + k;
#if ROPE_INTERLEAVED
        v[k] = rot_sh[select(PAIRS + m / 2u, m / 2u, (m & 1u) == 0u)];
#else
        v[k] = rot_sh[m];
#endif
    }
#if ROPE_INTERLEAVED
    let first = 2u * grp * PAIRS + t * EPT;
#else
    let first = elem_of(grp, t * EPT);
#endif
    write_texel(slot, pos, first, v);
}
#endif

// The unfused tail for devices where a tuned GEMV (`gemv` with NORM) computes the projection faster:
// reads the projected Q|K|V row of each token from `qkv_in` (`[max_n, (heads + 2 kv_heads) * HD]`) and does
// the RoPE and the cache write. One workgroup of RWG threads per (head slot, token row); one invocation per
// RoPE pair (KVTEX: per texel of a K/V row, each element with its RoPE partner).
@group(0) @binding(8) var<storage, read> qkv_in: array<f32>;

@compute @workgroup_size(RWG)
fn rope_cache(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let slot = wg.x;
    let r = wg.y;
    if r >= step.n {
        return;
    }
#if BATCH
    let pos = batch_rows[r].y;
    seq_base = batch_rows[r].x * params.seq_stride;
#else
    let pos = step.pos + r;
#endif
    if pos >= params.capacity {
        return;
    }
    let width = (params.heads + 2u * params.kv_heads) * HD;
    let base = r * width + slot * HD;
#if KVTEX
    if slot >= params.heads {
        for (var t = lid; t < HD / EPT; t += RWG) {
            store_texel(slot, pos, base, t);
        }
        return;
    }
#endif
    for (var p = lid; p < HD / 2u; p += RWG) {
#if ROPE_INTERLEAVED
        let ia = 2u * p;
        let ib = 2u * p + 1u;
#else
        let ia = p;
        let ib = p + HD / 2u;
#endif
        store_pair(slot, r, pos, p, ia, ib, qkv_in[base + ia], qkv_in[base + ib]);
    }
}

#if LANES
// CPU drivers' decode: the projection the way the tuned GEMV computes it there (`kernels/gemv.wgsl`, TPR 1,
// GROUP8, XBCAST: each lane owns 8 whole rows, x bound as a uniform, its sum of squares shared out), then
// RoPE and the stores of `rope_cache` as its epilogue: one dispatch per layer execution where the split
// path takes two, and no Q|K|V scratch. One workgroup of LWG = HD / 8 lanes per (two head slots, token
// row): each x block loaded serves 16 rows per lane, and a head's RoPE partners meet in workgroup memory.
// Two head slots' sums (slot A's rows, then slot B's).
var<workgroup> head_sh: array<f32, 2u * HD>;
#if XBCAST && SUBGROUPS
// This lane's index within its group of 8 (XBCAST: x shared by subgroup broadcasts).
var<private> x_lane: u32;
#endif

// Block b of token row r's x, normalised (`scale` = 1 / rms), as 8 vec4.
fn lanes_x(r: u32, b: u32, scale: f32) -> array<vec4<f32>, 8> {
    let o = r * (params.hidden / 4u) + 8u * b;
    let n = 8u * b;
#if XBCAST && SUBGROUPS
    // Lane l loads quad l, broadcasts hand it to the others: one gather instead of eight (as gemv's XBCAST).
    let mine = xu[o + x_lane] * scale * norm_u[n + x_lane];
    return array<vec4<f32>, 8>(subgroupBroadcast(mine, 0u), subgroupBroadcast(mine, 1u), subgroupBroadcast(mine, 2u),
                               subgroupBroadcast(mine, 3u), subgroupBroadcast(mine, 4u), subgroupBroadcast(mine, 5u),
                               subgroupBroadcast(mine, 6u), subgroupBroadcast(mine, 7u));
#else
    return array<vec4<f32>, 8>(xu[o] * scale * norm_u[n], xu[o + 1u] * scale * norm_u[n + 1u],
                               xu[o + 2u] * scale * norm_u[n + 2u], xu[o + 3u] * scale * norm_u[n + 3u],
                               xu[o + 4u] * scale * norm_u[n + 4u], xu[o + 5u] * scale * norm_u[n + 5u],
                               xu[o + 6u] * scale * norm_u[n + 6u], xu[o + 7u] * scale * norm_u[n + 7u]);
#endif
}

// Rows row0 .. row0+7 of the weight times block b of x.
fn lanes_dot8(row0: u32, b: u32, xv: BlockX) -> array<f32, 8> {
#if WTEX
    // The tiled texture layout puts an aligned group of 8 rows' blocks side by side, scales in one texel.
    return weight_dot32_x8(params.desc, weight_block(params.desc, row0, b), xv);
#else
    let d = params.desc;
    return array<f32, 8>(weight_dot32(d, row0, b, xv), weight_dot32(d, row0 + 1u, b, xv),
                         weight_dot32(d, row0 + 2u, b, xv), weight_dot32(d, row0 + 3u, b, xv),
                         weight_dot32(d, row0 + 4u, b, xv), weight_dot32(d, row0 + 5u, b, xv),
                         weight_dot32(d, row0 + 6u, b, xv), weight_dot32(d, row0 + 7u, b, xv));
#endif
}

@compute @workgroup_size(LWG)
fn qkv_rope_lanes(@builtin(workgroup_id) wg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32,
#if XBCAST && SUBGROUPS
                  @builtin(subgroup_invocation_id) sg_lane: u32,
#endif
) {
    // Head slots A and B of this workgroup (an odd count's last workgroup redoes A as B, never stored).
    let slots = params.heads + 2u * params.kv_heads;
    let slot_a = 2u * wg.x;
    let slot_b = min(slot_a + 1u, slots - 1u);
    let r = wg.y;
    let pos = step.pos + r;
    if r >= step.n || pos >= params.capacity {
        return;
    }
#if XBCAST && SUBGROUPS
    x_lane = sg_lane & 7u;
#endif
    let hv4 = params.hidden / 4u;
    var s4 = vec4<f32>(0.0);
#if XBCAST && SUBGROUPS
    // Lanes 0..7 of each subgroup take every 8th quad, a subgroup sum adds their shares: an eighth of the
    // gathers of every lane reading all of x.
    for (var k = x_lane; k < hv4; k += 8u) {
        let v = xu[r * hv4 + k];
        s4 = fma(v, v, s4);
    }
    let sum_sq = subgroupAdd(select(0.0, (s4.x + s4.y) + (s4.z + s4.w), sg_lane < 8u));
#else
    for (var k = 0u; k < hv4; k++) {
        let v = xu[r * hv4 + k];
        s4 = fma(v, v, s4);
    }
    let sum_sq = (s4.x + s4.y) + (s4.z + s4.w);
#endif
    let scale = inverseSqrt(sum_sq / f32(params.hidden) + params.eps);
    let first = 8u * lid;
    let row_a = slot_a * HD + first;
    let row_b = slot_b * HD + first;
    // Written out: a loop-indexed accumulator array lives in memory on a CPU driver.
    var acc_a = array<f32, 8>();
    var acc_b = array<f32, 8>();
    for (var b = 0u; b < params.desc.blocks; b++) {
        let xv = weight_block_x(lanes_x(r, b, scale));
        let da = lanes_dot8(row_a, b, xv);
        acc_a = array<f32, 8>(acc_a[0] + da[0], acc_a[1] + da[1], acc_a[2] + da[2], acc_a[3] + da[3],
                              acc_a[4] + da[4], acc_a[5] + da[5], acc_a[6] + da[6], acc_a[7] + da[7]);
        let db = lanes_dot8(row_b, b, xv);
        acc_b = array<f32, 8>(acc_b[0] + db[0], acc_b[1] + db[1], acc_b[2] + db[2], acc_b[3] + db[3],
                              acc_b[4] + db[4], acc_b[5] + db[5], acc_b[6] + db[6], acc_b[7] + db[7]);
    }
    lanes_share(first, acc_a);
    lanes_share(HD + first, acc_b);
    workgroupBarrier();
    lanes_store(slot_a, r, pos, first, 0u);
    if slot_b != slot_a {
        lanes_store(slot_b, r, pos, first, HD);
    }
}

// A lane's 8 sums into head_sh from `at`, where the epilogue finds their RoPE partners.
fn lanes_share(at: u32, acc: array<f32, 8>) {
    head_sh[at] = acc[0];
    head_sh[at + 1u] = acc[1];
    head_sh[at + 2u] = acc[2];
    head_sh[at + 3u] = acc[3];
    head_sh[at + 4u] = acc[4];
    head_sh[at + 5u] = acc[5];
    head_sh[at + 6u] = acc[6];
    head_sh[at + 7u] = acc[7];
}

// Elements first .. first+7 of head slot `slot` (its rows at `base` in head_sh) after RoPE, to q_out or the
// cache slot.
fn lanes_store(slot: u32, r: u32, pos: u32, first: u32, base: u32) {
    var v: array<f32, 8>;
    for (var k = 0u; k < 8u; k++) {
        let e = first + k;
        v[k] = rope_rotated(slot, pos, e, head_sh[base + e], head_sh[base + rope_partner(e)]);
    }
    if slot < params.heads {
        let at = (r * params.heads + slot) * HD + first;
        for (var k = 0u; k < 8u; k++) {
            q_out[at + k] = v[k];
        }
        return;
    }
#if KVTEX
#if F16
    write_texel(slot, pos, first, v);
#else
    write_texel(slot, pos, first, array<f32, 4>(v[0], v[1], v[2], v[3]));
    write_texel(slot, pos, first + 4u, array<f32, 4>(v[4], v[5], v[6], v[7]));
#endif
#else
    let at = kv_row(slot, pos) + first;
    for (var k = 0u; k < 8u; k++) {
        kv[at + k] = kv_t(v[k]);
    }
#endif
}
#endif
