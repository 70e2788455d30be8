//! End-to-end decode benchmark (DESIGN §7), shared by `benches/decode.rs` and the `mobilellm bench`
//! command.
//!
//! For one model configuration (a [`HostModel`]: synthetic MobileLLM-125M/350M or a loaded checkpoint,
//! in some weight type, with or without layer sharing) [`bench_decode`] measures:
//! - prefill tokens/s at each length of [`BenchOptions::prefill_lengths`] (one submission each:
//!   `max_batch` is the longest length; a short warm-up prefill compiles the prefill pipelines first);
//! - decode ms/token and tokens/s at each context of [`BenchOptions::contexts`]: the cache is filled to
//!   that context, then [`BenchOptions::decode_steps`] steps are timed one by one (wall clock around
//!   [`Model::step`], so submission, GPU work and the 4-byte token readback); the median is reported;
//! - the roofline: the weight bytes one decode step must read ([`weight_traffic`]) divided by the
//!   bandwidth of a plain copy ([`CopyProbe`], ≥ 64 MiB, one copy after each timed step, so both see
//!   the same stretch of host speed), and the measured ms/token as a multiple of it;
//! - the KV-cache bytes the step's attention reads, at the same copy speed (the roofline counts weights
//!   only), and the dispatch floor: the wall time of as many near-empty dispatches as the step records
//!   ([`DispatchProbe`], also one after each timed step); ms/token as a multiple of the three floors' sum
//!   (drivers that run dispatches one after another, as lavapipe does, pay them in turn);
//! - dispatches per step and per executed layer, GPU memory by category, and (where the device has
//!   `TIMESTAMP_QUERY`) one step's and one prefill's GPU time by kernel family, and the step's time per
//!   executed layer ([`DecodePoint::pair_ratio`]: a shared layer's second run against its first).
//!
//! [`bench_sharing_interleaved`] compares layer sharing with plain decode by alternating their steps.
//! On lavapipe (a CPU) a step's kernels are compute-bound and each dispatch pays a fixed launch cost,
//! so a layer-shared step costs about twice a plain one there, unlike on phones where the repeated
//! layer's weights are still in cache.
//!
//! Reports: [`markdown_table`] for stdout, [`write_json`], and SVG charts ([`plot_decode_svg`],
//! [`plot_kernels_svg`] for the per-kernel benchmark's `kernels.json`); [`write_reports`] does all.
//!
//! ```no_run
//! use mobilellm_kernels::bench::{self, BenchOptions, Synthetic};
//! use mobilellm_kernels::{quant::WeightType, Gpu};
//! # fn main() -> mobilellm_kernels::Result<()> {
//! let gpu = Gpu::new()?;
//! let host = bench::synthetic_model(Synthetic::M125, WeightType::Q4_0, true, 0)?;
//! let result = bench::bench_decode(&gpu, &host, "synthetic 125m", &BenchOptions::quick())?;
//! let report = bench::BenchReport::new(&gpu, vec![result]);
//! println!("{}", bench::markdown_table(&report));
//! bench::write_reports(&report, std::path::Path::new("target/bench"))?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::host::{HostLayer, HostModel};
use crate::model::planner::{by_family, MemoryReport, Model, PlanOptions};
use crate::ops;
use crate::quant::{HostWeight, WeightType};
use crate::tensor::{read_buffer, DType};

/// Size of the copy that measures the device's bandwidth: large enough to defeat caches.
pub const COPY_BYTES: u64 = 64 << 20;

/// The synthetic model shapes the benchmark knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Synthetic {
    /// MobileLLM-125M ([`ModelConfig::mobilellm_125m`]).
    M125,
    /// MobileLLM-350M ([`ModelConfig::mobilellm_350m`]).
    M350,
}

impl Synthetic {
    /// The configuration (layer sharing off).
    pub fn config(self) -> ModelConfig {
        match self {
            Synthetic::M125 => ModelConfig::mobilellm_125m(),
            Synthetic::M350 => ModelConfig::mobilellm_350m(),
        }
    }
    /// `125m` or `350m`.
    pub fn name(self) -> &'static str {
        match self {
            Synthetic::M125 => "125m",
            Synthetic::M350 => "350m",
        }
    }
}

impl std::str::FromStr for Synthetic {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "125m" | "125" | "mobilellm-125m" => Ok(Synthetic::M125),
            "350m" | "350" | "mobilellm-350m" => Ok(Synthetic::M350),
            other => Err(Error::invalid("synthetic model", format!("`{other}`"), "125m or 350m")),
        }
    }
}

/// Seeded synthetic weights of a preset in `wtype`, with layer sharing on or off. The weights do not
/// depend on layer sharing (it only changes how often each layer runs), so one model can be benchmarked
/// both ways by flipping `host.config.layer_sharing`.
pub fn synthetic_model(size: Synthetic, wtype: WeightType, layer_sharing: bool, seed: u64) -> Result<HostModel> {
    HostModel::synthetic(size.config().with_layer_sharing(layer_sharing), wtype, seed)
}

/// How the KV cache is brought to a decode context before the timed steps. A context equal to a
/// prefill length always reuses that (timed) prefill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ContextFill {
    /// A real prefill of that many tokens (chunks of `max_batch`).
    Prefill,
    /// [`Model::seek`]: the position jumps there and the cache keeps whatever it holds. A decode step's
    /// cost depends on the position, not on the cached values, so this times the same work without a
    /// long prefill (useful on slow software drivers).
    Seek,
}

/// What [`bench_decode`] measures.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Prompt lengths whose prefill is timed (default 64 and 256).
    pub prefill_lengths: Vec<usize>,
    /// Contexts at which decode is timed (default 64 and 1024).
    pub contexts: Vec<usize>,
    /// Timed decode steps per context (default 8).
    pub decode_steps: usize,
    /// Untimed steps before them (default 1).
    pub warmup_steps: usize,
    /// How the cache reaches each context (default [`ContextFill::Prefill`]).
    pub fill: ContextFill,
    /// Bytes of the bandwidth copy (default [`COPY_BYTES`]).
    pub copy_bytes: u64,
    /// Profile one step per context by kernel family when the device has timestamps (default on).
    pub profile: bool,
    /// KV-cache storage (`None`: the planner's choice).
    pub kv_dtype: Option<DType>,
    /// Print each phase's timing to stderr as it finishes (default off).
    pub verbose: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            prefill_lengths: vec![64, 256],
            contexts: vec![64, 1024],
            decode_steps: 8,
            warmup_steps: 1,
            fill: ContextFill::Prefill,
            copy_bytes: COPY_BYTES,
            profile: true,
            kv_dtype: None,
            verbose: false,
        }
    }
}

impl BenchOptions {
    /// A smoke run: prefill 64, decode at context 64 only, 3 timed steps.
    pub fn quick() -> Self {
        BenchOptions { prefill_lengths: vec![64], contexts: vec![64], decode_steps: 3, ..Self::default() }
    }

    fn validate(&self) -> Result<()> {
        if self.decode_steps == 0 {
            return Err(Error::invalid("decode steps", 0, "at least 1"));
        }
        if self.prefill_lengths.contains(&0) {
            return Err(Error::invalid("prefill length", 0, "at least 1"));
        }
        if self.copy_bytes < 16 {
            return Err(Error::invalid("copy bytes", self.copy_bytes, "at least 16"));
        }
        Ok(())
    }

    /// KV-cache capacity the run needs: the longest context or prompt, plus warm-up, timed and
    /// profiled steps.
    pub fn capacity(&self) -> usize {
        let longest = self.contexts.iter().chain(&self.prefill_lengths).copied().max().unwrap_or(1);
        longest + self.warmup_steps + self.decode_steps + 1
    }
}

/// Bandwidth of a plain copy kernel on the device.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CopyBandwidth {
    /// Bytes copied (each read once and written once).
    pub bytes: u64,
    /// Seconds per copy (best of the repetitions).
    pub seconds: f64,
    /// `2 * bytes / seconds / 1e9`: reads plus writes, the STREAM "copy" convention. The roofline of a
    /// kernel that only reads `w` bytes is `w / gbps`.
    pub gbps: f64,
    /// `timestamps` (GPU pass timestamps) or `wall` (submit to completion).
    pub clock: &'static str,
}

/// A plain copy kernel ([`ops::elementwise::copy_buffer`]) over `bytes` (rounded up to 16), kept to time
/// single copies: between decode steps, so the roofline sees the same host speed as the steps.
pub struct CopyProbe {
    bytes: u64,
    copy: ops::Dispatch,
    // The dispatch's bind group holds the buffers; these keep them plainly owned.
    _buffers: [wgpu::Buffer; 2],
}

impl CopyProbe {
    /// Allocates the two buffers and runs one warm-up copy.
    pub fn new(gpu: &Gpu, bytes: u64) -> Result<CopyProbe> {
        let bytes = bytes.max(16).next_multiple_of(16);
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let src = gpu.create_buffer("bench copy src", bytes, usage)?;
        let dst = gpu.create_buffer("bench copy dst", bytes, usage)?;
        let copy = ops::elementwise::copy_buffer(gpu, &src, &dst, bytes)?;
        ops::run(gpu, &[&copy])?;
        Ok(CopyProbe { bytes, copy, _buffers: [src, dst] })
    }

    /// Seconds of one copy: GPU timestamps where the device has them, else submit to completion.
    pub fn seconds(&self, gpu: &Gpu) -> Result<f64> {
        if gpu.features().timestamps {
            if let Some(s) = time_with_timestamps(gpu, &self.copy)? {
                return Ok(s);
            }
        }
        let t0 = Instant::now();
        ops::run(gpu, &[&self.copy])?;
        Ok(t0.elapsed().as_secs_f64())
    }

    /// `2 * bytes / seconds / 1e9` (reads plus writes).
    pub fn gbps(&self, seconds: f64) -> f64 {
        2.0 * self.bytes as f64 / seconds / 1e9
    }

    /// The best of 5 single-copy submissions.
    pub fn bandwidth(&self, gpu: &Gpu) -> Result<CopyBandwidth> {
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            best = best.min(self.seconds(gpu)?);
        }
        Ok(CopyBandwidth {
            bytes: self.bytes,
            seconds: best,
            gbps: self.gbps(best),
            clock: if gpu.features().timestamps { "timestamps" } else { "wall" },
        })
    }
}

/// Measures a [`CopyProbe`] of `bytes`: a warm-up, then the best of 5 single-copy submissions.
pub fn copy_bandwidth(gpu: &Gpu, bytes: u64) -> Result<CopyBandwidth> {
    CopyProbe::new(gpu, bytes)?.bandwidth(gpu)
}

/// A chain of minimal dispatches, as many as a decode step records: a 16-byte copy (one workgroup), each
/// ordered after the one before as the step's are. Its wall time, submit to completion, is what the
/// driver charges for launching and ordering that many dispatches with next to no work in them: the
/// other floor of a decode step besides the bandwidth one. On lavapipe it is the thread pool waking and
/// joining its workers once per dispatch.
pub struct DispatchProbe {
    count: usize,
    // A 16-byte copy: its dispatch is recorded `count` times.
    copy: CopyProbe,
}

impl DispatchProbe {
    /// A chain of `count` dispatches (at least 1), run once to warm up.
    pub fn new(gpu: &Gpu, count: usize) -> Result<DispatchProbe> {
        let probe = DispatchProbe { count: count.max(1), copy: CopyProbe::new(gpu, 16)? };
        probe.seconds(gpu)?;
        Ok(probe)
    }

    /// Wall seconds of the chain: recorded into one compute pass, submitted once, waited for.
    pub fn seconds(&self, gpu: &Gpu) -> Result<f64> {
        let chain = vec![&self.copy.copy; self.count];
        let t0 = Instant::now();
        ops::run(gpu, &chain)?;
        Ok(t0.elapsed().as_secs_f64())
    }
}

/// Seconds of one dispatch between pass-boundary timestamps; `None` if the stamps make no sense.
fn time_with_timestamps(gpu: &Gpu, d: &ops::Dispatch) -> Result<Option<f64>> {
    let set = gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("bench copy"),
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let resolve =
        gpu.create_buffer("bench copy stamps", 16, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC)?;
    let mut encoder = gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("copy") });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("copy"),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: &set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            }),
        });
        d.record(&mut pass);
    }
    encoder.resolve_query_set(&set, 0..2, &resolve, 0);
    gpu.submit_and_wait([encoder.finish()])?;
    let t: Vec<u64> = bytemuck::pod_collect_to_vec(&read_buffer(gpu, &resolve, 0, 16)?);
    let ns = t[1].saturating_sub(t[0]) as f64 * f64::from(gpu.queue().get_timestamp_period());
    Ok((ns > 0.0).then_some(ns / 1e9))
}

/// Weight bytes one decode step reads, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WeightTraffic {
    /// Every executed layer's matrices and norms: with layer sharing each unique layer is counted twice,
    /// because it is read twice per token.
    pub layers: u64,
    /// One row of the embedding table.
    pub embedding_row: u64,
    /// The LM head (the whole embedding table when tied) and the final norm.
    pub head: u64,
}

impl WeightTraffic {
    /// Sum of the parts.
    pub fn total(&self) -> u64 {
        self.layers + self.embedding_row + self.head
    }
}

fn layer_bytes(l: &HostLayer) -> u64 {
    [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj]
        .iter()
        .map(|w| w.size_bytes())
        .sum::<u64>()
        + ((l.input_norm.len() + l.post_norm.len()) * 4) as u64
}

/// The weight bytes a decode step of `host` must read (its memory-bandwidth floor).
pub fn weight_traffic(host: &HostModel) -> WeightTraffic {
    let c = &host.config;
    let layers =
        (0..c.executed_layers()).filter_map(|exec| host.layers.get(c.unique_layer_of(exec))).map(layer_bytes).sum();
    let embedding_row = host.embed.size_bytes() / host.embed.rows.max(1) as u64;
    let head = host.lm_head.as_ref().unwrap_or(&host.embed).size_bytes() + (host.final_norm.len() * 4) as u64;
    WeightTraffic { layers, embedding_row, head }
}

/// The weight types of `host`'s layer matrices, e.g. `q4_0`, or `q4_0+q8_0` when mixed.
pub fn weight_types(host: &HostModel) -> String {
    let mut types: Vec<WeightType> = Vec::new();
    let mats = |l: &HostLayer| -> Vec<WeightType> {
        [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj]
            .iter()
            .map(|w: &&HostWeight| w.wtype)
            .collect()
    };
    for t in host.layers.iter().flat_map(mats) {
        if !types.contains(&t) {
            types.push(t);
        }
    }
    types.iter().map(ToString::to_string).collect::<Vec<_>>().join("+")
}

/// [`MemoryReport`] in a serializable form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryBytes {
    /// Weights (each unique layer once).
    pub weights: u64,
    /// KV cache.
    pub kv_cache: u64,
    /// Activations.
    pub activations: u64,
    /// Staging, uniforms, tables.
    pub scratch: u64,
    /// Sum.
    pub total: u64,
}

impl From<MemoryReport> for MemoryBytes {
    fn from(m: MemoryReport) -> Self {
        MemoryBytes {
            weights: m.weights,
            kv_cache: m.kv_cache,
            activations: m.activations,
            scratch: m.scratch,
            total: m.total(),
        }
    }
}

/// One timed prefill.
#[derive(Clone, Debug, Serialize)]
pub struct PrefillPoint {
    /// Prompt length.
    pub tokens: usize,
    /// Submissions it took (`ceil(tokens / max_batch)`).
    pub submissions: usize,
    /// Wall seconds.
    pub seconds: f64,
    /// `tokens / seconds`.
    pub tokens_per_s: f64,
}

/// GPU time of one kernel family within a profiled step.
#[derive(Clone, Debug, Serialize)]
pub struct FamilyTime {
    /// Kernel family (`gemv`, `attention`, ...).
    pub family: String,
    /// Milliseconds in that family's dispatches.
    pub ms: f64,
}

/// Decode timings at one context.
#[derive(Clone, Debug, Serialize)]
pub struct DecodePoint {
    /// Cache position when the timed steps begin (after warm-up steps).
    pub context: usize,
    /// Timed steps.
    pub steps: usize,
    /// Median wall milliseconds per step.
    pub ms_per_token: f64,
    /// Fastest step.
    pub ms_min: f64,
    /// `1000 / ms_per_token`.
    pub tokens_per_s: f64,
    /// Copy GB/s from one copy after each timed step (median): the same stretch of host speed as the steps.
    pub copy_gbps: f64,
    /// Weight bytes per step ÷ `copy_gbps`, in milliseconds.
    pub roofline_ms: f64,
    /// `ms_per_token / roofline_ms` (both from the same interleaved stretch).
    pub roofline_multiple: f64,
    /// KV-cache bytes the median timed step's attention reads (K and V of every executed layer at every
    /// position up to its own), which the weights-only roofline leaves out.
    pub kv_read_bytes: u64,
    /// `kv_read_bytes ÷ copy_gbps`, in milliseconds.
    pub kv_ms: f64,
    /// Wall milliseconds of a [`DispatchProbe`] as long as the step (median, one after each timed step):
    /// the launch cost of the step's dispatches alone.
    pub dispatch_floor_ms: f64,
    /// `ms_per_token / (roofline_ms + kv_ms + dispatch_floor_ms)`: the step against all its floors, for
    /// drivers (lavapipe's) that run dispatches one after another, so they add up.
    pub floors_multiple: f64,
    /// One profiled step by kernel family (empty without timestamps or with profiling off).
    pub profile: Vec<FamilyTime>,
    /// Sum of `profile` (GPU milliseconds of one step, one pass per dispatch).
    pub profile_total_ms: f64,
    /// The same profiled step by executed layer (GPU milliseconds, execution order; empty when not profiled).
    pub layer_ms: Vec<f64>,
    /// GPU time of executed layers `2i + 1` over that of layers `2i`, summed over `i` (from `layer_ms`).
    /// With layer sharing these are the second and first executions of the same weights, so a value
    /// under 1 is what the repeat gains from weights still in cache; without, they are neighbouring
    /// layers with different weights: the control, about 1.
    pub pair_ratio: Option<f64>,
}

/// `sum(layer_ms[2i + 1]) / sum(layer_ms[2i])` over whole pairs; `None` with fewer than two layers.
pub fn pair_ratio(layer_ms: &[f64]) -> Option<f64> {
    let pairs = layer_ms.chunks_exact(2);
    let (first, second) = pairs.fold((0.0, 0.0), |(a, b), p| (a + p[0], b + p[1]));
    (first > 0.0).then(|| second / first)
}

/// Everything [`bench_decode`] measured for one configuration.
#[derive(Clone, Debug, Serialize)]
pub struct DecodeBench {
    /// e.g. `125m q4_0 LS`.
    pub label: String,
    /// Model source, e.g. `synthetic 125m` or a path.
    pub model: String,
    /// Weight types of the layer matrices.
    pub wtype: String,
    /// Layer sharing on.
    pub layer_sharing: bool,
    /// Unique layers.
    pub unique_layers: usize,
    /// Layers executed per token.
    pub executed_layers: usize,
    /// KV-cache capacity planned.
    pub kv_capacity: usize,
    /// `max_batch` planned.
    pub max_batch: usize,
    /// Prefill timings.
    pub prefill: Vec<PrefillPoint>,
    /// Decode timings.
    pub decode: Vec<DecodePoint>,
    /// One profiled prefill of the shortest prefill length by kernel family (empty when not profiled).
    pub prefill_profile: Vec<FamilyTime>,
    /// Its prompt length (0 when not profiled).
    pub prefill_profile_tokens: usize,
    /// Weight bytes one decode step reads.
    pub weight_traffic: WeightTraffic,
    /// The copy measured before this configuration.
    pub copy: CopyBandwidth,
    /// `weight_traffic.total() / copy.gbps`, in milliseconds: the bandwidth floor of one token (each
    /// decode point has its own, [`DecodePoint::roofline_ms`], from copies between its steps).
    pub roofline_ms: f64,
    /// Dispatches in one decode step.
    pub dispatches_per_step: usize,
    /// Layer-body dispatches per executed layer.
    pub dispatches_per_layer: f64,
    /// GPU memory by category.
    pub memory: MemoryBytes,
    /// How the cache reached each decode context.
    pub fill: ContextFill,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the configuration started, where readable.
    pub loadavg: Option<[f64; 3]>,
    /// Wall seconds the whole configuration took (upload and planning included).
    pub seconds: f64,
}

/// The 1, 5 and 15 minute load averages (Linux), to read noisy numbers next to.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// A deterministic prompt of `n` valid token ids.
fn prompt(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab.max(1)) as u32).collect()
}

/// Benchmarks `host` as configured (weight type and layer sharing come from `host`); `name` describes
/// its source in the report. Uploads and plans the model with `max_batch` = the longest prefill length
/// and a cache of [`BenchOptions::capacity`] positions, measures the copy bandwidth, then prefill and
/// decode as the module docs describe.
pub fn bench_decode(gpu: &Gpu, host: &HostModel, name: &str, options: &BenchOptions) -> Result<DecodeBench> {
    options.validate()?;
    let start = Instant::now();
    let load = loadavg();
    let c = &host.config;
    let max_batch = options.prefill_lengths.iter().copied().max().unwrap_or(64).max(1);
    let capacity = options.capacity();
    let plan = PlanOptions { context: capacity, max_batch, kv_dtype: options.kv_dtype };
    let probe = CopyProbe::new(gpu, options.copy_bytes)?;
    let copy = probe.bandwidth(gpu)?;
    let mut model = Model::new(gpu, host, &plan)?;
    let dispatch_probe = DispatchProbe::new(gpu, model.decode_dispatches().len())?;
    let vocab = c.vocab_size;
    let tokens = prompt(capacity, vocab);

    let say = |what: String| {
        if options.verbose {
            eprintln!("  [{:7.1} s] {what}", start.elapsed().as_secs_f64());
        }
    };
    say(format!("planned; copy {:.2} GB/s", copy.gbps));

    // Prefill pipelines compile on the first prefill: warm them up with a short prompt, so a timed
    // prefill only adds its plan's bind groups (milliseconds).
    if let Some(&shortest) = options.prefill_lengths.iter().min() {
        model.reset();
        model.prefill(&tokens[..shortest.min(2)])?;
        say("prefill warm-up".into());
    }
    let mut prefill: Vec<PrefillPoint> = Vec::new();
    let timed_prefill = |model: &mut Model, n: usize, prefill: &mut Vec<PrefillPoint>| -> Result<u32> {
        model.reset();
        let t0 = Instant::now();
        let next = model.prefill(&tokens[..n])?;
        let seconds = t0.elapsed().as_secs_f64();
        say(format!("prefill {n}: {seconds:.2} s"));
        prefill.push(PrefillPoint {
            tokens: n,
            submissions: n.div_ceil(max_batch),
            seconds,
            tokens_per_s: n as f64 / seconds,
        });
        Ok(next)
    };
    // Lengths that are also decode contexts are timed as those contexts' fill.
    for &n in options.prefill_lengths.iter().filter(|n| !options.contexts.contains(n)) {
        timed_prefill(&mut model, n, &mut prefill)?;
    }

    let traffic = weight_traffic(host);
    let executed = c.executed_layers();
    let roofline_ms = traffic.total() as f64 / (copy.gbps * 1e9) * 1e3;
    let profile = options.profile && gpu.features().timestamps;
    let profiled_prefill = options.prefill_lengths.iter().copied().min().filter(|_| profile);
    let prefill_profile = match profiled_prefill {
        Some(n) => {
            model.reset();
            let split = by_family(&model.profile_prefill_dispatches(&tokens[..n])?);
            split.into_iter().map(|(family, ms)| FamilyTime { family, ms }).collect()
        }
        None => Vec::new(),
    };
    let mut decode = Vec::new();
    for &context in &options.contexts {
        model.reset();
        let mut token = tokens[context % tokens.len()];
        if options.prefill_lengths.contains(&context) {
            token = timed_prefill(&mut model, context, &mut prefill)?;
        } else if context > 0 {
            match options.fill {
                ContextFill::Prefill => token = model.prefill(&tokens[..context])?,
                ContextFill::Seek => model.seek(context)?,
            }
            say(format!("filled to {context} ({:?})", options.fill));
        }
        for _ in 0..options.warmup_steps {
            token = model.step(token)?;
        }
        let at = model.position();
        let mut times = Vec::with_capacity(options.decode_steps);
        let mut copies = Vec::with_capacity(options.decode_steps);
        let mut floors = Vec::with_capacity(options.decode_steps);
        for _ in 0..options.decode_steps {
            let t0 = Instant::now();
            token = model.step(token)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            copies.push(probe.seconds(gpu)?);
            floors.push(dispatch_probe.seconds(gpu)? * 1e3);
        }
        say(format!("decode at {at}: {times:.0?} ms"));
        let (split, layer_ms) = if profile {
            let dispatches = model.profile_step_dispatches(token)?;
            let families = by_family(&dispatches).into_iter().map(|(family, ms)| FamilyTime { family, ms }).collect();
            let layers = model.decode_layer_ranges().into_iter().map(|r| dispatches[r].iter().map(|d| d.1).sum());
            (families, layers.collect::<Vec<f64>>())
        } else {
            (Vec::new(), Vec::new())
        };
        let ms = median(&times);
        let copy_gbps = probe.gbps(median(&copies));
        let point_roofline_ms = traffic.total() as f64 / (copy_gbps * 1e9) * 1e3;
        let dispatch_floor_ms = median(&floors);
        // The median step reads positions 0..=at + steps / 2.
        let kv_positions = (at + times.len() / 2 + 1) as u64;
        let kv_read_bytes =
            (executed * 2 * c.num_key_value_heads * c.head_dim) as u64 * kv_positions * model.kv_dtype().size() as u64;
        let kv_ms = kv_read_bytes as f64 / (copy_gbps * 1e9) * 1e3;
        decode.push(DecodePoint {
            context: at,
            steps: times.len(),
            ms_per_token: ms,
            ms_min: times.iter().copied().fold(f64::INFINITY, f64::min),
            tokens_per_s: 1e3 / ms,
            copy_gbps,
            roofline_ms: point_roofline_ms,
            roofline_multiple: ms / point_roofline_ms,
            kv_read_bytes,
            kv_ms,
            dispatch_floor_ms,
            floors_multiple: ms / (point_roofline_ms + kv_ms + dispatch_floor_ms),
            profile_total_ms: split.iter().map(|f| f.ms).sum(),
            profile: split,
            pair_ratio: pair_ratio(&layer_ms),
            layer_ms,
        });
    }
    prefill.sort_by_key(|p| p.tokens);

    let tag = if c.layer_sharing { "LS" } else { "plain" };
    let wtype = weight_types(host);
    Ok(DecodeBench {
        label: format!("{name} {wtype} {tag}"),
        model: name.to_string(),
        wtype,
        layer_sharing: c.layer_sharing,
        unique_layers: c.num_hidden_layers,
        executed_layers: executed,
        kv_capacity: capacity,
        max_batch,
        prefill,
        decode,
        prefill_profile,
        prefill_profile_tokens: profiled_prefill.unwrap_or(0),
        weight_traffic: traffic,
        copy,
        roofline_ms,
        dispatches_per_step: model.decode_dispatches().len(),
        dispatches_per_layer: model.decode_layer_dispatches() as f64 / executed.max(1) as f64,
        memory: model.memory().into(),
        fill: options.fill,
        loadavg: load,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Layer sharing's cost: decode time with it over decode time without, for one model and weight type
/// at one context.
#[derive(Clone, Debug, Serialize)]
pub struct SharingRatio {
    /// Model source.
    pub model: String,
    /// Weight types.
    pub wtype: String,
    /// Context of the decode points compared.
    pub context: usize,
    /// LS ms/token ÷ plain ms/token (MobileLLM reports 1.026 on an iPhone, where the repeated layer's
    /// weights are still in cache).
    pub ratio: f64,
    /// LS weight traffic ÷ plain weight traffic: the ratio if nothing were cached.
    pub traffic_ratio: f64,
    /// The LS step's second / first execution GPU time ([`DecodePoint::pair_ratio`]), where profiled.
    pub second_execution: Option<f64>,
    /// The plain step's odd / even layer GPU time, the control for `second_execution`.
    pub plain_pairs: Option<f64>,
}

/// Pairs each layer-sharing result with the plain result of the same model and weight type and
/// compares decode at the decode points of equal index (same requested context).
pub fn sharing_ratios(results: &[DecodeBench]) -> Vec<SharingRatio> {
    let mut out = Vec::new();
    for ls in results.iter().filter(|r| r.layer_sharing) {
        let Some(plain) = results.iter().find(|r| !r.layer_sharing && r.model == ls.model && r.wtype == ls.wtype)
        else {
            continue;
        };
        for (a, b) in ls.decode.iter().zip(&plain.decode) {
            out.push(SharingRatio {
                model: ls.model.clone(),
                wtype: ls.wtype.clone(),
                context: b.context,
                ratio: a.ms_per_token / b.ms_per_token,
                traffic_ratio: ls.weight_traffic.total() as f64 / plain.weight_traffic.total().max(1) as f64,
                second_execution: a.pair_ratio,
                plain_pairs: b.pair_ratio,
            });
        }
    }
    out
}

/// Layer sharing's cost with both models resident and their decode steps alternating, so the host's drift
/// (on lavapipe, ±20-40% over minutes) hits both alike; see [`bench_sharing_interleaved`].
#[derive(Clone, Debug, Serialize)]
pub struct InterleavedSharing {
    /// Model source.
    pub model: String,
    /// Weight types.
    pub wtype: String,
    /// Cache position when the timed steps begin.
    pub context: usize,
    /// Timed steps of each model.
    pub steps: usize,
    /// Median wall milliseconds per step, plain.
    pub plain_ms: f64,
    /// Median wall milliseconds per step, layer-shared.
    pub shared_ms: f64,
    /// `shared_ms / plain_ms`.
    pub ratio: f64,
}

/// Plans `host` twice, without and with layer sharing (the same weights; each model uploads its own copy),
/// and at each of `options.contexts` (reached with [`Model::seek`]) times `options.decode_steps` decode
/// steps of each, alternating which model goes first.
pub fn bench_sharing_interleaved(
    gpu: &Gpu,
    host: &HostModel,
    name: &str,
    options: &BenchOptions,
) -> Result<Vec<InterleavedSharing>> {
    options.validate()?;
    let plan = PlanOptions { context: options.capacity(), max_batch: 1, kv_dtype: options.kv_dtype };
    let mut plain_host = host.clone();
    plain_host.config.layer_sharing = false;
    let mut shared_host = host.clone();
    shared_host.config.layer_sharing = true;
    let mut models = [Model::new(gpu, &plain_host, &plan)?, Model::new(gpu, &shared_host, &plan)?];
    let token = prompt(1, host.config.vocab_size)[0];
    let mut out = Vec::new();
    for &context in &options.contexts {
        for m in &mut models {
            m.reset();
            m.seek(context)?;
            for _ in 0..options.warmup_steps {
                m.step(token)?;
            }
        }
        let at = models[0].position();
        let mut times = [Vec::new(), Vec::new()];
        for i in 0..options.decode_steps {
            for k in [i % 2, 1 - i % 2] {
                let t0 = Instant::now();
                models[k].step(token)?;
                times[k].push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (plain_ms, shared_ms) = (median(&times[0]), median(&times[1]));
        out.push(InterleavedSharing {
            model: name.to_string(),
            wtype: weight_types(host),
            context: at,
            steps: options.decode_steps,
            plain_ms,
            shared_ms,
            ratio: shared_ms / plain_ms,
        });
    }
    Ok(out)
}

/// A whole run: device, results, and the layer-sharing comparison.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// [`Gpu::describe`].
    pub device: String,
    /// One entry per configuration.
    pub results: Vec<DecodeBench>,
    /// [`sharing_ratios`] of `results`.
    pub sharing: Vec<SharingRatio>,
    /// [`bench_sharing_interleaved`], where it was run.
    pub sharing_interleaved: Vec<InterleavedSharing>,
    /// Load averages when the report was made.
    pub loadavg_end: Option<[f64; 3]>,
}

impl BenchReport {
    /// Collects `results` measured on `gpu`.
    pub fn new(gpu: &Gpu, results: Vec<DecodeBench>) -> BenchReport {
        let sharing = sharing_ratios(&results);
        BenchReport {
            device: gpu.describe(),
            results,
            sharing,
            sharing_interleaved: Vec::new(),
            loadavg_end: loadavg(),
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn load_text(l: Option<[f64; 3]>) -> String {
    l.map_or("?".into(), |l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
}

/// The report as Markdown: a decode table (one row per configuration and context), the layer-sharing
/// ratios, and the per-family GPU split of the profiled steps.
pub fn markdown_table(report: &BenchReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "Device: {}\n", report.device);
    let _ = writeln!(
        s,
        "| config | prefill tok/s | ctx | ms/token | tok/s | roofline ms | x roofline | KV ms | dispatch floor ms | x (roofline + KV + floor) | GPU ms (ts) | dispatches/step (/layer) | weights / KV / act MiB | copy GB/s | load |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|");
    for r in &report.results {
        let prefill =
            r.prefill.iter().map(|p| format!("{:.1} (n={})", p.tokens_per_s, p.tokens)).collect::<Vec<_>>().join(", ");
        for d in &r.decode {
            let gpu_ms = if d.profile.is_empty() { "-".into() } else { format!("{:.1}", d.profile_total_ms) };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} ({:.1}) | {:.1} / {:.1} / {:.1} | {:.2} | {} |",
                r.label,
                prefill,
                d.context,
                d.ms_per_token,
                d.tokens_per_s,
                d.roofline_ms,
                d.roofline_multiple,
                d.kv_ms,
                d.dispatch_floor_ms,
                d.floors_multiple,
                gpu_ms,
                r.dispatches_per_step,
                r.dispatches_per_layer,
                mib(r.memory.weights),
                mib(r.memory.kv_cache),
                mib(r.memory.activations),
                d.copy_gbps,
                load_text(r.loadavg),
            );
        }
    }
    if !report.sharing.is_empty() {
        let _ = writeln!(
            s,
            "\n| layer sharing | ctx | LS / plain ms/token | LS / plain weight bytes | LS 2nd / 1st execution (GPU) | plain odd / even layers (GPU) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.3}"));
        for x in &report.sharing {
            let _ = writeln!(
                s,
                "| {} {} | {} | {:.3} | {:.3} | {} | {} |",
                x.model,
                x.wtype,
                x.context,
                x.ratio,
                x.traffic_ratio,
                ratio(x.second_execution),
                ratio(x.plain_pairs)
            );
        }
    }
    let profiled: Vec<_> = report
        .results
        .iter()
        .flat_map(|r| r.decode.iter().map(move |d| (r, d)))
        .filter(|(_, d)| !d.profile.is_empty())
        .collect();
    if !report.sharing_interleaved.is_empty() {
        let _ = writeln!(
            s,
            "\n| layer sharing, steps interleaved | ctx | steps | plain ms/token | LS ms/token | LS / plain |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for x in &report.sharing_interleaved {
            let _ = writeln!(
                s,
                "| {} {} | {} | {} | {:.1} | {:.1} | {:.3} |",
                x.model, x.wtype, x.context, x.steps, x.plain_ms, x.shared_ms, x.ratio
            );
        }
    }
    let split_text = |families: &[FamilyTime]| {
        let total = families.iter().map(|f| f.ms).sum::<f64>().max(f64::MIN_POSITIVE);
        let parts: Vec<String> =
            families.iter().map(|f| format!("{} {:.1} ({:.0}%)", f.family, f.ms, 100.0 * f.ms / total)).collect();
        parts.join(", ")
    };
    if !profiled.is_empty() {
        let _ = writeln!(s, "\n| config | step | GPU time by kernel family (ms, share) |");
        let _ = writeln!(s, "|---|---|---|");
        for r in report.results.iter().filter(|r| !r.prefill_profile.is_empty()) {
            let step = format!("prefill of {}", r.prefill_profile_tokens);
            let _ = writeln!(s, "| {} | {step} | {} |", r.label, split_text(&r.prefill_profile));
        }
        for (r, d) in profiled {
            let _ = writeln!(s, "| {} | decode at ctx {} | {} |", r.label, d.context, split_text(&d.profile));
        }
    }
    let _ = writeln!(s, "\nLoad average at the end: {}", load_text(report.loadavg_end));
    s
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.display().to_string(), source: std::io::Error::other(e.to_string()) }
}

/// Writes the report as pretty JSON.
pub fn write_json(report: &BenchReport, path: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(|e| io_error(path, e))?;
    std::fs::write(path, json).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

/// Horizontal bars on a log or linear axis, one per label, with optional marker lines
/// (`markers[i]` drawn across bar `i`).
fn bar_chart(
    path: &Path,
    title: &str,
    axis: &str,
    bars: &[(String, f64)],
    markers: Option<(&str, &[f64])>,
    log: bool,
) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| io_error(path, e);
    let n = bars.len();
    let height = (120 + 34 * n) as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let values = bars.iter().map(|b| b.1).chain(markers.iter().flat_map(|m| m.1.iter().copied()));
    let finite: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
    let hi = finite.iter().copied().fold(f64::MIN_POSITIVE, f64::max) * 1.3;
    // Bar i sits in segment n-1-i (the first bar on top). `0..=top` has top+1 segments (the last ends at
    // `Last`); plotters draws no labels for a one-value range, so one bar gets an empty second slot.
    let top = n.saturating_sub(1).max(1);
    let slot = move |i: usize| {
        let p = n - 1 - i;
        (SegmentValue::Exact(p), if p < top { SegmentValue::Exact(p + 1) } else { SegmentValue::Last })
    };
    let label_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(p) if *p < n => bars[n - 1 - p].0.clone(),
        _ => String::new(),
    };
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 20)).margin(14).x_label_area_size(44).y_label_area_size(260);
    // One drawing routine over either x axis: the element types differ only in the coordinate.
    macro_rules! draw {
        ($chart:expr, $lo:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(top + 1)
                .y_label_formatter(&label_of)
                .x_desc(axis)
                .draw()
                .map_err(|e| err(&e))?;
            chart
                .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                    let (a, b) = slot(i);
                    let mut r = Rectangle::new([($lo, a), (v.max($lo), b)], BLUE.mix(0.6).filled());
                    r.set_margin(5, 5, 0, 0);
                    r
                }))
                .map_err(|e| err(&e))?
                .label("measured")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], BLUE.mix(0.6).filled()));
            if let Some((name, marks)) = markers {
                chart
                    .draw_series(marks.iter().enumerate().map(|(i, m)| {
                        let (a, b) = slot(i);
                        PathElement::new(vec![(m.max($lo), a), (m.max($lo), b)], RED.stroke_width(3))
                    }))
                    .map_err(|e| err(&e))?
                    .label(name)
                    .legend(|(x, y)| PathElement::new(vec![(x + 8, y - 7), (x + 8, y + 7)], RED.stroke_width(3)));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    if log {
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min).min(hi) / 2.0;
        let chart = builder.build_cartesian_2d((lo..hi).log_scale(), (0..top).into_segmented()).map_err(|e| err(&e))?;
        draw!(chart, lo);
    } else {
        let chart = builder.build_cartesian_2d(0.0..hi, (0..top).into_segmented()).map_err(|e| err(&e))?;
        draw!(chart, 0.0);
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// An SVG of decode ms/token per configuration and context (log axis), with each point's roofline
/// (weight bytes ÷ the copy bandwidth measured between its steps) drawn across its bar.
pub fn plot_decode_svg(report: &BenchReport, path: &Path) -> Result<()> {
    let mut bars = Vec::new();
    let mut roof = Vec::new();
    for r in &report.results {
        for d in &r.decode {
            bars.push((format!("{} @{}", r.label, d.context), d.ms_per_token));
            roof.push(d.roofline_ms);
        }
    }
    if bars.is_empty() {
        return Err(Error::invalid("decode results to plot", 0, "at least one decode point"));
    }
    let title = format!("Decode ms/token ({})", report.device.split(" (").next().unwrap_or(&report.device));
    bar_chart(path, &title, "ms per token (log scale)", &bars, Some(("roofline (weights / copy GB/s)", &roof)), true)
}

/// Reads the per-kernel benchmark's JSON (`benches/kernels.rs`: `{"device", "rows": [{family, name,
/// gbps, copy_gbps, frac_of_copy, ...}]}`), tolerating missing fields: rows may be the top-level array,
/// the fraction may be absent (then `gbps / copy_gbps`), rows without a usable number are skipped.
/// Returns `(label, fraction of copy)` pairs.
pub fn read_kernels_json(path: &Path) -> Result<Vec<(String, f64)>> {
    use serde_json::Value;
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path.display().to_string(), e.to_string()))?;
    let rows = match &json {
        Value::Array(a) => a.as_slice(),
        v => v.get("rows").or_else(|| v.get("results")).and_then(Value::as_array).map_or(&[][..], Vec::as_slice),
    };
    let num = |r: &Value, k: &str| r.get(k).and_then(Value::as_f64);
    let text_of = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(rows
        .iter()
        .filter_map(|r| {
            let frac = num(r, "frac_of_copy").or_else(|| num(r, "fraction_of_copy")).or_else(|| {
                let (g, c) = (num(r, "gbps")?, num(r, "copy_gbps")?);
                (c > 0.0).then_some(g / c)
            })?;
            let label = [text_of(r, "family"), text_of(r, "name").or_else(|| text_of(r, "kernel"))]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            frac.is_finite().then_some((label, frac))
        })
        .collect())
}

/// An SVG of each kernel's GB/s as a fraction of the copy's, from `kernels_json`; returns the number of
/// kernels drawn (0: nothing to draw, no file written).
pub fn plot_kernels_svg(kernels_json: &Path, path: &Path) -> Result<usize> {
    let rows = read_kernels_json(kernels_json)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ones = vec![1.0; rows.len()];
    bar_chart(
        path,
        "Kernel GB/s as a fraction of a plain copy",
        "fraction of copy GB/s",
        &rows,
        Some(("copy", &ones)),
        false,
    )?;
    Ok(rows.len())
}

/// Writes `decode.json`, `decode.md` ([`markdown_table`]) and `decode.svg` into `dir` (created if
/// needed), and `kernels.svg` when `dir/kernels.json` exists; returns the paths written.
pub fn write_reports(report: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.display().to_string(), source })?;
    let mut written = Vec::new();
    let json = dir.join("decode.json");
    write_json(report, &json)?;
    written.push(json);
    let md = dir.join("decode.md");
    std::fs::write(&md, markdown_table(report))
        .map_err(|source| Error::Io { path: md.display().to_string(), source })?;
    written.push(md);
    if report.results.iter().any(|r| !r.decode.is_empty()) {
        let svg = dir.join("decode.svg");
        plot_decode_svg(report, &svg)?;
        written.push(svg);
    }
    let kernels = dir.join("kernels.json");
    if kernels.exists() {
        let svg = dir.join("kernels.svg");
        if plot_kernels_svg(&kernels, &svg)? > 0 {
            written.push(svg);
        }
    }
    Ok(written)
}
