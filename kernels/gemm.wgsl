// Matrix-matrix product for a batch of n vectors (prefill): y[b, off + o] (+)= sum_k W[o, k] x[b, k].
// Two entries: `gemm` (tiled, below) and `gemm_rows` (ROWS, at the end; what GPUs run).
// In `gemm`, a workgroup of 64 threads computes a 64-row x 32-vector tile of y, stepping through the columns one
// 32-wide block at a time: the block's 64x32 weights are dequantized once into workgroup memory (8 KiB)
// and the 32x32 slice of x staged beside them (4 KiB), then each thread accumulates 8 rows x 4 vectors
// in f32 (12 workgroup-memory loads per 32 dot4: the big register tile is what makes it fast on CPUs).
// Global loads are coalesced: consecutive threads read consecutive 4-column groups.

struct Params {
    w: WeightDesc,
    n: u32,
    y_stride: u32,
    out_offset: u32,
    accumulate: u32,
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
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

#include weights

#if !ROWS
const TM: u32 = 64u;
const TN: u32 = 32u;

var<workgroup> w_tile: array<vec4<f32>, 512>; // [TM rows][8 col4]
var<workgroup> x_tile: array<vec4<f32>, 256>; // [TN vectors][8 col4]

@compute @workgroup_size(64)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wg.x * TM;
    let vec0 = wg.y * TN;
    let cols = params.w.cols;
    let last_row = params.w.rows - 1u;
    // This thread's outputs: rows ty*8 .. +7 and vectors tx*4 .. +3 of the tile.
    let tx = lid % 8u;
    let ty = lid / 8u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    // Staging: column group k4 = lid % 8 of weight rows lid/8 + 8j and of x vectors lid/8 + 8j.
    let k4 = lid % 8u;
    let sr = lid / 8u;
    for (var block = 0u; block < params.w.blocks; block++) {
        for (var j = 0u; j < 8u; j++) {
            let r = sr + 8u * j;
            w_tile[r * 8u + k4] = weight_load4(params.w, min(row0 + r, last_row), block * 8u + k4);
        }
        let c = block * 32u + k4 * 4u;
        for (var j = 0u; j < 4u; j++) {
            let v = sr + 8u * j;
            let base = min(vec0 + v, params.n - 1u) * cols;
            if c + 4u <= cols {
                x_tile[v * 8u + k4] = vec4<f32>(x[base + c], x[base + c + 1u], x[base + c + 2u], x[base + c + 3u]);
            } else {
                // Partial last block (f32/f16 weights only): zero past the end of the row.
                let cc = vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u);
                let o = vec4<u32>(base) + min(cc, vec4<u32>(cols - 1u));
                x_tile[v * 8u + k4] = select(vec4<f32>(0.0), vec4<f32>(x[o.x], x[o.y], x[o.z], x[o.w]),
                                             cc < vec4<u32>(cols));
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < 8u; k++) {
            let xa = x_tile[(tx * 4u) * 8u + k];
            let xb = x_tile[(tx * 4u + 1u) * 8u + k];
            let xc = x_tile[(tx * 4u + 2u) * 8u + k];
            let xd = x_tile[(tx * 4u + 3u) * 8u + k];
            let wr = ty * 64u + k;
            var wv = w_tile[wr];
            acc0 += vec4<f32>(dot(wv, xa), dot(wv, xb), dot(wv, xc), dot(wv, xd));
            wv = w_tile[wr + 8u];
            acc1 += vec4<f32>(dot(wv, xa), dot(wv, xb), dot(wv, xc), dot(wv, xd));
            wv = w_tile[wr + 16u];
            acc2 += vec4<f32>(dot(wv, xa), dot(wv, xb), dot(wv, xc), dot(wv, xd));
            wv = w_tile[wr + 24u];
            acc3 += vec4<f32>(dot(wv, xa), dot(wv, xb), dot(wv, xc), dot(wv, xd));
            wv = w_tile[wr + 32u];
            acc4 += vec4<f32>(dot(wv, xa), dot(wv, xb), dot(wv, xc), dot(wv, xd));
            wv = w_tile[wr + 40u];
            acc5 += vec4<f32>(dot(wv, xa), dot(wv, xb), dot(wv, xc), dot(wv, xd));
            wv = w_tile[wr + 48u];
            acc6 += vec4<f32>(dot(wv, xa), dot(wv, xb), dot(wv, xc), dot(wv, xd));
            wv = w_tile[wr + 56u];
            acc7 += vec4<f32>(dot(wv, xa), dot(wv, xb), dot(wv, xc), dot(wv, xd));
        }
        workgroupBarrier();
    }
    let r0 = row0 + ty * 8u;
    store4(r0, vec0 + tx * 4u, acc0);
    store4(r0 + 1u, vec0 + tx * 4u, acc1);
    store4(r0 + 2u, vec0 + tx * 4u, acc2);
    store4(r0 + 3u, vec0 + tx * 4u, acc3);
    store4(r0 + 4u, vec0 + tx * 4u, acc4);
    store4(r0 + 5u, vec0 + tx * 4u, acc5);
    store4(r0 + 6u, vec0 + tx * 4u, acc6);
    store4(r0 + 7u, vec0 + tx * 4u, acc7);
}

#endif

// Outputs of row r for vectors b0 .. b0+3.
fn store4(r: u32, b0: u32, v: vec4<f32>) {
    store1(r, b0, v.x);
    store1(r, b0 + 1u, v.y);
    store1(r, b0 + 2u, v.z);
    store1(r, b0 + 3u, v.w);
}

// Output of row r for vector b, where both exist.
fn store1(r: u32, b: u32, value: f32) {
    if r < params.w.rows && b < params.n {
        let o = b * params.y_stride + params.out_offset + r;
        if params.accumulate != 0u {
            y[o] = y[o] + value;
        } else {
            y[o] = value;
        }
    }
}

#if ROWS
// GPU form (`gemm_rows` entry, ROWS): the GEMV's mapping over a batch, 2 rows x 4 vectors per thread. A
// workgroup owns 2 * WG / TPR rows and 4 vectors (grid y); the TPR threads of a row slot stride over its
// 4-column quads, so neighbouring threads read neighbouring 16 bytes of x and of the quants (coalesced), and
// reduce across the slot (subgroupAdd, or a workgroup-memory tree without subgroups). Each weight quad is
// dequantized once for the 4 vectors.
// Why: the tiled entry's grid is a few dozen workgroups at prefill sizes (18 for 576x576 at n = 64), each
// walking every block of its rows in turn behind two barriers; this grid has thousands of short slots.
// Measured on an H100 before this layout: threads owning whole 32-column blocks (as the decode GEMV's do)
// made each x load of a subgroup touch 32 cache lines, and the kernel ran at the L1's transaction rate
// (1536x576 at n = 64: 125 µs, 1.4x the tiled entry); with loops over rows and vectors whose accumulators
// were indexed by the loop counters it was 1.1-2.4x slower again.
const SLOTS: u32 = WG / TPR;
const RPW: u32 = SLOTS * 2u;

#if !SUBGROUPS
var<workgroup> partial: array<vec4<f32>, WG * 2u>;
#endif

// x[v, 4q .. 4q+3] (v clamped to the last vector), zero past `cols` (only f32/f16 rows end inside a block).
fn rows_x4(v: u32, q: u32) -> vec4<f32> {
    let cols = params.w.cols;
    let base = min(v, params.n - 1u) * cols;
    let c = 4u * q;
    if c + 4u <= cols {
        let o = base + c;
        return vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
    }
    let cc = vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u);
    let o = vec4<u32>(base) + min(cc, vec4<u32>(cols - 1u));
    return select(vec4<f32>(0.0), vec4<f32>(x[o.x], x[o.y], x[o.z], x[o.w]), cc < vec4<u32>(cols));
}

// Partial sums of rows r0, r0+1 (accumulators 0, 1) times vectors v0 .. v0+3 (components) over the quads
// first, first+step, ... of the (block-padded) rows. A row past the end re-reads the last row (never stored).
fn rows_partial(r0: u32, v0: u32, first: u32, step: u32) -> array<vec4<f32>, 2> {
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    let last = params.w.rows - 1u;
    let ra = min(r0, last);
    let rb = min(r0 + 1u, last);
    let quads = 8u * params.w.blocks;
    for (var q = first; q < quads; q += step) {
        let wa = weight_load4(params.w, ra, q);
        let wb = weight_load4(params.w, rb, q);
        let x0 = rows_x4(v0, q);
        let x1 = rows_x4(v0 + 1u, q);
        let x2 = rows_x4(v0 + 2u, q);
        let x3 = rows_x4(v0 + 3u, q);
        acc0 += vec4<f32>(dot(wa, x0), dot(wa, x1), dot(wa, x2), dot(wa, x3));
        acc1 += vec4<f32>(dot(wb, x0), dot(wb, x1), dot(wb, x2), dot(wb, x3));
    }
    return array<vec4<f32>, 2>(acc0, acc1);
}

fn rows_store(r0: u32, v0: u32, a: vec4<f32>, b: vec4<f32>) {
    store4(r0, v0, a);
    store4(r0 + 1u, v0, b);
}

@compute @workgroup_size(WG)
fn gemm_rows(@builtin(workgroup_id) wg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
             @builtin(subgroup_invocation_id) sg_lane: u32,
             @builtin(subgroup_id) sg_id: u32,
             @builtin(num_subgroups) sg_count: u32,
             @builtin(subgroup_size) sg_size: u32,
#endif
) {
    let row0 = wg.x * RPW;
    let v0 = wg.y * 4u;
#if SUBGROUPS
    // Each subgroup owns whole row slots (any subgroup size); the loop bound is uniform within it.
    for (var slot = sg_id; slot < SLOTS; slot += sg_count) {
        let r0 = row0 + slot * 2u;
        // A workgroup smaller than the subgroup fills only WG of its lanes.
        let acc = rows_partial(r0, v0, sg_lane, min(sg_size, WG));
        let a = subgroupAdd(acc[0]);
        let b = subgroupAdd(acc[1]);
        if sg_lane == 0u {
            rows_store(r0, v0, a, b);
        }
    }
#else
    let lane = lid % TPR;
    let r0 = row0 + (lid / TPR) * 2u;
    let acc = rows_partial(r0, v0, lane, TPR);
    partial[2u * lid] = acc[0];
    partial[2u * lid + 1u] = acc[1];
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            partial[2u * lid] += partial[2u * (lid + s)];
            partial[2u * lid + 1u] += partial[2u * (lid + s) + 1u];
        }
        workgroupBarrier();
    }
    if lane == 0u {
        rows_store(r0, v0, partial[2u * lid], partial[2u * lid + 1u]);
    }
#endif
}
#endif
