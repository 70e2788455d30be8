//! Grouped-query attention launchers (`kernels/attention.wgsl`) over a [`KvCache`] slot.
//! CPU twins: [`crate::reference::attention_decode`], [`crate::reference::attention_prefill`].
//!
//! Both read the step's position and length from the [`StepBuffer`], so the dispatches are built once and
//! their grids are sized for the cache capacity (decode) or a maximum batch (prefill). Batched decoding of
//! several sequences ([`attention_decode_rows`]) reads each row's sequence and position from a table instead.
//!
//! **Split rule (flash-decoding).** With [`Split::Auto`], decode on a GPU splits the sequence into chunks of
//! [`DECODE_CHUNK`] (64, one tile of the `decode` kernel) positions when the cache capacity exceeds
//! [`SPLIT_ABOVE`] (128) positions, else it runs one workgroup per KV head over the whole context. Why:
//! unsplit, a decode step has only `kv_heads` workgroups (3 for MobileLLM-125M), each walking the whole
//! context tile by tile: a long context then runs on 3 compute units, one tile's latency after another.
//! Split, the grid is `kv_heads x capacity/64` workgroups; those past the current context exit at once, and a
//! second tiny pass (one workgroup per query head) merges the live chunks. On an H100 (Vulkan) one tile cost
//! ~30 µs before the V pass was spread over position lanes (`benches/results/h100-685ec14`: unsplit 67.8 /
//! 261.8 / 1039.4 µs at contexts 128 / 512 / 2048, split in 128-position chunks 73.3 / 75.3 / 82.4 µs).
//!
//! On CPU devices (lavapipe and other software drivers) `Auto` picks the lane kernel (`decode_lanes`,
//! one workgroup per KV head): its lanes split the sequence among themselves, with no barrier in the loop
//! and q read as a uniform (on lavapipe each workgroup- or storage-memory load is a per-lane scalar loop,
//! which the tiled `decode` pays ~4 times per K/V element). It does not split over workgroups, measured
//! with `cargo bench --bench kernels -- attention` on a 2-core lavapipe (capacity 2048, 9/3 heads, f16):
//! fixed 64-position chunks (split64 / unsplit = 2.74 at context 128, 2.03 at 512, 0.93 at 2048, and even
//! there 7x the lane kernel) and the lane kernel in 2 even chunks ([`Split::LanesChunks`], which should
//! balance 3 KV heads over 2 host threads: 1.5 rounds instead of 2) at 2.37x / 1.26x / 1.19x the unsplit
//! lane kernel at contexts 128 / 512 / 2048: the merge pass and the per-workgroup setup cost more than the
//! balance gains here.
//!
//! The lane kernels keep every lane's state (q, accumulators, softmax of the group's heads) at indices
//! that are constants in the source, heads through a written-out ladder of [`LANES_MAX_GROUP`] calls: lavapipe
//! (Mesa 22.3) moves any array that a loop counter indexes to per-lane scratch memory before it unrolls the
//! loop, and then each store is a masked scalar store per lane (two thirds of the instructions of a decode
//! position, found in the JIT code). Written out, with the decode merge through subgroup reductions (no
//! barrier, so no coroutine frame either): 9/3 heads f16, decode 205.7 -> 67.8 / 278.8 -> 47.6 / 409.6 ->
//! 115.7 / 1377.6 -> 353.4 µs at contexts 64 / 128 / 512 / 2048, `prefill_lanes` 2585 -> 1429 µs (n = 64)
//! and 22600 -> 5263 µs (n = 256).

use bytemuck::{Pod, Zeroable};

use crate::device::{DeviceClass, Gpu, TextureReads};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::ops::{
    broadcasts_of_8, fits_uniform, make_dispatch, prefix_binding, small_kernel_workgroup, uniform, Dispatch,
    StepBuffer, MAX_GROUPS_PER_DIM,
};
use crate::shader::{ShaderVariant, ATTENTION};
use crate::tensor::{DType, Tensor};

/// Threads per workgroup: decode keys per tile, prefill query rows per workgroup.
const WORKGROUP: u32 = 64;
/// Decode chunk length (positions per workgroup) when split.
pub const DECODE_CHUNK: usize = 64;
/// Capacity above which [`Split::Auto`] splits.
pub const SPLIT_ABOVE: usize = 128;
/// Workgroup memory budget for the prefill K and V tiles together (bytes); leaves room for the rest.
const PREFILL_TILE_BYTES: usize = 8192;

/// How decode attention divides the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Split {
    /// The documented rule ([`auto_chunk`]): on GPUs, chunks of [`DECODE_CHUNK`] when capacity >
    /// [`SPLIT_ABOVE`]; on CPU devices, unsplit.
    #[default]
    Auto,
    /// One workgroup per KV head over the whole context, no merge pass.
    Off,
    /// Chunks of this many positions (>= 1), plus the merge pass.
    Chunk(usize),
    /// One workgroup of [`DECODE_LANES`] lanes per KV head, positions strided over the lanes, each lane
    /// its own online softmax, merged once by subgroup reductions where the lanes are one subgroup, else
    /// in workgroup memory (`decode_lanes`; what `Auto` picks on CPU devices). Falls back to
    /// [`Split::Off`] unless `head_dim` is a multiple of 32 up to 128, the group at most
    /// [`LANES_MAX_GROUP`] query heads, and `head_dim + 2 * group <= 256` (its workgroup memory).
    Lanes,
    /// [`Split::Lanes`] with each KV head's context cut into this many even chunks (>= 1; even, not fixed
    /// length, so the work per workgroup is equal at every context), one workgroup per (KV head, chunk),
    /// plus the merge pass. For hosts with more threads than KV heads; `Auto` does not pick it (see the
    /// module docs).
    LanesChunks(usize),
}

/// Lanes per workgroup of [`Split::Lanes`]: one SIMD batch of lavapipe (8 lanes), so the final merge is
/// one subgroup's reductions (without subgroups, its barriers switch no coroutines); 16 lanes measured 1.6x
/// slower at context 128 and level at 2048.
pub const DECODE_LANES: usize = 8;
// `decode_lanes` merges by subgroup reductions where `broadcasts_of_8` holds: its lanes must be 8.
const _: () = assert!(DECODE_LANES == 8);

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    heads: u32,
    kv_heads: u32,
    capacity: u32,
    chunk_len: u32,
    n_chunks: u32,
    scale: f32,
    seq_stride: u32,
    _pad: u32,
}

impl Params {
    fn new(shape: &Shape, cache: &KvCache, chunk_len: usize, n_chunks: usize) -> Params {
        Params {
            heads: shape.heads as u32,
            kv_heads: cache.kv_heads() as u32,
            capacity: cache.capacity() as u32,
            chunk_len: chunk_len as u32,
            n_chunks: n_chunks as u32,
            scale: 1.0 / (cache.head_dim() as f32).sqrt(),
            // Fits: a slot is one binding, far below 2^32 elements.
            seq_stride: cache.sequence_stride() as u32,
            _pad: 0,
        }
    }
}

struct Shape {
    heads: usize,
    group: usize,
    rows: usize,
}

/// Checks q and out against the cache; returns heads, group size and rows.
fn check(what: &str, q: &Tensor, cache: &KvCache, out: &Tensor) -> Result<Shape> {
    let hd = cache.head_dim();
    let width = *q.shape().last().unwrap_or(&0);
    if q.dtype() != DType::F32 || width == 0 || !width.is_multiple_of(hd) {
        return Err(Error::shape(
            format!("{what} queries ({})", q.dtype()),
            q.shape(),
            format!("f32 [rows, heads * {hd}] (head_dim {hd} from the KV cache)"),
        ));
    }
    let heads = width / hd;
    if !heads.is_multiple_of(cache.kv_heads()) {
        return Err(Error::Config(format!(
            "{what}: {heads} query heads is not a multiple of the cache's {} KV heads",
            cache.kv_heads()
        )));
    }
    let rows = q.expect_rows(&format!("{what} queries"), DType::F32, width)?;
    out.expect(&format!("{what} output"), DType::F32, q.shape())?;
    let group = heads / cache.kv_heads();
    let hd_tile = PREFILL_TILE_BYTES / (2 * 4 * hd);
    // Workgroup memory: q, scores and softmax state of the group plus one vec4 per thread (decode), K/V tiles
    // (prefill): counted together, so every entry stays inside 16 KiB.
    let bytes =
        4 * (group * hd + group * WORKGROUP as usize + 2 * group) + 16 * WORKGROUP as usize + PREFILL_TILE_BYTES;
    if hd_tile == 0 || bytes > 16384 {
        return Err(Error::invalid(
            format!("{what} group size x head_dim"),
            format!("{group} x {hd}"),
            "group * (head_dim + 66) * 4 + 9216 <= 16384 bytes of workgroup memory, head_dim <= 1024",
        ));
    }
    Ok(Shape { heads, group, rows })
}

fn variant(gpu: &Gpu, cache: &KvCache, group: usize, split: bool, positions: Positions<'_>) -> ShaderVariant {
    let hd = cache.head_dim();
    ShaderVariant::new()
        .flag_if("BATCH", positions.is_table())
        .flag_if("F16", cache.dtype() == DType::F16)
        .flag_if("KVTEX", cache.is_texture())
        .flag_if("IMGREAD", cache.is_texture() && gpu.texture_reads() == TextureReads::Storage)
        .flag_if("SPLIT", split)
        .constant("WG", WORKGROUP)
        .constant("MWG", small_kernel_workgroup(gpu, WORKGROUP))
        .constant("G", group as u32)
        .constant("HD", hd as u32)
        .constant("TK", (PREFILL_TILE_BYTES / (2 * 4 * hd)).max(1) as u32)
        .constant("WL", DECODE_LANES as u32)
        .constant("QV4", 1)
}

/// Most query heads per KV head the lane kernels take: their heads go through a written-out ladder of
/// this many calls (`lanes_heads` in `kernels/attention.wgsl`).
pub const LANES_MAX_GROUP: usize = 8;

/// Whether the lane kernels (`decode_lanes`, `prefill_lanes`) take this head_dim and group size: their
/// registers hold a head in 32-dim pieces, at most four, for at most [`LANES_MAX_GROUP`] heads.
fn lanes_fit(hd: usize, group: usize) -> bool {
    hd.is_multiple_of(32) && hd <= 128 && group <= LANES_MAX_GROUP
}

/// The chunk length [`Split::Auto`] picks for a cache of `capacity` positions on a device of class
/// `class` (`None`: unsplit): [`DECODE_CHUNK`] above [`SPLIT_ABOVE`] positions, never on CPU devices
/// (see the module docs for the measurements).
pub fn auto_chunk(class: DeviceClass, capacity: usize) -> Option<usize> {
    (class == DeviceClass::Gpu && capacity > SPLIT_ABOVE).then_some(DECODE_CHUNK)
}

/// Decode attention for the step's last position: query row `n-1` of `q` (`[rows, heads * head_dim]` f32,
/// position `pos+n-1`) over cache positions `0..pos+n` of slot `slot`, written to row `n-1` of `out` (same
/// shape as `q`). For decode, `n = 1`: row 0, context `pos+1`. Returns the dispatches to record in order
/// (one, or two when split). The caller checks `pos+n <= capacity` ([`KvCache::check_step`]) before submit.
pub fn attention_decode(
    gpu: &Gpu,
    step: &StepBuffer,
    q: &Tensor,
    cache: &KvCache,
    slot: usize,
    out: &Tensor,
    split: Split,
) -> Result<Vec<Dispatch>> {
    decode(gpu, &DecodeOperands { positions: Positions::Step(step), q, cache, slot, out }, split)
}

/// Batched decode attention over several sequences ([`KvCache::with_sequences`]): every row `r` of `q`
/// (`[rows, heads * head_dim]`) is the query of sequence `rows[r][0]` at position `rows[r][1]` (`rows`: u32
/// `[at least q rows, 2]`, written before each submission), over that sequence's cache positions
/// `0..=rows[r][1]`, written to row `r` of `out`. Splits as [`attention_decode`] does, each row's chunks
/// apart. The grid covers every row of `q`; the caller checks the table against the cache.
pub fn attention_decode_rows(
    gpu: &Gpu,
    rows: &Tensor,
    q: &Tensor,
    cache: &KvCache,
    slot: usize,
    out: &Tensor,
    split: Split,
) -> Result<Vec<Dispatch>> {
    decode(gpu, &DecodeOperands { positions: Positions::Table(rows), q, cache, slot, out }, split)
}

fn decode(gpu: &Gpu, op: &DecodeOperands<'_>, split: Split) -> Result<Vec<Dispatch>> {
    let DecodeOperands { positions, q, cache, slot, out } = *op;
    let shape = check("attention_decode", q, cache, out)?;
    if let Positions::Table(rows) = positions {
        crate::ops::check_batch_rows("attention_decode", rows, shape.rows)?;
    }
    let layers = positions.layers(&shape);
    if layers > MAX_GROUPS_PER_DIM {
        return Err(Error::invalid("attention_decode batch rows", layers, "at most 65535"));
    }
    let kv = cache.binding(slot)?;
    let hd = cache.head_dim();
    let capacity = cache.capacity();
    let lanes_fit = lanes_fit(hd, shape.group) && DECODE_LANES * (hd + 2 * shape.group) * 4 <= 16384;
    let cpu = gpu.is_cpu_class();
    let lanes = match split {
        Split::Lanes => Some(1),
        Split::LanesChunks(0) => {
            return Err(Error::invalid("attention_decode lane chunks", 0, "at least 1 chunk"));
        }
        Split::LanesChunks(n) if n > MAX_GROUPS_PER_DIM as usize => {
            return Err(Error::invalid("attention_decode lane chunks", n, "at most 65535"));
        }
        Split::LanesChunks(n) => Some(n.min(capacity)),
        Split::Auto if cpu => Some(1),
        _ => None,
    };
    if let (Some(n_chunks), true) = (lanes, lanes_fit) {
        return decode_lanes(gpu, op, &shape, n_chunks);
    }
    let chunk = match split {
        Split::Auto => auto_chunk(gpu.device_class(), capacity),
        Split::Off | Split::Lanes | Split::LanesChunks(_) => None,
        Split::Chunk(0) => return Err(Error::invalid("attention_decode chunk", 0, "at least 1 position")),
        Split::Chunk(c) => Some(c.min(capacity)),
    };
    let chunk_len = chunk.unwrap_or(capacity);
    let n_chunks = capacity.div_ceil(chunk_len);
    if n_chunks > MAX_GROUPS_PER_DIM as usize {
        return Err(Error::invalid("attention_decode chunks", n_chunks, "at most 65535 (use a longer chunk)"));
    }
    let params = uniform(gpu, "attention params", &Params::new(&shape, cache, chunk_len, n_chunks))?;
    let grid = [cache.kv_heads() as u32, n_chunks as u32, layers];
    let variant = |split| variant(gpu, cache, shape.group, split, positions);
    if chunk.is_none() {
        let pipeline = gpu.pipeline(&ATTENTION, "decode", &variant(false))?;
        let q_binding = q.buffer().as_entire_binding();
        let d = single_pass(
            gpu,
            Pass { name: "attention:decode", pipeline, params: &params, positions, q: q_binding, kv, grid },
            out,
        )?;
        return Ok(vec![d]);
    }
    let pipeline = gpu.pipeline(&ATTENTION, "decode", &variant(true))?;
    let q_binding = q.buffer().as_entire_binding();
    let pass = Pass { name: "attention:decode(split)", pipeline, params: &params, positions, q: q_binding, kv, grid };
    split_passes(gpu, pass, cache, out, &shape)
}

/// Where an attention pass finds its rows' positions: the step uniform (one sequence), or batched
/// decoding's table of (sequence, position) per row.
#[derive(Clone, Copy)]
enum Positions<'a> {
    Step(&'a StepBuffer),
    Table(&'a Tensor),
}

impl Positions<'_> {
    fn is_table(&self) -> bool {
        matches!(self, Positions::Table(_))
    }

    /// Decode grid layers (z): one per row of a batch, else one.
    fn layers(&self, shape: &Shape) -> u32 {
        if self.is_table() {
            shape.rows as u32
        } else {
            1
        }
    }

    /// The binding: the step uniform at 1, or the table at 6 (`BATCH` variants read no step uniform).
    fn binding(&self) -> (u32, wgpu::BindingResource<'_>) {
        match self {
            Positions::Step(step) => (1, step.buffer().as_entire_binding()),
            Positions::Table(rows) => (6, rows.buffer().as_entire_binding()),
        }
    }
}

/// What every attention pass binds: params, the positions, q and the cache slot, on a grid.
struct Pass<'a> {
    name: &'a str,
    pipeline: std::sync::Arc<wgpu::ComputePipeline>,
    params: &'a wgpu::Buffer,
    positions: Positions<'a>,
    q: wgpu::BindingResource<'a>,
    kv: wgpu::BindingResource<'a>,
    grid: [u32; 3],
}

/// A chunked pass writing partials, then `merge` (one workgroup per query head) into `out`.
/// With a batch, partials and merge workgroups are per row (`pass.grid[2]` rows).
fn split_passes(gpu: &Gpu, pass: Pass<'_>, cache: &KvCache, out: &Tensor, shape: &Shape) -> Result<Vec<Dispatch>> {
    let layers = pass.grid[2];
    let partial_len = layers as usize * shape.heads * pass.grid[1] as usize * (cache.head_dim() + 2);
    let partials = Tensor::zeros_labeled(gpu, "attention partials", DType::F32, &[partial_len])?;
    let (params, positions) = (pass.params, pass.positions);
    let first = pass_dispatch(gpu, pass, 5, &partials)?;
    let variant = variant(gpu, cache, shape.group, true, positions);
    let merge = gpu.pipeline(&ATTENTION, "merge", &variant)?;
    let bindings = [
        (0, params.as_entire_binding()),
        (4, out.buffer().as_entire_binding()),
        (5, partials.buffer().as_entire_binding()),
        positions.binding(),
    ];
    let second = make_dispatch(
        gpu,
        "attention:merge".into(),
        merge,
        &bindings,
        [shape.heads as u32, layers, 1],
        vec![params.clone(), partials.buffer().clone()],
    )?;
    Ok(vec![first, second])
}

/// The operands of one decode attention.
#[derive(Clone, Copy)]
struct DecodeOperands<'a> {
    positions: Positions<'a>,
    q: &'a Tensor,
    cache: &'a KvCache,
    slot: usize,
    out: &'a Tensor,
}

/// The `decode_lanes` dispatch ([`Split::Lanes`]), or with `n_chunks > 1` its chunked form and the merge
/// ([`Split::LanesChunks`]); q is read as a uniform when it fits one binding.
fn decode_lanes(gpu: &Gpu, op: &DecodeOperands<'_>, shape: &Shape, n_chunks: usize) -> Result<Vec<Dispatch>> {
    let DecodeOperands { positions, q, cache, slot, out } = *op;
    let kv = cache.binding(slot)?;
    let hd = cache.head_dim();
    let q_len = shape.rows * shape.heads * hd;
    let q_uniform = fits_uniform(gpu, q, q_len);
    let split = n_chunks > 1;
    // chunk_len 0: the kernel cuts each step's context into n_chunks even chunks.
    let chunk_len = if split { 0 } else { cache.capacity() };
    let params = uniform(gpu, "attention params", &Params::new(shape, cache, chunk_len, n_chunks))?;
    // The lanes merge through subgroup reductions when all DECODE_LANES (8) lanes are one subgroup.
    let variant = variant(gpu, cache, shape.group, split, positions)
        .flag_if("SUBGROUPS", broadcasts_of_8(gpu))
        .flag_if("QUNI", q_uniform)
        .constant("QV4", if q_uniform { (q_len / 4) as u32 } else { 1 });
    let pipeline = gpu.pipeline(&ATTENTION, "decode_lanes", &variant)?;
    let q_binding = if q_uniform { prefix_binding(q, q_len) } else { q.buffer().as_entire_binding() };
    let grid = [cache.kv_heads() as u32, n_chunks as u32, positions.layers(shape)];
    let name = if split { "attention:decode_lanes(split)" } else { "attention:decode_lanes" };
    let pass = Pass { name, pipeline, params: &params, positions, q: q_binding, kv, grid };
    if split {
        return split_passes(gpu, pass, cache, out, shape);
    }
    single_pass(gpu, pass, out).map(|d| vec![d])
}

/// A one-pass attention dispatch writing `out`.
fn single_pass(gpu: &Gpu, pass: Pass<'_>, out: &Tensor) -> Result<Dispatch> {
    pass_dispatch(gpu, pass, 4, out)
}

/// The pass with its result bound at `slot` (4: the output, 5: the partials).
fn pass_dispatch(gpu: &Gpu, pass: Pass<'_>, slot: u32, result: &Tensor) -> Result<Dispatch> {
    let name = if pass.positions.is_table() { format!("{}(batch)", pass.name) } else { pass.name.into() };
    let bindings = [
        (0, pass.params.as_entire_binding()),
        (2, pass.q),
        (3, pass.kv),
        (slot, result.buffer().as_entire_binding()),
        pass.positions.binding(),
    ];
    make_dispatch(gpu, name, pass.pipeline, &bindings, pass.grid, vec![pass.params.clone(), result.buffer().clone()])
}

/// Prefill (causal) attention: query rows `0..n` of `q` (`[max_n, heads * head_dim]` f32) at positions
/// `pos..pos+n` over cache positions `0..pos+n` of slot `slot` (which already holds the new K/V), written to
/// the same rows of `out`. The grid covers `max_n = q rows`; workgroups past the step's `n` exit at once.
/// CPU devices with subgroups of 8+ lanes run `prefill_lanes` (lanes are query rows, each K/V element
/// loaded once per 8 rows and broadcast) where `head_dim` is a multiple of 32 up to 128; other devices the tiled
/// kernel ([`attention_prefill_tiled`]).
pub fn attention_prefill(
    gpu: &Gpu,
    step: &StepBuffer,
    q: &Tensor,
    cache: &KvCache,
    slot: usize,
    out: &Tensor,
) -> Result<Dispatch> {
    prefill(gpu, step, q, cache, slot, out, true)
}

/// [`attention_prefill`] with the tiled kernel on any device: one workgroup per (query head, 64 rows),
/// K/V tiles staged in workgroup memory.
pub fn attention_prefill_tiled(
    gpu: &Gpu,
    step: &StepBuffer,
    q: &Tensor,
    cache: &KvCache,
    slot: usize,
    out: &Tensor,
) -> Result<Dispatch> {
    prefill(gpu, step, q, cache, slot, out, false)
}

fn prefill(
    gpu: &Gpu,
    step: &StepBuffer,
    q: &Tensor,
    cache: &KvCache,
    slot: usize,
    out: &Tensor,
    lanes_where_they_fit: bool,
) -> Result<Dispatch> {
    let shape = &check("attention_prefill", q, cache, out)?;
    let lanes =
        lanes_where_they_fit && gpu.is_cpu_class() && broadcasts_of_8(gpu) && lanes_fit(cache.head_dim(), shape.group);
    let kv = cache.binding(slot)?;
    if shape.rows > cache.capacity() {
        return Err(Error::Capacity {
            what: "attention_prefill rows".into(),
            requested: shape.rows,
            capacity: cache.capacity(),
        });
    }
    let params = uniform(gpu, "attention params", &Params::new(shape, cache, cache.capacity(), 1))?;
    let q_binding = q.buffer().as_entire_binding();
    let positions = Positions::Step(step);
    if lanes {
        let pipeline = gpu.pipeline(
            &ATTENTION,
            "prefill_lanes",
            &variant(gpu, cache, shape.group, false, positions).flag("SUBGROUPS"),
        )?;
        let grid = [cache.kv_heads() as u32, shape.rows.div_ceil(8) as u32, 1];
        return single_pass(
            gpu,
            Pass { name: "attention:prefill_lanes", pipeline, params: &params, positions, q: q_binding, kv, grid },
            out,
        );
    }
    let pipeline = gpu.pipeline(&ATTENTION, "prefill", &variant(gpu, cache, shape.group, false, positions))?;
    let grid = [shape.heads as u32, shape.rows.div_ceil(WORKGROUP as usize) as u32, 1];
    let pass = Pass { name: "attention:prefill", pipeline, params: &params, positions, q: q_binding, kv, grid };
    single_pass(gpu, pass, out)
}
