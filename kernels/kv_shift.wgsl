// Context shift of one KV cache slot on the GPU: the positions `keep + discard .. keep + discard + moved` of
// every KV head move down to `keep ..`, keys turned back by `discard` positions of RoPE, values as they are
// (llama.cpp's context shift). The moved range overlaps its destination, so two passes go through an f32
// scratch buffer:
//   kv_shift_gather:  one invocation per element pair of the moved rows: a key pair (a, b) turns by the RoPE
//                     table's (cos, sin) at position `discard`, the other way: (a cos + b sin, b cos - a sin);
//                     a value pair is copied;
//   kv_shift_scatter: one invocation per UNIT elements of the destination (one u32 word in a buffer, one
//                     texel of 4 words in a texture slot): read from the scratch, packed, written.
// Slot layout (`src/kv_cache.rs`): `[2][kv_heads][capacity][head_dim]`, f16 pairs per u32 word (PACKED16) or
// f32 words, in a storage buffer or (KVTEX) an rgba32uint texture of the same bytes, KV_ROW texels per row.
// Neither pass needs shader f16: halves are unpacked and packed with the core builtins.
// A grid too long for one dimension folds into y: invocation ids are linear over (y, x, lane).

struct Params {
    kv_heads: u32,
    capacity: u32,
    head_dim: u32,
    keep: u32,
    dropped: u32,
    moved: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// (cos, sin) of every position and pair: `[capacity][head_dim / 2]`.
@group(0) @binding(1) var<storage, read> rope: array<vec2<f32>>;
// The moved rows in f32, `[2 * kv_heads][moved][head_dim]`.
@group(0) @binding(2) var<storage, read_write> scratch: array<f32>;
#if KVTEX
@group(0) @binding(3) var kv_in: texture_2d<u32>;
@group(0) @binding(4) var kv_out: texture_storage_2d<rgba32uint, write>;
#else
@group(0) @binding(3) var<storage, read_write> kv: array<u32>;
#endif

const KV_ROW: u32 = 4096u;

#if PACKED16
const PER_WORD: u32 = 2u;
#else
const PER_WORD: u32 = 1u;
#endif

fn invocation(wg: vec3<u32>, groups: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * groups.x + wg.x) * WG + lid;
}

fn load_word(w: u32) -> u32 {
#if KVTEX
    let t = w / 4u;
    return textureLoad(kv_in, vec2<u32>(t % KV_ROW, t / KV_ROW), 0)[w % 4u];
#else
    return kv[w];
#endif
}

// Element `e` of the slot, in f32.
fn load_elem(e: u32) -> f32 {
#if PACKED16
    return unpack2x16float(load_word(e / 2u))[e % 2u];
#else
    return bitcast<f32>(load_word(e));
#endif
}

@compute @workgroup_size(WG)
fn kv_shift_gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let half = params.head_dim / 2u;
    let q = invocation(wg, groups, lid);
    if q >= 2u * params.kv_heads * params.moved * half {
        return;
    }
    // Pair `i` of moved row `r` of head row `kh` (keys first, then values).
    let i = q % half;
    let kh = q / half / params.moved;
    let r = q / half % params.moved;
#if ROPE_INTERLEAVED
    let ia = 2u * i;
    let ib = 2u * i + 1u;
#else
    let ia = i;
    let ib = i + half;
#endif
    let src = (kh * params.capacity + params.keep + params.dropped + r) * params.head_dim;
    var a = load_elem(src + ia);
    var b = load_elem(src + ib);
    if kh < params.kv_heads {
        let turn = rope[params.dropped * half + i];
        let back_a = a * turn.x + b * turn.y;
        b = b * turn.x - a * turn.y;
        a = back_a;
    }
    let dst = (kh * params.moved + r) * params.head_dim;
    scratch[dst + ia] = a;
    scratch[dst + ib] = b;
}

@compute @workgroup_size(WG)
fn kv_shift_scatter(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let unit = invocation(wg, groups, lid);
    let span = params.moved * params.head_dim;
    if unit * UNIT >= 2u * params.kv_heads * span {
        return;
    }
    // A head row's moved elements are contiguous in the scratch and at the destination: units never
    // straddle two (head_dim is a multiple of UNIT, checked by the launcher).
    let kh = unit * UNIT / span;
    let src = unit * UNIT;
    let dst = (kh * params.capacity + params.keep) * params.head_dim + (src - kh * span);
#if KVTEX
    var w = vec4<u32>();
    for (var j = 0u; j < 4u; j++) {
#if PACKED16
        w[j] = pack2x16float(vec2<f32>(scratch[src + 2u * j], scratch[src + 2u * j + 1u]));
#else
        w[j] = bitcast<u32>(scratch[src + j]);
#endif
    }
    let t = dst / (4u * PER_WORD);
    textureStore(kv_out, vec2<u32>(t % KV_ROW, t / KV_ROW), w);
#else
#if PACKED16
    kv[dst / 2u] = pack2x16float(vec2<f32>(scratch[src], scratch[src + 1u]));
#else
    kv[dst] = bitcast<u32>(scratch[src]);
#endif
#endif
}
