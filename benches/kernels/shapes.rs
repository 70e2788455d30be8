//! The MobileLLM shapes the kernel rows run at, and deterministic inputs.

use mobilellm_kernels::quant::{HostWeight, WeightType};

use crate::common::Bench;

/// One model's per-layer shape.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

pub const M125: Shape = Shape { hidden: 576, ffn: 1536, heads: 9, kv_heads: 3, head_dim: 64, vocab: 32000 };
pub const M350: Shape = Shape { hidden: 960, ffn: 2560, heads: 15, kv_heads: 5, head_dim: 64, vocab: 32000 };

/// RMSNorm eps of the MobileLLM configs.
pub const EPS: f32 = 1e-5;

/// Both models, or only the 125M one with `--quick`.
pub fn models(b: &Bench) -> &'static [Shape] {
    if b.args.quick {
        &[M125]
    } else {
        &[M125, M350]
    }
}

/// Deterministic values in [-scale, scale) (xorshift), different per seed.
pub fn data(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A `[rows, cols]` weight of `wtype` with values ~ U(-1, 1)/sqrt(cols) (activations stay O(1)).
pub fn weight(wtype: WeightType, rows: usize, cols: usize, seed: u64) -> HostWeight {
    let scale = 1.0 / (cols as f32).sqrt();
    HostWeight::quantize(wtype, rows, cols, &data(seed, rows * cols, scale)).expect("quantize")
}

/// An RMSNorm weight near 1.
pub fn norm_weight(seed: u64, n: usize) -> Vec<f32> {
    data(seed, n, 0.1).iter().map(|v| 1.0 + v).collect()
}
