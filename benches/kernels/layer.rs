//! Per-layer rows: RMSNorm, the QKV projection with RoPE and the KV-cache write, and the feed-forward
//! block (the planner's fused pair, the older `ffn.wgsl` block, and the unfused chain).

use mobilellm_kernels::kv_cache::KvCache;
use mobilellm_kernels::ops::gemv::{gemv_fused, GemvFusion};
use mobilellm_kernels::ops::qkv_rope::{qkv_rope, qkv_rope_lanes, rope_cache, QkvRopeOperands, QkvTarget, RopeTable};
use mobilellm_kernels::ops::{self, Dispatch, StepBuffer, StepParams};
use mobilellm_kernels::quant::{GpuWeight, WeightType};
use mobilellm_kernels::reference::RopeLayout;
use mobilellm_kernels::{DType, Tensor};

use crate::common::Bench;
use crate::shapes::{data, models, norm_weight, weight, EPS};

fn refs(ds: &[Dispatch]) -> Vec<&Dispatch> {
    ds.iter().collect()
}

/// RMSNorm at both widths, decode (n = 1) and a prefill batch (n = 64). Bytes: x read, y written, weight.
pub fn bench_rms_norm(b: &mut Bench) {
    for m in models(b) {
        for n in [1, 64] {
            let name = format!("{} n={n}", m.hidden);
            if !b.args.wants(&format!("rms_norm {name}")) {
                continue;
            }
            let x = Tensor::from_slice(&b.gpu, &[n, m.hidden], &data(1, n * m.hidden, 2.0)).expect("x");
            let w = Tensor::from_slice(&b.gpu, &[m.hidden], &norm_weight(2, m.hidden)).expect("w");
            let y = Tensor::zeros(&b.gpu, DType::F32, &[n, m.hidden]).expect("y");
            let d = ops::rms_norm::rms_norm(&b.gpu, &x, &w, &y, EPS).expect("rms_norm");
            b.add("rms_norm", &name, &d, ((2 * n + 1) * m.hidden * 4) as u64);
        }
    }
}

/// Normed Q|K|V projection + RoPE + KV-cache write at position 100 (decode), per weight type: the
/// planner's CPU-driver path (`gemv_fused` with the norm, then `rope_cache`: 2 dispatches) and the
/// one-dispatch `qkv_rope` (the planner's GPU path). Bytes: the fused weight, x, q and the new K/V.
pub fn bench_qkv(b: &mut Bench) {
    let cpu = b.gpu.is_cpu_class();
    for m in models(b) {
        let rows = (m.heads + 2 * m.kv_heads) * m.head_dim;
        let capacity = 512;
        let cache = KvCache::new(&b.gpu, 1, capacity, m.kv_heads, m.head_dim).expect("cache");
        let rope = RopeTable::new(&b.gpu, capacity, m.head_dim, 10000.0).expect("rope");
        let step = StepBuffer::new(&b.gpu).expect("step");
        step.write(&b.gpu, &StepParams { pos: 100, n: 1, top_p: 1.0, ..Default::default() });
        let x = Tensor::from_slice(&b.gpu, &[1, m.hidden], &data(3, m.hidden, 2.0)).expect("x");
        let norm = Tensor::from_slice(&b.gpu, &[m.hidden], &norm_weight(4, m.hidden)).expect("norm");
        let qkv = Tensor::zeros(&b.gpu, DType::F32, &[1, rows]).expect("qkv");
        let q = Tensor::zeros(&b.gpu, DType::F32, &[1, m.heads * m.head_dim]).expect("q");
        let kv_bytes = 2 * m.kv_heads * m.head_dim * cache.dtype().size();
        for wtype in WeightType::ALL {
            let name = format!("{wtype} {rows}x{}", m.hidden);
            if !b.args.wants(&format!("qkv_rope {name}")) {
                continue;
            }
            let w = GpuWeight::upload(&b.gpu, &weight(wtype, rows, m.hidden, 5)).expect("upload");
            let bytes = w.size_bytes() + ((m.hidden + m.heads * m.head_dim) * 4 + kv_bytes) as u64;
            let fusion = GemvFusion { norm: Some((&norm, EPS)), swiglu: false };
            let target =
                QkvTarget { step: &step, rope: &rope, layout: RopeLayout::Halves, q_out: &q, cache: &cache, slot: 0 };
            let two = [
                gemv_fused(&b.gpu, &w, &x, &qkv, fusion).expect("gemv_fused"),
                rope_cache(&b.gpu, &qkv, &target).expect("rope_cache"),
            ];
            let operands = QkvRopeOperands { x: &x, norm_w: &norm, eps: EPS, w_qkv: &w, target };
            let one = qkv_rope(&b.gpu, &operands).expect("qkv_rope");
            let lanes = qkv_rope_lanes(&b.gpu, &operands)
                .expect("qkv_rope_lanes")
                .expect("the lanes entry takes MobileLLM shapes");
            let (n_two, n_one, n_lanes) =
                (format!("gemv+rope {name}"), format!("fused {name}"), format!("lanes {name}"));
            let blocks = [(&n_two, &refs(&two)[..]), (&n_one, &[&one][..]), (&n_lanes, &[&lanes][..])];
            let blocks: Vec<(&str, &[&Dispatch])> = blocks.iter().map(|(n, d)| (n.as_str(), *d)).collect();
            let us = b.add_blocks("qkv_rope", &blocks, bytes);
            let (us_two, us_one, us_lanes) = (us[0], us[1], us[2]);
            let planner = if cpu { "lanes" } else { "fused" };
            b.note(format!(
                "fused / gemv+rope = {:.2}, lanes / gemv+rope = {:.2} (the planner runs {planner} on this device)",
                us_one / us_two,
                us_lanes / us_two
            ));
        }
    }
}

/// The feed-forward block with its residual, per weight type, decode (n = 1), two ways:
/// - `fused`: `ops::ffn::ffn_block`, the planner's pair: `ffn_swiglu` (the GEMV kernel's NORM+SWIGLU variant
///   on the stacked [gate; up] weight) + the down projection accumulating into x: 2 dispatches;
/// - `chain`: rms_norm, gemv gate, gemv up, silu_mul, gemv down, add: 6 dispatches.
///
/// Both get the same byte count (weights + x read and written + h written and read), so GB/s compare
/// the useful traffic. Without `--quick`, q4_0 and q8_0 at the 125M shape also run a prefill batch of 64
/// (the projections as GEMMs, as the planner does for n > 1).
pub fn bench_ffn(b: &mut Bench) {
    let mut cases: Vec<(crate::shapes::Shape, WeightType, usize)> = Vec::new();
    for m in models(b) {
        for wtype in WeightType::ALL {
            cases.push((*m, wtype, 1));
        }
    }
    if !b.args.quick {
        for wtype in [WeightType::Q4_0, WeightType::Q8_0] {
            cases.push((crate::shapes::M125, wtype, 64));
        }
    }
    let mut summary = Vec::new();
    for (m, wtype, n) in cases {
        let (hidden, ffn) = (m.hidden, m.ffn);
        let name = format!("{wtype} {hidden}/{ffn} n={n}");
        if !b.args.wants(&format!("ffn {name}")) {
            continue;
        }
        let gpu = &b.gpu;
        let (gate, up, down) =
            (weight(wtype, ffn, hidden, 11), weight(wtype, ffn, hidden, 12), weight(wtype, hidden, ffn, 13));
        let stacked = ops::ffn::fuse_gate_up(&gate, &up).expect("fuse_gate_up");
        let (gw, uw, dw) = (
            GpuWeight::upload(gpu, &gate).expect("upload"),
            GpuWeight::upload(gpu, &up).expect("upload"),
            GpuWeight::upload(gpu, &down).expect("upload"),
        );
        let sw = GpuWeight::upload(gpu, &stacked).expect("upload");
        let x = Tensor::from_slice(gpu, &[n, hidden], &data(14, n * hidden, 2.0)).expect("x");
        let norm = Tensor::from_slice(gpu, &[hidden], &norm_weight(15, hidden)).expect("norm");
        let h = Tensor::zeros(gpu, DType::F32, &[n, ffn]).expect("h");
        let linear = |w: &GpuWeight, input: &Tensor, out: &Tensor, accumulate: bool| {
            if n == 1 {
                ops::gemv::gemv(gpu, w, input, out, 0, accumulate)
            } else {
                ops::gemm::gemm(gpu, w, input, out, 0, accumulate)
            }
            .expect("linear")
        };
        let fused = ops::ffn::ffn_block(gpu, &x, &norm, EPS, &sw, &dw, &h).expect("ffn_block");
        let (normed, y, out) = (
            Tensor::zeros(gpu, DType::F32, &[n, hidden]).expect("t"),
            Tensor::zeros(gpu, DType::F32, &[n, hidden]).expect("t"),
            Tensor::zeros(gpu, DType::F32, &[n, hidden]).expect("t"),
        );
        let (g, u) = (
            Tensor::zeros(gpu, DType::F32, &[n, ffn]).expect("t"),
            Tensor::zeros(gpu, DType::F32, &[n, ffn]).expect("t"),
        );
        let chain = [
            ops::rms_norm::rms_norm(gpu, &x, &norm, &normed, EPS).expect("rms_norm"),
            linear(&gw, &normed, &g, false),
            linear(&uw, &normed, &u, false),
            ops::ffn::silu_mul(gpu, &g, &u, &h).expect("silu_mul"),
            linear(&dw, &h, &y, false),
            ops::elementwise::add(gpu, &x, &y, &out).expect("add"),
        ];
        let bytes = gw.size_bytes() + uw.size_bytes() + dw.size_bytes() + (2 * n * (hidden + ffn) * 4) as u64;
        let names = [format!("fused {name}"), format!("chain {name}")];
        let us = b.add_blocks("ffn", &[(&names[0], &refs(&fused)), (&names[1], &refs(&chain))], bytes);
        let (f, c) = (us[0], us[1]);
        b.note(format!(
            "fused speed-up: chain / fused = {:.2}x ({} vs {} dispatches)",
            c / f,
            fused.len(),
            chain.len()
        ));
        summary.push((name, f, c));
    }
    if !summary.is_empty() {
        println!("ffn summary (µs: fused 2d | chain 6d | chain/fused)");
        for (name, f, c) in summary {
            println!("  {name:<24} {f:>10.1} {c:>10.1} {:>6.2}x", c / f);
        }
    }
}

/// `FFN_SWEEP=1`: the NORM+SWIGLU GEMV (the fused FFN's gate/up step) under several thread mappings at
/// both FFN shapes, against the two plain GEMVs it replaces, to refill its mapping rule.
pub fn sweep_ffn(b: &mut Bench) {
    use mobilellm_kernels::ops::gemv::{gemv_fused_with, GemvMapping};
    let maps = [(8, 1, 16), (8, 1, 8), (8, 1, 4), (16, 1, 8), (8, 1, 16)];
    for m in models(b) {
        for wtype in [WeightType::F16, WeightType::Q8_0, WeightType::Q4_0] {
            let (hidden, ffn) = (m.hidden, m.ffn);
            let (gate, up) = (weight(wtype, ffn, hidden, 11), weight(wtype, ffn, hidden, 12));
            let sw = GpuWeight::upload(&b.gpu, &ops::ffn::fuse_gate_up(&gate, &up).expect("fuse")).expect("upload");
            let (gw, uw) =
                (GpuWeight::upload(&b.gpu, &gate).expect("upload"), GpuWeight::upload(&b.gpu, &up).expect("upload"));
            let x = Tensor::from_slice(&b.gpu, &[1, hidden], &data(14, hidden, 2.0)).expect("x");
            let norm = Tensor::from_slice(&b.gpu, &[hidden], &norm_weight(15, hidden)).expect("norm");
            let (h, g, u) = (
                Tensor::zeros(&b.gpu, DType::F32, &[1, ffn]).expect("h"),
                Tensor::zeros(&b.gpu, DType::F32, &[1, ffn]).expect("g"),
                Tensor::zeros(&b.gpu, DType::F32, &[1, ffn]).expect("u"),
            );
            let fusion = GemvFusion { norm: Some((&norm, EPS)), swiglu: true };
            let mut ds = Vec::new();
            let mut names = Vec::new();
            for (wg, tpr, rpt) in maps {
                let mapping = GemvMapping { wg, tpr, rpt };
                ds.push(vec![gemv_fused_with(&b.gpu, &sw, &x, &h, fusion, mapping).expect("swiglu")]);
                names.push(format!("swiglu {wtype} {hidden}/{ffn} {wg},{tpr},{rpt}"));
            }
            ds.push(vec![
                ops::gemv::gemv(&b.gpu, &gw, &x, &g, 0, false).expect("gemv"),
                ops::gemv::gemv(&b.gpu, &uw, &x, &u, 0, false).expect("gemv"),
            ]);
            names.push(format!("2 gemvs {wtype} {hidden}/{ffn}"));
            let lists: Vec<Vec<&Dispatch>> = ds.iter().map(|d| refs(d)).collect();
            let blocks: Vec<(&str, &[&Dispatch])> =
                names.iter().zip(&lists).map(|(n, l)| (n.as_str(), l.as_slice())).collect();
            b.add_blocks("sweep", &blocks, sw.size_bytes());
        }
    }
}
