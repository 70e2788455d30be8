//! A small benchmark harness shared by the bench targets: times a [`Dispatch`] (GPU timestamps when the
//! device has them, else wall time over many calls in one submission), compares with a plain copy of the
//! same bytes measured in the same run, prints a table and writes JSON.
#![allow(dead_code)]

use std::time::Instant;

use mobilellm_kernels::ops::{self, Dispatch};
use mobilellm_kernels::Gpu;

/// Command-line options: `--quick` and an optional substring filter on row names.
pub struct Args {
    /// Fewer repetitions and only the small shapes.
    pub quick: bool,
    /// Only rows whose name contains this.
    pub filter: Option<String>,
}

impl Args {
    /// Parses `std::env::args` (ignoring the `--bench` cargo passes).
    pub fn parse() -> Args {
        let mut quick = false;
        let mut filter = None;
        for a in std::env::args().skip(1) {
            match a.as_str() {
                "--quick" => quick = true,
                "--bench" => {}
                s if s.starts_with("--") => {}
                s => filter = Some(s.to_string()),
            }
        }
        Args { quick, filter }
    }
    /// Whether a row named `name` runs.
    pub fn wants(&self, name: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| name.contains(f.as_str()))
    }
}

/// One measured row.
#[derive(serde::Serialize, Clone, Debug)]
pub struct Row {
    /// Kernel family.
    pub family: String,
    /// e.g. `q4_0 1536x576 n=1`.
    pub name: String,
    /// Microseconds per call.
    pub us: f64,
    /// Bytes the call must move (weights, plus activations where they matter).
    pub bytes: u64,
    /// bytes / time.
    pub gbps: f64,
    /// Microseconds for a plain copy of the same bytes.
    pub copy_us: f64,
    /// GB/s of that copy (reads + writes counted as `bytes`, the same convention).
    pub copy_gbps: f64,
    /// gbps / copy_gbps.
    pub frac_of_copy: f64,
    /// `timestamps` or `wall`.
    pub clock: String,
    /// Free-form extra (e.g. a ratio to another row).
    pub note: String,
}

/// Times dispatches and collects rows.
pub struct Bench {
    /// The device.
    pub gpu: Gpu,
    /// Options.
    pub args: Args,
    /// Results so far.
    pub rows: Vec<Row>,
}

impl Bench {
    /// Opens the default device (honours `MOBILELLM_*`).
    pub fn new() -> Bench {
        let gpu = Gpu::new().expect("a GPU adapter");
        eprintln!("bench device: {}", gpu.describe());
        Bench { gpu, args: Args::parse(), rows: Vec::new() }
    }

    /// Microseconds per call of `d` (after a warm-up), and the clock used.
    pub fn time(&self, d: &Dispatch) -> (f64, &'static str) {
        ops::run(&self.gpu, &[d]).expect("warm-up run");
        let t0 = Instant::now();
        ops::run(&self.gpu, &[d]).expect("run");
        let once = t0.elapsed().as_secs_f64();
        let budget = if self.args.quick { 0.15 } else { 0.6 };
        let reps = ((budget / once.max(1e-6)) as usize).clamp(2, 200);
        if self.gpu.features().timestamps {
            if let Some(us) = self.time_timestamps(d, reps) {
                return (us, "timestamps");
            }
        }
        let list: Vec<&Dispatch> = std::iter::repeat_n(d, reps).collect();
        let t0 = Instant::now();
        ops::run(&self.gpu, &list).expect("run");
        (t0.elapsed().as_secs_f64() * 1e6 / reps as f64, "wall")
    }

    fn time_timestamps(&self, d: &Dispatch, reps: usize) -> Option<f64> {
        let device = self.gpu.device();
        let set = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve =
            self.gpu.create_buffer("ts", 16, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC).ok()?;
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            });
            for _ in 0..reps {
                d.record(&mut pass);
            }
        }
        encoder.resolve_query_set(&set, 0..2, &resolve, 0);
        self.gpu.submit_and_wait([encoder.finish()]).ok()?;
        let bytes = mobilellm_kernels::tensor::read_buffer(&self.gpu, &resolve, 0, 16).ok()?;
        let t: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let ns = t[1].checked_sub(t[0])? as f64 * self.gpu.queue().get_timestamp_period() as f64;
        (ns > 0.0).then_some(ns / 1e3 / reps as f64)
    }

    /// µs per plain copy of `bytes` bytes (read + write), measured now on the same device.
    pub fn copy_us(&self, bytes: u64) -> f64 {
        let size = bytes.next_multiple_of(16);
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let src = self.gpu.create_buffer("copy src", size, usage).expect("copy buffer");
        let dst = self.gpu.create_buffer("copy dst", size, usage).expect("copy buffer");
        let d = ops::elementwise::copy_buffer(&self.gpu, &src, &dst, size).expect("copy dispatch");
        self.time(&d).0
    }

    /// Times `d`, which moves `bytes`, against a copy of the same bytes, records and prints the row.
    pub fn add(&mut self, family: &str, name: &str, d: &Dispatch, bytes: u64) {
        let (us, clock) = self.time(d);
        let copy_us = self.copy_us(bytes);
        let gbps = bytes as f64 / us / 1e3;
        let copy_gbps = bytes as f64 / copy_us / 1e3;
        let row = Row {
            family: family.into(),
            name: name.into(),
            us,
            bytes,
            gbps,
            copy_us,
            copy_gbps,
            frac_of_copy: gbps / copy_gbps,
            clock: clock.into(),
            note: String::new(),
        };
        println!(
            "{:<8} {:<28} {:>11.1} µs {:>8.3} GB/s   copy {:>10.1} µs {:>8.3} GB/s   {:>5.2} of copy  ({})",
            row.family, row.name, row.us, row.gbps, row.copy_us, row.copy_gbps, row.frac_of_copy, row.clock
        );
        self.rows.push(row);
    }

    /// Attaches a note to the last row (printed too).
    pub fn note(&mut self, note: String) {
        println!("         {note}");
        if let Some(r) = self.rows.last_mut() {
            r.note = note;
        }
    }

    /// Writes `target/bench/<file>.json`.
    pub fn write_json(&self, file: &str) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench");
        std::fs::create_dir_all(dir).expect("create target/bench");
        let json = serde_json::json!({
            "device": self.gpu.describe(),
            "quick": self.args.quick,
            "rows": self.rows,
        });
        let path = format!("{dir}/{file}.json");
        std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).expect("write json");
        eprintln!("wrote {path}");
    }
}
