//! [`bench_decode`], its result types, and the layer-sharing comparisons.

use std::time::Instant;

use serde::Serialize;

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::model::host::HostModel;
use crate::model::planner::{by_family, MemoryReport, Model, PlanOptions};

use super::roofline::{weight_traffic, weight_types, CopyBandwidth, CopyProbe, DispatchProbe, WeightTraffic};
use super::{loadavg, median, prompt, BenchOptions, ContextFill};

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

/// Batched decoding of several sequences at one context ([`Model::decode_batch`]: one submission per step,
/// each weight read once for all of them).
#[derive(Clone, Debug, Serialize)]
pub struct BatchPoint {
    /// Sequences decoded together (one row each per step).
    pub sequences: usize,
    /// Positions each sequence holds when the timed steps begin.
    pub context: usize,
    /// Timed steps.
    pub steps: usize,
    /// Median wall milliseconds per step (one token of every sequence).
    pub ms_per_step: f64,
    /// Fastest step.
    pub ms_min: f64,
    /// Tokens per second over all sequences: `sequences * 1000 / ms_per_step`.
    pub tokens_per_s: f64,
    /// `tokens_per_s` over the one-sequence decode's at the same context, where that was timed.
    pub vs_one_sequence: Option<f64>,
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
    /// Batched decode timings ([`BenchOptions::batch_sequences`]).
    pub batch: Vec<BatchPoint>,
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
    if let Some(&sequences) = options.batch_sequences.iter().find(|&&b| b > max_batch) {
        return Err(Error::invalid(
            "batch sequences",
            sequences,
            format!("at most the plan's max_batch {max_batch} (the longest prefill length)"),
        ));
    }
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
    // Before the batches: their cache is not the model's.
    let memory = model.memory().into();
    let mut batch = Vec::new();
    if let Some(&context) = options.contexts.first() {
        for &sequences in &options.batch_sequences {
            batch.push(time_batch(&mut model, options, &tokens, context, sequences, &decode)?);
            say(format!("batch of {sequences}: {:.0} ms/step", batch[batch.len() - 1].ms_per_step));
        }
    }

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
        batch,
        prefill_profile,
        prefill_profile_tokens: profiled_prefill.unwrap_or(0),
        weight_traffic: traffic,
        copy,
        roofline_ms,
        dispatches_per_step: model.decode_dispatches().len(),
        dispatches_per_layer: model.decode_layer_dispatches() as f64 / executed.max(1) as f64,
        memory,
        fill: options.fill,
        loadavg: load,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Times `sequences` sequences decoded together at `context`: the model's own context is filled as the
/// one-sequence decode's is ([`ContextFill`]) and copied into each sequence, then one warm-up step (it
/// plans that row count) and the timed steps.
fn time_batch(
    model: &mut Model,
    options: &BenchOptions,
    tokens: &[u32],
    context: usize,
    sequences: usize,
    one_sequence: &[DecodePoint],
) -> Result<BatchPoint> {
    model.reserve_sequences(sequences)?;
    model.reset();
    match options.fill {
        ContextFill::Prefill if context > 0 => {
            model.prefill(&tokens[..context])?;
        }
        _ => model.seek(context)?,
    }
    model.context_to_sequence(0)?;
    for seq in 1..sequences {
        model.copy_sequence(0, seq)?;
    }
    let mut next: Vec<u32> = (0..sequences).map(|s| tokens[(context + s) % tokens.len()]).collect();
    let mut step = |next: &[u32]| {
        let rows: Vec<(usize, u32)> = next.iter().copied().enumerate().collect();
        model.decode_batch(&rows)
    };
    for _ in 0..options.warmup_steps.max(1) {
        next = step(&next)?;
    }
    let at = context + options.warmup_steps.max(1);
    let mut times = Vec::with_capacity(options.decode_steps);
    for _ in 0..options.decode_steps {
        let t0 = Instant::now();
        next = step(&next)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let ms = median(&times);
    let tokens_per_s = sequences as f64 * 1e3 / ms;
    // The one-sequence decode whose timed steps began nearest this context.
    let one = one_sequence.iter().min_by_key(|d| d.context.abs_diff(at)).filter(|d| d.context.abs_diff(at) <= 1);
    Ok(BatchPoint {
        sequences,
        context: at,
        steps: times.len(),
        ms_per_step: ms,
        ms_min: times.iter().copied().fold(f64::INFINITY, f64::min),
        tokens_per_s,
        vs_one_sequence: one.map(|d| tokens_per_s / d.tokens_per_s),
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
