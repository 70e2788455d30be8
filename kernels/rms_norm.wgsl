// RMSNorm over a batch of rows: y = x / sqrt(mean(x^2) + eps) * w. One workgroup per row.

struct Params {
    cols: u32,
    rows: u32,
    eps: f32,
    _pad: u32,
}

// VEC4 (cols a multiple of 4): rows read and written as vec4, a quarter of the loads and stores (on
// lavapipe each storage access is a loop over the SIMD lanes, whatever its width).
#if VEC4
alias Elem = vec4<f32>;
#else
alias Elem = f32;
#endif

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<Elem>;
@group(0) @binding(2) var<storage, read> weight: array<Elem>;
@group(0) @binding(3) var<storage, read_write> y: array<Elem>;

#include reduce

fn squares(v: Elem) -> f32 {
#if VEC4
    return dot(v, v);
#else
    return v * v;
#endif
}

@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, lanes: Lanes) {
#if VEC4
    let width = params.cols / 4u;
#else
    let width = params.cols;
#endif
    let base = wg.x * width;
    var sum_sq = 0.0;
    for (var i = lanes.lid; i < width; i += WG) {
        sum_sq += squares(x[base + i]);
    }
    let total = workgroup_sum(sum_sq, lanes);
    let inv_rms = inverseSqrt(total / f32(params.cols) + params.eps);
    for (var i = lanes.lid; i < width; i += WG) {
        y[base + i] = x[base + i] * inv_rms * weight[i];
    }
}
