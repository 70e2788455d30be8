//! A small benchmark harness shared by the bench targets: times a [`Dispatch`] or a block of them (GPU
//! timestamps when the device has them, else wall time over many calls in one submission; the median of
//! repeated runs, with min and max), compares with a plain copy of the same bytes measured in the same
//! run, prints a table and writes JSON.
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
    /// Microseconds per call of the block: the median over the timed runs.
    pub us: f64,
    /// Fastest timed run (µs per call).
    pub min_us: f64,
    /// Slowest timed run (µs per call).
    pub max_us: f64,
    /// Timed runs (each records the block `reps` times in one submission).
    pub runs: usize,
    /// Repetitions of the block per run.
    pub reps: usize,
    /// Dispatches in the block.
    pub dispatches: usize,
    /// Bytes the call must move (weights, plus activations where they matter).
    pub bytes: u64,
    /// bytes / time.
    pub gbps: f64,
    /// Microseconds for a plain copy of the same bytes (median, same harness).
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

/// What [`Bench::time_block`] measured: µs per call of the block.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Median over the runs.
    pub median: f64,
    /// Fastest run.
    pub min: f64,
    /// Slowest run.
    pub max: f64,
    /// Timed runs.
    pub runs: usize,
    /// Block repetitions per run.
    pub reps: usize,
    /// `timestamps` or `wall`.
    pub clock: &'static str,
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

impl Default for Bench {
    fn default() -> Self {
        Self::new()
    }
}

impl Bench {
    /// Opens the default device (honours `MOBILELLM_*`).
    pub fn new() -> Bench {
        let gpu = Gpu::new().expect("a GPU adapter");
        eprintln!("bench device: {}", gpu.describe());
        Bench { gpu, args: Args::parse(), rows: Vec::new() }
    }

    /// Microseconds per call of `d` (median of the timed runs, after a warm-up), and the clock used.
    pub fn time(&self, d: &Dispatch) -> (f64, &'static str) {
        let t = self.time_block(&[d]);
        (t.median, t.clock)
    }

    /// Times a block of dispatches recorded in order (one "call"): a warm-up, then `runs` timed runs
    /// (`--quick`: 3, else 7; `MOBILELLM_BENCH_RUNS` overrides), each recording the block `reps` times in
    /// one compute pass, `reps` sized so a run takes about budget / runs (`--quick` 0.15 s, else 0.6 s),
    /// at least 2 and at most 200. A run's time is the GPU time of the pass (timestamp queries) where the
    /// device has them, else the wall time of the submission; both divided by `reps`. The median is robust
    /// to the other tenants of a shared machine; min and max show the spread.
    pub fn time_block(&self, list: &[&Dispatch]) -> Timing {
        self.time_blocks(&[list])[0]
    }

    /// Times several blocks that are to be compared, as [`Bench::time_block`] does, but with their runs
    /// interleaved (run 1 of each, then run 2 of each, ...), so that load from other tenants drifting over
    /// time weighs on every block alike and their ratios stay meaningful.
    pub fn time_blocks(&self, lists: &[&[&Dispatch]]) -> Vec<Timing> {
        let runs = std::env::var("MOBILELLM_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if self.args.quick { 3 } else { 7 })
            .max(1);
        let budget = if self.args.quick { 0.15 } else { 0.6 } / runs as f64;
        let reps: Vec<usize> = lists
            .iter()
            .map(|list| {
                ops::run(&self.gpu, list).expect("warm-up run");
                let t0 = Instant::now();
                ops::run(&self.gpu, list).expect("run");
                let once = t0.elapsed().as_secs_f64();
                ((budget / once.max(1e-6)) as usize).clamp(2, 200)
            })
            .collect();
        let timestamps = self.gpu.features().timestamps;
        let mut times = vec![Vec::with_capacity(runs); lists.len()];
        let mut all_ts = vec![timestamps; lists.len()];
        for _ in 0..runs {
            for (i, list) in lists.iter().enumerate() {
                let (us, ts) = self.time_run(list, reps[i], timestamps);
                all_ts[i] &= ts;
                times[i].push(us);
            }
        }
        times
            .into_iter()
            .enumerate()
            .map(|(i, mut t)| {
                t.sort_by(f64::total_cmp);
                let median = if runs % 2 == 1 { t[runs / 2] } else { (t[runs / 2 - 1] + t[runs / 2]) / 2.0 };
                let clock = if all_ts[i] { "timestamps" } else { "wall" };
                Timing { median, min: t[0], max: t[runs - 1], runs, reps: reps[i], clock }
            })
            .collect()
    }

    /// One run: µs per repetition of `list`, and whether the GPU timestamps gave it.
    fn time_run(&self, list: &[&Dispatch], reps: usize, timestamps: bool) -> (f64, bool) {
        let device = self.gpu.device();
        let set = timestamps.then(|| {
            device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            })
        });
        let resolve = self
            .gpu
            .create_buffer("ts", 16, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC)
            .expect("timestamp buffer");
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let timestamp_writes = set.as_ref().map(|q| wgpu::ComputePassTimestampWrites {
                query_set: q,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
            for _ in 0..reps {
                for d in list {
                    d.record(&mut pass);
                }
            }
        }
        if let Some(q) = &set {
            encoder.resolve_query_set(q, 0..2, &resolve, 0);
        }
        let t0 = Instant::now();
        self.gpu.submit_and_wait([encoder.finish()]).expect("submit");
        let wall_us = t0.elapsed().as_secs_f64() * 1e6 / reps as f64;
        if set.is_some() {
            let bytes = mobilellm_kernels::tensor::read_buffer(&self.gpu, &resolve, 0, 16).expect("timestamps");
            let t: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
            let ns = t[1].saturating_sub(t[0]) as f64 * self.gpu.queue().get_timestamp_period() as f64;
            if ns > 0.0 {
                return (ns / 1e3 / reps as f64, true);
            }
        }
        (wall_us, false)
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
        self.add_block(family, name, &[d], bytes);
    }

    /// Times the block `list` (recorded in order, one call), which moves `bytes`, against a copy of the
    /// same bytes, records and prints the row; returns the median µs per call.
    pub fn add_block(&mut self, family: &str, name: &str, list: &[&Dispatch], bytes: u64) -> f64 {
        self.add_blocks(family, &[(name, list)], bytes)[0]
    }

    /// Rows for blocks that do the same work different ways (`(name, block)`, each moving `bytes`), timed
    /// with interleaved runs ([`Bench::time_blocks`]) and against one copy of `bytes`; returns their
    /// median µs per call in order.
    pub fn add_blocks(&mut self, family: &str, blocks: &[(&str, &[&Dispatch])], bytes: u64) -> Vec<f64> {
        let lists: Vec<&[&Dispatch]> = blocks.iter().map(|b| b.1).collect();
        let timings = self.time_blocks(&lists);
        let copy_us = self.copy_us(bytes);
        let copy_gbps = bytes as f64 / copy_us / 1e3;
        for ((name, list), t) in blocks.iter().zip(&timings) {
            let gbps = bytes as f64 / t.median / 1e3;
            let row = Row {
                family: family.into(),
                name: (*name).into(),
                us: t.median,
                min_us: t.min,
                max_us: t.max,
                runs: t.runs,
                reps: t.reps,
                dispatches: list.len(),
                bytes,
                gbps,
                copy_us,
                copy_gbps,
                frac_of_copy: gbps / copy_gbps,
                clock: t.clock.into(),
                note: String::new(),
            };
            println!(
                "{:<9} {:<36} {:>10.1} µs [{:>9.1} ..{:>9.1}] {:>2}d {:>7.3} GB/s  copy {:>9.1} µs {:>7.3} GB/s {:>5.2} of copy ({})",
                row.family,
                row.name,
                row.us,
                row.min_us,
                row.max_us,
                row.dispatches,
                row.gbps,
                row.copy_us,
                row.copy_gbps,
                row.frac_of_copy,
                row.clock
            );
            self.rows.push(row);
        }
        timings.iter().map(|t| t.median).collect()
    }

    /// Attaches a note to the last row (printed too).
    pub fn note(&mut self, note: String) {
        println!("         {note}");
        if let Some(r) = self.rows.last_mut() {
            r.note = note;
        }
    }

    /// Writes `target/bench/<file>.json`, or `<file>-filtered.json` for a run with a row filter, so a run of a
    /// few rows never replaces the full table that `mobilellm bench` charts.
    pub fn write_json(&self, file: &str) {
        let file = if self.args.filter.is_some() { format!("{file}-filtered") } else { file.to_string() };
        // MOBILELLM_BENCH_DIR: where a prebuilt bench binary runs outside its source tree (tools/device-bench.sh).
        let dir = std::env::var("MOBILELLM_BENCH_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench").to_string());
        std::fs::create_dir_all(&dir).expect("create the bench output directory");
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
