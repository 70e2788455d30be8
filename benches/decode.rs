//! End-to-end decode benchmark: synthetic MobileLLM-125M in q4_0 with and without layer sharing (the
//! key comparison: LS / plain decode time, also measured with the two models' steps interleaved), plus
//! q8_0, f16 and 350M with `--all`.
//!
//! `cargo bench --bench decode -- [--quick] [--all] [--steps N] [--seek]`
//! - `--quick`: prefill 64, decode at context 64 only, 3 timed steps (a smoke run);
//! - `--prefill 64,256` / `--contexts 64,1024`: the prefill lengths and decode contexts (defaults 64,256
//!   and 64,1024; on CPU devices prefill 64 only, to stay within ~5 minutes);
//! - `--batch 4,16`: sequences decoded together, timed at the first context (default 4,16; `--quick` 4;
//!   `0` for none);
//! - `--steps N`: timed decode steps per context (default 4, sized for lavapipe, where one 125M step
//!   takes ~0.3-1 s);
//! - `--seek` / `--prefill-fill`: reach a decode context that is not a prefill length (1024) by
//!   [`Model::seek`](mobilellm_kernels::model::planner::Model::seek) (the same decode work without the
//!   prefill) or by a real prefill. Default: seek on CPU devices (lavapipe: a 1024-token prefill of
//!   125M takes minutes), prefill elsewhere.
//!
//! The default run takes ~5.5 minutes on lavapipe (2 shared cores, load ~6), `--quick` ~4.
//!
//! Prints a Markdown table; writes `target/bench/decode.json`, `decode.md`, `decode.svg` and, when the kernel
//! benchmark has written `target/bench/kernels.json`, `kernels.svg`.

use std::path::Path;

use mobilellm_kernels::bench::{self, BenchOptions, BenchReport, ContextFill, Synthetic};
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::{Gpu, Result};

struct Args {
    quick: bool,
    all: bool,
    steps: Option<usize>,
    seek: Option<bool>,
    prefill: Option<Vec<usize>>,
    contexts: Option<Vec<usize>>,
    batch: Option<Vec<usize>>,
}

fn list(s: Option<String>) -> Option<Vec<usize>> {
    s.map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
}

fn parse_args() -> Args {
    let mut args =
        Args { quick: false, all: false, steps: None, seek: None, prefill: None, contexts: None, batch: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--all" => args.all = true,
            "--seek" => args.seek = Some(true),
            "--prefill-fill" => args.seek = Some(false),
            "--steps" => args.steps = it.next().and_then(|s| s.parse().ok()),
            "--prefill" => args.prefill = list(it.next()),
            "--contexts" => args.contexts = list(it.next()),
            "--batch" => args.batch = list(it.next()),
            _ => {} // `--bench` from cargo, filters of other harnesses
        }
    }
    args
}

fn main() -> Result<()> {
    let args = parse_args();
    let gpu = Gpu::new()?;
    eprintln!("bench device: {}", gpu.describe());
    let mut options =
        if args.quick { BenchOptions::quick() } else { BenchOptions { decode_steps: 4, ..Default::default() } };
    if let Some(steps) = args.steps {
        options.decode_steps = steps.max(1);
    }
    let cpu = gpu.is_cpu_class();
    if args.seek.unwrap_or(cpu) {
        options.fill = ContextFill::Seek;
    }
    if cpu && !args.quick {
        // lavapipe: a 256-token prefill of 125M takes ~5 s per configuration; 64 shows the same rate.
        options.prefill_lengths = vec![64];
    }
    if let Some(p) = args.prefill {
        options.prefill_lengths = p;
    }
    if let Some(c) = args.contexts {
        options.contexts = c;
    }
    if let Some(b) = args.batch {
        options.batch_sequences = b.into_iter().filter(|&b| b > 0).collect();
    }
    options.verbose = true;
    let mut configs = vec![(Synthetic::M125, WeightType::Q4_0)];
    if args.all {
        configs.extend([
            (Synthetic::M125, WeightType::Q8_0),
            (Synthetic::M125, WeightType::F16),
            (Synthetic::M350, WeightType::Q4_0),
        ]);
    }
    let mut results = Vec::new();
    let mut interleaved = Vec::new();
    for (size, wtype) in configs {
        let t0 = std::time::Instant::now();
        let mut host = bench::synthetic_model(size, wtype, false, 0)?;
        eprintln!("synthetic {} {wtype}: {:.1} s to generate", size.name(), t0.elapsed().as_secs_f64());
        let name = format!("synthetic {}", size.name());
        for layer_sharing in [false, true] {
            host.config.layer_sharing = layer_sharing;
            let r = bench::bench_decode(&gpu, &host, &name, &options)?;
            eprintln!("{}: {:.1} s", r.label, r.seconds);
            results.push(r);
        }
        // The LS / plain ratio from alternating steps, robust to the host's drift between the two runs.
        interleaved.extend(bench::bench_sharing_interleaved(&gpu, &host, &name, &options)?);
    }
    let mut report = BenchReport::new(&gpu, results);
    report.sharing_interleaved = interleaved;
    println!("{}", bench::markdown_table(&report));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    for path in bench::write_reports(&report, &dir)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
