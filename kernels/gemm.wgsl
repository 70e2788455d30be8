// Matrix-matrix product for a batch of n vectors (prefill): y[b, off + o] (+)= sum_k W[o, k] x[b, k].
// A workgroup of 256 threads computes a 64-row x 32-vector tile of y, stepping through the columns one
// 32-wide block at a time: the block's 64x32 weights are dequantized once into workgroup memory (8 KiB)
// and the 32x32 slice of x staged beside them (4 KiB), then each thread accumulates 4 rows x 2 vectors
// in f32. Loads are coalesced: consecutive threads read consecutive 4-column groups.

struct Params {
    w: WeightDesc,
    n: u32,
    y_stride: u32,
    out_offset: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weights: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

#include weights

const TM: u32 = 64u;
const TN: u32 = 32u;

var<workgroup> w_tile: array<vec4<f32>, 512>; // [TM rows][8 col4]
var<workgroup> x_tile: array<vec4<f32>, 256>; // [TN vectors][8 col4]

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wg.x * TM;
    let vec0 = wg.y * TN;
    let cols = params.w.cols;
    let last_row = params.w.rows - 1u;
    // This thread's outputs: rows ty*4 .. +3 and vectors tx*2 .. +1 of the tile.
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<vec2<f32>, 4>;
    // Staging slots: weights (row lid/8 and lid/8 + 32, col4 lid%8); x (vector lid/8, col4 lid%8).
    let k4 = lid % 8u;
    let sr = lid / 8u;
    let xv = min(vec0 + sr, params.n - 1u);
    for (var block = 0u; block < params.w.blocks; block++) {
        w_tile[sr * 8u + k4] = weight_load4(params.w, min(row0 + sr, last_row), block * 8u + k4);
        w_tile[(sr + 32u) * 8u + k4] = weight_load4(params.w, min(row0 + sr + 32u, last_row), block * 8u + k4);
        let c = block * 32u + k4 * 4u;
        let base = xv * cols;
        if c + 4u <= cols {
            x_tile[sr * 8u + k4] = vec4<f32>(x[base + c], x[base + c + 1u], x[base + c + 2u], x[base + c + 3u]);
        } else {
            // Partial last block (f32/f16 weights only): zero past the end of the row.
            let cc = vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u);
            let o = vec4<u32>(base) + min(cc, vec4<u32>(cols - 1u));
            x_tile[sr * 8u + k4] = select(vec4<f32>(0.0), vec4<f32>(x[o.x], x[o.y], x[o.z], x[o.w]), cc < vec4<u32>(cols));
        }
        workgroupBarrier();
        for (var k = 0u; k < 8u; k++) {
            let xa = x_tile[(tx * 2u) * 8u + k];
            let xb = x_tile[(tx * 2u + 1u) * 8u + k];
            for (var i = 0u; i < 4u; i++) {
                let wv = w_tile[(ty * 4u + i) * 8u + k];
                acc[i] += vec2<f32>(dot(wv, xa), dot(wv, xb));
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + ty * 4u + i;
        for (var j = 0u; j < 2u; j++) {
            let b = vec0 + tx * 2u + j;
            if r < params.w.rows && b < params.n {
                let o = b * params.y_stride + params.out_offset + r;
                if params.accumulate != 0u {
                    y[o] = y[o] + acc[i][j];
                } else {
                    y[o] = acc[i][j];
                }
            }
        }
    }
}
