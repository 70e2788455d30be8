//! CPU twins of `ops::attention` and `ops::qkv_rope`: RoPE (both layouts), decode and prefill attention
//! over a [`KvMirror`], all in f32.

use crate::kv_cache::KvMirror;

pub use crate::model::config::RopeLayout;

/// `(cos, sin)` of the angle `pos * theta^(-2i/head_dim)` for pair `i`, computed in f64 and rounded to f32:
/// the values of the GPU's RoPE table (`ops::qkv_rope::RopeTable`), so both sides rotate identically.
pub fn rope_cos_sin(pos: usize, i: usize, head_dim: usize, theta: f32) -> (f32, f32) {
    rope_cos_sin_at(pos, rope_frequency(i, head_dim, theta, None))
}

/// The frequency of pair `i` in f64: `theta^(-2i/head_dim)`, divided by `factor` (RoPE scaling) if given.
pub fn rope_frequency(i: usize, head_dim: usize, theta: f32, factor: Option<f32>) -> f64 {
    let base = (theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
    match factor {
        Some(f) => base / f as f64,
        None => base,
    }
}

/// `(cos, sin)` of `pos * freq`, computed in f64 and rounded to f32.
pub fn rope_cos_sin_at(pos: usize, freq: f64) -> (f32, f32) {
    let (sin, cos) = (pos as f64 * freq).sin_cos();
    (cos as f32, sin as f32)
}

/// Rotates every head of one row `x` (`[heads * head_dim]`) for position `pos`, in place:
/// pair `(a, b)` with frequency `theta^(-2i/head_dim)` becomes `(a cos - b sin, a sin + b cos)`.
pub fn rope(x: &mut [f32], pos: usize, head_dim: usize, theta: f32, layout: RopeLayout) {
    let turns: Vec<(f32, f32)> = (0..head_dim / 2).map(|i| rope_cos_sin(pos, i, head_dim, theta)).collect();
    turn_pairs(x, head_dim, layout, &turns);
}

/// Turns pair `i` of every head of `x` by `turns[i]` = `(cos, sin)`: `(a, b)` becomes
/// `(a cos - b sin, a sin + b cos)`.
fn turn_pairs(x: &mut [f32], head_dim: usize, layout: RopeLayout, turns: &[(f32, f32)]) {
    let half = head_dim / 2;
    for head in x.chunks_mut(head_dim) {
        for (i, &(cos, sin)) in turns.iter().enumerate() {
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

/// Moves every head of one row `x` (`[heads * head_dim]`, rotated by RoPE for some position `p`) to position
/// `p + delta`: pair `i` turns by the angle `delta * freqs[i]` (`freqs`: one per pair, as
/// [`crate::model::ModelConfig::rope_frequency`] gives them), with cos and sin computed in f64 and rounded to
/// f32, as the RoPE table does. A context shift moves the kept keys back by the dropped positions with it.
pub fn rope_shift(x: &mut [f32], delta: i64, head_dim: usize, freqs: &[f64], layout: RopeLayout) {
    let turns: Vec<(f32, f32)> = freqs
        .iter()
        .take(head_dim / 2)
        .map(|f| {
            let (sin, cos) = (delta as f64 * f).sin_cos();
            (cos as f32, sin as f32)
        })
        .collect();
    turn_pairs(x, head_dim, layout, &turns);
}

/// The shapes of a fused QKV projection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QkvShape {
    /// Query heads.
    pub heads: usize,
    /// KV heads.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// RoPE base.
    pub theta: f32,
    /// RoPE pairing.
    pub layout: RopeLayout,
    /// RMSNorm epsilon.
    pub eps: f32,
}

/// Twin of `ops::qkv_rope`: for rows `x` (`[n, hidden]`) at positions `pos..pos+n`: RMSNorm with `norm_w`,
/// then `y = W x` with the fused weight `w` (`[(heads + 2 kv_heads) * head_dim, hidden]` row-major f32,
/// rows Q then K then V), then RoPE on Q and K. Returns `(q, k, v)`: `[n, heads*hd]`, `[n, kv_heads*hd]` x2.
pub fn qkv_rope(x: &[f32], norm_w: &[f32], w: &[f32], pos: usize, s: QkvShape) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let hidden = norm_w.len();
    let hd = s.head_dim;
    let (qw, kw) = (s.heads * hd, s.kv_heads * hd);
    let normed = super::rms_norm(x, norm_w, s.eps);
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for (r, row) in normed.chunks(hidden).enumerate() {
        let mut y: Vec<f32> = w.chunks(hidden).map(|wr| wr.iter().zip(row).map(|(a, b)| a * b).sum::<f32>()).collect();
        rope(&mut y[..qw + kw], pos + r, hd, s.theta, s.layout);
        q.extend_from_slice(&y[..qw]);
        k.extend_from_slice(&y[qw..qw + kw]);
        v.extend_from_slice(&y[qw + kw..]);
    }
    (q, k, v)
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
