//! The whole forward pass on the CPU, in f32: the reference the GPU scheduler is checked against.
//!
//! Per executed layer (order 0,0,1,1,... with layer sharing, each EXECUTION with its own KV cache):
//! `x += o_proj(attn(rope(q, k), v))` on `input_layernorm(x)`, then
//! `x += down_proj(silu(gate_proj(h)) * up_proj(h))` with `h = post_attention_layernorm(x)`; then the final
//! norm and the LM head (the embedding matrix when tied). GQA: query head `h` reads KV head
//! `h / (heads / kv_heads)`; scale `1/sqrt(head_dim)`; causal; RoPE frequencies `theta^(-2i/head_dim)` in
//! the layout the config names ([`RopeLayout`]).
//!
//! The matvec, RoPE and attention helpers here are private and simple (blocked, no allocation in inner
//! loops); they compute like the kernel twins but are not shared with them.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::weights::ModelWeightsF32;
use crate::reference::rms_norm;

/// Which unique layer each execution runs, and which KV-cache slot it reads and appends to.
///
/// The correct schedule ([`Schedule::for_config`]) gives every execution its own slot. Other schedules
/// exist to show what goes wrong (tests: no sharing, or one cache per unique layer as MobileLLM's own
/// PyTorch code does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    layers: Vec<usize>,
    cache_slots: Vec<usize>,
    slot_count: usize,
}

impl Schedule {
    /// The schedule the config prescribes: executions `0..config.executed_layers()` running unique layer
    /// `config.unique_layer_of(e)`, execution `e` owning cache slot `e`.
    pub fn for_config(config: &ModelConfig) -> Self {
        let n = config.executed_layers();
        Schedule {
            layers: (0..n).map(|e| config.unique_layer_of(e)).collect(),
            cache_slots: (0..n).collect(),
            slot_count: n,
        }
    }

    /// A hand-made schedule: execution `e` runs unique layer `layers[e]` with KV-cache slot
    /// `cache_slots[e]`. Executions sharing a slot append to, and attend over, one cache (each entry keeps
    /// its position for the causal mask).
    pub fn custom(layers: Vec<usize>, cache_slots: Vec<usize>) -> Result<Self> {
        if layers.len() != cache_slots.len() || layers.is_empty() {
            return Err(Error::invalid(
                "schedule",
                format!("{} layers and {} cache slots", layers.len(), cache_slots.len()),
                "the same non-zero number of each",
            ));
        }
        let slot_count = cache_slots.iter().max().map_or(0, |m| m + 1);
        Ok(Schedule { layers, cache_slots, slot_count })
    }

    /// Unique layer of each execution.
    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    /// KV-cache slot of each execution.
    pub fn cache_slots(&self) -> &[usize] {
        &self.cache_slots
    }
}

/// One KV cache: `entries x kv_dim` keys and values, and the position of each entry.
#[derive(Clone, Default)]
struct KvSlot {
    k: Vec<f32>,
    v: Vec<f32>,
    pos: Vec<usize>,
}

/// The CPU model: weights, schedule, per-slot KV caches and the current position.
#[derive(Clone)]
pub struct CpuModel {
    config: ModelConfig,
    weights: ModelWeightsF32,
    schedule: Schedule,
    slots: Vec<KvSlot>,
    pos: usize,
    /// `theta^(-2i/head_dim)` for `i < head_dim/2`, in f64 so that large positions keep their angle.
    inv_freq: Vec<f64>,
    capture: bool,
    layer_hidden: Vec<f32>,
    final_hidden: Vec<f32>,
}

impl CpuModel {
    /// A model with the schedule the config prescribes.
    pub fn new(config: ModelConfig, weights: ModelWeightsF32) -> Result<Self> {
        let schedule = Schedule::for_config(&config);
        Self::with_schedule(config, weights, schedule)
    }

    /// A model run with a given schedule (see [`Schedule::custom`]).
    pub fn with_schedule(config: ModelConfig, weights: ModelWeightsF32, schedule: Schedule) -> Result<Self> {
        config.validate()?;
        weights.check(&config)?;
        if let Some(&bad) = schedule.layers.iter().find(|&&l| l >= config.num_hidden_layers) {
            return Err(Error::invalid(
                "schedule layer",
                bad,
                format!("< num_hidden_layers {}", config.num_hidden_layers),
            ));
        }
        let half = config.head_dim / 2;
        let inv_freq = (0..half).map(|i| config.rope_frequency(i)).collect();
        Ok(CpuModel {
            slots: vec![KvSlot::default(); schedule.slot_count],
            schedule,
            config,
            weights,
            pos: 0,
            inv_freq,
            capture: false,
            layer_hidden: Vec::new(),
            final_hidden: Vec::new(),
        })
    }

    /// Loads `config.json` and the safetensors checkpoint of a model directory.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let (config, weights) = ModelWeightsF32::load_dir(dir)?;
        Self::new(config, weights)
    }

    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The weights.
    pub fn weights(&self) -> &ModelWeightsF32 {
        &self.weights
    }

    /// The schedule in use.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Number of positions already in the cache (the position of the next token).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Empties every KV cache and returns to position 0 (keeps the allocations).
    pub fn reset(&mut self) {
        for slot in &mut self.slots {
            slot.k.clear();
            slot.v.clear();
            slot.pos.clear();
        }
        self.pos = 0;
        self.layer_hidden.clear();
        self.final_hidden.clear();
    }

    /// The twin of [`crate::model::Model::shift_context`]: drops the cache entries of positions
    /// `keep..keep + discard` and moves the later ones down by `discard`, their keys turned back by as many
    /// RoPE positions ([`crate::reference::rope_shift`]).
    pub fn shift_context(&mut self, keep: usize, discard: usize) -> Result<()> {
        if keep.checked_add(discard).is_none_or(|end| end > self.pos) {
            return Err(Error::invalid(
                "context shift",
                format!("keep {keep} + discard {discard}"),
                format!("at most the {} positions in use", self.pos),
            ));
        }
        let (kv_dim, hd, layout) = (self.config.kv_dim(), self.config.head_dim, self.config.rope_layout);
        for slot in &mut self.slots {
            slot.k.drain(keep * kv_dim..(keep + discard) * kv_dim);
            slot.v.drain(keep * kv_dim..(keep + discard) * kv_dim);
            slot.pos.truncate(slot.pos.len() - discard);
            for row in slot.k[keep * kv_dim..].chunks_exact_mut(kv_dim) {
                crate::reference::rope_shift(row, -(discard as i64), hd, &self.inv_freq, layout);
            }
        }
        self.pos -= discard;
        Ok(())
    }

    /// Keys and values cached by execution `exec` (`entries x kv_dim` each), e.g. to compare a GPU cache.
    pub fn kv_cache(&self, exec: usize) -> Option<(&[f32], &[f32])> {
        let slot = self.slots.get(*self.schedule.cache_slots.get(exec)?)?;
        Some((&slot.k, &slot.v))
    }

    /// When on, each forward records the residual stream after every execution (see
    /// [`CpuModel::layer_hidden`]).
    pub fn set_capture_hidden(&mut self, on: bool) {
        self.capture = on;
    }

    /// Residual stream of the last forward, `[executed_layers + 1][T][hidden]`: `[0]` = embeddings, `[j]` =
    /// after execution `j - 1` (before the final norm). Empty unless capture is on.
    pub fn layer_hidden(&self) -> &[f32] {
        &self.layer_hidden
    }

    /// Output of the final norm for every token of the last forward, `[T][hidden]`.
    pub fn final_hidden(&self) -> &[f32] {
        &self.final_hidden
    }

    /// Runs `tokens` at positions `position()..position()+T`, appending to the caches, and returns the
    /// logits of every token, row-major `[T][vocab]`.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward(tokens, false)
    }

    /// Like [`CpuModel::prefill`] but computes only the last token's logits `[vocab]` (saves the LM head
    /// for the other rows).
    pub fn prefill_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward(tokens, true)
    }

    /// One cached decode step: feeds `token` at `position()` and returns its logits `[vocab]`.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        self.forward(&[token], true)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let cfg = &self.config;
        if tokens.is_empty() {
            return Err(Error::invalid("number of tokens", 0, ">= 1"));
        }
        if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= cfg.vocab_size) {
            return Err(Error::invalid(
                format!("token id (index {i} of {})", tokens.len()),
                t,
                format!("< vocab_size {}", cfg.vocab_size),
            ));
        }
        let end = self.pos + tokens.len();
        if end > cfg.max_position_embeddings {
            return Err(Error::Capacity {
                what: format!("context (position {} + {} tokens)", self.pos, tokens.len()),
                requested: end,
                capacity: cfg.max_position_embeddings,
            });
        }
        Ok(())
    }

    fn forward(&mut self, tokens: &[u32], last_only: bool) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let cfg = &self.config;
        let (t, h, inter, vocab) = (tokens.len(), cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (q_dim, kv_dim, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        let eps = cfg.rms_norm_eps;
        let pos0 = self.pos;

        let mut x = Vec::with_capacity(t * h);
        for &tok in tokens {
            let row = tok as usize * h;
            x.extend_from_slice(&self.weights.embed_tokens[row..row + h]);
        }

        // RoPE tables for this call's positions: [T][head_dim/2].
        let half = hd / 2;
        let mut cos = vec![0.0f32; t * half];
        let mut sin = vec![0.0f32; t * half];
        for ti in 0..t {
            let p = (pos0 + ti) as f64;
            for (i, f) in self.inv_freq.iter().enumerate() {
                let (s, c) = (p * f).sin_cos();
                cos[ti * half + i] = c as f32;
                sin[ti * half + i] = s as f32;
            }
        }

        let mut q = vec![0.0f32; t * q_dim];
        let mut k = vec![0.0f32; t * kv_dim];
        let mut v = vec![0.0f32; t * kv_dim];
        let mut attn = vec![0.0f32; t * q_dim];
        let mut delta = vec![0.0f32; t * h];
        let mut gate = vec![0.0f32; t * inter];
        let mut up = vec![0.0f32; t * inter];
        let mut scores = Vec::new();

        self.layer_hidden.clear();
        if self.capture {
            self.layer_hidden.reserve((self.schedule.layers.len() + 1) * t * h);
            self.layer_hidden.extend_from_slice(&x);
        }

        for (&layer, &slot) in self.schedule.layers.iter().zip(&self.schedule.cache_slots) {
            let w = &self.weights.layers[layer];

            let hn = rms_norm(&x, &w.input_norm, eps);
            matmul(&hn, t, &w.q_proj, q_dim, h, &mut q);
            matmul(&hn, t, &w.k_proj, kv_dim, h, &mut k);
            matmul(&hn, t, &w.v_proj, kv_dim, h, &mut v);
            rope(&mut q, t, cfg.num_attention_heads, hd, &cos, &sin, cfg.rope_layout);
            rope(&mut k, t, cfg.num_key_value_heads, hd, &cos, &sin, cfg.rope_layout);

            let cache = &mut self.slots[slot];
            cache.k.extend_from_slice(&k);
            cache.v.extend_from_slice(&v);
            cache.pos.extend(pos0..pos0 + t);
            attention(&q, t, pos0, cache, cfg, &mut attn, &mut scores);

            matmul(&attn, t, &w.o_proj, h, q_dim, &mut delta);
            add_into(&mut x, &delta);

            let hn = rms_norm(&x, &w.post_norm, eps);
            matmul(&hn, t, &w.gate_proj, inter, h, &mut gate);
            matmul(&hn, t, &w.up_proj, inter, h, &mut up);
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            matmul(&gate, t, &w.down_proj, h, inter, &mut delta);
            add_into(&mut x, &delta);

            if self.capture {
                self.layer_hidden.extend_from_slice(&x);
            }
        }

        self.final_hidden = rms_norm(&x, &self.weights.final_norm, eps);
        self.pos += t;
        let head = self.weights.head();
        let rows = if last_only { &self.final_hidden[(t - 1) * h..] } else { &self.final_hidden[..] };
        let n_rows = rows.len() / h;
        let mut logits = vec![0.0f32; n_rows * vocab];
        matmul(rows, n_rows, head, vocab, h, &mut logits);
        Ok(logits)
    }
}

impl std::fmt::Debug for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuModel")
            .field("config", &self.config)
            .field("schedule", &self.schedule)
            .field("position", &self.pos)
            .field("weights", &self.weights)
            .finish_non_exhaustive()
    }
}

/// Index of the largest value (the first on ties), as greedy decoding picks it; 0 for an empty slice.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

fn add_into(x: &mut [f32], d: &[f32]) {
    for (a, b) in x.iter_mut().zip(d) {
        *a += b;
    }
}

/// Dot product with 8 independent accumulators, so the compiler can vectorize it.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Four dot products of `w` with `x[0..4]`, each summed exactly like [`dot`] (so a row's result does not
/// depend on whether it was computed alone or in a group), loading each chunk of `w` once for four rows.
#[inline]
fn dot4(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    let mut acc = [[0.0f32; 8]; 4];
    let n = w.len() / 8 * 8;
    let mut k = 0;
    while k < n {
        let wc = &w[k..k + 8];
        for (a, xr) in acc.iter_mut().zip(&x) {
            let xc = &xr[k..k + 8];
            for i in 0..8 {
                a[i] += wc[i] * xc[i];
            }
        }
        k += 8;
    }
    let mut out = [0.0f32; 4];
    for ((o, a), xr) in out.iter_mut().zip(&acc).zip(&x) {
        let tail: f32 = w[n..].iter().zip(&xr[n..]).map(|(p, q)| p * q).sum();
        *o = a.iter().sum::<f32>() + tail;
    }
    out
}

/// `y[r][o] = sum_k w[o][k] * x[r][k]` for `rows` rows; `w` is `[out_dim, in_dim]` row-major. Rows are taken
/// in blocks so each weight row is read once per block while the block of `x` stays in cache, and four at a
/// time so each loaded weight feeds four rows.
fn matmul(x: &[f32], rows: usize, w: &[f32], out_dim: usize, in_dim: usize, y: &mut [f32]) {
    const ROW_BLOCK: usize = 16;
    let row = |r: usize| &x[r * in_dim..(r + 1) * in_dim];
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + ROW_BLOCK).min(rows);
        for (o, wr) in w.chunks_exact(in_dim).take(out_dim).enumerate() {
            let mut r = r0;
            while r + 4 <= r1 {
                let d = dot4(wr, [row(r), row(r + 1), row(r + 2), row(r + 3)]);
                for (i, v) in d.into_iter().enumerate() {
                    y[(r + i) * out_dim + o] = v;
                }
                r += 4;
            }
            for r in r..r1 {
                y[r * out_dim + o] = dot(wr, row(r));
            }
        }
        r0 = r1;
    }
}

/// Rotates each head of each row in place; `cos`/`sin` are `[rows][head_dim/2]`.
fn rope(x: &mut [f32], rows: usize, heads: usize, hd: usize, cos: &[f32], sin: &[f32], layout: RopeLayout) {
    let half = hd / 2;
    for r in 0..rows {
        let (c, s) = (&cos[r * half..(r + 1) * half], &sin[r * half..(r + 1) * half]);
        for head in x[r * heads * hd..(r + 1) * heads * hd].chunks_exact_mut(hd) {
            for i in 0..half {
                let (ia, ib) = match layout {
                    RopeLayout::Halves => (i, i + half),
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * c[i] - b * s[i];
                head[ib] = b * c[i] + a * s[i];
            }
        }
    }
}

/// Causal GQA attention of `rows` queries (positions `pos0..pos0+rows`) over every cache entry whose
/// position is not later than the query's. Output `[rows][q_dim]`.
fn attention(
    q: &[f32],
    rows: usize,
    pos0: usize,
    cache: &KvSlot,
    cfg: &ModelConfig,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let (hd, q_dim, kv_dim) = (cfg.head_dim, cfg.q_dim(), cfg.kv_dim());
    let group = cfg.gqa_group();
    let scale = 1.0 / (hd as f32).sqrt();
    scores.resize(cache.pos.len(), 0.0);
    for r in 0..rows {
        let p = pos0 + r;
        for head in 0..cfg.num_attention_heads {
            let kv_off = (head / group) * hd;
            let qv = &q[r * q_dim + head * hd..r * q_dim + (head + 1) * hd];
            let mut max = f32::NEG_INFINITY;
            for ((s, &kp), kr) in scores.iter_mut().zip(&cache.pos).zip(cache.k.chunks_exact(kv_dim)) {
                if kp <= p {
                    *s = dot(qv, &kr[kv_off..kv_off + hd]) * scale;
                    max = max.max(*s);
                }
            }
            let o = &mut out[r * q_dim + head * hd..r * q_dim + (head + 1) * hd];
            o.fill(0.0);
            let mut sum = 0.0f32;
            for ((&s, &kp), vr) in scores.iter().zip(&cache.pos).zip(cache.v.chunks_exact(kv_dim)) {
                if kp <= p {
                    let e = (s - max).exp();
                    sum += e;
                    for (oi, vi) in o.iter_mut().zip(&vr[kv_off..kv_off + hd]) {
                        *oi += e * vi;
                    }
                }
            }
            let inv = 1.0 / sum;
            for oi in o.iter_mut() {
                *oi *= inv;
            }
        }
    }
}
