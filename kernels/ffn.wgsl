// Fused SwiGLU feed-forward (the gate/up half): h = silu(Wg·n) ⊙ (Wu·n) with n = rms_norm(x)·w_norm.
//
// Grid: x = groups of ROWS output rows (rows of Wg and Wu), y = tiles of TILE positions (rows of x).
// Every workgroup recomputes the RMS of its TILE input rows (hidden <= a few thousand: a few KB of reads
// next to 2 * ROWS * hidden weights), then decodes each weight block once and uses it for all TILE
// positions, so a prefill of n positions reads the weights n / TILE times instead of n times.
//
// Work split (TPR == 1, chosen for CPU drivers: one invocation per row, no reduction); otherwise a
// "team" of lanes owns one output row at a time and strides over its 32-weight blocks.
// With SUBGROUPS a team is a subgroup (any size: the lane rank and team size are counted with
// subgroupExclusiveAdd / subgroupAdd, never assumed) and the row's sums are a subgroupAdd, with no
// barrier. Without, a team is TPR consecutive invocations and the sums go through a tree in workgroup
// memory. Only h is written. Rows of x are read as vec4: hidden must be a multiple of 32 (the launcher checks).
//
// Weights use the GPU layout of `src/quant.rs` (one array<u32> per matrix: quants region, then scales).
// This file decodes them itself rather than through `weights.wgsl` because it reads two matrices in one
// dispatch, and WGSL functions cannot take a storage buffer as an argument.

struct WeightDesc {
    rows: u32,
    cols: u32,
    blocks: u32,
    scale_offset: u32,
}

struct Params {
    hidden: u32,
    ffn: u32,
    n: u32,
    eps: f32,
    gate: WeightDesc,
    up: WeightDesc,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> norm_w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> gate_w: array<u32>;
@group(0) @binding(4) var<storage, read> up_w: array<u32>;
@group(0) @binding(5) var<storage, read_write> h: array<f32>;

// Words of the quants region per 32-weight block.
#if W_F32
const WPB: u32 = 32u;
#elif W_F16
const WPB: u32 = 16u;
#elif W_Q8_0
const WPB: u32 = 8u;
#else
const WPB: u32 = 4u;
#endif

// One block's 32 weights as 8 vec4, from its quant words and its scale word (`d`, or `d | m << 16`).
fn decode_block(q: array<u32, WPB>, s: u32) -> array<vec4<f32>, 8> {
    var out: array<vec4<f32>, 8>;
#if W_F32
    for (var j = 0u; j < 8u; j++) {
        out[j] = bitcast<vec4<f32>>(vec4<u32>(q[4u * j], q[4u * j + 1u], q[4u * j + 2u], q[4u * j + 3u]));
    }
#elif W_F16
    for (var j = 0u; j < 8u; j++) {
        out[j] = vec4<f32>(unpack2x16float(q[2u * j]), unpack2x16float(q[2u * j + 1u]));
    }
#elif W_Q8_0
    let d = unpack2x16float(s).x;
    for (var j = 0u; j < 8u; j++) {
        // Element 4j + k is byte k of word j, sign-extended by the arithmetic shift.
        let w = bitcast<vec4<i32>>(vec4<u32>(q[j] << 24u, q[j] << 16u, q[j] << 8u, q[j]));
        out[j] = vec4<f32>(w >> vec4<u32>(24u)) * d;
    }
#else
    let dm = unpack2x16float(s);
    for (var i = 0u; i < 4u; i++) {
        // Byte k of word i holds element 4i + k in its low nibble and element 16 + 4i + k in its high one.
        let w = q[i];
        let lo = vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u));
        let hi = vec4<f32>((vec4<u32>(w) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u));
#if W_Q4_0
        out[i] = (lo - 8.0) * dm.x;
        out[i + 4u] = (hi - 8.0) * dm.x;
#else
        out[i] = fma(lo, vec4<f32>(dm.x), vec4<f32>(dm.y));
        out[i + 4u] = fma(hi, vec4<f32>(dm.x), vec4<f32>(dm.y));
#endif
    }
#endif
    return out;
}

// The scale word of block g (0 for the unscaled types, which have no scales region).
fn scale_index(desc: WeightDesc, g: u32) -> u32 {
#if W_Q4_1
    return desc.scale_offset + g;
#else
    return desc.scale_offset + g / 2u;
#endif
}

fn scale_half(word: u32, g: u32) -> u32 {
#if W_Q4_1
    return word;
#else
    return select(word, word >> 16u, (g & 1u) == 1u);
#endif
}

fn gate_block(row: u32, b: u32) -> array<vec4<f32>, 8> {
    let g = row * params.gate.blocks + b;
    var q: array<u32, WPB>;
    for (var i = 0u; i < WPB; i++) {
        q[i] = gate_w[g * WPB + i];
    }
#if W_F32 || W_F16
    let s = 0u;
#else
    let s = scale_half(gate_w[scale_index(params.gate, g)], g);
#endif
    return decode_block(q, s);
}

fn up_block(row: u32, b: u32) -> array<vec4<f32>, 8> {
    let g = row * params.up.blocks + b;
    var q: array<u32, WPB>;
    for (var i = 0u; i < WPB; i++) {
        q[i] = up_w[g * WPB + i];
    }
#if W_F32 || W_F16
    let s = 0u;
#else
    let s = scale_half(up_w[scale_index(params.up, g)], g);
#endif
    return decode_block(q, s);
}

#include reduce

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

#if !SUBGROUPS
// Per-invocation partial sums of (gate, up) for each tile position, reduced within each team.
var<workgroup> team_scratch: array<f32, 2u * TILE * WG>;
#endif

// Accumulates the dot products of row `row` of Wg and Wu with the TILE inputs x·w_norm (1/rms is applied
// after the sum), over the blocks this lane owns. Positions past n read the last row (never written),
// which keeps every load in bounds.
fn row_sums(row: u32, rank: u32, team_size: u32, pos0: u32, acc_g: ptr<function, array<f32, TILE>>,
            acc_u: ptr<function, array<f32, TILE>>) {
    let h4 = params.hidden / 4u;
    let blocks = params.hidden / 32u;
    for (var b = rank; b < blocks; b += team_size) {
        let wg = gate_block(row, b);
        let wu = up_block(row, b);
        var nw: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            nw[j] = norm_w[b * 8u + j];
        }
        for (var p = 0u; p < TILE; p++) {
            let base = min(pos0 + p, params.n - 1u) * h4 + b * 8u;
            var sg = 0.0;
            var su = 0.0;
            for (var j = 0u; j < 8u; j++) {
                let xn = x[base + j] * nw[j];
                sg += dot(wg[j], xn);
                su += dot(wu[j], xn);
            }
            (*acc_g)[p] += sg;
            (*acc_u)[p] += su;
        }
    }
}

@compute @workgroup_size(WG)
fn ffn_gate_up(@builtin(workgroup_id) wg: vec3<u32>, lanes: Lanes) {
    let row0 = wg.x * ROWS;
    let pos0 = wg.y * TILE;
    let h4 = params.hidden / 4u;

    // 1 / rms of each tile position (uniform control flow: every invocation takes part).
    var inv: array<f32, TILE>;
    for (var p = 0u; p < TILE; p++) {
        let base = min(pos0 + p, params.n - 1u) * h4;
        var sum_sq = 0.0;
        for (var i = lanes.lid; i < h4; i += WG) {
            let v = x[base + i];
            sum_sq += dot(v, v);
        }
        let total = workgroup_sum(sum_sq, lanes);
        inv[p] = inverseSqrt(total / f32(params.hidden) + params.eps);
    }

    if TPR == 1u {
        // One invocation per row, no reduction (ROWS == WG): what CPU drivers (lavapipe) vectorize best,
        // since their SIMD lanes then run whole rows side by side.
        let row = row0 + lanes.lid;
        var acc_g: array<f32, TILE>;
        var acc_u: array<f32, TILE>;
        if row < params.ffn {
            row_sums(row, 0u, 1u, pos0, &acc_g, &acc_u);
            for (var p = 0u; p < TILE; p++) {
                if pos0 + p < params.n {
                    h[(pos0 + p) * params.ffn + row] = silu(acc_g[p] * inv[p]) * (acc_u[p] * inv[p]);
                }
            }
        }
        return;
    }
#if SUBGROUPS
    let team_size = subgroupAdd(1u);
    let rank = subgroupExclusiveAdd(1u);
    for (var r = lanes.sg_id; r < ROWS; r += lanes.sg_count) {
        let row = row0 + r;
        var acc_g: array<f32, TILE>;
        var acc_u: array<f32, TILE>;
        if row < params.ffn {
            row_sums(row, rank, team_size, pos0, &acc_g, &acc_u);
        }
        for (var p = 0u; p < TILE; p++) {
            let g = subgroupAdd(acc_g[p]) * inv[p];
            let u = subgroupAdd(acc_u[p]) * inv[p];
            if rank == 0u && row < params.ffn && pos0 + p < params.n {
                h[(pos0 + p) * params.ffn + row] = silu(g) * u;
            }
        }
    }
#else
    let rank = lanes.lid % TPR;
    let team = lanes.lid / TPR;
    // ROWS is a multiple of WG / TPR (the launcher checks), so every team runs the same number of rounds
    // and the barriers stay in uniform control flow.
    for (var round = 0u; round < ROWS / (WG / TPR); round++) {
        let row = row0 + round * (WG / TPR) + team;
        var acc_g: array<f32, TILE>;
        var acc_u: array<f32, TILE>;
        if row < params.ffn {
            row_sums(row, rank, TPR, pos0, &acc_g, &acc_u);
        }
        for (var p = 0u; p < TILE; p++) {
            team_scratch[(2u * p) * WG + lanes.lid] = acc_g[p];
            team_scratch[(2u * p + 1u) * WG + lanes.lid] = acc_u[p];
        }
        workgroupBarrier();
        for (var stride = TPR / 2u; stride > 0u; stride >>= 1u) {
            if rank < stride {
                for (var k = 0u; k < 2u * TILE; k++) {
                    team_scratch[k * WG + lanes.lid] += team_scratch[k * WG + lanes.lid + stride];
                }
            }
            workgroupBarrier();
        }
        if rank == 0u && row < params.ffn {
            for (var p = 0u; p < TILE; p++) {
                if pos0 + p < params.n {
                    let g = team_scratch[(2u * p) * WG + lanes.lid] * inv[p];
                    let u = team_scratch[(2u * p + 1u) * WG + lanes.lid] * inv[p];
                    h[(pos0 + p) * params.ffn + row] = silu(g) * u;
                }
            }
        }
        workgroupBarrier();
    }
#endif
}

// The unfused chain's middle step, for comparisons and benchmarks: out = silu(gate) ⊙ up, elementwise.
struct SiluMulParams {
    count: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(10) var<uniform> sm_params: SiluMulParams;
@group(0) @binding(11) var<storage, read> sm_gate: array<f32>;
@group(0) @binding(12) var<storage, read> sm_up: array<f32>;
@group(0) @binding(13) var<storage, read_write> sm_out: array<f32>;

@compute @workgroup_size(WG)
fn silu_mul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * groups.x + wg.x) * WG + lid;
    if i < sm_params.count {
        sm_out[i] = silu(sm_gate[i]) * sm_up[i];
    }
}
