//! The planner: a model made resident on the GPU, with every buffer, pipeline and bind group built once,
//! and the dispatch lists of a decode step and of a prefill of `n` positions.
//!
//! Per executed layer a step records five or six dispatches:
//! 1. `qkv_rope`: input RMSNorm + Q/K/V projections + RoPE + K/V written into this execution's cache slot;
//! 2. attention (decode: one pass, or two when flash-decoding splits a long cache; prefill: one causal pass);
//! 3. `gemv`/`gemm` output projection accumulating into the residual stream;
//! 4. `ffn_swiglu`: post-attention RMSNorm + gate/up projections + SiLU·mul (the GEMV kernel's NORM+SWIGLU
//!    variant on the stacked gate/up weight);
//! 5. `gemv`/`gemm` down projection accumulating into the residual stream (4 and 5 are `ops::ffn::ffn_block`).
//!
//! CPU drivers decode with step 1 as `qkv_rope_lanes` (the tuned GEMV's mapping, RoPE and the cache write as
//! its epilogue; where the shapes do not suit it, the tuned GEMV with the norm folded in, then `rope_cache`). A prefill
//! (`n > 1`) normalises each row once and runs steps 1 and 4 as batched products: `rms_norm`, `gemm` on the
//! Q/K/V weight, `rope_cache`; and `ops::ffn::ffn_block_batched` (`rms_norm`, then on GPUs `gemm` on the
//! stacked gate/up weight and `swiglu_stacked`, on CPU drivers the windowed SWIGLU product; the down
//! `gemm`), so each weight is read once per tile of rows. On lavapipe that beat folding the norm into the
//! windowed products (each workgroup re-deriving every row's RMS and scaling each weight) by 1.25x at n=64.
//!
//! With layer sharing, unique layer `i` runs as executions `2i` and `2i+1`: the same weight buffers are
//! bound back to back, each execution with its own KV-cache slot.

mod batch;
pub use batch::RowLogprobs;

use std::collections::HashMap;

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::config::ModelConfig;
use crate::model::host::{HostLayer, HostModel};
use crate::model::state::SessionState;
use crate::ops::attention::Split;
use crate::ops::embedding::Embedding;
use crate::ops::ffn::fuse_gate_up;
use crate::ops::gemv::GemvFusion;
use crate::ops::kv_shift::Shift;
use crate::ops::qkv_rope::{fuse_qkv, RopeTable};
use crate::ops::sample::{top_candidates, Penalties, SampleRow, Sampler, TokenMask, MAX_PENALTIES, MAX_TOP_LOGPROBS};
use crate::ops::{self, Dispatch, StepBuffer, StepParams};
use crate::quant::GpuWeight;
use crate::tensor::{map_read, DType, Tensor};

/// Choices made when a model is planned.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// KV-cache capacity in positions (the longest sequence the model can hold).
    pub context: usize,
    /// Most positions one prefill submission handles; longer prompts run in chunks of this size.
    pub max_batch: usize,
    /// KV-cache storage: `None` picks f16 where the device has SHADER_F16, else f32.
    pub kv_dtype: Option<DType>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { context: 1024, max_batch: 64, kv_dtype: None }
    }
}

/// Token sampling settings (temperature 0 = greedy argmax), applied on the GPU (`ops::sample`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the argmax.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off).
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's, after temperature
    /// (0 = off).
    pub min_p: f32,
    /// Repetition, frequency and presence penalties on the last [`Sampling::penalty_last_n`] tokens fed
    /// (prompt and generated alike).
    pub penalties: Penalties,
    /// How many of the latest tokens the penalties look at (at most [`MAX_PENALTIES`]; 0 = none). Tokens
    /// before a [`Model::seek`] past the known ones are not counted.
    pub penalty_last_n: usize,
    /// Seed; step `i` uses `seed + position`.
    pub seed: u32,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            penalties: Penalties::OFF,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl Sampling {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }
}

/// GPU memory in use, by category, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Weights (each unique layer counted once).
    pub weights: u64,
    /// KV cache (one slot per executed layer), and the batch's sequences ([`Model::reserve_sequences`]).
    pub kv_cache: u64,
    /// Activations (residual stream, scratch of each step, logits).
    pub activations: u64,
    /// Readbacks, uniforms, the RoPE table, the batch's per-row tables, and the device's staging textures
    /// ([`Gpu::staging_bytes`]: a CPU driver's prefill copies operands there; made with the first prefill
    /// plan that needs them and shared by every model on the same [`Gpu`], so each one's report counts
    /// them).
    pub scratch: u64,
}

impl MemoryReport {
    /// Sum of all categories.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.activations + self.scratch
    }
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "weights {:.1} MiB, KV cache {:.1} MiB, activations {:.1} MiB, scratch {:.2} MiB (total {:.1} MiB)",
            mib(self.weights),
            mib(self.kv_cache),
            mib(self.activations),
            mib(self.scratch),
            mib(self.total())
        )
    }
}

struct GpuLayer {
    input_norm: Tensor,
    qkv_proj: GpuWeight,
    o_proj: GpuWeight,
    post_norm: Tensor,
    gate_up_proj: GpuWeight,
    down_proj: GpuWeight,
}

impl GpuLayer {
    fn upload(gpu: &Gpu, l: &HostLayer) -> Result<GpuLayer> {
        let norm = |w: &[f32]| Tensor::from_slice(gpu, &[w.len()], w);
        Ok(GpuLayer {
            input_norm: norm(&l.input_norm)?,
            qkv_proj: GpuWeight::upload(gpu, &fuse_qkv(&l.q_proj, &l.k_proj, &l.v_proj)?)?,
            o_proj: GpuWeight::upload(gpu, &l.o_proj)?,
            post_norm: norm(&l.post_norm)?,
            gate_up_proj: GpuWeight::upload(gpu, &fuse_gate_up(&l.gate_proj, &l.up_proj)?)?,
            down_proj: GpuWeight::upload(gpu, &l.down_proj)?,
        })
    }

    fn size_bytes(&self) -> u64 {
        [&self.qkv_proj, &self.o_proj, &self.gate_up_proj, &self.down_proj].iter().map(|w| w.size_bytes()).sum::<u64>()
            + self.input_norm.size_bytes()
            + self.post_norm.size_bytes()
    }
}

/// Activation buffers, sized for `max_batch` rows and reused by every step.
struct Activations {
    ids: Tensor,
    x: Tensor,
    qkv: Tensor,
    q: Tensor,
    attn: Tensor,
    h: Tensor,
    normed: Tensor,
    // GPUs' batched FFN: the GEMM's gate|up product, [b, 2 ffn] (None on CPU drivers or for b = 1).
    gate_up: Option<Tensor>,
    logits: Tensor,
    last: Tensor,
    last_normed: Tensor,
    last_logits: Tensor,
    token: Tensor,
    // Each row's greedy pick, written by chunks planned with every row's logits.
    picks: Tensor,
}

impl Activations {
    fn new(gpu: &Gpu, c: &ModelConfig, b: usize) -> Result<Activations> {
        let f = |label: &str, shape: &[usize]| Tensor::zeros_labeled(gpu, label, DType::F32, shape);
        Ok(Activations {
            ids: Tensor::zeros_labeled(gpu, "ids", DType::U32, &[b])?,
            x: f("residual", &[b, c.hidden_size])?,
            qkv: f("qkv", &[b, c.q_dim() + 2 * c.kv_dim()])?,
            q: f("q", &[b, c.q_dim()])?,
            attn: f("attention out", &[b, c.q_dim()])?,
            h: f("ffn hidden", &[b, c.intermediate_size])?,
            normed: f("normed", &[b, c.hidden_size])?,
            gate_up: if gpu.is_cpu_class() || b < 2 {
                None
            } else {
                Some(f("ffn gate|up", &[b, 2 * c.intermediate_size])?)
            },
            logits: f("logits", &[b, c.vocab_size])?,
            last: f("last residual", &[1, c.hidden_size])?,
            last_normed: f("last normed", &[1, c.hidden_size])?,
            last_logits: f("last logits", &[1, c.vocab_size])?,
            // The sampled token, its log-probability and the reported candidates (f32 bits) when asked for.
            token: Tensor::zeros_labeled(gpu, "token", DType::U32, &[TOKEN_WORDS])?,
            picks: Tensor::zeros_labeled(gpu, "row picks", DType::U32, &[b])?,
        })
    }

    fn size_bytes(&self) -> u64 {
        [
            &self.ids,
            &self.x,
            &self.qkv,
            &self.q,
            &self.attn,
            &self.h,
            &self.normed,
            &self.logits,
            &self.last,
            &self.last_normed,
            &self.last_logits,
            &self.token,
            &self.picks,
        ]
        .iter()
        .map(|t| t.size_bytes())
        .sum::<u64>()
            + self.gate_up.as_ref().map_or(0, Tensor::size_bytes)
    }
}

/// One recorded step: the layer dispatches, then (optionally) a copy of the last row, then the head.
struct Plan {
    n: usize,
    all_logits: bool,
    embedding: Embedding,
    body: Vec<Dispatch>,
    // Index in `body` of each executed layer's first dispatch.
    layer_starts: Vec<usize>,
    head: Vec<Dispatch>,
    // One-sequence plans sample the last row; batched plans sample every row, each with its sequence's
    // settings (`ops::sample::sample_rows`).
    sampler: Sampler,
}

/// GPU timestamps of a profiled step, made on the first profiled step and reused.
struct Profiler {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
    queries: u32,
}

/// A model resident on the GPU, planned once; see the module docs for the dispatch list of a step.
///
/// After warm-up (the first call of each kind, and the first prefill of each chunk length) no call
/// allocates GPU memory: [`Gpu::buffers_created`] stays put. A call that fails leaves the position and the
/// KV cache as they were, so the next valid call works as if the failed one had not been made (except after
/// [`Error::DeviceLost`], which is final).
pub struct Model {
    gpu: Gpu,
    config: ModelConfig,
    layers: Vec<GpuLayer>,
    embed: Vec<GpuWeight>,
    head: Option<Vec<GpuWeight>>,
    final_norm: Tensor,
    rope: RopeTable,
    cache: KvCache,
    step: StepBuffer,
    act: Activations,
    plans: HashMap<(usize, bool), Plan>,
    token_staging: wgpu::Buffer,
    // One bit per token id: what sampling may pick while `masked` (`set_token_mask`).
    token_mask: Tensor,
    masked: bool,
    // Whether sampling also reports the pick's log-probability, and the last one reported.
    logprobs: bool,
    last_logprob: Option<f32>,
    // How many best candidates sampling reports with their log-probabilities, and the last ones reported.
    top_logprobs: usize,
    last_top_logprobs: Vec<(u32, f32)>,
    // Readback of logits: `vocab` floats after the first `step_logits`, `max_batch * vocab` after the first
    // multi-row `prefill_logits`; never reallocated after that.
    logits_staging: Option<wgpu::Buffer>,
    // The next decode step's commands, recorded while the GPU ran the previous step (see `run_chunk`).
    next_commands: Option<(ChunkKey, wgpu::CommandBuffer)>,
    profiler: Option<Profiler>,
    pos: usize,
    // The tokens whose K/V the cache holds, position by position, as far as known: `cached[i]` was fed at
    // position `i`. Kept across `reset` and `seek`, which write nothing; cut where a run starts writing.
    cached: Vec<u32>,
    sampling: Sampling,
    options: PlanOptions,
    // `HostModel::fingerprint` of the weights uploaded, which session states are checked against.
    fingerprint: u64,
    // Context shifts' f32 copy of the moved positions, made by the first `shift_context`.
    shift_scratch: Option<Tensor>,
    // Several sequences decoded together (`reserve_sequences`, `decode_batch`).
    batch: Option<batch::Batch>,
}

/// What a chunk's command buffer is recorded for: `(n, all_logits, want_logits)`.
type ChunkKey = (usize, bool, bool);

/// What a chunk, or a run of chunks, gives back: the token sampled after the last row, the logits asked
/// for (empty if none) and, with every row's logits, each row's greedy pick.
struct ChunkOutput {
    token: u32,
    logits: Vec<f32>,
    picks: Vec<u32>,
}

/// Words of the sampler's output: the token, its log-probability, and up to [`MAX_TOP_LOGPROBS`] reported
/// candidates (id, log-probability). The token readback holds them, then one greedy pick per row.
const TOKEN_WORDS: usize = 2 + 2 * MAX_TOP_LOGPROBS as usize;

/// Errors unless `sampling` is valid: `penalty_last_n` at most [`MAX_PENALTIES`], and the fields
/// [`ops::sample::validate`] checks.
fn check_sampling(sampling: &Sampling) -> Result<()> {
    if sampling.penalty_last_n > MAX_PENALTIES {
        return Err(Error::invalid(
            "penalty_last_n",
            sampling.penalty_last_n,
            format!("at most {MAX_PENALTIES} tokens (0 = none)"),
        ));
    }
    sampling.penalties.validate()?;
    let params = StepParams {
        top_k: sampling.top_k,
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        min_p: sampling.min_p,
        ..StepParams::default()
    };
    ops::sample::validate(&params)
}

/// Bytes of the token readback a chunk reads: with `all_logits`, up to its picks; else the token, its
/// log-probability and `top` reported candidates.
fn readback_bytes((n, all_logits, _): ChunkKey, top: usize) -> u64 {
    4 * if all_logits { TOKEN_WORDS + n } else { 2 + 2 * top } as u64
}

/// Bytes of logits a chunk reads back: every row's with `all_logits`, else the last row's.
fn logits_bytes((n, all_logits, _): ChunkKey, config: &ModelConfig) -> u64 {
    (if all_logits { n } else { 1 } * config.vocab_size * 4) as u64
}

fn rows(t: &Tensor, n: usize) -> Result<Tensor> {
    t.view_rows(n)
}

impl Model {
    /// Uploads `host` (weights once per unique layer) and plans the decode step.
    pub fn new(gpu: &Gpu, host: &HostModel, options: &PlanOptions) -> Result<Model> {
        // Also validates the config: a hand-edited model must not index past its layers below.
        host.check()?;
        let config = host.config.clone();
        if options.max_batch == 0 || options.context == 0 {
            return Err(Error::invalid(
                "plan options",
                format!("context {} and max_batch {}", options.context, options.max_batch),
                "both at least 1",
            ));
        }
        let options = PlanOptions { max_batch: options.max_batch.min(options.context), ..options.clone() };
        // The cache and the RoPE table first: a shape they refuse (a head dim the cache cannot hold, a
        // context too long for a binding) fails before any weight is uploaded.
        let (slots, kv_heads, hd) = (config.executed_layers(), config.num_key_value_heads, config.head_dim);
        let cache = match options.kv_dtype {
            Some(dtype) => KvCache::with_dtype(gpu, slots, options.context, kv_heads, hd, dtype)?,
            None => KvCache::new(gpu, slots, options.context, kv_heads, hd)?,
        };
        let rope =
            RopeTable::scaled(gpu, options.context, config.head_dim, config.rope_theta, &config.rope_freq_factors)?;
        let layers = host.layers.iter().map(|l| GpuLayer::upload(gpu, l)).collect::<Result<Vec<_>>>()?;
        let embed = ops::embedding::upload_table(gpu, &host.embed)?;
        let head = host.lm_head.as_ref().map(|w| ops::embedding::upload_table(gpu, w)).transpose()?;
        let final_norm = Tensor::from_slice(gpu, &[host.final_norm.len()], &host.final_norm)?;
        let step = StepBuffer::new(gpu)?;
        let act = Activations::new(gpu, &config, options.max_batch)?;
        // Sampling's token mask: every id allowed until `set_token_mask` (read only while one is set).
        let token_mask = TokenMask::all(config.vocab_size).upload(gpu)?;
        // The sampler's output, then each row's greedy pick (chunks with every row's logits).
        let staging_bytes = 4 * (TOKEN_WORDS + options.max_batch) as u64;
        let token_staging = gpu.create_buffer(
            "token readback",
            staging_bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut model = Model {
            gpu: gpu.clone(),
            config,
            layers,
            embed,
            head,
            final_norm,
            rope,
            cache,
            step,
            act,
            plans: HashMap::new(),
            token_staging,
            token_mask,
            masked: false,
            logprobs: false,
            last_logprob: None,
            top_logprobs: 0,
            last_top_logprobs: Vec::new(),
            logits_staging: None,
            next_commands: None,
            profiler: None,
            pos: 0,
            cached: Vec::new(),
            sampling: Sampling::default(),
            options,
            fingerprint: host.fingerprint(),
            shift_scratch: None,
            batch: None,
        };
        model.plan(1, false)?;
        Ok(model)
    }

    fn plan(&mut self, n: usize, all_logits: bool) -> Result<&Plan> {
        if !self.plans.contains_key(&(n, all_logits)) {
            let plan = self.build_plan(n, all_logits, None)?;
            self.plans.insert((n, all_logits), plan);
        }
        self.plans.get(&(n, all_logits)).ok_or_else(|| Error::Device("plan vanished".into()))
    }

    /// The dispatches of a chunk of `n` rows. With `batch` (a cache of several sequences, the row table
    /// saying each row's sequence and position, and each row's sampling settings and mask) the rows are
    /// decoded against their own sequences and every row is sampled (`all_logits` must be set).
    fn build_plan(&self, n: usize, all_logits: bool, batch: Option<&batch::Batch>) -> Result<Plan> {
        let gpu = &self.gpu;
        let c = &self.config;
        let a = &self.act;
        let cache = batch.map_or(&self.cache, |b| &b.cache);
        let eps = c.rms_norm_eps;
        let (ids, x, q, attn, h) =
            (rows(&a.ids, n)?, rows(&a.x, n)?, rows(&a.q, n)?, rows(&a.attn, n)?, rows(&a.h, n)?);
        let qkv = rows(&a.qkv, n)?;
        // On CPU drivers the one-dispatch qkv_rope loses to the GEMV's tuned mapping (its 4 threads per row
        // and workgroup reductions cost ~6x the GEMV + rope_cache pair on lavapipe): decode there takes the
        // lanes entry, which maps the product the GEMV's way.
        let cpu_qkv = gpu.is_cpu_class();
        // Prefill normalises each row once into `normed` and multiplies with the batched product (GPUs:
        // `gemm_rows`, each weight quad dequantized once per 4 rows, SwiGLU its own step; CPU drivers: the
        // windowed GEMV, SwiGLU fused). Decode folds the norm into its GEMV (CPU drivers) or qkv_rope (GPUs).
        let batched = n > 1;
        let prenormed = if batched { Some(rows(&a.normed, n)?) } else { None };
        let gate_up = match &a.gate_up {
            Some(gate_up) if batched => Some(rows(gate_up, n)?),
            _ => None,
        };
        let linear = |w: &GpuWeight, input: &Tensor, out: &Tensor, offset: usize, accumulate: bool| {
            if n == 1 {
                ops::gemv::gemv(gpu, w, input, out, offset, accumulate)
            } else {
                ops::gemm::gemm(gpu, w, input, out, offset, accumulate)
            }
        };
        let embedding = ops::embedding::embedding(gpu, &self.embed, &ids, &x, Some(&self.step))?;
        let mut body = Vec::new();
        let mut layer_starts = Vec::with_capacity(c.executed_layers());
        for exec in 0..c.executed_layers() {
            layer_starts.push(body.len());
            let l = &self.layers[c.unique_layer_of(exec)];
            let target = ops::qkv_rope::QkvTarget {
                step: &self.step,
                rope: &self.rope,
                layout: c.rope_layout,
                q_out: &q,
                cache,
                slot: exec,
            };
            // RoPE + the cache write after a separate product into the Q|K|V scratch.
            let rope_cache = || match batch {
                Some(b) => ops::qkv_rope::rope_cache_rows(gpu, &qkv, &target, &b.rows),
                None => ops::qkv_rope::rope_cache(gpu, &qkv, &target),
            };
            let (norm, w) = (&l.input_norm, &l.qkv_proj);
            let operands = ops::qkv_rope::QkvRopeOperands { x: &x, norm_w: norm, eps, w_qkv: w, target };
            if let Some(normed) = &prenormed {
                // Prefill: the norm, then the batched product on the Q/K/V weight.
                body.push(ops::rms_norm::rms_norm(gpu, &x, norm, normed, eps)?);
                body.push(ops::gemm::gemm(gpu, w, normed, &qkv, 0, false)?);
                body.push(rope_cache()?);
            } else {
                // Decode: one dispatch where the shapes suit an entry (on CPU drivers the tuned GEMV's mapping
                // with RoPE and the cache write as its epilogue), else the tuned GEMV with the norm folded in,
                // then RoPE.
                // The one-dispatch entries write K/V at the step uniform's position: a batch's row takes
                // its own from the row table (`rope_cache_rows`).
                let one = if batch.is_some() {
                    None
                } else if cpu_qkv {
                    ops::qkv_rope::qkv_rope_lanes(gpu, &operands)?
                } else if ops::qkv_rope::qkv_rope_takes(c.head_dim, c.hidden_size) {
                    Some(ops::qkv_rope::qkv_rope(gpu, &operands)?)
                } else {
                    None
                };
                match one {
                    Some(d) => body.push(d),
                    None => {
                        let fusion = GemvFusion { norm: Some((norm, eps)), swiglu: false };
                        body.push(ops::gemv::gemv_fused(gpu, w, &x, &qkv, fusion)?);
                        body.push(rope_cache()?);
                    }
                }
            }
            if let Some(b) = batch {
                body.extend(ops::attention::attention_decode_rows(gpu, &b.rows, &q, cache, exec, &attn, Split::Auto)?);
            } else if n == 1 {
                body.extend(ops::attention::attention_decode(gpu, &self.step, &q, cache, exec, &attn, Split::Auto)?);
            } else {
                body.push(ops::attention::attention_prefill(gpu, &self.step, &q, cache, exec, &attn)?);
            }
            body.push(linear(&l.o_proj, &attn, &x, 0, true)?);
            if let Some(normed) = &prenormed {
                let scratch = ops::ffn::BatchedFfnScratch { normed, gate_up: gate_up.as_ref(), h: &h };
                let (norm, gu, down) = (&l.post_norm, &l.gate_up_proj, &l.down_proj);
                body.extend(ops::ffn::ffn_block_batched(gpu, &x, norm, eps, gu, down, &scratch)?);
            } else {
                body.extend(ops::ffn::ffn_block(gpu, &x, &l.post_norm, eps, &l.gate_up_proj, &l.down_proj, &h)?);
            }
        }
        let head_weights = self.head.as_ref().unwrap_or(&self.embed);
        let mut head = Vec::new();
        let (normed_in, normed, logits) = if all_logits {
            (x.clone(), rows(&a.normed, n)?, rows(&a.logits, n)?)
        } else {
            (a.last.clone(), a.last_normed.clone(), a.last_logits.clone())
        };
        if let (false, [piece]) = (all_logits, head_weights.as_slice()) {
            // One row into one weight binding: the final RMSNorm folds into the head's product (one dispatch
            // fewer per step; each workgroup re-derives the RMS of one vector).
            let fusion = GemvFusion { norm: Some((&self.final_norm, eps)), swiglu: false };
            head.push(ops::gemv::gemv_fused(gpu, piece, &normed_in, &logits, fusion)?);
        } else {
            head.push(ops::rms_norm::rms_norm(gpu, &normed_in, &self.final_norm, &normed, eps)?);
            let mut offset = 0;
            for piece in head_weights {
                head.push(if all_logits && n > 1 {
                    ops::gemm::gemm(gpu, piece, &normed, &logits, offset, false)?
                } else {
                    ops::gemv::gemv(gpu, piece, &normed, &logits, offset, false)?
                });
                offset += piece.rows();
            }
        }
        if all_logits && batch.is_none() {
            head.push(ops::sample::argmax_rows(gpu, &logits, &rows(&a.picks, n)?)?);
        }
        let sampler = match batch {
            Some(b) => ops::sample::sample_rows(gpu, &logits, &b.steps, &b.masks_table, &b.tokens, TOKEN_WORDS)?,
            None => ops::sample::sample_masked(gpu, &logits, SampleRow::Last, &self.step, &self.token_mask, &a.token)?,
        };
        Ok(Plan { n, all_logits, embedding, body, layer_starts, head, sampler })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    /// Positions already in the KV cache.
    pub fn position(&self) -> usize {
        self.pos
    }
    /// The KV-cache capacity.
    pub fn context(&self) -> usize {
        self.options.context
    }
    /// The most tokens one prefill submission takes ([`PlanOptions::max_batch`], at most the context).
    pub fn max_batch(&self) -> usize {
        self.options.max_batch
    }
    /// Starts a new sequence at position 0; the KV cache is overwritten from there on. Computes nothing,
    /// so what the cache holds stays reusable by [`Model::reuse_prefix`] until it is overwritten.
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Moves the position to the end of the longest prefix of `tokens` that the KV cache already holds, and
    /// returns that length `k`: feed `&tokens[k..]` next, and the result is that of feeding all of `tokens`
    /// from position 0. So a prompt that extends an earlier one (a chat's next turn, a shared system prompt)
    /// costs only its new tokens. `k` is at most `tokens.len() - 1`, so the feed that follows samples from
    /// fresh logits. Computes nothing.
    ///
    /// ```no_run
    /// # fn turn(model: &mut mobilellm_kernels::model::Model, history: &[u32]) -> mobilellm_kernels::Result<()> {
    /// let reused = model.reuse_prefix(history);
    /// let reply = model.generate(&history[reused..], 64, &[], |_| true)?;
    /// # Ok(()) }
    /// ```
    pub fn reuse_prefix(&mut self, tokens: &[u32]) -> usize {
        let common = self.cached.iter().zip(tokens).take_while(|(a, b)| a == b).count();
        self.pos = common.min(tokens.len().saturating_sub(1));
        self.pos
    }

    /// [`Model::reuse_prefix`] that also reuses what follows a dropped span: when `tokens` is the cached
    /// sequence with one run of tokens taken out after its common prefix (a chat whose oldest turns were
    /// dropped to fit the context), that run is dropped from the cache by [`Model::shift_context`] and the
    /// rest of the cache is kept. Returns how many tokens of `tokens` the cache then holds: feed the others.
    /// Unlike `reuse_prefix`, the result is then that of a context shift, not of feeding `tokens` afresh (the
    /// kept K/V saw the dropped tokens); without such a run it is `reuse_prefix`. A shift that fails changes
    /// nothing.
    ///
    /// ```no_run
    /// # fn turn(model: &mut mobilellm_kernels::model::Model, trimmed_history: &[u32]) -> mobilellm_kernels::Result<()> {
    /// let reused = model.reuse_with_shift(trimmed_history)?;
    /// let reply = model.generate(&trimmed_history[reused..], 64, &[], |_| true)?;
    /// # Ok(()) }
    /// ```
    pub fn reuse_with_shift(&mut self, tokens: &[u32]) -> Result<usize> {
        let cached = &self.cached;
        let common = cached.iter().zip(tokens).take_while(|(a, b)| a == b).count();
        let rest = &tokens[common..];
        // The smallest gap after which the cache's remaining tokens all continue `tokens`; a gap whose kept
        // part is empty saves nothing.
        let gap = (1..cached.len().saturating_sub(common)).find(|&gap| {
            let kept = &cached[common + gap..];
            kept.len() <= rest.len() && rest.starts_with(kept)
        });
        if let Some(gap) = gap {
            // Every cached position holds the K/V of its token: the shift moves them all.
            let before = self.pos;
            self.pos = self.cached.len();
            if let Err(e) = self.shift_context(common, gap) {
                self.pos = before;
                return Err(e);
            }
        }
        Ok(self.reuse_prefix(tokens))
    }

    /// [`HostModel::fingerprint`] of the weights this model runs: what session states are checked against.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The tokens whose K/V the cache holds, position by position, as far as this model knows: what was fed
    /// since position 0, up to the first position that a failed call or a [`Model::seek`] past the known
    /// ones left unknown. May extend past [`Model::position`] after [`Model::reset`] or a rewind.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Saves the sequence so far: the [`Model::position`] tokens fed and their K/V in every executed layer
    /// (see [`SessionState`] for the byte format). Errors when some of those positions hold tokens this
    /// model no longer knows (after a failed call or a [`Model::seek`]).
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, system: &[u32]) -> mobilellm_kernels::Result<()> {
    /// model.prefill(system)?; // a long system prompt, once
    /// model.save_state()?.save("system.kv")?;
    /// // Later, maybe in another process: the same model resumes without prefilling the prompt again.
    /// let state = mobilellm_kernels::model::SessionState::load("system.kv")?;
    /// model.load_state(&state)?;
    /// let question = [9, 10, 11];
    /// let reply = model.generate(&question, 32, &[], |_| true)?;
    /// # Ok(()) }
    /// ```
    pub fn save_state(&self) -> Result<SessionState> {
        let Some(tokens) = self.cached.get(..self.pos) else {
            return Err(Error::invalid(
                "session to save",
                format!("{} positions, {} known tokens", self.pos, self.cached.len()),
                "every position's token known (feed from position 0 first)",
            ));
        };
        SessionState::capture(&self.gpu, &self.cache, tokens, self.fingerprint)
    }

    /// Restores a state [`Model::save_state`] made (this model's, or one with the same weights: see
    /// [`SessionState`]): the cache holds its tokens' K/V at positions `0..n`, the position is `n`, and
    /// feeding continues the sequence exactly as it would have gone on in the model that saved it. A state
    /// of other weights, or one that does not fit, is an error that leaves the model as it was.
    pub fn load_state(&mut self, state: &SessionState) -> Result<()> {
        self.gpu.take_error()?;
        state.restore(&self.gpu, &self.cache, self.fingerprint)?;
        self.pos = state.tokens().len();
        self.cached = state.tokens().to_vec();
        Ok(())
    }

    /// Makes room in the context, as llama.cpp's context shift does: drops the cached positions
    /// `keep..keep + discard` and moves the later ones down by `discard`, turning their keys back by as many
    /// RoPE positions, so the next token goes to `position() - discard`. The tokens kept after the gap were
    /// computed with the dropped ones as context and keep that in their K/V: this lets a long chat go on
    /// without prefilling again, it does not equal a fresh prefill of the kept tokens. Runs on the GPU
    /// ([`ops::kv_shift`], one submission; the first shift allocates its scratch, the size of one cache
    /// slot in f32); a shift that does not fit is an error that changes nothing.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, system_len: usize) -> mobilellm_kernels::Result<()> {
    /// if model.position() + 64 > model.context() {
    ///     // Keep the system prompt, drop the oldest half of the rest.
    ///     model.shift_context(system_len, (model.position() - system_len) / 2)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn shift_context(&mut self, keep: usize, discard: usize) -> Result<()> {
        self.gpu.take_error()?;
        let scratch = match &self.shift_scratch {
            Some(scratch) => scratch,
            None => {
                let len = ops::kv_shift::scratch_len(&self.cache);
                self.shift_scratch.insert(Tensor::zeros_labeled(
                    &self.gpu,
                    "context shift scratch",
                    DType::F32,
                    &[len],
                )?)
            }
        };
        let shift = Shift { used: self.pos, keep, discard };
        let dispatches =
            ops::kv_shift::kv_shift(&self.gpu, &self.cache, &self.rope, self.config.rope_layout, shift, scratch)?;
        ops::run(&self.gpu, &dispatches.iter().collect::<Vec<_>>())?;
        if self.cached.len() >= keep + discard {
            self.cached.drain(keep..keep + discard);
        } else {
            self.cached.truncate(keep);
        }
        self.cached.truncate(self.pos - discard);
        self.pos -= discard;
        Ok(())
    }

    /// Records that `tokens` were fed from position `start` on, after the run cut `cached` at `start`; they
    /// extend it only where every position before them is known.
    fn note_fed(&mut self, start: usize, tokens: &[u32]) {
        if self.cached.len() == start {
            self.cached.extend_from_slice(tokens);
        }
    }
    /// Restricts the tokens sampling may pick from now on (constrained decoding: a grammar or a JSON schema
    /// allows a set of tokens at each step); `None` lifts the restriction. Masked-out tokens rank as `-inf`
    /// whatever the sampling (greedy, top-k, top-p, penalties); logits read back stay the model's. Set it
    /// before each [`Model::step`] for a mask that changes token by token. A mask of another vocabulary
    /// size, or one that allows nothing, is an error that changes nothing. Speculative decoding
    /// ([`Model::generate_lookup`], [`Model::generate_draft`]) refuses to run while a mask is set.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, prompt: &[u32], digit_ids: &[u32]) -> mobilellm_kernels::Result<()> {
    /// use mobilellm_kernels::ops::sample::TokenMask;
    /// let digits = TokenMask::allowing(model.config().vocab_size, digit_ids.iter().copied())?;
    /// model.set_token_mask(Some(&digits))?;
    /// let number = model.generate(prompt, 4, &[], |_| true)?; // digits only
    /// model.set_token_mask(None)?;
    /// # Ok(()) }
    /// ```
    pub fn set_token_mask(&mut self, mask: Option<&TokenMask>) -> Result<()> {
        let Some(mask) = mask else {
            self.masked = false;
            return Ok(());
        };
        self.check_mask(mask)?;
        mask.write(&self.gpu, &self.token_mask)?;
        self.masked = true;
        Ok(())
    }

    /// Makes every pick from now on also report its log-probability under the model's raw distribution
    /// (log-softmax of the logits at temperature 1, before penalties and any token mask), computed by the
    /// sampler on the GPU: read it with [`Model::last_logprob`]. Off by default (it costs one more pass of
    /// exponentials over the logits).
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, prompt: &[u32]) -> mobilellm_kernels::Result<()> {
    /// model.set_logprobs(true);
    /// let mut token = model.prefill(prompt)?;
    /// let mut total = model.last_logprob().unwrap_or(0.0);
    /// for _ in 0..16 {
    ///     token = model.step(token)?;
    ///     total += model.last_logprob().unwrap_or(0.0);
    /// }
    /// println!("mean log-probability {:.3}", total / 17.0);
    /// # Ok(()) }
    /// ```
    pub fn set_logprobs(&mut self, on: bool) {
        self.logprobs = on;
    }

    /// The log-probability of the last token sampled by [`Model::prefill`], [`Model::step`] or the like,
    /// when [`Model::set_logprobs`] is on (`None` otherwise).
    pub fn last_logprob(&self) -> Option<f32> {
        self.last_logprob
    }

    /// Makes every pick from now on also report the `n` best candidates (OpenAI's `top_logprobs`), in the
    /// sampler's order (after penalties and any token mask), each with its log-probability as
    /// [`Model::set_logprobs`] defines it; read them with [`Model::last_top_logprobs`]. 0 (the default)
    /// turns it off; more than [`MAX_TOP_LOGPROBS`] is an error. Sampling keeps at least `n` candidates per
    /// step, which costs more than greedy's one (lavapipe, 32 000 logits: see the `sample` bench rows).
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, prompt: &[u32]) -> mobilellm_kernels::Result<()> {
    /// model.set_top_logprobs(3)?;
    /// let token = model.prefill(prompt)?;
    /// for (id, logprob) in model.last_top_logprobs() {
    ///     println!("{id}: p = {:.3}{}", logprob.exp(), if *id == token { " (picked)" } else { "" });
    /// }
    /// # Ok(()) }
    /// ```
    pub fn set_top_logprobs(&mut self, n: usize) -> Result<()> {
        if n > MAX_TOP_LOGPROBS as usize {
            return Err(Error::invalid("top_logprobs", n, format!("at most {MAX_TOP_LOGPROBS} (0 = off)")));
        }
        self.top_logprobs = n;
        Ok(())
    }

    /// The best candidates of the last pick with their log-probabilities (see
    /// [`Model::set_top_logprobs`]); fewer than asked for where fewer tokens could be picked, empty when off.
    pub fn last_top_logprobs(&self) -> &[(u32, f32)] {
        &self.last_top_logprobs
    }

    /// Whether a token mask restricts sampling ([`Model::set_token_mask`]).
    pub fn has_token_mask(&self) -> bool {
        self.masked
    }

    /// How tokens are sampled ([`Model::set_sampling`]).
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }
    /// Sets how tokens are sampled from now on.
    pub fn set_sampling(&mut self, sampling: Sampling) -> Result<()> {
        check_sampling(&sampling)?;
        self.sampling = sampling;
        Ok(())
    }

    /// Errors unless `mask` fits this model's vocabulary and allows a token.
    fn check_mask(&self, mask: &TokenMask) -> Result<()> {
        if mask.vocab() != self.config.vocab_size {
            return Err(Error::invalid(
                "token mask",
                format!("a vocabulary of {}", mask.vocab()),
                format!("this model's {}", self.config.vocab_size),
            ));
        }
        if mask.count() == 0 {
            return Err(Error::invalid("token mask", "no allowed token", "at least one allowed token"));
        }
        Ok(())
    }

    /// The step uniform for `n` tokens from `pos`, with the penalties over `recent`. `set_sampling`
    /// validated the settings; [`Penalties::write`] makes valid entries (at most `penalty_last_n` of them).
    fn step_params(&self, pos: usize, n: usize, s: &Sampling, recent: &[u32]) -> Result<StepParams> {
        let mut params = StepParams {
            pos: pos as u32,
            n: n as u32,
            seed: s.seed.wrapping_add(pos as u32 + n as u32),
            top_k: s.top_k,
            temperature: s.temperature,
            top_p: s.top_p,
            min_p: s.min_p,
            mask: u32::from(self.masked),
            logprob: u32::from(self.logprobs),
            top_logprobs: self.top_logprobs as u32,
            ..StepParams::default()
        };
        s.penalties.write(recent, &mut params)?;
        Ok(params)
    }

    /// The tokens the penalties look at when a run that started at `start` has fed `fed`: the last
    /// `penalty_last_n` of the known tokens before `start` followed by `fed`.
    fn recent_tokens(&self, start: usize, fed: &[u32]) -> Vec<u32> {
        let last_n = self.sampling.penalty_last_n;
        if last_n == 0 || self.sampling.penalties.is_off() {
            return Vec::new();
        }
        // `cached` holds every position before `start` unless a seek skipped some: then only `fed` counts.
        let before = if self.cached.len() >= start { &self.cached[..start] } else { &[][..] };
        let skip = (before.len() + fed.len()).saturating_sub(last_n);
        before.iter().chain(fed).skip(skip).copied().collect()
    }

    /// Names of the dispatches of one decode step, in order.
    pub fn decode_dispatches(&self) -> Vec<String> {
        match self.plans.get(&(1, false)) {
            Some(p) => p
                .embedding
                .dispatches()
                .into_iter()
                .chain(&p.body)
                .chain(&p.head)
                .chain(p.sampler.dispatches())
                .map(|d| d.name().to_string())
                .collect(),
            None => Vec::new(),
        }
    }

    /// The KV cache's element type (f16 or f32, [`PlanOptions::kv_dtype`]).
    pub fn kv_dtype(&self) -> DType {
        self.cache.dtype()
    }

    /// GPU memory in use by category.
    pub fn memory(&self) -> MemoryReport {
        let pieces = |v: &[GpuWeight]| v.iter().map(GpuWeight::size_bytes).sum::<u64>();
        MemoryReport {
            weights: self.layers.iter().map(GpuLayer::size_bytes).sum::<u64>()
                + pieces(&self.embed)
                + self.head.as_deref().map_or(0, pieces)
                + self.final_norm.size_bytes(),
            kv_cache: self.cache.size_bytes() + self.batch.as_ref().map_or(0, batch::Batch::cache_bytes),
            activations: self.act.size_bytes(),
            scratch: 4
                + std::mem::size_of::<StepParams>() as u64
                + self.rope.tensor().size_bytes()
                + self.logits_staging.as_ref().map_or(0, wgpu::Buffer::size)
                + self.profiler.as_ref().map_or(0, |p| p.resolve.size() + p.staging.size())
                + self.shift_scratch.as_ref().map_or(0, Tensor::size_bytes)
                + self.batch.as_ref().map_or(0, batch::Batch::scratch_bytes)
                + self.gpu.staging_bytes(),
        }
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid("token count", 0, "at least one token"));
        }
        self.check_ids(tokens)?;
        self.cache.check_step(self.pos, tokens.len())
    }

    /// Checks that every id is inside the vocabulary.
    pub(crate) fn check_ids(&self, tokens: &[u32]) -> Result<()> {
        match tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            Some(&bad) => Err(Error::invalid(
                "token id",
                bad,
                format!("less than the vocabulary size {}", self.config.vocab_size),
            )),
            None => Ok(()),
        }
    }

    /// Makes sure the logits readback buffer holds `bytes`; allocates at most twice in a model's life.
    fn ensure_logits_staging(&mut self, bytes: u64) -> Result<()> {
        if self.logits_staging.as_ref().is_some_and(|b| b.size() >= bytes) {
            return Ok(());
        }
        let row = (self.config.vocab_size * 4) as u64;
        let size = if bytes <= row { row } else { row * self.options.max_batch as u64 };
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        self.logits_staging = Some(self.gpu.create_buffer("logits readback", size, usage)?);
        // Recorded commands copy into the buffer they were recorded with.
        self.next_commands = None;
        Ok(())
    }

    /// Runs `tokens` (at most `max_batch`) at the current position; returns the sampled next token, the
    /// logits if `want_logits` (`[n, vocab]` when `all_logits`, else the last row) and, when `all_logits`,
    /// each row's greedy pick (else nothing). The plan and the
    /// logits readback must exist already (see [`Model::run_chunks`]); the position advances only on success.
    /// `recent` are the tokens the sampling penalties look at.
    fn run_chunk(
        &mut self,
        tokens: &[u32],
        recent: &[u32],
        all_logits: bool,
        want_logits: bool,
    ) -> Result<ChunkOutput> {
        let n = tokens.len();
        let key = (n, all_logits, want_logits);
        let params = self.step_params(self.pos, n, &self.sampling, recent)?;
        let commands = match self.next_commands.take() {
            Some((recorded, commands)) if recorded == key => commands,
            _ => self.record_chunk(key)?,
        };
        let gpu = &self.gpu;
        gpu.take_error()?;
        self.step.write(gpu, &params);
        gpu.queue().write_buffer(self.act.ids.buffer(), 0, bytemuck::cast_slice(tokens));
        let submission = gpu.submit([commands])?;
        if n == 1 && !gpu.is_cpu_class() {
            // Decode loops run the same kind of step next, and its commands depend on neither the token nor
            // the position (both arrive by `write_buffer`): record them while the GPU runs this one. Recording
            // a 125M step takes ~0.5 ms of host time (an H100 step was 2.7 ms, 2.3 of them on the GPU). Not on
            // CPU drivers, whose "GPU" is the cores the recording would take (lavapipe: 0.6-1.3 ms slower).
            // A failure here is only a lost head start: it recurs, and is reported, when the step runs.
            self.next_commands = self.record_chunk(key).ok().map(|next| (key, next));
        }
        let gpu = &self.gpu;
        gpu.wait(Some(submission))?;
        let readback = readback_bytes(key, self.top_logprobs);
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&map_read(gpu, &self.token_staging, readback)?);
        let token = words[0];
        self.last_logprob = self.logprobs.then(|| f32::from_bits(words[1]));
        self.last_top_logprobs = top_candidates(&words, self.top_logprobs);
        let picks = words.get(TOKEN_WORDS..).unwrap_or(&[]).to_vec();
        let logits = match (want_logits, &self.logits_staging) {
            (true, Some(staging)) => {
                bytemuck::pod_collect_to_vec(&map_read(gpu, staging, logits_bytes(key, &self.config))?)
            }
            _ => Vec::new(),
        };
        self.pos += n;
        Ok(ChunkOutput { token, logits, picks })
    }

    /// Records the command buffer of one chunk: `key` is `(n, all_logits, want_logits)`.
    fn record_chunk(&self, key: ChunkKey) -> Result<wgpu::CommandBuffer> {
        let (n, all_logits, want_logits) = key;
        let plan = self.plans.get(&(n, all_logits)).ok_or_else(|| Error::Device("missing plan".into()))?;
        let logits_bytes = logits_bytes(key, &self.config);
        let logits_staging = match (want_logits, &self.logits_staging) {
            (false, _) => None,
            (true, Some(b)) if b.size() >= logits_bytes => Some(b),
            (true, _) => return Err(Error::Device("missing logits readback buffer".into())),
        };
        let mut encoder =
            self.gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("layers"), timestamp_writes: None });
            plan.embedding.record(&mut pass);
            for d in &plan.body {
                d.record(&mut pass);
            }
        }
        if !plan.all_logits {
            let row = (self.config.hidden_size * 4) as u64;
            encoder.copy_buffer_to_buffer(
                self.act.x.buffer(),
                row * (plan.n as u64 - 1),
                self.act.last.buffer(),
                0,
                row,
            );
        }
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("head"), timestamp_writes: None });
            for d in &plan.head {
                d.record(&mut pass);
            }
            plan.sampler.record(&mut pass);
        }
        let token_bytes = 4 * TOKEN_WORDS as u64;
        encoder.copy_buffer_to_buffer(self.act.token.buffer(), 0, &self.token_staging, 0, token_bytes);
        if plan.all_logits {
            encoder.copy_buffer_to_buffer(self.act.picks.buffer(), 0, &self.token_staging, token_bytes, 4 * n as u64);
        }
        if let Some(staging) = logits_staging {
            let t = if plan.all_logits { &self.act.logits } else { &self.act.last_logits };
            encoder.copy_buffer_to_buffer(t.buffer(), 0, staging, 0, logits_bytes);
        }
        Ok(encoder.finish())
    }

    /// Runs `tokens` in chunks of `max_batch`. Everything that may allocate (plans, the logits readback)
    /// is made before the first chunk runs, and a chunk that fails rewinds the position to where the call
    /// started: the positions below it are untouched, those at and above it count as empty again.
    fn run_chunks(&mut self, tokens: &[u32], all_logits: bool, want_logits: bool) -> Result<ChunkOutput> {
        self.check_tokens(tokens)?;
        let max_batch = self.options.max_batch;
        for chunk in tokens.chunks(max_batch) {
            self.plan(chunk.len(), all_logits)?;
        }
        if want_logits {
            let rows = if all_logits { tokens.len().min(max_batch) } else { 1 };
            self.ensure_logits_staging((rows * self.config.vocab_size * 4) as u64)?;
        }
        let start = self.pos;
        // From here on the cache at `start` and above is being rewritten.
        self.cached.truncate(start);
        let mut all = Vec::with_capacity(if want_logits { tokens.len() * self.config.vocab_size } else { 0 });
        let mut picks = Vec::with_capacity(if all_logits { tokens.len() } else { 0 });
        let mut next = 0;
        for (i, chunk) in tokens.chunks(max_batch).enumerate() {
            let recent = self.recent_tokens(start, &tokens[..i * max_batch + chunk.len()]);
            match self.run_chunk(chunk, &recent, all_logits, want_logits) {
                Ok(out) => {
                    next = out.token;
                    all.extend(out.logits);
                    picks.extend(out.picks);
                }
                Err(e) => {
                    self.pos = start;
                    return Err(e);
                }
            }
        }
        self.note_fed(start, tokens);
        Ok(ChunkOutput { token: next, logits: all, picks })
    }

    /// Feeds a prompt (chunked by `max_batch`) and returns the sampled next token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<u32> {
        Ok(self.run_chunks(tokens, false, false)?.token)
    }

    /// Feeds a prompt and returns the logits of every prompt position (`[tokens.len() * vocab]`) and the
    /// sampled next token.
    pub fn prefill_logits(&mut self, tokens: &[u32]) -> Result<(u32, Vec<f32>)> {
        let out = self.run_chunks(tokens, true, true)?;
        Ok((out.token, out.logits))
    }

    /// Feeds `tokens` and returns the greedy pick after each of them: element `i` is the argmax of the
    /// logits at the position of `tokens[i]` (the sampler's greedy order: ties to the lowest id, NaN
    /// lowest), whatever the sampling settings. The GPU picks; one id per position is read back, not the
    /// logits (speculative decoding checks its drafts so).
    pub fn prefill_greedy(&mut self, tokens: &[u32]) -> Result<Vec<u32>> {
        Ok(self.run_chunks(tokens, true, false)?.picks)
    }

    /// One decode step: feeds `token` at the current position and returns the sampled next token.
    /// One command buffer, one submission, an 8-byte readback (8 more per [`Model::set_top_logprobs`]
    /// candidate).
    pub fn step(&mut self, token: u32) -> Result<u32> {
        Ok(self.run_chunks(&[token], false, false)?.token)
    }

    /// A decode step that also returns the logits (`[vocab]`).
    pub fn step_logits(&mut self, token: u32) -> Result<(u32, Vec<f32>)> {
        let out = self.run_chunks(&[token], false, true)?;
        Ok((out.token, out.logits))
    }

    /// Prefills `prompt`, then decodes up to `max_new` tokens, calling `on_token` with each; stops early
    /// when a token is in `stop` (it is still passed to `on_token`) or `on_token` returns false.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        self.generate_with_hook(prompt, max_new, stop, |_, _| Ok(()), on_token)
    }

    /// [`Model::generate`] with `before_pick(model, generated)` run before each pick: before the prompt's
    /// prefill (nothing generated yet) and before every decode step. The hook may change what the next pick
    /// sees (a token mask: [`Model::generate_constrained`]) or read what the last one reported
    /// ([`Model::last_logprob`]); an error from it ends the call.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, prompt: &[u32]) -> mobilellm_kernels::Result<()> {
    /// model.set_logprobs(true);
    /// let mut logprobs = Vec::new();
    /// let out = model.generate_with_hook(prompt, 16, &[], |m, generated| {
    ///     if !generated.is_empty() {
    ///         logprobs.extend(m.last_logprob());
    ///     }
    ///     Ok(())
    /// }, |_| true)?;
    /// logprobs.extend(model.last_logprob()); // the last token's
    /// # Ok(()) }
    /// ```
    pub fn generate_with_hook(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        mut before_pick: impl FnMut(&mut Model, &[u32]) -> Result<()>,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if max_new == 0 {
            return Ok(out);
        }
        before_pick(self, &out)?;
        let mut next = self.prefill(prompt)?;
        loop {
            out.push(next);
            if !on_token(next) || stop.contains(&next) || out.len() >= max_new || self.pos >= self.options.context {
                return Ok(out);
            }
            before_pick(self, &out)?;
            next = self.step(next)?;
        }
    }
}

/// Benchmark hooks: GPU-timestamped steps and a cheap way to reach a long context.
impl Model {
    /// Runs one decode step like [`Model::step`] (same dispatches, same state change: `token` goes into
    /// the KV cache and the position advances), but with every dispatch in its own compute pass whose
    /// begin and end are GPU timestamps. Returns `(name, milliseconds)` per dispatch, in recording order.
    ///
    /// Pass-boundary timestamps need only `TIMESTAMP_QUERY` (no timestamps inside passes); one pass per
    /// dispatch adds a little overhead per pass, so the sum is slightly above a plain step's GPU time.
    /// The copy of the last residual row between body and head is not timed (4 bytes × hidden).
    pub fn profile_step_dispatches(&mut self, token: u32) -> Result<Vec<(String, f64)>> {
        self.profile_chunk(&[token])
    }

    /// [`Model::profile_step_dispatches`] for one prefill submission: feeds `tokens` (at most
    /// `max_batch`) like [`Model::prefill`] with every dispatch timed, and returns `(name, milliseconds)`
    /// per dispatch of that plan, in recording order.
    pub fn profile_prefill_dispatches(&mut self, tokens: &[u32]) -> Result<Vec<(String, f64)>> {
        if tokens.len() > self.options.max_batch {
            return Err(Error::invalid(
                "tokens of a profiled prefill",
                tokens.len(),
                format!("at most max_batch = {} (one submission)", self.options.max_batch),
            ));
        }
        self.profile_chunk(tokens)
    }

    fn profile_chunk(&mut self, tokens: &[u32]) -> Result<Vec<(String, f64)>> {
        if !self.gpu.features().timestamps {
            return Err(Error::Unsupported {
                what: "TIMESTAMP_QUERY".into(),
                needed: "profiling a step with GPU timestamps".into(),
            });
        }
        self.check_tokens(tokens)?;
        let n = tokens.len();
        self.plan(n, false)?;
        self.ensure_profiler(n)?;
        let recent = self.recent_tokens(self.pos, tokens);
        let params = self.step_params(self.pos, n, &self.sampling, &recent)?;
        let plan = self.plans.get(&(n, false)).ok_or_else(|| Error::Device("missing plan".into()))?;
        let profiler = self.profiler.as_ref().ok_or_else(|| Error::Device("missing profiler".into()))?;
        let body: Vec<&Dispatch> = plan.embedding.dispatches().into_iter().chain(&plan.body).collect();
        let head: Vec<&Dispatch> = plan.head.iter().chain(plan.sampler.dispatches()).collect();
        let (set, queries) = (&profiler.set, profiler.queries);
        let bytes = u64::from(queries) * 8;
        let gpu = &self.gpu;
        gpu.take_error()?;
        self.cached.truncate(self.pos);
        self.step.write(gpu, &params);
        gpu.queue().write_buffer(self.act.ids.buffer(), 0, bytemuck::cast_slice(tokens));
        let mut encoder =
            gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("profiled step") });
        let timed = |encoder: &mut wgpu::CommandEncoder, i: usize, d: &Dispatch| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(d.name()),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            d.record(&mut pass);
        };
        for (i, d) in body.iter().enumerate() {
            timed(&mut encoder, i, d);
        }
        let row = (self.config.hidden_size * 4) as u64;
        encoder.copy_buffer_to_buffer(self.act.x.buffer(), row * (n as u64 - 1), self.act.last.buffer(), 0, row);
        for (i, d) in head.iter().enumerate() {
            timed(&mut encoder, body.len() + i, d);
        }
        encoder.resolve_query_set(set, 0..queries, &profiler.resolve, 0);
        encoder.copy_buffer_to_buffer(&profiler.resolve, 0, &profiler.staging, 0, bytes);
        gpu.submit_and_wait([encoder.finish()])?;
        let stamps: Vec<u64> = bytemuck::pod_collect_to_vec(&map_read(gpu, &profiler.staging, bytes)?);
        let period_ns = f64::from(gpu.queue().get_timestamp_period());
        let times = body
            .iter()
            .chain(&head)
            .enumerate()
            .map(|(i, d)| {
                // A wrapped or reordered pair (seen on some drivers) reads as zero rather than garbage.
                let ticks = stamps[2 * i + 1].saturating_sub(stamps[2 * i]);
                (d.name().to_string(), ticks as f64 * period_ns / 1e6)
            })
            .collect();
        self.note_fed(self.pos, tokens);
        self.pos += n;
        Ok(times)
    }

    /// Makes the query set and buffers of a profiled `n`-token step, kept while the dispatch count stays.
    fn ensure_profiler(&mut self, n: usize) -> Result<()> {
        let count = match self.plans.get(&(n, false)) {
            Some(p) => p.embedding.dispatches().len() + p.body.len() + p.head.len() + p.sampler.dispatches().len(),
            None => return Err(Error::Device("missing plan".into())),
        };
        let queries = 2 * count as u32;
        if self.profiler.as_ref().is_some_and(|p| p.queries == queries) {
            return Ok(());
        }
        if queries > wgpu::QUERY_SET_MAX_QUERIES {
            return Err(Error::Capacity {
                what: "timestamp queries of one profiled step".into(),
                requested: queries as usize,
                capacity: wgpu::QUERY_SET_MAX_QUERIES as usize,
            });
        }
        let gpu = &self.gpu;
        let bytes = u64::from(queries) * 8;
        let resolve = gpu.create_buffer(
            "profile timestamps",
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        )?;
        let staging =
            gpu.create_buffer("profile readback", bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST)?;
        let set = gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile step"),
            ty: wgpu::QueryType::Timestamp,
            count: queries,
        });
        self.profiler = Some(Profiler { set, resolve, staging, queries });
        Ok(())
    }

    /// [`Model::profile_step_dispatches`] summed by kernel family (the part of a dispatch name before
    /// `:`), in order of first appearance: `(family, milliseconds)`.
    pub fn profile_step(&mut self, token: u32) -> Result<Vec<(String, f64)>> {
        Ok(by_family(&self.profile_step_dispatches(token)?))
    }

    /// Where each executed layer's dispatches lie in [`Model::profile_step_dispatches`]' list (which
    /// starts with the embedding's): one range per executed layer, in execution order. With layer sharing,
    /// ranges `2i` and `2i + 1` are the two executions of unique layer `i` (same weights, back to back).
    pub fn decode_layer_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let Some(plan) = self.plans.get(&(1, false)) else {
            return Vec::new();
        };
        let first = plan.embedding.dispatches().len();
        let ends = plan.layer_starts.iter().skip(1).copied().chain([plan.body.len()]);
        plan.layer_starts.iter().zip(ends).map(|(&a, b)| first + a..first + b).collect()
    }

    /// Dispatches recorded for the executed layers in one decode step (the part of
    /// [`Model::decode_dispatches`] between the embedding and the head); divide by
    /// [`ModelConfig::executed_layers`] for dispatches per layer.
    pub fn decode_layer_dispatches(&self) -> usize {
        self.plans.get(&(1, false)).map_or(0, |p| p.body.len())
    }

    /// Moves the current position to `pos` without computing anything: the KV cache below `pos` keeps
    /// whatever it holds. For benchmarks, whose decode cost at a context depends on the position and
    /// not on the cached values, to reach a long context without a long prefill. Errors if `pos`
    /// exceeds the cache capacity.
    pub fn seek(&mut self, pos: usize) -> Result<()> {
        if pos > self.options.context {
            return Err(Error::Capacity {
                what: "KV-cache position".into(),
                requested: pos,
                capacity: self.options.context,
            });
        }
        self.pos = pos;
        Ok(())
    }
}

/// Per-dispatch times summed by kernel family (the part of a dispatch name before `:`), in order of first
/// appearance.
pub fn by_family(dispatches: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut families: Vec<(String, f64)> = Vec::new();
    for (name, ms) in dispatches {
        let family = name.split(':').next().unwrap_or(name);
        match families.iter_mut().find(|(f, _)| f == family) {
            Some((_, total)) => *total += ms,
            None => families.push((family.to_string(), *ms)),
        }
    }
    families
}
