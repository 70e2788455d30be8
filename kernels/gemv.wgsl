// Matrix-vector product for a batch of vectors: y[b, off + o] (+)= sum_k W[o, k] x[b, k], f32 accumulation.
// One workgroup computes RPW = (WG / TPR) * RPT consecutive rows for one batch vector (grid y).
// Mapping constants: WG threads; TPR threads share a row (they stride over its 32-column blocks);
// each thread carries RPT rows, so one load of x serves RPT rows.
// - TPR == 1: a thread owns its rows outright, no reduction (best where threads are SIMD lanes of a CPU).
// - TPR > 1 with SUBGROUPS: each subgroup owns row slots and strides blocks by its own size, reduced with
//   subgroupAdd: correct for any subgroup size, no workgroup memory, no barriers.
// - TPR > 1 without SUBGROUPS: TPR consecutive threads per row slot, tree-reduced in workgroup memory.
// `y` is one read_write binding so the residual add (accumulate) happens in place.
// NORM: x is RMS-normalised on the fly (x / rms(x) * norm_w; each invocation computes rms of its vector,
// a few hundred MACs next to RPT rows of weights), so a norm dispatch and its buffer disappear.
// SWIGLU: W is [gate; up] stacked (2 * out_rows rows); output o = silu(gate_o . x) * (up_o . x): the fused
// feed-forward first half as one GEMV with the GEMV's tuned mapping.

struct Params {
    w: WeightDesc,
    n: u32,
    y_stride: u32,
    out_offset: u32,
    accumulate: u32,
    // Rows produced (w.rows, or half of them with SWIGLU) and the first `up` row.
    out_rows: u32,
    up_row: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
#if WTEX
@group(0) @binding(1) var weights_tex: texture_2d<u32>;
#else
@group(0) @binding(1) var<storage, read> weights: array<u32>;
#endif
// XUNI: x (and the norm weight) are bound as uniforms, exactly XV4 (NV4) vec4 (launcher: cols % 4 == 0,
// at most 64 KiB, TPR == 1 so every lane reads the same address). On lavapipe a uniform load at a uniform
// address is one scalar load, a storage load a per-lane loop; x is read by every thread for its RPT rows.
#if XUNI
@group(0) @binding(2) var<uniform> xu: array<vec4<f32>, XV4>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
#endif
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

#include weights

// Element i of x.
fn xval(i: u32) -> f32 {
#if XUNI
    return xu[i >> 2u][i & 3u];
#else
    return x[i];
#endif
}

// x[o .. o+4] (o a multiple of 4 under XUNI).
fn x4(o: u32) -> vec4<f32> {
#if XUNI
    return xu[o >> 2u];
#else
    return vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
#endif
}

#if NORM
#if XUNI
@group(0) @binding(4) var<uniform> norm_u: array<vec4<f32>, NV4>;
#else
@group(0) @binding(4) var<storage, read> norm_w: array<f32>;
#endif
var<private> inv_rms: f32;

fn norm_val(i: u32) -> f32 {
#if XUNI
    return norm_u[i >> 2u][i & 3u];
#else
    return norm_w[i];
#endif
}

fn prepare_norm(xbase: u32) {
    var sum_sq = 0.0;
    for (var k = 0u; k < params.w.cols; k++) {
        let v = xval(xbase + k);
        sum_sq += v * v;
    }
    inv_rms = inverseSqrt(sum_sq / f32(params.w.cols) + params.eps);
}
#endif

#if SWIGLU
const OUTS: u32 = 2u * RPT;
#else
const OUTS: u32 = RPT;
#endif

// The output value of row slot i from its accumulators.
fn finish(acc: array<f32, OUTS>, i: u32) -> f32 {
#if SWIGLU
    let g = acc[i];
    return g / (1.0 + exp(-g)) * acc[RPT + i];
#else
    return acc[i];
#endif
}

const SLOTS: u32 = WG / TPR;
const RPW: u32 = SLOTS * RPT;

var<workgroup> partial: array<f32, WG * OUTS>;

// x[base + 32*block ..] as 8 vec4, zero past `cols` (only f32/f16 weights have a partial last block).
fn load_x(base: u32, block: u32, cols: u32) -> array<vec4<f32>, 8> {
    let c0 = block * 32u;
    var v: array<vec4<f32>, 8>;
    if c0 + 32u <= cols {
        let o = base + c0;
        v = array<vec4<f32>, 8>(x4(o), x4(o + 4u), x4(o + 8u), x4(o + 12u), x4(o + 16u), x4(o + 20u),
                                x4(o + 24u), x4(o + 28u));
    } else {
        for (var k = 0u; k < 8u; k++) {
            let c = vec4<u32>(c0 + 4u * k) + vec4<u32>(0u, 1u, 2u, 3u);
            let ok = c < vec4<u32>(cols);
            let o = vec4<u32>(base) + min(c, vec4<u32>(cols - 1u));
            v[k] = select(vec4<f32>(0.0), vec4<f32>(xval(o.x), xval(o.y), xval(o.z), xval(o.w)), ok);
        }
    }
#if NORM
    for (var k = 0u; k < 8u; k++) {
        let c = min(vec4<u32>(c0 + 4u * k) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(cols - 1u));
        v[k] *= inv_rms * vec4<f32>(norm_val(c.x), norm_val(c.y), norm_val(c.z), norm_val(c.w));
    }
#endif
    return v;
}

fn store(batch: u32, row: u32, value: f32) {
    let i = batch * params.y_stride + params.out_offset + row;
    if params.accumulate != 0u {
        y[i] = y[i] + value;
    } else {
        y[i] = value;
    }
}

// Partial dots of rows r0 .. r0+RPT-1 over the blocks first, first+step, ...
fn dot_rows(r0: u32, batch: u32, first: u32, step: u32) -> array<f32, OUTS> {
    var acc: array<f32, OUTS>;
    let last = params.out_rows - 1u;
    let xbase = batch * params.w.cols;
    for (var b = first; b < params.w.blocks; b += step) {
        let xv = load_x(xbase, b, params.w.cols);
        for (var i = 0u; i < RPT; i++) {
            // Rows past the end re-read the last row (never stored): no branch in the hot loop.
            let r = min(r0 + i, last);
            acc[i] += weight_dot32(params.w, r, b, xv);
#if SWIGLU
            acc[RPT + i] += weight_dot32(params.w, r + params.up_row, b, xv);
#endif
        }
    }
    return acc;
}

@compute @workgroup_size(WG)
fn gemv(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
        @builtin(subgroup_invocation_id) sg_lane: u32,
        @builtin(subgroup_id) sg_id: u32,
        @builtin(num_subgroups) sg_count: u32,
        @builtin(subgroup_size) sg_size: u32,
#endif
) {
    let batch = wg.y;
    let row0 = wg.x * RPW;
#if NORM
    prepare_norm(batch * params.w.cols);
#endif
    if TPR == 1u {
        let r0 = row0 + lid * RPT;
        let acc = dot_rows(r0, batch, 0u, 1u);
        for (var i = 0u; i < RPT; i++) {
            if r0 + i < params.out_rows {
                store(batch, r0 + i, finish(acc, i));
            }
        }
        return;
    }
#if SUBGROUPS
    // The loop bound is uniform within each subgroup, so subgroupAdd sees the whole subgroup.
    for (var slot = sg_id; slot < SLOTS; slot += sg_count) {
        let r0 = row0 + slot * RPT;
        var acc = dot_rows(r0, batch, sg_lane, sg_size);
        for (var i = 0u; i < OUTS; i++) {
            acc[i] = subgroupAdd(acc[i]);
        }
        for (var i = 0u; i < RPT; i++) {
            if sg_lane == 0u && r0 + i < params.out_rows {
                store(batch, r0 + i, finish(acc, i));
            }
        }
    }
#else
    let lane = lid % TPR;
    let r0 = row0 + (lid / TPR) * RPT;
    let acc = dot_rows(r0, batch, lane, TPR);
    for (var i = 0u; i < OUTS; i++) {
        partial[lid * OUTS + i] = acc[i];
    }
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            for (var i = 0u; i < OUTS; i++) {
                partial[lid * OUTS + i] += partial[(lid + s) * OUTS + i];
            }
        }
        workgroupBarrier();
    }
    if lane == 0u {
        var total: array<f32, OUTS>;
        for (var i = 0u; i < OUTS; i++) {
            total[i] = partial[lid * OUTS + i];
        }
        for (var i = 0u; i < RPT; i++) {
            if r0 + i < params.out_rows {
                store(batch, r0 + i, finish(total, i));
            }
        }
    }
#endif
}

// Multi-vector form for CPU devices (prefill: ops::gemm, and the fused NORM / SWIGLU products for n > 1).
// On a SIMD-lane driver (lavapipe) every storage load inside a loop is a per-lane gather, whatever its
// address: the cost to cut is loads per multiply-add. Lanes are rows; a thread carries 8 vectors (grid
// y = ceil(n / 8)) and walks its RPT output rows eight weight rows at a time (plain: r..r+7; SWIGLU: gate
// rows r..r+3 and up rows r + up_row ..), so each gathered weight word feeds 8 vectors and each x value
// 8 rows. With SUBGROUPS (the launcher sets it only where subgroups have at least 8 lanes), lane l loads
// column c + (l & 7) of each vector and subgroupBroadcast hands it to the others: one gather brings 8
// columns; without, every column is its own load. Register tiles are named values or arrays indexed by
// constants only (after inlining), never by a loop counter, so a CPU driver keeps them in registers.
// NORM: norm_w scales x as it is loaded and 1/rms of each vector scales its sums at the end.
var<private> xo_lo: vec4<u32>;
var<private> xo_hi: vec4<u32>;
// Accumulators: a{row}_{lo: vectors 0-3, hi: 4-7}.
var<private> a0_lo: vec4<f32>;
var<private> a0_hi: vec4<f32>;
var<private> a1_lo: vec4<f32>;
var<private> a1_hi: vec4<f32>;
var<private> a2_lo: vec4<f32>;
var<private> a2_hi: vec4<f32>;
var<private> a3_lo: vec4<f32>;
var<private> a3_hi: vec4<f32>;
var<private> a4_lo: vec4<f32>;
var<private> a4_hi: vec4<f32>;
var<private> a5_lo: vec4<f32>;
var<private> a5_hi: vec4<f32>;
var<private> a6_lo: vec4<f32>;
var<private> a6_hi: vec4<f32>;
var<private> a7_lo: vec4<f32>;
var<private> a7_hi: vec4<f32>;
// The current block's dequantized weights, [row][column / 4].
var<private> wt: array<array<vec4<f32>, 8>, 8>;
var<private> last_col: u32;
var<private> lane8: u32;

// One column: rows 0-3 (w03) and 4-7 (w47) times the 8 vectors' x at that column.
fn mac_col(w03: vec4<f32>, w47: vec4<f32>, lo: vec4<f32>, hi: vec4<f32>) {
    a0_lo = fma(vec4<f32>(w03.x), lo, a0_lo);
    a0_hi = fma(vec4<f32>(w03.x), hi, a0_hi);
    a1_lo = fma(vec4<f32>(w03.y), lo, a1_lo);
    a1_hi = fma(vec4<f32>(w03.y), hi, a1_hi);
    a2_lo = fma(vec4<f32>(w03.z), lo, a2_lo);
    a2_hi = fma(vec4<f32>(w03.z), hi, a2_hi);
    a3_lo = fma(vec4<f32>(w03.w), lo, a3_lo);
    a3_hi = fma(vec4<f32>(w03.w), hi, a3_hi);
    a4_lo = fma(vec4<f32>(w47.x), lo, a4_lo);
    a4_hi = fma(vec4<f32>(w47.x), hi, a4_hi);
    a5_lo = fma(vec4<f32>(w47.y), lo, a5_lo);
    a5_hi = fma(vec4<f32>(w47.y), hi, a5_hi);
    a6_lo = fma(vec4<f32>(w47.z), lo, a6_lo);
    a6_hi = fma(vec4<f32>(w47.z), hi, a6_hi);
    a7_lo = fma(vec4<f32>(w47.w), lo, a7_lo);
    a7_hi = fma(vec4<f32>(w47.w), hi, a7_hi);
}

// x (times norm_w with NORM) of the vectors at offsets `o` (4 of them), column `col`.
fn x_col(o: vec4<u32>, col: u32) -> vec4<f32> {
    let c = min(col, last_col);
    let v = vec4<f32>(xval(o.x + c), xval(o.y + c), xval(o.z + c), xval(o.w + c));
#if NORM
    return v * norm_val(c);
#else
    return v;
#endif
}

// Column k of the block (0..31) for rows 0-3 / 4-7 (k is a constant after inlining).
fn w03(k: u32) -> vec4<f32> {
    let q = k / 4u;
    let e = k % 4u;
    return vec4<f32>(wt[0][q][e], wt[1][q][e], wt[2][q][e], wt[3][q][e]);
}

fn w47(k: u32) -> vec4<f32> {
    let q = k / 4u;
    let e = k % 4u;
    return vec4<f32>(wt[4][q][e], wt[5][q][e], wt[6][q][e], wt[7][q][e]);
}

// Columns c + 8j .. c + 8j + 7 of the block at column c.
fn mac_chunk(c: u32, j: u32) {
    let k = 8u * j;
#if SUBGROUPS
    let lo = x_col(xo_lo, c + k + lane8);
    let hi = x_col(xo_hi, c + k + lane8);
    mac_col(w03(k + 0u), w47(k + 0u), subgroupBroadcast(lo, 0u), subgroupBroadcast(hi, 0u));
    mac_col(w03(k + 1u), w47(k + 1u), subgroupBroadcast(lo, 1u), subgroupBroadcast(hi, 1u));
    mac_col(w03(k + 2u), w47(k + 2u), subgroupBroadcast(lo, 2u), subgroupBroadcast(hi, 2u));
    mac_col(w03(k + 3u), w47(k + 3u), subgroupBroadcast(lo, 3u), subgroupBroadcast(hi, 3u));
    mac_col(w03(k + 4u), w47(k + 4u), subgroupBroadcast(lo, 4u), subgroupBroadcast(hi, 4u));
    mac_col(w03(k + 5u), w47(k + 5u), subgroupBroadcast(lo, 5u), subgroupBroadcast(hi, 5u));
    mac_col(w03(k + 6u), w47(k + 6u), subgroupBroadcast(lo, 6u), subgroupBroadcast(hi, 6u));
    mac_col(w03(k + 7u), w47(k + 7u), subgroupBroadcast(lo, 7u), subgroupBroadcast(hi, 7u));
#else
    mac_col(w03(k + 0u), w47(k + 0u), x_col(xo_lo, c + k + 0u), x_col(xo_hi, c + k + 0u));
    mac_col(w03(k + 1u), w47(k + 1u), x_col(xo_lo, c + k + 1u), x_col(xo_hi, c + k + 1u));
    mac_col(w03(k + 2u), w47(k + 2u), x_col(xo_lo, c + k + 2u), x_col(xo_hi, c + k + 2u));
    mac_col(w03(k + 3u), w47(k + 3u), x_col(xo_lo, c + k + 3u), x_col(xo_hi, c + k + 3u));
    mac_col(w03(k + 4u), w47(k + 4u), x_col(xo_lo, c + k + 4u), x_col(xo_hi, c + k + 4u));
    mac_col(w03(k + 5u), w47(k + 5u), x_col(xo_lo, c + k + 5u), x_col(xo_hi, c + k + 5u));
    mac_col(w03(k + 6u), w47(k + 6u), x_col(xo_lo, c + k + 6u), x_col(xo_hi, c + k + 6u));
    mac_col(w03(k + 7u), w47(k + 7u), x_col(xo_lo, c + k + 7u), x_col(xo_hi, c + k + 7u));
#endif
}

// a0..a7 = rows r03, r47 of W times the 8 vectors (before the NORM scale).
fn dot_rows8(r03: vec4<u32>, r47: vec4<u32>) {
    a0_lo = vec4<f32>(0.0);
    a0_hi = vec4<f32>(0.0);
    a1_lo = vec4<f32>(0.0);
    a1_hi = vec4<f32>(0.0);
    a2_lo = vec4<f32>(0.0);
    a2_hi = vec4<f32>(0.0);
    a3_lo = vec4<f32>(0.0);
    a3_hi = vec4<f32>(0.0);
    a4_lo = vec4<f32>(0.0);
    a4_hi = vec4<f32>(0.0);
    a5_lo = vec4<f32>(0.0);
    a5_hi = vec4<f32>(0.0);
    a6_lo = vec4<f32>(0.0);
    a6_hi = vec4<f32>(0.0);
    a7_lo = vec4<f32>(0.0);
    a7_hi = vec4<f32>(0.0);
    for (var b = 0u; b < params.w.blocks; b++) {
        wt[0] = weight_block32(params.w, r03.x, b);
        wt[1] = weight_block32(params.w, r03.y, b);
        wt[2] = weight_block32(params.w, r03.z, b);
        wt[3] = weight_block32(params.w, r03.w, b);
        wt[4] = weight_block32(params.w, r47.x, b);
        wt[5] = weight_block32(params.w, r47.y, b);
        wt[6] = weight_block32(params.w, r47.z, b);
        wt[7] = weight_block32(params.w, r47.w, b);
        let c = b * 32u;
        mac_chunk(c, 0u);
        mac_chunk(c, 1u);
        mac_chunk(c, 2u);
        mac_chunk(c, 3u);
    }
}

fn store8(v0: u32, row: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if row >= params.out_rows {
        return;
    }
    let vals = array<f32, 8>(lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w);
    for (var v = 0u; v < 8u; v++) {
        if v0 + v < params.n {
            store(v0 + v, row, vals[v]);
        }
    }
}

fn swiglu4(g: vec4<f32>, u: vec4<f32>) -> vec4<f32> {
    return g / (1.0 + exp(-g)) * u;
}

@compute @workgroup_size(WG)
fn gemv_multi(@builtin(workgroup_id) wg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
              @builtin(subgroup_invocation_id) sg_lane: u32,
#endif
) {
#if SUBGROUPS
    lane8 = sg_lane & 7u;
#endif
    let r0 = wg.x * (WG * RPT) + lid * RPT;
    let v0 = wg.y * 8u;
    let cols = params.w.cols;
    last_col = cols - 1u;
    let nv = vec4<u32>(params.n - 1u);
    xo_lo = min(vec4<u32>(v0) + vec4<u32>(0u, 1u, 2u, 3u), nv) * cols;
    xo_hi = min(vec4<u32>(v0) + vec4<u32>(4u, 5u, 6u, 7u), nv) * cols;
#if NORM
    // Sums of squares of the 8 vectors. With SUBGROUPS lanes 0..7 of each subgroup take every 8th
    // column and subgroupAdd joins them (other lanes add zero): 8x fewer loads than one lane doing all.
    var ss_lo = vec4<f32>(0.0);
    var ss_hi = vec4<f32>(0.0);
#if SUBGROUPS
    let first = lane8;
    let step = 8u;
#else
    let first = 0u;
    let step = 1u;
#endif
    for (var c = first; c < cols; c += step) {
        let lo = vec4<f32>(xval(xo_lo.x + c), xval(xo_lo.y + c), xval(xo_lo.z + c), xval(xo_lo.w + c));
        let hi = vec4<f32>(xval(xo_hi.x + c), xval(xo_hi.y + c), xval(xo_hi.z + c), xval(xo_hi.w + c));
        ss_lo = fma(lo, lo, ss_lo);
        ss_hi = fma(hi, hi, ss_hi);
    }
#if SUBGROUPS
    let own = select(0.0, 1.0, sg_lane < 8u);
    ss_lo = subgroupAdd(ss_lo * own);
    ss_hi = subgroupAdd(ss_hi * own);
#endif
    let s_lo = inverseSqrt(ss_lo / f32(cols) + params.eps);
    let s_hi = inverseSqrt(ss_hi / f32(cols) + params.eps);
#else
    let s_lo = vec4<f32>(1.0);
    let s_hi = vec4<f32>(1.0);
#endif
    let last = vec4<u32>(params.out_rows - 1u);
    let seq = vec4<u32>(0u, 1u, 2u, 3u);
#if SWIGLU
    for (var i = 0u; i < RPT; i += 4u) {
        let r = r0 + i;
        let gate = min(vec4<u32>(r) + seq, last);
        dot_rows8(gate, gate + vec4<u32>(params.up_row));
        store8(v0, r, swiglu4(a0_lo * s_lo, a4_lo * s_lo), swiglu4(a0_hi * s_hi, a4_hi * s_hi));
        store8(v0, r + 1u, swiglu4(a1_lo * s_lo, a5_lo * s_lo), swiglu4(a1_hi * s_hi, a5_hi * s_hi));
        store8(v0, r + 2u, swiglu4(a2_lo * s_lo, a6_lo * s_lo), swiglu4(a2_hi * s_hi, a6_hi * s_hi));
        store8(v0, r + 3u, swiglu4(a3_lo * s_lo, a7_lo * s_lo), swiglu4(a3_hi * s_hi, a7_hi * s_hi));
    }
#else
    for (var i = 0u; i < RPT; i += 8u) {
        let r = r0 + i;
        dot_rows8(min(vec4<u32>(r) + seq, last), min(vec4<u32>(r + 4u) + seq, last));
        store8(v0, r + 0u, a0_lo * s_lo, a0_hi * s_hi);
        store8(v0, r + 1u, a1_lo * s_lo, a1_hi * s_hi);
        store8(v0, r + 2u, a2_lo * s_lo, a2_hi * s_hi);
        store8(v0, r + 3u, a3_lo * s_lo, a3_hi * s_hi);
        store8(v0, r + 4u, a4_lo * s_lo, a4_hi * s_hi);
        store8(v0, r + 5u, a5_lo * s_lo, a5_hi * s_hi);
        store8(v0, r + 6u, a6_lo * s_lo, a6_hi * s_hi);
        store8(v0, r + 7u, a7_lo * s_lo, a7_hi * s_hi);
    }
#endif
}
