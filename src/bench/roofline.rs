//! What a decode step cannot beat: the copy bandwidth behind the roofline, the dispatch floor, and the
//! weight bytes a step reads.

use std::time::Instant;

use serde::Serialize;

use crate::device::Gpu;
use crate::error::Result;
use crate::model::host::{HostLayer, HostModel};
use crate::ops;
use crate::quant::{HostWeight, WeightType};
use crate::tensor::read_buffer;

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
