//! GPU launchers, one module per kernel family (named like its `kernels/*.wgsl` file).
//!
//! Each launcher checks shapes and dtypes, picks the shader variant for the device, binds the buffers
//! and returns a [`Dispatch`]: a pipeline, a bind group and a grid, made once and recorded into as many
//! command buffers as needed. The scheduler builds all its dispatches at load time; tests and tools run
//! them with [`run`].

pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod ffn;
pub mod gemm;
pub mod gemv;
pub mod kv_shift;
pub mod qkv_rope;
pub mod rms_norm;
pub mod sample;

use std::sync::Arc;

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::shader::ShaderVariant;
use crate::tensor::{DType, Tensor};

/// The most workgroups one grid dimension may have (WebGPU's default limit).
pub const MAX_GROUPS_PER_DIM: u32 = 65535;

/// One kernel launch, ready to record: pipeline, bind group and workgroup grid.
#[derive(Debug)]
pub struct Dispatch {
    name: String,
    // Usually one; a kernel that binds its operands a window at a time launches once per window.
    launches: Vec<Launch>,
    // Uniform buffers owned by this dispatch (kept alive with the bind groups).
    _owned: Vec<wgpu::Buffer>,
}

#[derive(Debug)]
struct Launch {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    grid: [u32; 3],
}

impl Dispatch {
    /// Records the launch (or launches, in order) into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for l in &self.launches {
            pass.set_pipeline(&l.pipeline);
            pass.set_bind_group(0, &l.bind_group, &[]);
            pass.dispatch_workgroups(l.grid[0], l.grid[1], l.grid[2]);
        }
    }
    /// `kernel:entry`, e.g. `rms_norm:rms_norm`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The workgroup grid of the first launch.
    pub fn grid(&self) -> [u32; 3] {
        self.launches[0].grid
    }
    /// How many launches [`Dispatch::record`] records (1 unless the kernel runs window by window).
    pub fn launches(&self) -> usize {
        self.launches.len()
    }
    /// One dispatch that records `parts` in order, under `name` (`parts` must not be empty).
    pub(crate) fn sequence(name: String, parts: Vec<Dispatch>) -> Dispatch {
        let mut launches = Vec::new();
        let mut owned = Vec::new();
        for p in parts {
            launches.extend(p.launches);
            owned.extend(p._owned);
        }
        Dispatch { name, launches, _owned: owned }
    }
}

/// Records `dispatches` in order into one compute pass, submits once, and waits.
pub fn run(gpu: &Gpu, dispatches: &[&Dispatch]) -> Result<()> {
    let mut encoder = gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops::run") });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        for d in dispatches {
            d.record(&mut pass);
        }
    }
    gpu.submit_and_wait([encoder.finish()])
}

/// Threads per workgroup for the small kernels (`rms_norm`, `rope_cache`, the sampler's first pass):
/// `gpu_threads` on GPUs; on CPU drivers 8, one lavapipe SIMD batch. A wider workgroup there runs its
/// batches one after another, as coroutines switching at every barrier, and pays for the idle ones
/// (measured: a 64-row `rms_norm` 1.7 -> 0.8 ms, sampling 1.7 -> 0.4 ms per step, a prefill's
/// `rope_cache` 113 -> 42 ms).
pub(crate) fn small_kernel_workgroup(gpu: &Gpu, gpu_threads: u32) -> u32 {
    if gpu.is_cpu_class() {
        8
    } else {
        gpu_threads
    }
}

/// The variant every kernel starts from: the reduction path the device supports.
pub(crate) fn base_variant(gpu: &Gpu) -> ShaderVariant {
    ShaderVariant::new().flag_if("SUBGROUPS", gpu.features().subgroups)
}

/// Whether kernels can share loads among 8 lanes by subgroup broadcasts: lanes 0..7 of each subgroup load,
/// so subgroups must have at least 8 lanes (a workgroup of a multiple of 8 then fills them).
pub(crate) fn broadcasts_of_8(gpu: &Gpu) -> bool {
    gpu.features().subgroups && gpu.subgroup_size_range().0 >= 8
}

/// A uniform buffer holding `value`.
pub(crate) fn uniform<T: bytemuck::Pod>(gpu: &Gpu, label: &str, value: &T) -> Result<wgpu::Buffer> {
    let bytes = bytemuck::bytes_of(value);
    let buffer =
        gpu.create_buffer(label, bytes.len() as u64, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST)?;
    gpu.queue().write_buffer(&buffer, 0, bytes);
    Ok(buffer)
}

/// Whether the first `floats` f32 of `t` can be bound as a uniform: the buffer has `UNIFORM` usage, holds
/// them, and they fit one uniform binding (at most 64 KiB, WebGPU's default). Kernels read small
/// activations this way where every lane reads the same address (on lavapipe a SIMD gather, where a
/// storage load is a per-lane loop).
pub(crate) fn fits_uniform(gpu: &Gpu, t: &Tensor, floats: usize) -> bool {
    let max = (gpu.limits().max_uniform_buffer_binding_size as usize).min(1 << 16);
    t.buffer().usage().contains(wgpu::BufferUsages::UNIFORM)
        && floats * 4 <= max
        && floats * 4 <= t.size_bytes() as usize
}

/// The first `floats` f32 of `t` as a binding: exactly the size of a uniform `array<vec4<f32>, floats / 4>`.
pub(crate) fn prefix_binding(t: &Tensor, floats: usize) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: t.buffer(),
        offset: 0,
        size: std::num::NonZeroU64::new(floats as u64 * 4),
    })
}

/// Binds `resources` (binding `i` = `resources[i].0`) and wraps the launch.
pub(crate) fn make_dispatch(
    gpu: &Gpu,
    name: String,
    pipeline: Arc<wgpu::ComputePipeline>,
    resources: &[(u32, wgpu::BindingResource<'_>)],
    grid: [u32; 3],
    owned: Vec<wgpu::Buffer>,
) -> Result<Dispatch> {
    if grid.iter().any(|&g| g > MAX_GROUPS_PER_DIM) {
        return Err(Error::invalid(
            format!("workgroup grid of {name}"),
            format!("{grid:?}"),
            "at most 65535 per dimension",
        ));
    }
    gpu.check_lost()?;
    let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
        .iter()
        .map(|(binding, resource)| wgpu::BindGroupEntry { binding: *binding, resource: resource.clone() })
        .collect();
    let scope = gpu.device().push_error_scope(wgpu::ErrorFilter::Validation);
    let bind_group = gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(&name),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    if let Some(err) = pollster::block_on(scope.pop()) {
        return Err(Error::Gpu { context: format!("binding buffers for {name}"), message: err.to_string() });
    }
    Ok(Dispatch { name, launches: vec![Launch { pipeline, bind_group, grid }], _owned: owned })
}

/// A grid for `groups` workgroups in one logical dimension, folded into x and y.
pub(crate) fn grid_1d(groups: u32) -> [u32; 3] {
    if groups <= MAX_GROUPS_PER_DIM {
        [groups.max(1), 1, 1]
    } else {
        let x = MAX_GROUPS_PER_DIM;
        [x, groups.div_ceil(x), 1]
    }
}

/// Per-step parameters every step-dependent kernel reads from one small uniform buffer, written with
/// `queue.write_buffer` before each submission, so a planned step's dispatches never change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepParams {
    /// Position of the first new token in the sequence (tokens already in the KV cache).
    pub pos: u32,
    /// Number of new tokens in this step (1 for decode, n for a prefill).
    pub n: u32,
    /// Sampling: random seed for this step.
    pub seed: u32,
    /// Sampling: top-k (0 = off).
    pub top_k: u32,
    /// Sampling: temperature (0 = greedy).
    pub temperature: f32,
    /// Sampling: top-p (1 = off).
    pub top_p: f32,
    /// Sampling: min-p (0 = off): candidates whose weight is below `min_p` times the best one's are dropped.
    pub min_p: f32,
    /// Sampling: how many entries of `penalties` are in use (0 = no penalties).
    pub penalty_count: u32,
    /// Sampling: what a penalised logit is multiplied by when it is `> 0` and when it is `<= 0` (`1 /
    /// repeat_penalty` and `repeat_penalty`, as llama.cpp divides and multiplies).
    pub penalty_scale: [f32; 2],
    /// Sampling: nonzero to pick only tokens allowed by the sampler's mask ([`sample::TokenMask`]).
    pub mask: u32,
    /// Sampling: nonzero to also write the picked token's log-probability under the raw logits (log-softmax
    /// at temperature 1, before penalties and mask) to element 1 of the token buffer, as f32 bits.
    pub logprob: u32,
    /// Sampling: how many of the best candidates to report with their log-probabilities (OpenAI's
    /// `top_logprobs`, at most [`sample::MAX_TOP_LOGPROBS`]; 0 = none), as `(id, f32 bits)` pairs from
    /// element 2 of the token buffer on: see [`sample`].
    pub top_logprobs: u32,
    /// Zero: keeps `penalties` where WGSL's uniform layout puts it (16-byte aligned).
    pub reserved: [u32; 3],
    /// Sampling: the penalised tokens, sorted by id, two per row: `[id, offset bits, id, offset bits]`;
    /// the kernel uses `logit * scale - f32::from_bits(offset)` for them (written by
    /// [`sample::Penalties::write`]).
    pub penalties: [[u32; 4]; 32],
}

// WGSL aligns the uniform's `penalties` array to 16 bytes; the Rust struct must put it at the same offset.
const _: () = assert!(std::mem::offset_of!(StepParams, penalties) == 64);
// The sampler reads them as `array<Step>` (a [`StepTable`], or the step buffer as one entry), whose stride is
// the struct's size rounded to 16 bytes: the Rust size must already be that.
const _: () = assert!(std::mem::size_of::<StepParams>().is_multiple_of(16));

/// One [`StepParams`] per row, for kernels that treat each row of a batch on its own terms: the batched
/// sampler ([`sample::sample_rows`]) reads row `r`'s sampling settings from entry `r`.
#[derive(Debug, Clone)]
pub struct StepTable {
    buffer: wgpu::Buffer,
    rows: usize,
}

impl StepTable {
    /// Creates a table of `rows` entries (zeroed: greedy, no penalties, no mask).
    pub fn new(gpu: &Gpu, rows: usize) -> Result<StepTable> {
        if rows == 0 {
            return Err(Error::invalid("step table rows", 0, "at least 1"));
        }
        let bytes = (rows * std::mem::size_of::<StepParams>()) as u64;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        Ok(StepTable { buffer: gpu.create_buffer("step table", bytes, usage)?, rows })
    }
    /// Writes entries `0..params.len()` (for work submitted afterwards); more than [`StepTable::rows`] is an
    /// error that writes nothing.
    pub fn write(&self, gpu: &Gpu, params: &[StepParams]) -> Result<()> {
        if params.len() > self.rows {
            return Err(Error::Capacity {
                what: "step table rows".into(),
                requested: params.len(),
                capacity: self.rows,
            });
        }
        if !params.is_empty() {
            gpu.queue().write_buffer(&self.buffer, 0, bytemuck::cast_slice(params));
        }
        Ok(())
    }
    /// How many entries the table holds.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// The buffer, for binding.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

/// The uniform buffer holding [`StepParams`], bound by step-dependent kernels.
#[derive(Debug, Clone)]
pub struct StepBuffer {
    buffer: wgpu::Buffer,
}

impl StepBuffer {
    /// Creates the buffer (zeroed).
    pub fn new(gpu: &Gpu) -> Result<StepBuffer> {
        // Also STORAGE: the sampler reads its parameters as a one-entry table (`ops::sample::sample_rows`
        // reads one entry per row from the same kind of table).
        let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let buffer = gpu.create_buffer("step params", std::mem::size_of::<StepParams>() as u64, usage)?;
        gpu.queue().write_buffer(&buffer, 0, bytemuck::bytes_of(&StepParams::default()));
        Ok(StepBuffer { buffer })
    }
    /// Writes the parameters; takes effect for work submitted afterwards.
    pub fn write(&self, gpu: &Gpu, params: &StepParams) {
        gpu.queue().write_buffer(&self.buffer, 0, bytemuck::bytes_of(params));
    }
    /// The buffer, for binding.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

/// Checks a batch's row table (`[at least n, 2]` u32: sequence, position) against `n` rows.
pub(crate) fn check_batch_rows(what: &str, rows: &Tensor, n: usize) -> Result<()> {
    let have = rows.expect_rows(&format!("{what} batch rows"), DType::U32, 2)?;
    if have < n {
        return Err(Error::shape(format!("{what} batch rows"), rows.shape(), format!("[at least {n}, 2] u32")));
    }
    Ok(())
}
