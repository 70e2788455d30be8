//! Per-kernel benchmarks: µs per call, GB/s, and the fraction of a plain copy's GB/s (same bytes, same run).
//! `cargo bench --bench kernels -- [--quick] [FILTER]`; JSON in `target/bench/kernels.json`.
//! Other kernel families add their rows in `main` with [`common::Bench::add`].
mod common;

use common::Bench;
use mobilellm_kernels::ops::gemv::gemv;
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
    let maps = [(64, 1, 1), (64, 1, 2), (64, 1, 4), (256, 1, 2), (32, 1, 4), (64, 8, 1), (64, 8, 2), (128, 16, 2)];
    for (rows, cols) in [(1536, 576), (576, 1536)] {
        for wtype in [WeightType::Q4_0, WeightType::F16] {
            let w = GpuWeight::upload(&b.gpu, &weight(wtype, rows, cols)).expect("upload");
            let x = Tensor::zeros(&b.gpu, DType::F32, &[1, cols]).expect("x");
            let y = Tensor::zeros(&b.gpu, DType::F32, &[1, rows]).expect("y");
            for (wg, tpr, rpt) in maps {
                let d = gemv_with(&b.gpu, &w, &x, &y, 0, true, GemvMapping { wg, tpr, rpt }).expect("gemv");
                b.add("sweep", &format!("{wtype} {rows}x{cols} {wg},{tpr},{rpt}"), &d, w.size_bytes());
            }
        }
    }
}

fn main() {
    let mut b = Bench::new();
    if std::env::var("GEMV_SWEEP").is_ok() {
        sweep_gemv(&mut b);
        return;
    }
    bench_gemv(&mut b);
    b.write_json("kernels");
}
