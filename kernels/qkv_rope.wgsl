// Fused pre-attention block for a batch of n positions from pos (both from the step uniform):
// RMSNorm of the input row (recomputed by every workgroup: hidden <= 1600), the fused Q|K|V projection
// (weight rows: heads*HD query rows, then kv_heads*HD key rows, then kv_heads*HD value rows), RoPE on Q and
// K from a precomputed cos/sin table, Q to a scratch tensor [n, heads*HD], K and V straight into the KV
// cache slot (`[2][kv_heads][capacity][HD]`, f16 under F16) at their positions.
// One workgroup per (head of Q|K|V, row); one thread per output element of the head.
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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Mirrors `ops::StepParams`.
struct Step {
    pos: u32,
    n: u32,
    seed: u32,
    top_k: u32,
    temperature: f32,
    top_p: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> norm_w: array<f32>;
@group(0) @binding(4) var<storage, read> weights: array<u32>;
@group(0) @binding(5) var<storage, read> rope_cs: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> kv: array<kv_t>;

#include reduce
#include weights

// The normalised input row, zero-padded to whole 32-column blocks (XV4 vec4 = 4 * XV4 columns).
var<workgroup> x_sh: array<vec4<f32>, XV4>;
var<workgroup> y_sh: array<f32, HD>;

@compute @workgroup_size(WG)
fn qkv_rope(@builtin(workgroup_id) wg: vec3<u32>, lanes: Lanes) {
    let lid = lanes.lid;
    let slot = wg.x;
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
    for (var d = lid; d < HD; d += WG) {
        let row = slot * HD + d;
        var acc = 0.0;
        for (var b = 0u; b < params.desc.blocks; b++) {
            var xb: array<vec4<f32>, 8>;
            for (var k = 0u; k < 8u; k++) {
                xb[k] = x_sh[b * 8u + k];
            }
            acc += weight_dot32(params.desc, row, b, xb);
        }
        y_sh[d] = acc;
    }
    workgroupBarrier();
    let heads = params.heads;
    let kvn = params.kv_heads;
    let is_v = slot >= heads + kvn;
    for (var i = lid; i < HD / 2u; i += WG) {
#if ROPE_INTERLEAVED
        let ia = 2u * i;
        let ib = 2u * i + 1u;
#else
        let ia = i;
        let ib = i + HD / 2u;
#endif
        var a = y_sh[ia];
        var b = y_sh[ib];
        if !is_v {
            let cs = rope_cs[pos * (HD / 2u) + i];
            let ra = a * cs.x - b * cs.y;
            b = a * cs.y + b * cs.x;
            a = ra;
        }
        if slot < heads {
            let base = (r * heads + slot) * HD;
            q_out[base + ia] = a;
            q_out[base + ib] = b;
        } else {
            var kvh = slot - heads;
            var part = 0u;
            if is_v {
                kvh -= kvn;
                part = 1u;
            }
            let base = ((part * kvn + kvh) * params.capacity + pos) * HD;
            kv[base + ia] = kv_t(a);
            kv[base + ib] = kv_t(b);
        }
    }
}
