//! CPU twins of `ops::attention` and `ops::qkv_rope`: RoPE (both layouts), decode and prefill attention
//! over a [`KvMirror`], all in f32.

use crate::kv_cache::KvMirror;

/// How RoPE pairs the elements of a head vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// HF `rotate_half`: element `i` pairs with `i + head_dim/2` (safetensors checkpoints).
    Halves,
    /// GGUF `llama`: element `2i` pairs with `2i+1` (llama.cpp permutes Q/K rows at conversion).
    Interleaved,
}

/// Rotates every head of one row `x` (`[heads * head_dim]`) for position `pos`, in place:
/// pair `(a, b)` with frequency `theta^(-2i/head_dim)` becomes `(a cos - b sin, a sin + b cos)`.
pub fn rope(x: &mut [f32], pos: usize, head_dim: usize, theta: f32, layout: RopeLayout) {
    let half = head_dim / 2;
    for head in x.chunks_mut(head_dim) {
        for i in 0..half {
            let freq = theta.powf(-2.0 * i as f32 / head_dim as f32);
            let angle = pos as f32 * freq;
            let (sin, cos) = angle.sin_cos();
            let (ia, ib) = match layout {
                RopeLayout::Halves => (i, i + half),
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a * cos - b * sin;
            head[ib] = a * sin + b * cos;
        }
    }
}

/// Attention of one query row `q` (`[heads * head_dim]`) over cache positions `0..ctx`: query head `h`
/// reads KV head `h / (heads / kv_heads)`; softmax scale `1/sqrt(head_dim)`. Returns `[heads * head_dim]`.
pub fn attention_decode(q: &[f32], cache: &KvMirror, ctx: usize) -> Vec<f32> {
    let hd = cache.head_dim;
    let heads = q.len() / hd;
    let group = heads / cache.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0f32; q.len()];
    for h in 0..heads {
        let kvh = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        let scores: Vec<f32> =
            (0..ctx).map(|p| qh.iter().zip(cache.key(kvh, p)).map(|(a, b)| a * b).sum::<f32>() * scale).collect();
        let m = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let w: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
        let l: f32 = w.iter().sum();
        let o = &mut out[h * hd..(h + 1) * hd];
        for (p, wp) in w.iter().enumerate() {
            for (od, vd) in o.iter_mut().zip(cache.value(kvh, p)) {
                *od += wp / l * vd;
            }
        }
    }
    out
}

/// Causal attention of `n` query rows `q` (`[n, heads * head_dim]`) at positions `pos..pos+n` over cache
/// positions `0..pos+n`: row `r` sees positions `0..=pos+r`. Returns `[n, heads * head_dim]`.
pub fn attention_prefill(q: &[f32], cache: &KvMirror, pos: usize, n: usize) -> Vec<f32> {
    let width = q.len() / n.max(1);
    (0..n).flat_map(|r| attention_decode(&q[r * width..(r + 1) * width], cache, pos + r + 1)).collect()
}
