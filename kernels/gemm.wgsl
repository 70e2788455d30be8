// Matrix-matrix product for a batch of n vectors (prefill): y[b, off + o] (+)= sum_k W[o, k] x[b, k].
// A workgroup of 64 threads computes a 64-row x 32-vector tile of y, stepping through the columns one
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

// Outputs of row r for vectors b0 .. b0+3.
fn store4(r: u32, b0: u32, v: vec4<f32>) {
    if r >= params.w.rows {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let b = b0 + j;
        if b < params.n {
            let o = b * params.y_stride + params.out_offset + r;
            if params.accumulate != 0u {
                y[o] = y[o] + v[j];
            } else {
                y[o] = v[j];
            }
        }
    }
}
