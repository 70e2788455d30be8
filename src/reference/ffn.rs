//! CPU twin of `ops::ffn` (the GEMV kernel's NORM+SWIGLU variant + down projection): the SwiGLU
//! feed-forward block on dequantized (f32) weights.
//!
//! The GPU reads quantized weights in their own format; the twin takes the same weights already
//! dequantized (`HostWeight::dequantize`), so the only GPU-vs-CPU differences are summation order.

/// `silu(v) = v / (1 + exp(-v))`.
pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// `h[i] = silu(gate[i]) * up[i]` (the unfused chain's middle step).
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
}

/// `h[r, j] = silu(gu[r, j]) * gu[r, ffn + j]` on rows of `2 ffn` values (gate then up): the batched
/// FFN's middle step (`ops::ffn::swiglu_stacked`).
pub fn swiglu_stacked(gate_up: &[f32], ffn: usize) -> Vec<f32> {
    gate_up.chunks(2 * ffn).flat_map(|row| silu_mul(&row[..ffn], &row[ffn..])).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The fused gate/up step: `h = silu(Wg·n) ⊙ (Wu·n)` for `n = rms_norm(x)·norm_weight` per row of
/// `x` (`[rows, hidden]`, `hidden = norm_weight.len()`); `gate` and `up` are `[ffn, hidden]` row-major.
/// Returns `h` as `[rows, ffn]`.
pub fn ffn_gate_up(x: &[f32], norm_weight: &[f32], eps: f32, gate: &[f32], up: &[f32]) -> Vec<f32> {
    let hidden = norm_weight.len().max(1);
    let ffn = gate.len() / hidden;
    let n = super::rms_norm(x, norm_weight, eps);
    let mut h = Vec::with_capacity(x.len() / hidden * ffn);
    for row in n.chunks(hidden) {
        for o in 0..ffn {
            let g = dot(&gate[o * hidden..(o + 1) * hidden], row);
            let u = dot(&up[o * hidden..(o + 1) * hidden], row);
            h.push(silu(g) * u);
        }
    }
    h
}

/// The whole feed-forward block with its residual: `x + Wd·h`, `h` from [`ffn_gate_up`];
/// `down` is `[hidden, ffn]` row-major. Returns the new `x` (`[rows, hidden]`).
pub fn ffn_block(x: &[f32], norm_weight: &[f32], eps: f32, gate: &[f32], up: &[f32], down: &[f32]) -> Vec<f32> {
    let hidden = norm_weight.len().max(1);
    let ffn = gate.len() / hidden;
    let h = ffn_gate_up(x, norm_weight, eps, gate, up);
    let mut out = x.to_vec();
    for (row, hrow) in out.chunks_mut(hidden).zip(h.chunks(ffn.max(1))) {
        for (o, value) in row.iter_mut().enumerate() {
            *value += dot(&down[o * ffn..(o + 1) * ffn], hrow);
        }
    }
    out
}
