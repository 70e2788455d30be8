// Fused SwiGLU feed-forward (the gate/up half): h = silu(Wg·n) ⊙ (Wu·n) with n = rms_norm(x)·w_norm.
//
// Grid: x = groups of ROWS output rows (rows of Wg and Wu), y = tiles of TILE positions (rows of x).
// Every workgroup recomputes the RMS of its TILE input rows (hidden <= a few thousand: a few KB of reads
// next to 2 * ROWS * hidden weights), then decodes each weight block once and uses it for all TILE
// positions, so a prefill of n positions reads the weights n / TILE times instead of n times.
//
// Work split (TPR == 1, chosen for CPU drivers: RPT rows per invocation, no reduction); otherwise a
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

// (d, m) of block g, read once per block: the scale and the additive minimum (m = 0 except Q4_1).
fn gate_scale(g: u32) -> vec2<f32> {
#if W_Q8_0 || W_Q4_0
    let pair = unpack2x16float(gate_w[params.gate.scale_offset + g / 2u]);
    return vec2<f32>(select(pair.x, pair.y, (g & 1u) == 1u), 0.0);
#elif W_Q4_1
    return unpack2x16float(gate_w[params.gate.scale_offset + g]);
#else
    return vec2<f32>(1.0, 0.0);
#endif
}

fn up_scale(g: u32) -> vec2<f32> {
#if W_Q8_0 || W_Q4_0
    let pair = unpack2x16float(up_w[params.up.scale_offset + g / 2u]);
    return vec2<f32>(select(pair.x, pair.y, (g & 1u) == 1u), 0.0);
#elif W_Q4_1
    return unpack2x16float(up_w[params.up.scale_offset + g]);
#else
    return vec2<f32>(1.0, 0.0);
#endif
}

// Weights 4j..4j+3 of a block from the quant words that hold them (w0 first; f32 uses 4, f16 2, others 1),
// straight into registers: no per-block arrays, which CPU drivers keep in memory. The loads are spelled
// out per matrix (gate4, up4) because WGSL functions cannot take a storage buffer.
fn decode4(w0: u32, w1: u32, w2: u32, w3: u32, j: u32, dm: vec2<f32>) -> vec4<f32> {
#if W_F32
    return bitcast<vec4<f32>>(vec4<u32>(w0, w1, w2, w3));
#elif W_F16
    return vec4<f32>(unpack2x16float(w0), unpack2x16float(w1));
#elif W_Q8_0
    // Element 4j + k is byte k of word j, sign-extended by the arithmetic shift.
    let v = bitcast<vec4<i32>>(vec4<u32>(w0 << 24u, w0 << 16u, w0 << 8u, w0));
    return vec4<f32>(v >> vec4<u32>(24u)) * dm.x;
#else
    // Byte k of word j % 4 holds element 4(j % 4) + k in its low nibble and 16 + 4(j % 4) + k in its high one.
    let shift = select(0u, 4u, j >= 4u);
    let q = vec4<f32>((vec4<u32>(w0) >> (vec4<u32>(0u, 8u, 16u, 24u) + shift)) & vec4<u32>(15u));
#if W_Q4_0
    return (q - 8.0) * dm.x;
#else
    return fma(q, vec4<f32>(dm.x), vec4<f32>(dm.y));
#endif
#endif
}

// Index, among a block's quant words, of the first word holding weights 4j..4j+3.
fn word_of(j: u32) -> u32 {
#if W_F32
    return 4u * j;
#elif W_F16
    return 2u * j;
#elif W_Q8_0
    return j;
#else
    return j % 4u;
#endif
}

fn gate4(g: u32, j: u32, dm: vec2<f32>) -> vec4<f32> {
    let i = g * WPB + word_of(j);
#if W_F32
    return decode4(gate_w[i], gate_w[i + 1u], gate_w[i + 2u], gate_w[i + 3u], j, dm);
#elif W_F16
    return decode4(gate_w[i], gate_w[i + 1u], 0u, 0u, j, dm);
#else
    return decode4(gate_w[i], 0u, 0u, 0u, j, dm);
#endif
}

fn up4(g: u32, j: u32, dm: vec2<f32>) -> vec4<f32> {
    let i = g * WPB + word_of(j);
#if W_F32
    return decode4(up_w[i], up_w[i + 1u], up_w[i + 2u], up_w[i + 3u], j, dm);
#elif W_F16
    return decode4(up_w[i], up_w[i + 1u], 0u, 0u, j, dm);
#else
    return decode4(up_w[i], 0u, 0u, 0u, j, dm);
#endif
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
        let gg = row * params.gate.blocks + b;
        let gu = row * params.up.blocks + b;
        let dg = gate_scale(gg);
        let du = up_scale(gu);
        for (var j = 0u; j < 8u; j++) {
            let wg = gate4(gg, j, dg);
            let wu = up4(gu, j, du);
            let nw = norm_w[b * 8u + j];
            for (var p = 0u; p < TILE; p++) {
                let xn = x[min(pos0 + p, params.n - 1u) * h4 + b * 8u + j] * nw;
                (*acc_g)[p] += dot(wg, xn);
                (*acc_u)[p] += dot(wu, xn);
            }
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
        // RPT rows per invocation, no reduction (ROWS == WG * RPT): what CPU drivers (lavapipe) run best,
        // their SIMD lanes running whole rows side by side, each x and w_norm load serving 2 * RPT rows.
        let r0 = row0 + lanes.lid * RPT;
        let last = params.ffn - 1u;
        let blocks = params.hidden / 32u;
        var acc_g: array<f32, RPT * TILE>;
        var acc_u: array<f32, RPT * TILE>;
        for (var b = 0u; b < blocks; b++) {
            var dg: array<vec2<f32>, RPT>;
            var du: array<vec2<f32>, RPT>;
            for (var i = 0u; i < RPT; i++) {
                let row = min(r0 + i, last);
                dg[i] = gate_scale(row * params.gate.blocks + b);
                du[i] = up_scale(row * params.up.blocks + b);
            }
            // Raw values (q, q - 8, or the weights for f32/f16) dotted per block; the block's scale d (and
            // Q4_1's minimum m, times the block's sum of inputs) applied once per block, not per weight.
            var blk_g: array<f32, RPT * TILE>;
            var blk_u: array<f32, RPT * TILE>;
            var sx: array<f32, TILE>;
            for (var j = 0u; j < 8u; j++) {
                let nw = norm_w[b * 8u + j];
                var xn: array<vec4<f32>, TILE>;
                for (var p = 0u; p < TILE; p++) {
                    xn[p] = x[min(pos0 + p, params.n - 1u) * h4 + b * 8u + j] * nw;
                    sx[p] += dot(xn[p], vec4<f32>(1.0));
                }
                for (var i = 0u; i < RPT; i++) {
                    let row = min(r0 + i, last);
                    let wg = gate4(row * params.gate.blocks + b, j, vec2<f32>(1.0, 0.0));
                    let wu = up4(row * params.up.blocks + b, j, vec2<f32>(1.0, 0.0));
                    for (var p = 0u; p < TILE; p++) {
                        blk_g[i * TILE + p] += dot(wg, xn[p]);
                        blk_u[i * TILE + p] += dot(wu, xn[p]);
                    }
                }
            }
            for (var i = 0u; i < RPT; i++) {
                for (var p = 0u; p < TILE; p++) {
                    acc_g[i * TILE + p] += fma(dg[i].x, blk_g[i * TILE + p], dg[i].y * sx[p]);
                    acc_u[i * TILE + p] += fma(du[i].x, blk_u[i * TILE + p], du[i].y * sx[p]);
                }
            }
        }
        for (var i = 0u; i < RPT; i++) {
            for (var p = 0u; p < TILE; p++) {
                if r0 + i < params.ffn && pos0 + p < params.n {
                    let g = acc_g[i * TILE + p] * inv[p];
                    let u = acc_u[i * TILE + p] * inv[p];
                    h[(pos0 + p) * params.ffn + r0 + i] = silu(g) * u;
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
