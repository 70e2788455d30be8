// Elementwise kernels: the residual add, the unfused FFN chain's silu_mul, the batched FFN's swiglu_stacked,
// the plain copy that benchmarks use as their bandwidth yardstick, and rows copied into texels.
// Large counts use a 2-D grid (x up to 65535 workgroups); the linear index folds it back.

struct Params {
    count: u32,
    // swiglu_stacked: the FFN width (half a row of the stacked gate|up product).
    width: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> sum: array<f32>;

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * groups.x + wg.x) * WG + lid;
    if i < params.count {
        sum[i] = a[i] + b[i];
    }
}

// Copies `count` 16-byte words: one vec4<u32> per invocation, the widest portable load.
@group(0) @binding(4) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * groups.x + wg.x) * WG + lid;
    if i < params.count {
        dst[i] = src[i];
    }
}

// Copies `count` 16-byte words of `src` into the texels of `texels`, `width` per texel row (word i to
// texel (i % width, i / width)): rows of activations put where a CPU driver's windowed product reads them
// as texels (`gemv_window` with XTEX).
@group(0) @binding(6) var texels: texture_storage_2d<rgba32uint, write>;

@compute @workgroup_size(WG)
fn to_texels(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * groups.x + wg.x) * WG + lid;
    if i < params.count {
        textureStore(texels, vec2<u32>(i % params.width, i / params.width), src[i]);
    }
}

// The unfused FFN chain's middle step: sum = silu(a) * b, silu(v) = v / (1 + exp(-v)).
@compute @workgroup_size(WG)
fn silu_mul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * groups.x + wg.x) * WG + lid;
    if i < params.count {
        let g = a[i];
        sum[i] = g / (1.0 + exp(-g)) * b[i];
    }
}

// The batched FFN's middle step on the stacked product of a GEMM with the `[gate; up]` weight: row r of `a`
// is gate (width values) then up (width values); sum[r, j] = silu(gate[r, j]) * up[r, j].
@compute @workgroup_size(WG)
fn swiglu_stacked(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * groups.x + wg.x) * WG + lid;
    if i < params.count {
        let r = i / params.width;
        let g = a[i + r * params.width];
        sum[i] = g / (1.0 + exp(-g)) * a[i + (r + 1u) * params.width];
    }
}
