// Matrix-vector product for a batch of vectors: y[b, off + o] (+)= sum_k W[o, k] x[b, k], f32 accumulation.
// One workgroup computes RPW = (WG / TPR) * RPT consecutive rows for one batch vector (grid y).
// Mapping constants: WG threads; TPR threads share a row (they stride over its 32-column blocks);
// each thread carries RPT rows, so one load of x serves RPT rows.
// - TPR == 1: a thread owns its rows outright, no reduction (best where threads are SIMD lanes of a CPU).
// - TPR > 1 with SUBGROUPS: each subgroup owns row slots and strides blocks by its own size, reduced with
//   subgroupAdd: correct for any subgroup size, no workgroup memory, no barriers.
// - TPR > 1 without SUBGROUPS: TPR consecutive threads per row slot, tree-reduced in workgroup memory.
// `y` is one read_write binding so the residual add (accumulate) happens in place.
// NORM: x is RMS-normalised on the fly (x / rms(x) * norm_w; each workgroup computes rms of its vector,
// a few hundred MACs next to its rows of weights), so a norm dispatch and its buffer disappear.
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
#if IMGREAD
@group(0) @binding(1) var weights_tex: texture_storage_2d<rgba32uint, read>;
#else
@group(0) @binding(1) var weights_tex: texture_2d<u32>;
#endif
#else
@group(0) @binding(1) var<storage, read> weights: array<u32>;
#endif
// XUNI: x (and the norm weight) are bound as uniforms, exactly XV4 (NV4) vec4 (launcher: cols % 4 == 0,
// at most 64 KiB, TPR == 1 so every lane reads the same address). On lavapipe (Mesa 22.3) a uniform load is
// a SIMD gather and a storage load a per-lane loop (only constant uniform addresses become scalar loads);
// x is read by every thread for its RPT rows.
// XTEX (with XUNI, for the windowed form): x as rgba32uint texels instead, vector v's quad q at texel
// (q, v), all of a product's vectors in one binding (written by `elementwise:to_texels`). On lavapipe a
// texel fetch at lane-varying coordinates is one SIMD gather of 16 bytes per lane, where a uniform load
// at a lane-varying address is a gather of 4-byte lanes plus their reassembly.
#if XTEX && IMGREAD
@group(0) @binding(2) var x_tex: texture_storage_2d<rgba32uint, read>;
#elif XTEX
@group(0) @binding(2) var x_tex: texture_2d<u32>;
#elif XUNI
@group(0) @binding(2) var<uniform> xu: array<vec4<f32>, XV4>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
#endif
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

#include weights

#if XTEX
// Quad q (columns 4q .. 4q+3) of vector v.
fn x_texel(v: u32, q: u32) -> vec4<f32> {
#if IMGREAD
    return bitcast<vec4<f32>>(textureLoad(x_tex, vec2<u32>(q, v)));
#else
    return bitcast<vec4<f32>>(textureLoad(x_tex, vec2<u32>(q, v), 0));
#endif
}
#endif

// Element i of x.
fn xval(i: u32) -> f32 {
#if XTEX
    return x4(i & ~3u)[i & 3u];
#elif XUNI
    return xu[i >> 2u][i & 3u];
#else
    return x[i];
#endif
}

// x[o .. o+4] (o a multiple of 4 under XUNI).
fn x4(o: u32) -> vec4<f32> {
#if XTEX
    let q = o >> 2u;
    let cols4 = params.w.cols >> 2u;
    return x_texel(q / cols4, q % cols4);
#elif XUNI
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

// norm_w[c .. c+4] (c + 3 < cols; under XUNI c is a multiple of 4, as cols is).
fn norm4(c: u32) -> vec4<f32> {
#if XUNI
    return norm_u[c >> 2u];
#else
    return vec4<f32>(norm_w[c], norm_w[c + 1u], norm_w[c + 2u], norm_w[c + 3u]);
#endif
}

fn set_inv_rms(sum_sq: f32) {
    inv_rms = inverseSqrt(sum_sq / f32(params.w.cols) + params.eps);
}

// Sum of squares of x[xbase + first], x[xbase + first + step], ... (a share of one vector's). Four loads
// per turn, all issued before any is used: one per turn was a memory round trip each on a GPU (18 turns
// for 576 columns over 32 lanes).
fn norm_share(xbase: u32, first: u32, step: u32) -> f32 {
    let cols = params.w.cols;
    var s4 = vec4<f32>(0.0);
    for (var k = first; k < cols; k += 4u * step) {
        let v = vec4<f32>(xval(xbase + k), xval(xbase + min(k + step, cols - 1u)),
                          xval(xbase + min(k + 2u * step, cols - 1u)), xval(xbase + min(k + 3u * step, cols - 1u)));
        let live = vec4<u32>(k) + vec4<u32>(0u, step, 2u * step, 3u * step) < vec4<u32>(cols);
        let w = select(vec4<f32>(0.0), v, live);
        s4 = fma(w, w, s4);
    }
    return (s4.x + s4.y) + (s4.z + s4.w);
}

// The vector's RMS where a thread owns whole rows (TPR == 1, threads are SIMD lanes of a CPU): with XBCAST
// the lanes of a subgroup share the gathers out and add them with one subgroup sum (a shuffle tree there);
// otherwise each thread reads all of x alone, rather than a workgroup-memory reduction with barriers.
fn prepare_norm(xbase: u32) {
    var sum_sq = 0.0;
#if XUNI && XBCAST && SUBGROUPS
    // Lanes 0..7 of each subgroup take every 8th quad and a subgroup sum adds their shares: an eighth of the
    // gathers of every lane reading all of x (on lavapipe those had cost a q4_0 3072x576 NORM GEMV 29% more
    // instructions than the plain one).
    var own4 = vec4<f32>(0.0);
    for (var k = 4u * x_lane; k < params.w.cols; k += 32u) {
        let v = x4(xbase + k);
        own4 = fma(v, v, own4);
    }
    sum_sq = subgroupAdd(select(0.0, (own4.x + own4.y) + (own4.z + own4.w), x_first8));
#elif XUNI
    // Whole vec4 (cols % 4 == 0 under XUNI): a quarter of the loads, each one SIMD gather on lavapipe.
    var sum4 = vec4<f32>(0.0);
    for (var k = 0u; k < params.w.cols; k += 4u) {
        let v = x4(xbase + k);
        sum4 = fma(v, v, sum4);
    }
    sum_sq = (sum4.x + sum4.y) + (sum4.z + sum4.w);
#else
    sum_sq = norm_share(xbase, 0u, 1u);
#endif
    set_inv_rms(sum_sq);
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

// A thread's RPT outputs from rows r0.. (TPR == 1). Written out with constant slots: a loop over RPT that
// indexes `acc` by its counter makes lavapipe keep the accumulators in per-lane scratch memory, hot loop and
// all (each update masked scalar stores).
fn store_rows(batch: u32, r0: u32, acc: array<f32, OUTS>) {
    store_slot(batch, r0, 0u, acc);
    store_slot(batch, r0, 1u, acc);
    store_slot(batch, r0, 2u, acc);
    store_slot(batch, r0, 3u, acc);
    store_slot(batch, r0, 4u, acc);
    store_slot(batch, r0, 5u, acc);
    store_slot(batch, r0, 6u, acc);
    store_slot(batch, r0, 7u, acc);
    store_slot(batch, r0, 8u, acc);
    store_slot(batch, r0, 9u, acc);
    store_slot(batch, r0, 10u, acc);
    store_slot(batch, r0, 11u, acc);
    store_slot(batch, r0, 12u, acc);
    store_slot(batch, r0, 13u, acc);
    store_slot(batch, r0, 14u, acc);
    store_slot(batch, r0, 15u, acc);
}

fn store_slot(batch: u32, r0: u32, i: u32, acc: array<f32, OUTS>) {
    if i < RPT && r0 + i < params.out_rows {
        store(batch, r0 + i, finish(acc, i));
    }
}

const SLOTS: u32 = WG / TPR;
const RPW: u32 = SLOTS * RPT;

var<workgroup> partial: array<f32, WG * OUTS>;

#if XBCAST && SUBGROUPS
// This thread's lane within its group of 8 (XBCAST: x shared by subgroup broadcasts), and whether it is
// one of its subgroup's lanes 0..7 (which between them hold each quad once).
var<private> x_lane: u32;
var<private> x_first8: bool;
#endif

// x[base + 32*block ..] as 8 vec4, zero past `cols` (only f32/f16 weights have a partial last block).
fn load_x(base: u32, block: u32, cols: u32) -> array<vec4<f32>, 8> {
    let c0 = block * 32u;
#if XBCAST && SUBGROUPS
    // Every lane needs the same 32 values (TPR == 1, XUNI): lane l of each 8 loads columns 4l .. 4l+3 and
    // subgroup broadcasts hand them to the others, one uniform gather instead of eight (on lavapipe a
    // uniform load at a varying address is a SIMD gather, a broadcast a register shuffle).
    let c = c0 + 4u * x_lane;
    let at = min(c, cols - 4u);
    var mine = select(vec4<f32>(0.0), x4(base + at), c < cols);
#if NORM
    // The norm weight travels with x: applied before the broadcasts.
    mine *= inv_rms * norm4(at);
#endif
    return array<vec4<f32>, 8>(subgroupBroadcast(mine, 0u), subgroupBroadcast(mine, 1u), subgroupBroadcast(mine, 2u),
                               subgroupBroadcast(mine, 3u), subgroupBroadcast(mine, 4u), subgroupBroadcast(mine, 5u),
                               subgroupBroadcast(mine, 6u), subgroupBroadcast(mine, 7u));
#else
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
    if c0 + 32u <= cols {
        // Written out: a loop-indexed `v` would live in memory on a CPU driver.
        v[0] *= inv_rms * norm4(c0);
        v[1] *= inv_rms * norm4(c0 + 4u);
        v[2] *= inv_rms * norm4(c0 + 8u);
        v[3] *= inv_rms * norm4(c0 + 12u);
        v[4] *= inv_rms * norm4(c0 + 16u);
        v[5] *= inv_rms * norm4(c0 + 20u);
        v[6] *= inv_rms * norm4(c0 + 24u);
        v[7] *= inv_rms * norm4(c0 + 28u);
    } else {
        for (var k = 0u; k < 8u; k++) {
            let c = min(vec4<u32>(c0 + 4u * k) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(cols - 1u));
            v[k] *= inv_rms * vec4<f32>(norm_val(c.x), norm_val(c.y), norm_val(c.z), norm_val(c.w));
        }
    }
#endif
    return v;
#endif
}

fn store(batch: u32, row: u32, value: f32) {
    let i = batch * params.y_stride + params.out_offset + row;
    if params.accumulate != 0u {
        y[i] = y[i] + value;
    } else {
        y[i] = value;
    }
}

#if GROUP8
// acc[base .. base+8] += v.
fn add8(acc: ptr<function, array<f32, OUTS>>, base: u32, v: array<f32, 8>) {
    (*acc)[base] += v[0];
    (*acc)[base + 1u] += v[1];
    (*acc)[base + 2u] += v[2];
    (*acc)[base + 3u] += v[3];
    (*acc)[base + 4u] += v[4];
    (*acc)[base + 5u] += v[5];
    (*acc)[base + 6u] += v[6];
    (*acc)[base + 7u] += v[7];
}

// dot_rows for one thread owning whole rows (TPR == 1, RPT 8 or 16) of a texture weight whose row count and
// out_rows are multiples of 8 (launcher): each group of 8 rows is one `weight_dot32_x8` per block, its
// scales one texel. Written out: the loop over RPT with a loop-indexed accumulator kept `acc` in memory on
// lavapipe, and per-row scale fetches were a second texel fetch per block and row.
fn dot_rows_x8(r0: u32, batch: u32) -> array<f32, OUTS> {
    var acc: array<f32, OUTS>;
    // Groups past the end redo the last group (never stored).
    let last8 = params.out_rows - 8u;
    let ra = min(r0, last8);
    let rb = min(r0 + 8u, last8);
    let xbase = batch * params.w.cols;
    for (var b = 0u; b < params.w.blocks; b++) {
        let xv = weight_block_x(load_x(xbase, b, params.w.cols));
        add8(&acc, 0u, weight_dot32_x8(params.w, weight_block(params.w, ra, b), xv));
        if RPT == 16u {
            add8(&acc, 8u, weight_dot32_x8(params.w, weight_block(params.w, rb, b), xv));
        }
#if SWIGLU
        add8(&acc, RPT, weight_dot32_x8(params.w, weight_block(params.w, ra + params.up_row, b), xv));
        if RPT == 16u {
            add8(&acc, RPT + 8u, weight_dot32_x8(params.w, weight_block(params.w, rb + params.up_row, b), xv));
        }
#endif
    }
    return acc;
}
#endif

#if QUADS
// x[base + 4q .. +4] of a vector (with NORM normalised), zero past `cols` (only f32/f16 rows end inside
// a block).
fn quad_x(base: u32, q: u32) -> vec4<f32> {
    let cols = params.w.cols;
    let c = 4u * q;
    var v: vec4<f32>;
    if c + 4u <= cols {
        v = x4(base + c);
#if NORM
        v *= inv_rms * norm4(c);
#endif
    } else {
        let cc = vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u);
        let ok = cc < vec4<u32>(cols);
        let o = min(cc, vec4<u32>(cols - 1u));
        v = select(vec4<f32>(0.0), vec4<f32>(xval(base + o.x), xval(base + o.y), xval(base + o.z), xval(base + o.w)), ok);
#if NORM
        v *= inv_rms * vec4<f32>(norm_val(o.x), norm_val(o.y), norm_val(o.z), norm_val(o.w));
#endif
    }
    return v;
}

// QUADS (launcher: TPR > 1, large matrices): the threads of a row slot stride over its 4-column quads
// rather than its 32-column blocks, so neighbours read neighbouring 16 bytes of x and of the quants: with a
// whole block per thread each x load of a subgroup touches 32 cache lines, which on an H100 bound the big
// products by the L1's transaction rate (32000x576 q4_0 30.7 -> 21.9 µs, the fused FFN's stacked 3072x576
// f32 31.3 -> 20.6). Small ones lose (576x1536 7.1 -> 9.2 µs): five turns per thread where one block was one.
fn dot_rows_quads(r0: u32, batch: u32, first: u32, step: u32) -> array<f32, OUTS> {
    var acc: array<f32, OUTS>;
    let last = params.out_rows - 1u;
    let xbase = batch * params.w.cols;
    let quads = 8u * params.w.blocks;
    for (var q = first; q < quads; q += step) {
        let xv = quad_x(xbase, q);
        for (var i = 0u; i < RPT; i++) {
            let r = min(r0 + i, last);
            acc[i] += dot(weight_load4(params.w, r, q), xv);
#if SWIGLU
            acc[RPT + i] += dot(weight_load4(params.w, r + params.up_row, q), xv);
#endif
        }
    }
    return acc;
}
#endif

// Partial dots of rows r0 .. r0+RPT-1 over the blocks first, first+step, ... (QUADS: over the quads).
fn dot_rows(r0: u32, batch: u32, first: u32, step: u32) -> array<f32, OUTS> {
#if GROUP8
    return dot_rows_x8(r0, batch);
#elif QUADS
    return dot_rows_quads(r0, batch, first, step);
#else
    var acc: array<f32, OUTS>;
    let last = params.out_rows - 1u;
    let xbase = batch * params.w.cols;
    for (var b = first; b < params.w.blocks; b += step) {
        let xv = weight_block_x(load_x(xbase, b, params.w.cols));
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
#endif
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
#if XBCAST && SUBGROUPS
    x_lane = sg_lane & 7u;
    x_first8 = sg_lane < 8u;
#endif
#if NORM
    // With TPR > 1 (GPUs) the threads share the sum of squares: one thread alone would make ~cols
    // dependent loads before its first weight, the latency every workgroup of the dispatch then waits on.
    if TPR == 1u {
        prepare_norm(batch * params.w.cols);
    } else {
#if SUBGROUPS
        set_inv_rms(subgroupAdd(norm_share(batch * params.w.cols, sg_lane, min(sg_size, WG))));
#else
        partial[lid] = norm_share(batch * params.w.cols, lid, WG);
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if lid < s {
                partial[lid] += partial[lid + s];
            }
            workgroupBarrier();
        }
        set_inv_rms(partial[0]);
        // `partial` is reused by the row reduction below.
        workgroupBarrier();
#endif
    }
#endif
    if TPR == 1u {
        let r0 = row0 + lid * RPT;
        store_rows(batch, r0, dot_rows(r0, batch, 0u, 1u));
        return;
    }
#if SUBGROUPS
    // The loop bound is uniform within each subgroup, so subgroupAdd sees the whole subgroup.
    for (var slot = sg_id; slot < SLOTS; slot += sg_count) {
        let r0 = row0 + slot * RPT;
        // A workgroup smaller than the subgroup fills only WG of its lanes.
        var acc = dot_rows(r0, batch, sg_lane, min(sg_size, WG));
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

#if XUNI
// Windowed multi-vector form for CPU devices (prefill GEMM, and the fused NORM / SWIGLU products at n > 1).
// The launcher binds x and y one window of XN vectors at a time (x as a uniform of XV4 = XN * cols / 4
// vec4, at most 64 KiB; y from the window's first vector), one launch per window; with XTEX (x in
// texels) the window is every vector of the product, one launch. Lanes are rows: a lane
// carries 8 vectors (grid y = ceil(XN / 8)) for RPT rows, two rows per pass (A and B: two of its rows, or
// with SWIGLU one output's gate and up rows). Each dequantized weight feeds 8 vectors. x reaches the lanes
// through subgroup broadcasts: with SUBGROUPS, lane l loads vector l's four columns and hands them to the
// others (on lavapipe a uniform load at a varying address is a per-lane gather: one gather instead of
// eight); without, every lane loads all eight. Those loads and broadcasts cost as much as one row's
// multiply-adds (lavapipe: ~70 scalar loads and lane extracts plus 32 broadcasts per 4-column quad, against
// 64 multiplies and adds), hence two rows per pass; their 16 accumulators fit a CPU's 32 vector registers
// (AVX-512), and more rows per pass would spill.
// NORM: norm_w scales the weights as they are read, and 1/rms of each vector scales its sums at the end.
// A window of at most 4 vectors (the short passes of speculative decoding and small batches) leaves the
// upper four lanes' accumulators out (HI, a constant: the compiler drops their loads, broadcasts and
// multiply-adds), so it costs about half a window of 8.
const HI: bool = XN > 4u;
var<private> wacc_a_lo: vec4<f32>;
var<private> wacc_a_hi: vec4<f32>;
var<private> wacc_b_lo: vec4<f32>;
var<private> wacc_b_hi: vec4<f32>;
#if SUBGROUPS
// Where the vector this lane loads starts (see `window_stride`; past XN: the window's last vector).
var<private> wx_lane: u32;
#else
// Where this workgroup's 8 vectors start (see `window_stride`; past XN: the window's last vector), which
// every lane loads itself.
var<private> wx_lo: vec4<u32>;
var<private> wx_hi: vec4<u32>;
#endif
var<private> wlast_q: u32;

// Vector v of the window starts at v * window_stride: its vec4 offset in the uniform, or its texel row.
fn window_stride(cols4: u32) -> u32 {
#if XTEX
    return 1u;
#else
    return cols4;
#endif
}

// Quad q of the window's vector starting at `at` (see `window_stride`).
fn window_quad(at: u32, q: u32) -> vec4<f32> {
#if XTEX
    return x_texel(at, q);
#else
    return xu[at + q];
#endif
}

fn swiglu4(g: vec4<f32>, u: vec4<f32>) -> vec4<f32> {
    return g / (1.0 + exp(-g)) * u;
}

#if !SUBGROUPS
// The 8 vectors' x at vec4 `q` of a row, each loaded by this lane (without HI, vectors 4..7 repeat 0..3).
fn window_x8(q: u32) -> array<vec4<f32>, 8> {
    let a = window_quad(wx_lo.x, q);
    let b = window_quad(wx_lo.y, q);
    let c = window_quad(wx_lo.z, q);
    let d = window_quad(wx_lo.w, q);
    if !HI {
        return array<vec4<f32>, 8>(a, b, c, d, a, b, c, d);
    }
    return array<vec4<f32>, 8>(a, b, c, d, window_quad(wx_hi.x, q), window_quad(wx_hi.y, q),
                               window_quad(wx_hi.z, q), window_quad(wx_hi.w, q));
}
#endif

// Weights of rows A (`wa_in`) and B (`wb_in`) at columns 4q .. 4q+3 times the 8 vectors, into the accumulators.
fn wmac2(wa_in: vec4<f32>, wb_in: vec4<f32>, q_in: u32) {
    // Rows are zero-padded to whole blocks; x is not: past the last column, re-read it (times 0).
    let q = min(q_in, wlast_q);
#if NORM
    let nw = norm_u[q];
    let wa = wa_in * nw;
    let wb = wb_in * nw;
#else
    let wa = wa_in;
    let wb = wb_in;
#endif
#if SUBGROUPS
    // Broadcast one column at a time, right where it is used: all 32 values at once spilled on lavapipe.
    let own = window_quad(wx_lane, q);
    wmac2_column(wa.x, wb.x, wbcast_lo(own.x), wbcast_hi(own.x));
    wmac2_column(wa.y, wb.y, wbcast_lo(own.y), wbcast_hi(own.y));
    wmac2_column(wa.z, wb.z, wbcast_lo(own.z), wbcast_hi(own.z));
    wmac2_column(wa.w, wb.w, wbcast_lo(own.w), wbcast_hi(own.w));
#else
    let a = window_x8(q);
    wmac2_column(wa.x, wb.x, vec4<f32>(a[0].x, a[1].x, a[2].x, a[3].x), vec4<f32>(a[4].x, a[5].x, a[6].x, a[7].x));
    wmac2_column(wa.y, wb.y, vec4<f32>(a[0].y, a[1].y, a[2].y, a[3].y), vec4<f32>(a[4].y, a[5].y, a[6].y, a[7].y));
    wmac2_column(wa.z, wb.z, vec4<f32>(a[0].z, a[1].z, a[2].z, a[3].z), vec4<f32>(a[4].z, a[5].z, a[6].z, a[7].z));
    wmac2_column(wa.w, wb.w, vec4<f32>(a[0].w, a[1].w, a[2].w, a[3].w), vec4<f32>(a[4].w, a[5].w, a[6].w, a[7].w));
#endif
}

#if SUBGROUPS
// Lanes 0..3's (`wbcast_lo`) or 4..7's (`wbcast_hi`) `v`, to every lane.
fn wbcast_lo(v: f32) -> vec4<f32> {
    return vec4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
}

fn wbcast_hi(v: f32) -> vec4<f32> {
    if !HI {
        return vec4<f32>(0.0);
    }
    return vec4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
}
#endif

// One column: weights `wa`, `wb` of rows A and B times that column of vectors 0..3 (`x_lo`) and 4..7 (`x_hi`).
fn wmac2_column(wa: f32, wb: f32, x_lo: vec4<f32>, x_hi: vec4<f32>) {
    wacc_a_lo = fma(vec4<f32>(wa), x_lo, wacc_a_lo);
    wacc_b_lo = fma(vec4<f32>(wb), x_lo, wacc_b_lo);
    if HI {
        wacc_a_hi = fma(vec4<f32>(wa), x_hi, wacc_a_hi);
        wacc_b_hi = fma(vec4<f32>(wb), x_hi, wacc_b_hi);
    }
}

// The accumulators = rows `ra` and `rb` of W times the 8 vectors (before the NORM scale). Each texel is
// fetched once per block and row.
fn window_rows(ra: u32, rb: u32) {
    wacc_a_lo = vec4<f32>(0.0);
    wacc_a_hi = vec4<f32>(0.0);
    wacc_b_lo = vec4<f32>(0.0);
    wacc_b_hi = vec4<f32>(0.0);
    for (var b = 0u; b < params.w.blocks; b++) {
        let ga = weight_block(params.w, ra, b);
        let gb = weight_block(params.w, rb, b);
        let ta = ga * (WPB / 4u);
        let tb = gb * (WPB / 4u);
        let q = 8u * b;
#if W_F32
        wmac2(bitcast<vec4<f32>>(wquad(ta)), bitcast<vec4<f32>>(wquad(tb)), q);
        wmac2(bitcast<vec4<f32>>(wquad(ta + 1u)), bitcast<vec4<f32>>(wquad(tb + 1u)), q + 1u);
        wmac2(bitcast<vec4<f32>>(wquad(ta + 2u)), bitcast<vec4<f32>>(wquad(tb + 2u)), q + 2u);
        wmac2(bitcast<vec4<f32>>(wquad(ta + 3u)), bitcast<vec4<f32>>(wquad(tb + 3u)), q + 3u);
        wmac2(bitcast<vec4<f32>>(wquad(ta + 4u)), bitcast<vec4<f32>>(wquad(tb + 4u)), q + 4u);
        wmac2(bitcast<vec4<f32>>(wquad(ta + 5u)), bitcast<vec4<f32>>(wquad(tb + 5u)), q + 5u);
        wmac2(bitcast<vec4<f32>>(wquad(ta + 6u)), bitcast<vec4<f32>>(wquad(tb + 6u)), q + 6u);
        wmac2(bitcast<vec4<f32>>(wquad(ta + 7u)), bitcast<vec4<f32>>(wquad(tb + 7u)), q + 7u);
#elif W_F16
        for (var k = 0u; k < 4u; k++) {
            let a = wquad(ta + k);
            let c = wquad(tb + k);
            wmac2(weight_f16x4(a.x, a.y), weight_f16x4(c.x, c.y), q + 2u * k);
            wmac2(weight_f16x4(a.z, a.w), weight_f16x4(c.z, c.w), q + 2u * k + 1u);
        }
#elif W_Q8_0
        let sa = weight_scale(params.w, ga).x;
        let sb = weight_scale(params.w, gb).x;
        for (var k = 0u; k < 2u; k++) {
            let a = wquad(ta + k);
            let c = wquad(tb + k);
            wmac2(weight_i8x4(a.x) * sa, weight_i8x4(c.x) * sb, q + 4u * k);
            wmac2(weight_i8x4(a.y) * sa, weight_i8x4(c.y) * sb, q + 4u * k + 1u);
            wmac2(weight_i8x4(a.z) * sa, weight_i8x4(c.z) * sb, q + 4u * k + 2u);
            wmac2(weight_i8x4(a.w) * sa, weight_i8x4(c.w) * sb, q + 4u * k + 3u);
        }
#else
        // q4: w = d * q + m (m = -8d for q4_0), the nibbles read in place (`weight_u4x4_lo/hi`), their
        // powers of two divided out of d.
        let a = wquad(ta);
        let c = wquad(tb);
        let sa = weight_scale(params.w, ga);
        let sb = weight_scale(params.w, gb);
        let da_lo = sa.x * Q4_LO_SCALE;
        let da_hi = sa.x * Q4_HI_SCALE;
        let db_lo = sb.x * Q4_LO_SCALE;
        let db_hi = sb.x * Q4_HI_SCALE;
#if W_Q4_0
        let ma = vec4<f32>(-8.0 * sa.x);
        let mb = vec4<f32>(-8.0 * sb.x);
#else
        let ma = vec4<f32>(sa.y);
        let mb = vec4<f32>(sb.y);
#endif
        wmac2(fma(weight_u4x4_lo(a.x), da_lo, ma), fma(weight_u4x4_lo(c.x), db_lo, mb), q);
        wmac2(fma(weight_u4x4_lo(a.y), da_lo, ma), fma(weight_u4x4_lo(c.y), db_lo, mb), q + 1u);
        wmac2(fma(weight_u4x4_lo(a.z), da_lo, ma), fma(weight_u4x4_lo(c.z), db_lo, mb), q + 2u);
        wmac2(fma(weight_u4x4_lo(a.w), da_lo, ma), fma(weight_u4x4_lo(c.w), db_lo, mb), q + 3u);
        wmac2(fma(weight_u4x4_hi(a.x), da_hi, ma), fma(weight_u4x4_hi(c.x), db_hi, mb), q + 4u);
        wmac2(fma(weight_u4x4_hi(a.y), da_hi, ma), fma(weight_u4x4_hi(c.y), db_hi, mb), q + 5u);
        wmac2(fma(weight_u4x4_hi(a.z), da_hi, ma), fma(weight_u4x4_hi(c.z), db_hi, mb), q + 6u);
        wmac2(fma(weight_u4x4_hi(a.w), da_hi, ma), fma(weight_u4x4_hi(c.w), db_hi, mb), q + 7u);
#endif
    }
}

// Stores output row `row` of the window's vectors v0 .. v0+7 (those below XN), `lo` vectors 0..3, `hi` 4..7.
// Written out: a loop-indexed array of the 8 values would live in scratch memory on a CPU driver.
fn window_store(v0: u32, row: u32, lo: vec4<f32>, hi: vec4<f32>) {
    window_store1(v0, row, lo.x);
    window_store1(v0 + 1u, row, lo.y);
    window_store1(v0 + 2u, row, lo.z);
    window_store1(v0 + 3u, row, lo.w);
    if !HI {
        return;
    }
    window_store1(v0 + 4u, row, hi.x);
    window_store1(v0 + 5u, row, hi.y);
    window_store1(v0 + 6u, row, hi.z);
    window_store1(v0 + 7u, row, hi.w);
}

fn window_store1(v: u32, row: u32, value: f32) {
    if v < XN {
        store(v, row, value);
    }
}

@compute @workgroup_size(WG)
fn gemv_window(@builtin(workgroup_id) wg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
               @builtin(subgroup_invocation_id) sg_lane: u32,
#endif
) {
    let v0 = wg.y * 8u;
    let cols4 = params.w.cols / 4u;
    wlast_q = cols4 - 1u;
#if SUBGROUPS
    wx_lane = min(v0 + (sg_lane & 7u), XN - 1u) * window_stride(cols4);
#else
    let last_v = vec4<u32>(XN - 1u);
    wx_lo = min(vec4<u32>(v0) + vec4<u32>(0u, 1u, 2u, 3u), last_v) * window_stride(cols4);
    wx_hi = min(vec4<u32>(v0) + vec4<u32>(4u, 5u, 6u, 7u), last_v) * window_stride(cols4);
#endif
#if NORM
#if SUBGROUPS
    // Lane l sums the squares of vector l (one gather per quad, where reading all eight vectors was
    // eight) and broadcasts hand the eight sums to every lane.
    var ss = 0.0;
    for (var q = 0u; q < cols4; q++) {
        let v = window_quad(wx_lane, q);
        ss += dot(v, v);
    }
    let ss_lo = wbcast_lo(ss);
    let ss_hi = wbcast_hi(ss);
#else
    var ss_lo = vec4<f32>(0.0);
    var ss_hi = vec4<f32>(0.0);
    for (var q = 0u; q < cols4; q++) {
        let a = window_x8(q);
        ss_lo += vec4<f32>(dot(a[0], a[0]), dot(a[1], a[1]), dot(a[2], a[2]), dot(a[3], a[3]));
        ss_hi += vec4<f32>(dot(a[4], a[4]), dot(a[5], a[5]), dot(a[6], a[6]), dot(a[7], a[7]));
    }
#endif
    let s_lo = inverseSqrt(ss_lo / f32(params.w.cols) + params.eps);
    let s_hi = inverseSqrt(ss_hi / f32(params.w.cols) + params.eps);
#else
    let s_lo = vec4<f32>(1.0);
    let s_hi = vec4<f32>(1.0);
#endif
    let last = params.out_rows - 1u;
    // Neighbouring lanes take neighbouring rows; rows past the end redo the last (not stored).
    let first = wg.x * RPT * WG + lid;
#if SWIGLU
    // One output per pass: its gate row (A) and up row (B).
    for (var i = 0u; i < RPT; i++) {
        let row = first + i * WG;
        let r = min(row, last);
        window_rows(r, r + params.up_row);
        if row <= last {
            window_store(v0, row, swiglu4(wacc_a_lo * s_lo, wacc_b_lo * s_lo),
                         swiglu4(wacc_a_hi * s_hi, wacc_b_hi * s_hi));
        }
    }
#else
    // Two of the lane's rows per pass (an odd RPT's last pass redoes its row as B, not stored).
    for (var i = 0u; i < RPT; i += 2u) {
        let row_a = first + i * WG;
        let row_b = first + min(i + 1u, RPT - 1u) * WG;
        window_rows(min(row_a, last), min(row_b, last));
        if row_a <= last {
            window_store(v0, row_a, wacc_a_lo * s_lo, wacc_a_hi * s_hi);
        }
        if i + 1u < RPT && row_b <= last {
            window_store(v0, row_b, wacc_b_lo * s_lo, wacc_b_hi * s_hi);
        }
    }
#endif
}
#endif
