//! End-to-end decode benchmark (DESIGN §7), shared by `benches/decode.rs` and the `mobilellm bench`
//! command.
//!
//! For one model configuration (a [`HostModel`]: synthetic MobileLLM-125M/350M or a loaded checkpoint,
//! in some weight type, with or without layer sharing) [`bench_decode`] measures:
//! - prefill tokens/s at each length of [`BenchOptions::prefill_lengths`] (one submission each:
//!   `max_batch` is the longest length; a short warm-up prefill compiles the prefill pipelines first);
//! - decode ms/token and tokens/s at each context of [`BenchOptions::contexts`]: the cache is filled to
//!   that context, then [`BenchOptions::decode_steps`] steps are timed one by one (wall clock around
//!   [`Model::step`](crate::model::Model::step), so submission, GPU work and the 4-byte token readback); the median is reported;
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

mod decode;
mod report;
mod roofline;

pub use decode::*;
pub use report::*;
pub use roofline::*;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::host::HostModel;
use crate::quant::WeightType;
use crate::tensor::DType;

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
    /// [`Model::seek`](crate::model::Model::seek): the position jumps there and the cache keeps whatever it holds. A decode step's
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
    /// Batched decoding: sequences decoded together ([`crate::model::Model::decode_batch`]), each size
    /// timed at the first decode context (default 4 and 16; empty: none).
    pub batch_sequences: Vec<usize>,
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
            batch_sequences: vec![4, 16],
        }
    }
}

impl BenchOptions {
    /// A smoke run: prefill 64, decode at context 64 only, 3 timed steps.
    pub fn quick() -> Self {
        BenchOptions {
            prefill_lengths: vec![64],
            contexts: vec![64],
            decode_steps: 3,
            batch_sequences: vec![4],
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.decode_steps == 0 {
            return Err(Error::invalid("decode steps", 0, "at least 1"));
        }
        if self.prefill_lengths.contains(&0) {
            return Err(Error::invalid("prefill length", 0, "at least 1"));
        }
        if self.batch_sequences.contains(&0) {
            return Err(Error::invalid("batch sequences", 0, "at least 1"));
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
