// Embedding lookup: out[t] = table[ids[t]] for n token ids, table a weight matrix of any type (rows = vocab,
// cols = hidden), dequantized with `weights.wgsl`. An embedding too large for one binding is split by rows
// into chunks; one dispatch per chunk writes only the tokens whose id falls in its rows. One workgroup per
// token; ids at or beyond the vocabulary are clamped to its last row (the host rejects them before upload),
// so no variant ever reads out of bounds.

struct Params {
    desc: WeightDesc,
    // Capacity of `ids` / rows of `out`.
    n: u32,
    // First vocabulary row held by this chunk.
    row_start: u32,
    // Rows of the whole table (all chunks).
    vocab: u32,
    hidden: u32,
}

#if STEP_N
#include step
@group(0) @binding(4) var<uniform> step: Step;
#endif

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
#if WTEX
#if IMGREAD
@group(0) @binding(2) var weights_tex: texture_storage_2d<rgba32uint, read>;
#else
@group(0) @binding(2) var weights_tex: texture_2d<u32>;
#endif
#else
@group(0) @binding(2) var<storage, read> weights: array<u32>;
#endif
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

#include weights

@compute @workgroup_size(WG)
fn embedding(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x;
    var count = params.n;
#if STEP_N
    // A planned prefill: only the step's first n tokens are live.
    count = min(step.n, params.n);
#endif
    if t >= count {
        return;
    }
    let id = min(ids[t], params.vocab - 1u);
    if id < params.row_start || id - params.row_start >= params.desc.rows {
        return;
    }
    let row = id - params.row_start;
    let base = t * params.hidden;
    for (var c4 = lid; c4 * 4u < params.hidden; c4 += WG) {
        let v = weight_load4(params.desc, row, c4);
        let c = c4 * 4u;
        if c + 3u < params.hidden {
            out[base + c] = v.x;
            out[base + c + 1u] = v.y;
            out[base + c + 2u] = v.z;
            out[base + c + 3u] = v.w;
        } else {
            for (var j = 0u; c + j < params.hidden; j++) {
                out[base + c + j] = v[j];
            }
        }
    }
}
