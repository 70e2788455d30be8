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

// Batched form for CPU devices (ops::gemm picks it there): a thread owns RPT whole rows and NB vectors
// (grid y = ceil(n / NB)); each block of weights is dequantized once and used for all NB vectors, so
// the per-lane weight loads and unpacking that dominate on a CPU are shared NB ways.
@compute @workgroup_size(WG)
fn gemv_batched(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r0 = wg.x * (WG * RPT) + lid * RPT;
    let v0 = wg.y * NB;
    let last = params.w.rows - 1u;
    var acc: array<array<f32, NB>, RPT>;
    for (var b = 0u; b < params.w.blocks; b++) {
        var xs: array<array<vec4<f32>, 8>, NB>;
        for (var v = 0u; v < NB; v++) {
            xs[v] = load_x(min(v0 + v, params.n - 1u) * params.w.cols, b, params.w.cols);
        }
        for (var i = 0u; i < RPT; i++) {
            let wb = weight_block32(params.w, min(r0 + i, last), b);
            for (var v = 0u; v < NB; v++) {
                var s = wb[0] * xs[v][0];
                for (var k = 1u; k < 8u; k++) {
                    s = fma(wb[k], xs[v][k], s);
                }
                acc[i][v] += s.x + s.y + s.z + s.w;
            }
        }
    }
    for (var i = 0u; i < RPT; i++) {
        for (var v = 0u; v < NB; v++) {
            if r0 + i < params.w.rows && v0 + v < params.n {
                store(v0 + v, r0 + i, acc[i][v]);
            }
        }
    }
}
