//! Per-kernel benchmarks: µs per call, GB/s, and the fraction of a plain copy's GB/s (same bytes, same run).
//! `cargo bench --bench kernels -- [--quick] [FILTER]`; JSON in `target/bench/kernels.json` (with a FILTER,
//! `kernels-filtered.json`).
//! Every kernel family has rows, at the MobileLLM-125M and -350M shapes (`--quick`: 125M only, fewer
//! contexts, shorter runs): GEMV, GEMM, RMSNorm, QKV+RoPE+cache write, decode attention, the FFN block
//! (fused vs unfused), LM head + greedy sampling, embedding, context shift. Each row is the median of repeated timed
//! runs (min and max printed); blocks of several dispatches are timed as one call
//! ([`common::Bench::add_block`]); rows that compare ways of doing the same work interleave their runs
//! ([`common::Bench::add_blocks`]). A name filter matches `family name` (e.g. `attention 9/3`).
//! `MOBILELLM_BENCH_RUNS` sets the timed runs per row; `GEMV_SWEEP=1` / `FFN_SWEEP=1` sweep the GEMV and
//! the NORM+SWIGLU GEMV thread mappings instead, `GEMM_SWEEP=1` the prefill product's, and `ATTN_SWEEP=1`
//! times one decode-attention tile at 1..128 positions.
#[path = "kernels/attention.rs"]
mod attention;
mod common;
#[path = "kernels/head.rs"]
mod head;
#[path = "kernels/layer.rs"]
mod layer;
#[path = "kernels/shapes.rs"]
mod shapes;

use common::Bench;
use mobilellm_kernels::ops::gemm::{gemm, gemm_rows_with, gemm_tiled, RowSlots};
use mobilellm_kernels::ops::gemv::gemv;
use mobilellm_kernels::ops::Dispatch;
use mobilellm_kernels::quant::{GpuWeight, HostWeight, WeightType};
use mobilellm_kernels::{DType, Tensor};

/// (rows, cols) of the 125M and 350M projections and the 125M LM head.
const SHAPES: &[(usize, usize)] =
    &[(192, 576), (576, 576), (1536, 576), (576, 1536), (320, 960), (960, 960), (2560, 960), (960, 2560), (32000, 576)];
const QUICK_SHAPES: &[(usize, usize)] = &[(576, 576), (1536, 576)];

fn weight(wtype: WeightType, rows: usize, cols: usize) -> HostWeight {
    let data: Vec<f32> = (0..rows * cols).map(|i| ((i as f32 * 0.618).fract() - 0.5) * 0.1).collect();
    HostWeight::quantize(wtype, rows, cols, &data).expect("quantize")
}

fn bench_gemv(b: &mut Bench) {
    let shapes = if b.args.quick { QUICK_SHAPES } else { SHAPES };
    for &(rows, cols) in shapes {
        for wtype in WeightType::ALL {
            let name = format!("{wtype} {rows}x{cols} n=1");
            if !b.args.wants(&format!("gemv {name}")) {
                continue;
            }
            let w = GpuWeight::upload(&b.gpu, &weight(wtype, rows, cols)).expect("upload");
            let x = Tensor::zeros(&b.gpu, DType::F32, &[1, cols]).expect("x");
            let y = Tensor::zeros(&b.gpu, DType::F32, &[1, rows]).expect("y");
            let d = gemv(&b.gpu, &w, &x, &y, 0, true).expect("gemv");
            let bytes = w.size_bytes() + (cols + 2 * rows) as u64 * 4;
            b.add("gemv", &name, &d, bytes);
        }
    }
}

/// `GEMV_SWEEP=1`: every mapping on a few shapes, to refill the table in `GemvMapping::choose`.
fn sweep_gemv(b: &mut Bench) {
    use mobilellm_kernels::ops::gemv::{gemv_with, GemvMapping};
    let maps: &[(u32, u32, u32)] = if b.gpu.is_cpu_class() {
        &[(8, 1, 8), (16, 1, 8), (32, 1, 8), (8, 1, 16), (16, 1, 16), (32, 1, 16)]
    } else {
        // GPUs: a subgroup (or tree) of `tpr` threads per row slot, few rows per thread.
        &[(128, 8, 2), (128, 16, 2), (128, 32, 1), (128, 32, 2), (128, 32, 4), (64, 32, 2), (256, 32, 2), (32, 32, 2)]
    };
    for (rows, cols) in [(576, 576), (1536, 576), (576, 1536), (32000, 576)] {
        for wtype in [WeightType::Q4_0, WeightType::Q8_0] {
            let w = GpuWeight::upload(&b.gpu, &weight(wtype, rows, cols)).expect("upload");
            let x = Tensor::zeros(&b.gpu, DType::F32, &[1, cols]).expect("x");
            let y = Tensor::zeros(&b.gpu, DType::F32, &[1, rows]).expect("y");
            // Interleaved runs of every mapping: the host's drift hits them alike.
            let runs: Vec<(String, Dispatch)> = maps
                .iter()
                .map(|&(wg, tpr, rpt)| {
                    let d = gemv_with(&b.gpu, &w, &x, &y, 0, true, GemvMapping { wg, tpr, rpt }).expect("gemv");
                    (format!("{wtype} {rows}x{cols} {wg},{tpr},{rpt}"), d)
                })
                .collect();
            let lists: Vec<[&Dispatch; 1]> = runs.iter().map(|(_, d)| [d]).collect();
            let blocks: Vec<(&str, &[&Dispatch])> =
                runs.iter().zip(&lists).map(|((name, _), list)| (name.as_str(), &list[..])).collect();
            b.add_blocks("sweep", &blocks, w.size_bytes());
        }
    }
}

/// GEMM (prefill) at n = 64 against one GEMV of the same matrix (goal: under 8x).
fn bench_gemm(b: &mut Bench) {
    let shapes: &[(usize, usize)] = if b.args.quick { &[(576, 576)] } else { &[(576, 576), (1536, 576), (960, 2560)] };
    let n = 64;
    for &(rows, cols) in shapes {
        for wtype in WeightType::ALL {
            let name = format!("{wtype} {rows}x{cols} n={n}");
            if !b.args.wants(&format!("gemm {name}")) {
                continue;
            }
            let w = GpuWeight::upload(&b.gpu, &weight(wtype, rows, cols)).expect("upload");
            let x = Tensor::zeros(&b.gpu, DType::F32, &[n, cols]).expect("x");
            let y = Tensor::zeros(&b.gpu, DType::F32, &[n, rows]).expect("y");
            let d = gemm(&b.gpu, &w, &x, &y, 0, true).expect("gemm");
            let bytes = w.size_bytes() + (n * cols + 2 * n * rows) as u64 * 4;
            b.add("gemm", &name, &d, bytes);
            let x1 = Tensor::zeros(&b.gpu, DType::F32, &[1, cols]).expect("x");
            let y1 = Tensor::zeros(&b.gpu, DType::F32, &[1, rows]).expect("y");
            let g = gemv(&b.gpu, &w, &x1, &y1, 0, true).expect("gemv");
            // The ratio from interleaved runs of both, so the host's drift cancels.
            let t = b.time_blocks(&[&[&d], &[&g]]);
            let (gemm_us, one) = (t[0].median, t[1].median);
            b.note(format!("gemm n={n} = {:.2}x one gemv ({gemm_us:.1} vs {one:.1} µs, interleaved)", gemm_us / one));
            if !b.gpu.is_cpu_class() {
                // GPUs run the row-slot kernel; the tiled one it replaced, interleaved with it.
                let tiled = gemm_tiled(&b.gpu, &w, &x, &y, 0, true).expect("gemm_tiled");
                let t = b.time_blocks(&[&[&d], &[&tiled]]);
                b.note(format!(
                    "gemm_rows = {:.2}x the tiled gemm ({:.1} vs {:.1} µs, interleaved)",
                    t[0].median / t[1].median,
                    t[0].median,
                    t[1].median
                ));
            }
        }
    }
}

/// `GEMM_SWEEP=1`: the prefill kernel at n = 64 against one GEMV: on CPU devices the windowed multi-vector
/// GEMV with several rows per lane, on GPUs `gemm_rows` with 1, 2 and 4 row slots per workgroup; `GEMM_SWEEP=q4_0,...` limits the weight types, `GEMM_ROWS=1536` the shapes.
fn sweep_gemm(b: &mut Bench) {
    use mobilellm_kernels::ops::gemv::gemv_window;
    let types = std::env::var("GEMM_SWEEP").unwrap_or_default();
    let n = 64;
    for (rows, cols) in [(576, 576), (1536, 576), (960, 2560)] {
        if std::env::var("GEMM_ROWS").is_ok_and(|r| r != rows.to_string()) {
            continue;
        }
        for wtype in WeightType::ALL {
            if types.len() > 1 && !types.split(',').any(|t| t == wtype.to_string()) {
                continue;
            }
            let w = GpuWeight::upload(&b.gpu, &weight(wtype, rows, cols)).expect("upload");
            let x = Tensor::zeros(&b.gpu, DType::F32, &[n, cols]).expect("x");
            let y = Tensor::zeros(&b.gpu, DType::F32, &[n, rows]).expect("y");
            let x1 = Tensor::zeros(&b.gpu, DType::F32, &[1, cols]).expect("x");
            let y1 = Tensor::zeros(&b.gpu, DType::F32, &[1, rows]).expect("y");
            let one = b.time(&gemv(&b.gpu, &w, &x1, &y1, 0, true).expect("gemv")).0;
            if !b.gpu.is_cpu_class() {
                // GPUs: the row-slot kernel with 1, 2 and 4 subgroup-sized slots per workgroup.
                let base = RowSlots::choose(&b.gpu, rows, cols);
                for slots in [1, 2, 4] {
                    let mapping = RowSlots { wg: (base.tpr * slots).min(256), ..base };
                    let Ok(d) = gemm_rows_with(&b.gpu, &w, &x, &y, 0, true, mapping) else { continue };
                    let us = b.time(&d).0;
                    b.note(format!(
                        "{wtype} {rows}x{cols} rows {mapping:?}: {us:.1} µs, {:.2}x one gemv ({one:.1} µs)",
                        us / one
                    ));
                }
                continue;
            }
            for rpt in [1, 2, 4, 8] {
                let Some(d) = gemv_window(&b.gpu, &w, &x, &y, 0, true, rpt).expect("window") else { continue };
                let us = b.time(&d).0;
                b.note(format!(
                    "{wtype} {rows}x{cols} window rpt {rpt}: {:.2}x one gemv ({one:.0} µs, {} launches)",
                    us / one,
                    d.launches()
                ));
            }
        }
    }
}

fn main() {
    let mut b = Bench::new();
    if std::env::var("GEMM_SWEEP").is_ok() {
        sweep_gemm(&mut b);
        return;
    }
    if std::env::var("GEMV_SWEEP").is_ok() {
        sweep_gemv(&mut b);
        return;
    }
    if std::env::var("ATTN_SWEEP").is_ok() {
        attention::sweep_attention(&mut b);
        return;
    }
    if std::env::var("FFN_SWEEP").is_ok() {
        layer::sweep_ffn(&mut b);
        return;
    }
    bench_gemv(&mut b);
    bench_gemm(&mut b);
    layer::bench_rms_norm(&mut b);
    layer::bench_qkv(&mut b);
    attention::bench_attention(&mut b);
    attention::bench_attention_prefill(&mut b);
    attention::bench_kv_shift(&mut b);
    layer::bench_ffn(&mut b);
    head::bench_head(&mut b);
    b.write_json("kernels");
}
