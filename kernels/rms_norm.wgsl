// RMSNorm over a batch of rows: y = x / sqrt(mean(x^2) + eps) * w. One workgroup per row.

struct Params {
    cols: u32,
    rows: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

#include reduce

@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, lanes: Lanes) {
    let base = wg.x * params.cols;
    var sum_sq = 0.0;
    for (var i = lanes.lid; i < params.cols; i += WG) {
        let v = x[base + i];
        sum_sq += v * v;
    }
    let total = workgroup_sum(sum_sq, lanes);
    let inv_rms = inverseSqrt(total / f32(params.cols) + params.eps);
    for (var i = lanes.lid; i < params.cols; i += WG) {
        y[base + i] = x[base + i] * inv_rms * weight[i];
    }
}
