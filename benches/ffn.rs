//! Fused vs unfused SwiGLU feed-forward block, per weight type, at the MobileLLM-125M and -350M shapes
//! (decode, n = 1): µs per block and dispatches per block.
//!
//! - fused: 2 dispatches, `ops::ffn::ffn_block` (RMSNorm + gate/up + SiLU·mul in one kernel, then the
//!   down GEMV accumulating into the residual);
//! - unfused: 6 dispatches, rms_norm, gemv gate, gemv up, silu_mul, gemv down, add.
//!
//! The last two columns time the gate/up half alone: the fused kernel (1 dispatch) vs the first four
//! dispatches of the unfused chain.
//!
//! Each measurement records `REPS` copies of the dispatch list into one compute pass and takes the GPU
//! time of the pass (timestamp queries at its start and end) when the device has `TIMESTAMP_QUERY`, else
//! the wall time of the submission, divided by `REPS`. Fused and unfused submissions alternate, `RUNS`
//! each after a warm-up, and each keeps its minimum: on a shared machine interference only adds time. Prints a table and
//! writes `target/bench/ffn.json`. `MOBILELLM_FEATURES` / `MOBILELLM_BACKEND` pick the device as elsewhere;
//! `MOBILELLM_BENCH_REPS` overrides the repetitions.

use std::time::Instant;

use mobilellm_kernels::ops::{self, Dispatch};
use mobilellm_kernels::quant::{GpuWeight, HostWeight, WeightType};
use mobilellm_kernels::{DType, Gpu, GpuOptions, Result, Tensor};

const RUNS: usize = 5;
const EPS: f32 = 1e-5;

fn random(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Seconds per repetition of `list` in one submission of `reps` repetitions.
fn time_list(gpu: &Gpu, list: &[&Dispatch], reps: usize) -> Result<(f64, &'static str)> {
    let timestamps = gpu.features().timestamps;
    let query = timestamps.then(|| {
        gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("ffn bench"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        })
    });
    let resolve =
        gpu.create_buffer("ffn bench resolve", 16, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC)?;
    let mut encoder = gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    {
        let timestamp_writes = query.as_ref().map(|q| wgpu::ComputePassTimestampWrites {
            query_set: q,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        });
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("ffn bench"), timestamp_writes });
        for _ in 0..reps {
            for d in list {
                d.record(&mut pass);
            }
        }
    }
    if let Some(q) = &query {
        encoder.resolve_query_set(q, 0..2, &resolve, 0);
    }
    let start = Instant::now();
    gpu.submit_and_wait([encoder.finish()])?;
    let wall = start.elapsed().as_secs_f64();
    let seconds = if query.is_some() {
        let bytes = mobilellm_kernels::tensor::read_buffer(gpu, &resolve, 0, 16)?;
        let t: &[u64] = bytemuck::cast_slice(&bytes);
        t[1].saturating_sub(t[0]) as f64 * gpu.queue().get_timestamp_period() as f64 * 1e-9
    } else {
        wall
    };
    Ok((seconds / reps as f64, if timestamps { "gpu timestamps" } else { "wall" }))
}

struct Row {
    hidden: usize,
    ffn: usize,
    wtype: WeightType,
    fused_us: f64,
    fused_dispatches: usize,
    unfused_us: f64,
    unfused_dispatches: usize,
    weight_bytes: u64,
    clock: &'static str,
    /// The gate/up half alone: the fused kernel vs rms_norm + 2 GEMVs + silu_mul.
    gate_up_fused_us: f64,
    gate_up_unfused_us: f64,
}

fn measure(gpu: &Gpu, hidden: usize, ffn: usize, wtype: WeightType, reps: usize) -> Result<Row> {
    let seed = (hidden * 3 + ffn) as u64;
    let gate = HostWeight::quantize(wtype, ffn, hidden, &random(seed, ffn * hidden, 0.05))?;
    let up = HostWeight::quantize(wtype, ffn, hidden, &random(seed + 1, ffn * hidden, 0.05))?;
    let down = HostWeight::quantize(wtype, hidden, ffn, &random(seed + 2, ffn * hidden, 0.05))?;
    // ffn.wgsl reads storage buffers only.
    let buffer = mobilellm_kernels::WeightStorage::Buffer;
    let (gw, uw) = (GpuWeight::upload_as(gpu, &gate, buffer)?, GpuWeight::upload_as(gpu, &up, buffer)?);
    let dw = GpuWeight::upload(gpu, &down)?;
    let x = Tensor::from_slice(gpu, &[1, hidden], &random(seed + 3, hidden, 1.0))?;
    let norm =
        Tensor::from_slice(gpu, &[hidden], &random(seed + 4, hidden, 0.1).iter().map(|v| 1.0 + v).collect::<Vec<_>>())?;
    let h = Tensor::zeros(gpu, DType::F32, &[1, ffn])?;

    let fused = ops::ffn::ffn_block(gpu, &x, &norm, EPS, &gw, &uw, &dw, &h)?;
    let normed = Tensor::zeros(gpu, DType::F32, &[1, hidden])?;
    let g = Tensor::zeros(gpu, DType::F32, &[1, ffn])?;
    let u = Tensor::zeros(gpu, DType::F32, &[1, ffn])?;
    let y = Tensor::zeros(gpu, DType::F32, &[1, hidden])?;
    let out = Tensor::zeros(gpu, DType::F32, &[1, hidden])?;
    let unfused = [
        ops::rms_norm::rms_norm(gpu, &x, &norm, &normed, EPS)?,
        ops::gemv::gemv(gpu, &gw, &normed, &g, 0, false)?,
        ops::gemv::gemv(gpu, &uw, &normed, &u, 0, false)?,
        ops::ffn::silu_mul(gpu, &g, &u, &h)?,
        ops::gemv::gemv(gpu, &dw, &h, &y, 0, false)?,
        ops::elementwise::add(gpu, &x, &y, &out)?,
    ];
    let (fused_list, unfused_list) = (fused.iter().collect::<Vec<_>>(), unfused.iter().collect::<Vec<_>>());
    let (gu_fused, gu_unfused) = (vec![&fused[0]], unfused[..4].iter().collect::<Vec<_>>());
    let (mut fused_s, mut unfused_s, mut clock) = (f64::INFINITY, f64::INFINITY, "");
    let (mut gu_fused_s, mut gu_unfused_s) = (f64::INFINITY, f64::INFINITY);
    for run in 0..=RUNS {
        let (f, c) = time_list(gpu, &fused_list, reps)?;
        let (u, _) = time_list(gpu, &unfused_list, reps)?;
        let (gf, _) = time_list(gpu, &gu_fused, reps)?;
        let (gu, _) = time_list(gpu, &gu_unfused, reps)?;
        // Run 0 warms caches and lazily created driver state.
        if run > 0 {
            (fused_s, unfused_s, clock) = (fused_s.min(f), unfused_s.min(u), c);
            (gu_fused_s, gu_unfused_s) = (gu_fused_s.min(gf), gu_unfused_s.min(gu));
        }
    }
    Ok(Row {
        hidden,
        ffn,
        wtype,
        fused_us: fused_s * 1e6,
        fused_dispatches: fused.len(),
        unfused_us: unfused_s * 1e6,
        unfused_dispatches: unfused.len(),
        weight_bytes: gw.size_bytes() + uw.size_bytes() + dw.size_bytes(),
        clock,
        gate_up_fused_us: gu_fused_s * 1e6,
        gate_up_unfused_us: gu_unfused_s * 1e6,
    })
}

fn main() -> Result<()> {
    let gpu = Gpu::with_options(&GpuOptions::from_env()?)?;
    let reps: usize = std::env::var("MOBILELLM_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    println!("device: {}", gpu.describe());
    println!(
        "{:>10} {:>6} {:>12} {:>5} {:>12} {:>5} {:>8} {:>12} {:>14} {:>14}",
        "shape",
        "type",
        "fused µs",
        "disp",
        "unfused µs",
        "disp",
        "speedup",
        "fused GB/s",
        "gate/up 1 µs",
        "gate/up 4 µs"
    );
    let mut rows = Vec::new();
    for (hidden, ffn) in [(576, 1536), (960, 2560)] {
        for wtype in WeightType::ALL {
            let r = measure(&gpu, hidden, ffn, wtype, reps)?;
            println!(
                "{:>10} {:>6} {:>12.1} {:>5} {:>12.1} {:>5} {:>7.2}x {:>12.2} {:>14.1} {:>14.1}",
                format!("{hidden}/{ffn}"),
                wtype.to_string(),
                r.fused_us,
                r.fused_dispatches,
                r.unfused_us,
                r.unfused_dispatches,
                r.unfused_us / r.fused_us,
                r.weight_bytes as f64 / (r.fused_us * 1e-6) / 1e9,
                r.gate_up_fused_us,
                r.gate_up_unfused_us,
            );
            rows.push(r);
        }
    }
    let json = serde_json::json!({
        "device": gpu.describe(),
        "n": 1,
        "reps": reps,
        "runs": RUNS,
        "clock": rows.first().map(|r| r.clock).unwrap_or("none"),
        "results": rows.iter().map(|r| serde_json::json!({
            "hidden": r.hidden,
            "ffn": r.ffn,
            "wtype": r.wtype.to_string(),
            "fused_us": r.fused_us,
            "fused_dispatches": r.fused_dispatches,
            "unfused_us": r.unfused_us,
            "unfused_dispatches": r.unfused_dispatches,
            "speedup": r.unfused_us / r.fused_us,
            "weight_bytes": r.weight_bytes,
            "gate_up_fused_us": r.gate_up_fused_us,
            "gate_up_unfused_us": r.gate_up_unfused_us,
        })).collect::<Vec<_>>(),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| mobilellm_kernels::Error::Device(format!("creating {dir:?}: {e}")))?;
    let path = dir.join("ffn.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap_or_default())
        .map_err(|e| mobilellm_kernels::Error::Device(format!("writing {path:?}: {e}")))?;
    println!("wrote {}", path.display());
    Ok(())
}
