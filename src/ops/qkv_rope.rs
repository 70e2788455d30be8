//! Fused pre-attention launcher (`kernels/qkv_rope.wgsl`): RMSNorm + Q|K|V projection + RoPE + KV-cache
//! write, one dispatch per layer execution. CPU twin: [`crate::reference::qkv_rope`]. Three entries:
//! [`qkv_rope`] (GPUs), [`qkv_rope_lanes`] (CPU drivers' decode: the same work mapped as their tuned GEMV),
//! and [`rope_cache`] (the tail after a separate product, for prefill and the shapes the lanes entry declines).
//!
//! RoPE reads `(cos, sin)` from a [`RopeTable`] computed on the host in f64: GPU `sin`/`cos` are only
//! specified to 2^-11 absolute on [-pi, pi] (and phones are that loose), while angles reach thousands of
//! radians; a table makes the rotation exact and identical on every device (cost: `capacity * head_dim * 4`
//! bytes, 512 KiB at 2048 x 64, shared by all layers).

use bytemuck::{Pod, Zeroable};

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::ops::{
    base_variant, broadcasts_of_8, fits_uniform, make_dispatch, prefix_binding, small_kernel_workgroup, uniform,
    Dispatch, StepBuffer, MAX_GROUPS_PER_DIM,
};
use crate::quant::{GpuWeight, HostWeight, WeightDesc};
pub use crate::reference::RopeLayout;
use crate::reference::{rope_cos_sin_at, rope_frequency};
use crate::shader::{ShaderVariant, QKV_ROPE};
use crate::tensor::{DType, Tensor};

/// Threads per workgroup: 16 output rows (8 RoPE pairs) x 4 threads per row.
const WORKGROUP: u32 = 64;
/// Output rows per workgroup (`2 * PAIRS` in the kernel); head_dim must be a multiple of it.
const ROWS_PER_GROUP: usize = 16;
/// The widest input row [`qkv_rope`] stages in workgroup memory (MobileLLM-1.5B); `qkv_rope_lanes` reads x
/// as a uniform instead and takes any width that fits one.
pub const MAX_HIDDEN: usize = 1600;

/// Whether [`qkv_rope`] takes these shapes: `head_dim` a multiple of 16 (each workgroup ropes 8 pairs of one
/// head) and `hidden` at most [`MAX_HIDDEN`]. The planner runs other shapes as the normed GEMV plus
/// [`rope_cache`].
pub fn qkv_rope_takes(head_dim: usize, hidden: usize) -> bool {
    head_dim.is_multiple_of(ROWS_PER_GROUP) && hidden <= MAX_HIDDEN
}

/// `(cos, sin)` of every position and pair: `[capacity, head_dim / 2]` vec2 f32.
#[derive(Debug, Clone)]
pub struct RopeTable {
    table: Tensor,
    capacity: usize,
    head_dim: usize,
    theta: f32,
}

impl RopeTable {
    /// The table for positions `0..capacity`, frequencies `theta^(-2i/head_dim)`.
    pub fn new(gpu: &Gpu, capacity: usize, head_dim: usize, theta: f32) -> Result<RopeTable> {
        Self::scaled(gpu, capacity, head_dim, theta, &[])
    }

    /// The table with each pair's frequency divided by its entry of `factors` (`head_dim / 2` of them, or
    /// none: a model's [`ModelConfig::rope_freq_factors`](crate::model::ModelConfig::rope_freq_factors)).
    pub fn scaled(gpu: &Gpu, capacity: usize, head_dim: usize, theta: f32, factors: &[f32]) -> Result<RopeTable> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::invalid("RoPE head_dim", head_dim, "an even number >= 2"));
        }
        if !(theta.is_finite() && theta > 1.0) {
            return Err(Error::invalid("rope_theta", theta, "a finite value > 1"));
        }
        let half = head_dim / 2;
        if !(factors.is_empty() || factors.len() == half) || factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
            return Err(Error::invalid(
                "RoPE frequency factors",
                format!("{} values", factors.len()),
                format!("none, or {half} finite values > 0"),
            ));
        }
        let freqs: Vec<f64> = (0..half).map(|i| rope_frequency(i, head_dim, theta, factors.get(i).copied())).collect();
        let mut data = Vec::with_capacity(capacity * head_dim);
        for pos in 0..capacity {
            for &freq in &freqs {
                let (c, s) = rope_cos_sin_at(pos, freq);
                data.extend([c, s]);
            }
        }
        let table = Tensor::from_slice(gpu, &[capacity, half, 2], &data)?;
        Ok(RopeTable { table, capacity, head_dim, theta })
    }
    /// Positions covered.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// RoPE base.
    pub fn theta(&self) -> f32 {
        self.theta
    }
    /// The GPU table.
    pub fn tensor(&self) -> &Tensor {
        &self.table
    }
}

/// Concatenates the Q, K and V projection weights (same type and `in_features`) row-wise into the fused
/// `[q_rows + k_rows + v_rows, in]` weight the kernel reads, bit-exactly (through the GGUF block bytes).
pub fn fuse_qkv(q: &HostWeight, k: &HostWeight, v: &HostWeight) -> Result<HostWeight> {
    for (name, w) in [("k_proj", k), ("v_proj", v)] {
        if w.wtype != q.wtype || w.cols != q.cols {
            return Err(Error::shape(
                format!("{name} ({}) fused with q_proj ({})", w.wtype, q.wtype),
                &[w.rows, w.cols],
                format!("[_, {}] of type {}", q.cols, q.wtype),
            ));
        }
    }
    let mut bytes = q.to_gguf_bytes();
    bytes.extend(k.to_gguf_bytes());
    bytes.extend(v.to_gguf_bytes());
    HostWeight::from_gguf_bytes(q.wtype, q.rows + k.rows + v.rows, q.cols, &bytes)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    desc: WeightDesc,
    heads: u32,
    kv_heads: u32,
    hidden: u32,
    capacity: u32,
    eps: f32,
    // Elements between sequences in a cache slot (`rope_cache_rows`).
    seq_stride: u32,
    _pad: [u32; 2],
}

/// Where a Q/K/V step's results go and the RoPE they get: the step (first position `pos`, row count `n`),
/// the RoPE table and layout, the query output and the cache slot K and V are written to. Shared by
/// [`qkv_rope`] and [`qkv_rope_lanes`] (inside [`QkvRopeOperands`]) and [`rope_cache`].
#[derive(Clone, Copy, Debug)]
pub struct QkvTarget<'a> {
    /// The per-step uniform: the step's first position `pos` and row count `n`.
    pub step: &'a StepBuffer,
    /// `(cos, sin)` per position and pair.
    pub rope: &'a RopeTable,
    /// Which elements RoPE pairs.
    pub layout: RopeLayout,
    /// Query output, `[max_n, heads * head_dim]` f32.
    pub q_out: &'a Tensor,
    /// The KV cache K and V are written to.
    pub cache: &'a KvCache,
    /// The cache slot (layer execution) of this projection.
    pub slot: usize,
}

/// The operands of [`qkv_rope`] and [`qkv_rope_lanes`]: the step's input rows, the layer's input norm and
/// fused Q|K|V weight, and the target.
#[derive(Clone, Copy, Debug)]
pub struct QkvRopeOperands<'a> {
    /// Input rows, `[max_n, hidden]` f32 (rows `0..n` are the step's).
    pub x: &'a Tensor,
    /// RMSNorm weight, `[hidden]` f32.
    pub norm_w: &'a Tensor,
    /// RMSNorm epsilon (finite, >= 0).
    pub eps: f32,
    /// The fused `[(heads + 2 kv_heads) * head_dim, hidden]` projection (see [`fuse_qkv`]; any weight type).
    pub w_qkv: &'a GpuWeight,
    /// Where Q, K and V go, and their RoPE.
    pub target: QkvTarget<'a>,
}

/// The shapes [`check_qkv_operands`] derived, and the kernel's parameters.
struct QkvShapes {
    heads: usize,
    hidden: usize,
    max_n: usize,
    params: Params,
}

fn check_qkv_operands(what: &str, op: &QkvRopeOperands<'_>) -> Result<QkvShapes> {
    let QkvRopeOperands { x, norm_w, eps, w_qkv, target: QkvTarget { rope, q_out, cache, .. } } = *op;
    let hd = cache.head_dim();
    let kvn = cache.kv_heads();
    let hidden = *norm_w.shape().last().unwrap_or(&0);
    norm_w.expect(&format!("{what} norm weight"), DType::F32, &[hidden])?;
    if hidden == 0 {
        return Err(Error::invalid(format!("{what} hidden size"), hidden, "at least 1"));
    }
    let max_n = x.expect_rows(&format!("{what} input"), DType::F32, hidden)?;
    let width = *q_out.shape().last().unwrap_or(&0);
    if width == 0 || !width.is_multiple_of(hd) || !(width / hd).is_multiple_of(kvn) {
        return Err(Error::shape(
            format!("{what} query output"),
            q_out.shape(),
            format!("[{max_n}, heads * {hd}] with heads a multiple of {kvn} KV heads"),
        ));
    }
    let heads = width / hd;
    q_out.expect(&format!("{what} query output"), DType::F32, &[max_n, width])?;
    let rows = (heads + 2 * kvn) * hd;
    if w_qkv.rows() != rows || w_qkv.cols() != hidden {
        return Err(Error::shape(
            format!("{what} fused weight ({})", w_qkv.wtype()),
            &[w_qkv.rows(), w_qkv.cols()],
            format!("[({heads} + 2 * {kvn}) * {hd} = {rows}, {hidden}]"),
        ));
    }
    check_rope_table(what, rope, cache)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(format!("{what} eps"), eps, "a finite value >= 0"));
    }
    if max_n > cache.capacity() || max_n > MAX_GROUPS_PER_DIM as usize {
        return Err(Error::Capacity {
            what: format!("{what} rows per step"),
            requested: max_n,
            capacity: cache.capacity().min(MAX_GROUPS_PER_DIM as usize),
        });
    }
    let params = Params {
        desc: w_qkv.desc(),
        heads: heads as u32,
        kv_heads: kvn as u32,
        hidden: hidden as u32,
        capacity: cache.capacity() as u32,
        eps,
        seq_stride: 0,
        _pad: [0; 2],
    };
    Ok(QkvShapes { heads, hidden, max_n, params })
}

/// For the step's rows `0..n` of `op.x` (positions `pos..pos+n`): RMSNorm with `op.norm_w` and `op.eps`,
/// the fused projection `op.w_qkv`, RoPE on Q and K (the target's layout, angles from its table), Q to rows
/// `0..n` of the target's `q_out`, K and V to its cache slot at positions `pos..pos+n`. Grid:
/// `(heads + 2 kv_heads) * head_dim / 16 x max_n`; rows past the step's `n` exit at once. head_dim must be a
/// multiple of 16. The caller checks `pos + n <= capacity` ([`KvCache::check_step`]) before submitting.
pub fn qkv_rope(gpu: &Gpu, op: &QkvRopeOperands<'_>) -> Result<Dispatch> {
    let QkvRopeOperands { x, norm_w, w_qkv, target: QkvTarget { step, rope, layout, q_out, cache, slot }, .. } = *op;
    let hd = cache.head_dim();
    if !hd.is_multiple_of(ROWS_PER_GROUP) {
        return Err(Error::invalid("qkv_rope head_dim", hd, "a multiple of 16 (8 RoPE pairs per workgroup)"));
    }
    let QkvShapes { heads, hidden, max_n, params } = check_qkv_operands("qkv_rope", op)?;
    if hidden > MAX_HIDDEN {
        return Err(Error::invalid("qkv_rope hidden size", hidden, format!("1..={MAX_HIDDEN}")));
    }
    let kv = cache.binding(slot)?;
    let variant = variant_for(gpu, w_qkv.variant(base_variant(gpu)), cache, layout);
    let pipeline = gpu.pipeline(&QKV_ROPE, "qkv_rope", &variant)?;
    let params = uniform(gpu, "qkv_rope params", &params)?;
    let inputs = [x.buffer().as_entire_binding(), norm_w.buffer().as_entire_binding()];
    let grid = [((heads + 2 * cache.kv_heads()) * hd / ROWS_PER_GROUP) as u32, max_n as u32, 1];
    let bindings = projection_bindings(&params, step, inputs, w_qkv, rope, q_out, kv);
    make_dispatch(gpu, "qkv_rope:qkv_rope".into(), pipeline, &bindings, grid, vec![params.clone()])
}

/// Bindings 0..8 of the entries that project: params, step, x and the norm weight (`inputs`, bound as the
/// entry declares them), the weight, the RoPE table, the query output and the cache slot.
fn projection_bindings<'a>(
    params: &'a wgpu::Buffer,
    step: &'a StepBuffer,
    inputs: [wgpu::BindingResource<'a>; 2],
    w_qkv: &'a GpuWeight,
    rope: &'a RopeTable,
    q_out: &'a Tensor,
    kv: wgpu::BindingResource<'a>,
) -> [(u32, wgpu::BindingResource<'a>); 8] {
    let [x, norm_w] = inputs;
    [
        (0, params.as_entire_binding()),
        (1, step.buffer().as_entire_binding()),
        (2, x),
        (3, norm_w),
        (4, w_qkv.binding()),
        (5, rope.tensor().buffer().as_entire_binding()),
        (6, q_out.buffer().as_entire_binding()),
        (7, kv),
    ]
}

/// [`qkv_rope`] for CPU drivers (`qkv_rope_lanes` entry): the same operands and results in one dispatch,
/// with the projection mapped the way the tuned GEMV maps it there (each lane owns 8 whole rows of each of
/// two head slots, x and the norm weight read as uniforms) and RoPE plus the cache write as its epilogue.
/// On lavapipe the planner's decode uses it in place of the GEMV + [`rope_cache`] pair (one dispatch per
/// layer execution fewer) and of [`qkv_rope`] (whose 4 threads per row and workgroup reductions cost ~6x
/// the pair there).
///
/// Returns `Ok(None)` where the shapes do not suit it, for the caller to fall back: head_dim not a multiple
/// of 8 or over 2048 (a workgroup of head_dim / 8 lanes), hidden not a multiple of 32, or `x`'s `max_n` rows
/// or `norm_w` not bindable as a uniform (at most 64 KiB, buffers with `UNIFORM` usage).
pub fn qkv_rope_lanes(gpu: &Gpu, op: &QkvRopeOperands<'_>) -> Result<Option<Dispatch>> {
    let QkvRopeOperands { x, norm_w, w_qkv, target: QkvTarget { step, rope, layout, q_out, cache, slot }, .. } = *op;
    let hd = cache.head_dim();
    let QkvShapes { heads, hidden, max_n, params } = check_qkv_operands("qkv_rope_lanes", op)?;
    let lanes = hd / 8;
    let fits = hd.is_multiple_of(8)
        && lanes <= 256
        && hidden.is_multiple_of(32)
        && fits_uniform(gpu, x, max_n * hidden)
        && fits_uniform(gpu, norm_w, hidden);
    if !fits {
        return Ok(None);
    }
    let kv = cache.binding(slot)?;
    let variant = variant_for(gpu, w_qkv.variant(base_variant(gpu)), cache, layout)
        .flag("LANES")
        // Broadcasts from lanes 0..7 need workgroups of whole groups of 8 lanes.
        .flag_if("XBCAST", broadcasts_of_8(gpu) && lanes.is_multiple_of(8))
        .constant("LWG", lanes as u32)
        .constant("XUV4", (max_n * hidden / 4) as u32)
        .constant("NUV4", (hidden / 4) as u32);
    let pipeline = gpu.pipeline(&QKV_ROPE, "qkv_rope_lanes", &variant)?;
    let params = uniform(gpu, "qkv_rope_lanes params", &params)?;
    let inputs = [prefix_binding(x, max_n * hidden), prefix_binding(norm_w, hidden)];
    // Two head slots per workgroup.
    let grid = [(heads + 2 * cache.kv_heads()).div_ceil(2) as u32, max_n as u32, 1];
    let bindings = projection_bindings(&params, step, inputs, w_qkv, rope, q_out, kv);
    make_dispatch(gpu, "qkv_rope:qkv_rope_lanes".into(), pipeline, &bindings, grid, vec![params.clone()]).map(Some)
}

/// The tail of an unfused Q/K/V step: `qkv` (`[max_n, (heads + 2 kv_heads) * head_dim]` f32, the output of
/// `gemv_fused` with the input RMSNorm on the fused Q|K|V weight, or of a GEMM on normalised rows) gets
/// RoPE, Q goes to the target's `q_out` (`[max_n, heads * head_dim]`), K and V into its cache slot at the
/// step's positions. The planner uses this pair (two dispatches) for prefill, and for decode where the
/// shapes do not suit [`qkv_rope_lanes`] on CPU drivers.
pub fn rope_cache(gpu: &Gpu, qkv: &Tensor, target: &QkvTarget<'_>) -> Result<Dispatch> {
    rope_cache_with(gpu, qkv, target, None)
}

/// [`rope_cache`] for a batch of rows from several sequences (batched decoding): row `r` of `qkv` is
/// sequence `rows[r][0]` at position `rows[r][1]` (`rows`: u32 `[at least max_n, 2]`, written before each
/// submission), its K and V go to that sequence of the target's cache ([`KvCache::with_sequences`]) and its
/// RoPE angle is that position's. Rows `0..n` (the step's `n`) are written. The caller checks every
/// sequence and position against the cache before submitting.
pub fn rope_cache_rows(gpu: &Gpu, qkv: &Tensor, target: &QkvTarget<'_>, rows: &Tensor) -> Result<Dispatch> {
    rope_cache_with(gpu, qkv, target, Some(rows))
}

fn rope_cache_with(gpu: &Gpu, qkv: &Tensor, target: &QkvTarget<'_>, rows: Option<&Tensor>) -> Result<Dispatch> {
    let QkvTarget { step, rope, layout, q_out, cache, slot } = *target;
    let hd = cache.head_dim();
    let kvn = cache.kv_heads();
    let width = *q_out.shape().last().unwrap_or(&0);
    if width == 0 || !width.is_multiple_of(hd) || !(width / hd).is_multiple_of(kvn) || !hd.is_multiple_of(2) {
        return Err(Error::shape(
            "rope_cache query output",
            q_out.shape(),
            format!("[n, heads * {hd}] with heads a multiple of {kvn} KV heads and an even head_dim"),
        ));
    }
    let heads = width / hd;
    let max_n = q_out.expect_rows("rope_cache query output", DType::F32, width)?;
    qkv.expect("rope_cache projected rows", DType::F32, &[max_n, (heads + 2 * kvn) * hd])?;
    check_rope_table("rope_cache", rope, cache)?;
    if let Some(rows) = rows {
        super::check_batch_rows("rope_cache", rows, max_n)?;
    }
    // One sequence's rows are consecutive positions, so no more of them than the cache holds.
    let position_bound = if rows.is_some() { usize::MAX } else { cache.capacity() };
    if max_n > position_bound || max_n > MAX_GROUPS_PER_DIM as usize {
        return Err(Error::Capacity {
            what: "rope_cache rows per step".into(),
            requested: max_n,
            capacity: cache.capacity().min(MAX_GROUPS_PER_DIM as usize),
        });
    }
    let kv = cache.binding(slot)?;
    // rope_cache reads no weights; any weight flag satisfies the shared module.
    let variant = variant_for(gpu, ShaderVariant::new().flag(crate::quant::WeightType::F32.flag()), cache, layout)
        .flag_if("BATCH", rows.is_some());
    let pipeline = gpu.pipeline(&QKV_ROPE, "rope_cache", &variant)?;
    let params = Params {
        desc: Default::default(),
        heads: heads as u32,
        kv_heads: kvn as u32,
        hidden: 0,
        capacity: cache.capacity() as u32,
        eps: 0.0,
        seq_stride: u32::try_from(cache.sequence_stride())
            .map_err(|_| Error::invalid("rope_cache sequence stride", cache.sequence_stride(), "below 2^32"))?,
        _pad: [0; 2],
    };
    let params = uniform(gpu, "rope_cache params", &params)?;
    let mut bindings = vec![
        (0, params.as_entire_binding()),
        (1, step.buffer().as_entire_binding()),
        (5, rope.tensor().buffer().as_entire_binding()),
        (6, q_out.buffer().as_entire_binding()),
        (7, kv),
        (8, qkv.buffer().as_entire_binding()),
    ];
    let name = match rows {
        Some(rows) => {
            bindings.push((9, rows.buffer().as_entire_binding()));
            "qkv_rope:rope_cache(batch)"
        }
        None => "qkv_rope:rope_cache",
    };
    make_dispatch(
        gpu,
        name.into(),
        pipeline,
        &bindings,
        [(heads + 2 * kvn) as u32, max_n as u32, 1],
        vec![params.clone()],
    )
}

/// The variant of `kernels/qkv_rope.wgsl` for a cache and a RoPE layout; `base` carries the weight flags.
/// `rope_cache` runs `ops::small_kernel_workgroup` threads (on CPU drivers a head's 32 pairs in 4 steps of one
/// SIMD batch, instead of 8 batches mostly masked off).
fn variant_for(gpu: &Gpu, base: ShaderVariant, cache: &KvCache, layout: RopeLayout) -> ShaderVariant {
    base.flag_if("F16", cache.dtype() == DType::F16)
        .flag_if("KVTEX", cache.is_texture())
        .flag(match layout {
            RopeLayout::Halves => "ROPE_HALVES",
            RopeLayout::Interleaved => "ROPE_INTERLEAVED",
        })
        .constant("WG", WORKGROUP)
        .constant("RWG", small_kernel_workgroup(gpu, WORKGROUP))
        .constant("HD", cache.head_dim() as u32)
        .constant("XV4", (MAX_HIDDEN.div_ceil(32) * 8) as u32)
        // The lanes entry's sizes (its launcher overrides them; 1 elsewhere, so other variants share one).
        .constant("LWG", 1)
        .constant("XUV4", 1)
        .constant("NUV4", 1)
}

/// The RoPE table must match the cache's head_dim and cover its positions.
fn check_rope_table(what: &str, rope: &RopeTable, cache: &KvCache) -> Result<()> {
    if rope.head_dim() != cache.head_dim() || rope.capacity() < cache.capacity() {
        return Err(Error::invalid(
            format!("{what} RoPE table"),
            format!("head_dim {} x {} positions", rope.head_dim(), rope.capacity()),
            format!("head_dim {} and at least the cache's {} positions", cache.head_dim(), cache.capacity()),
        ));
    }
    Ok(())
}
