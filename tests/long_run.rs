//! Long-run soak test: decodes many tokens and checks that neither host memory (VmRSS) nor the model's GPU
//! memory report grows after warm-up, and that no GPU buffer is created after it ([`Gpu::buffers_created`]):
//! a leak or an allocation per step, per submission or per reset would show here.
//!
//! Ignored by default (minutes on lavapipe). Run it with
//!
//! ```text
//! cargo test --release --test long_run -- --ignored --nocapture
//! MOBILELLM_LONG_RUN_TOKENS=300 cargo test --test long_run -- --ignored --nocapture
//! MOBILELLM_LONG_RUN_SHAPE=125m cargo test --release --test long_run -- --ignored --nocapture
//! ```
//!
//! - `MOBILELLM_LONG_RUN_TOKENS`: tokens to decode (default 10 000);
//! - `MOBILELLM_LONG_RUN_SHAPE`: `small` (default: hidden 256, 4 layers, 4/2 heads, vocab 4096, Q4_0) or
//!   `125m` (the MobileLLM-125M shape with synthetic Q4_0 weights). `small` is the default because the 125M
//!   shape decodes at ~0.25-0.5 s/token on lavapipe (10 000 tokens: about an hour in release; `small` runs at
//!   tens of ms/token); on a real GPU use `125m`.
//!
//! The context is 512 positions: whenever it fills, the model is reset and the prompt prefilled again, so
//! resets and prefills are part of the soak (from 505 tokens on). Warm-up is the first 10% of tokens (at
//! least 50: every plan and pipeline then exists); after it, VmRSS must stay within ±1% of its value at the end
//! of warm-up (plus a 1 MiB floor for allocator noise on small processes), and neither `Model::memory()` nor
//! the device's buffer count may change at all.
//!
//! [`Gpu::buffers_created`]: mobilellm_kernels::Gpu::buffers_created

mod common;

use std::time::Instant;

use mobilellm_kernels::model::config::ModelConfig;
use mobilellm_kernels::model::host::HostModel;
use mobilellm_kernels::model::planner::{Model, PlanOptions};
use mobilellm_kernels::quant::WeightType;

/// Resident set size of this process in KiB (`VmRSS` of `/proc/self/status`).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux only)");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{key}={v:?} is not valid")),
        Err(_) => default,
    }
}

#[test]
#[ignore = "soak test: minutes; see the file header for the command"]
fn decode_many_tokens_memory_stays_flat() {
    let tokens: usize = env_or("MOBILELLM_LONG_RUN_TOKENS", 10_000);
    let shape: String = env_or("MOBILELLM_LONG_RUN_SHAPE", "small".to_string());
    let config = match shape.as_str() {
        "125m" => ModelConfig::mobilellm_125m(),
        "small" => ModelConfig {
            hidden_size: 256,
            intermediate_size: 512,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 64,
            vocab_size: 4096,
            ..ModelConfig::mobilellm_125m()
        },
        other => panic!("MOBILELLM_LONG_RUN_SHAPE={other}: expected 125m or small"),
    };
    let context = 512;
    let gpu = &common::gpus()[0];
    eprintln!("device: {}", gpu.describe());
    let mut model = {
        let host = HostModel::synthetic(config.clone(), WeightType::Q4_0, 11).unwrap();
        Model::new(gpu, &host, &PlanOptions { context, max_batch: 64, kv_dtype: None }).unwrap()
    };
    let prompt: Vec<u32> = (1..=8).collect();
    let warmup = (tokens / 10).max(50);
    assert!(tokens > warmup, "MOBILELLM_LONG_RUN_TOKENS={tokens} must exceed the warm-up ({warmup} tokens)");

    let start = Instant::now();
    let mut warm_start = start;
    let mut next = model.prefill(&prompt).unwrap();
    // After the first prefill: its plan may make the device's staging textures (counted as scratch).
    let memory = model.memory();
    let (mut baseline, mut max_rss, mut min_rss, mut resets) = (0u64, 0u64, u64::MAX, 0usize);
    let mut buffers = 0;
    for i in 0..tokens {
        if model.position() >= context {
            model.reset();
            resets += 1;
            next = model.prefill(&prompt).unwrap();
        }
        next = model.step(next).unwrap();
        assert!((next as usize) < config.vocab_size);
        if i + 1 == warmup {
            baseline = rss_kib();
            buffers = gpu.buffers_created();
            warm_start = Instant::now();
            eprintln!("after warm-up ({warmup} tokens): VmRSS {baseline} KiB, GPU {memory}");
        }
        if i + 1 > warmup && (i % 50 == 0 || i + 1 == tokens) {
            let rss = rss_kib();
            max_rss = max_rss.max(rss);
            min_rss = min_rss.min(rss);
            assert_eq!(model.memory(), memory, "GPU memory report changed at token {i}");
            assert_eq!(gpu.buffers_created(), buffers, "GPU buffers were created by token {i}");
        }
    }
    let measured = tokens - warmup;
    let per_token = warm_start.elapsed().as_secs_f64() / measured as f64;
    let end_rss = rss_kib();
    let tolerance = (baseline / 100).max(1024);
    eprintln!(
        "{tokens} tokens ({shape}, {resets} resets) in {:.1} s ({:.1} ms/token after warm-up); VmRSS after warm-up \
         {baseline} KiB, min {min_rss}, max {max_rss}, end {end_rss} KiB (allowed ±{tolerance} KiB)",
        start.elapsed().as_secs_f64(),
        per_token * 1e3
    );
    assert!(
        max_rss <= baseline + tolerance && min_rss + tolerance >= baseline,
        "VmRSS moved beyond ±{tolerance} KiB of {baseline} KiB: min {min_rss}, max {max_rss}"
    );
    assert_eq!(model.memory(), memory);
    assert_eq!(gpu.buffers_created(), buffers, "GPU buffers created after warm-up");
}
