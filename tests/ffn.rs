//! Fused SwiGLU feed-forward kernel vs its CPU twin, under both feature sets.
//!
//! What runs where (lavapipe is 100-400x slower than native code, and every case runs twice):
//! - the MobileLLM shapes run every weight type under both feature sets at n = 1 (decode, TILE 1) and
//!   n = 5 (prefill tile of 8 with 3 positions past the end). n = 64 (8 full tiles) runs two types at the
//!   125M shape only: the decode of a block does not depend on the tile, and the tile loop does not depend
//!   on the width, so the prefill path needs one unscaled and one scaled type at one MobileLLM width;
//! - the odd shapes (ffn not a multiple of the 8 rows per workgroup, one block per row, wide rows) run
//!   every type at n = 1, 5 and 64: they are small.
mod common;

use common::{assert_close, gpus, random_vec};
use mobilellm_kernels::ops::ffn::FfnMapping;
use mobilellm_kernels::quant::{GpuWeight, HostWeight, WeightType};
use mobilellm_kernels::{ops, reference, DType, Error, Gpu, Tensor, WeightStorage};

/// `ffn_gate_up` (kernels/ffn.wgsl) reads its two weights from storage buffers only.
fn buffer_weight(gpu: &Gpu, host: &HostWeight) -> mobilellm_kernels::Result<GpuWeight> {
    GpuWeight::upload_as(gpu, host, WeightStorage::Buffer)
}

const EPS: f32 = 1e-5;

/// Weights in [-0.5, 0.5): the quantizers see a spread of scales, and projections stay O(1..10).
fn weight(seed: u64, rows: usize, cols: usize, wtype: WeightType) -> HostWeight {
    let data: Vec<f32> = random_vec(seed, rows * cols).iter().map(|v| v * 0.5).collect();
    HostWeight::quantize(wtype, rows, cols, &data).unwrap()
}

/// Elementwise bound on |GPU - CPU| for h, both computed from the same dequantized weights.
///
/// g = Σ_k Wg[i,k]·n_k in f32, summed in a different order on each side: each sum is within
/// γ·Σ|Wg[i,k]·n_k| of the exact value, with γ ≈ c·sqrt(K)·2^-24 for the random-sign terms here
/// (Higham's probabilistic bound; we take c = 16, and K <= 2560); the two sides differ by at most twice
/// that. 1/rms is computed in a different order too (relative 1e-6 on n, so 1e-6·Σ|W·n| more). Then
/// h = silu(g)·u: |silu'| <= 1.1 and |silu(g)| <= |g|, so |δh| <= 1.1·|u|·δg + |silu(g)|·δu, plus 1e-6
/// absolute for exp's last bits near zero. (The CPU mapping sums raw quants per block and scales once,
/// d·Σq·n + m·Σn for Q4_1, whose terms can exceed Σ|W·n| by ~2|m|/|W| ≈ 4x: inside the factor 16.) A bug (a wrong block, scale, nibble or row) moves h by a
/// sizeable fraction of Σ|W·n|, far above this.
fn tolerance(n_rows: &[f32], gate: &[f32], up: &[f32], hidden: usize) -> Vec<f32> {
    let ffn = gate.len() / hidden;
    let gamma = 16.0 * (hidden as f32).sqrt() * f32::EPSILON + 1e-6;
    let mut tol = Vec::new();
    for row in n_rows.chunks(hidden) {
        for o in 0..ffn {
            let wg = &gate[o * hidden..(o + 1) * hidden];
            let wu = &up[o * hidden..(o + 1) * hidden];
            let (mut g, mut u, mut sg, mut su) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
            for k in 0..hidden {
                g += wg[k] * row[k];
                u += wu[k] * row[k];
                sg += (wg[k] * row[k]).abs();
                su += (wu[k] * row[k]).abs();
            }
            tol.push(1.1 * u.abs() * gamma * sg + reference::silu(g).abs() * gamma * su + 1e-6);
        }
    }
    tol
}

fn assert_within(what: &str, got: &[f32], want: &[f32], tol: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((g, w), t)) in got.iter().zip(want).zip(tol).enumerate() {
        assert!((g - w).abs() <= *t, "{what}: element {i} got {g} want {w} (tolerance {t})");
    }
}

struct Case {
    x: Vec<f32>,
    norm: Vec<f32>,
    gate: HostWeight,
    up: HostWeight,
}

fn case(hidden: usize, ffn: usize, n: usize, wtype: WeightType) -> Case {
    let seed = (hidden * 7919 + ffn * 31 + n) as u64;
    Case {
        x: random_vec(seed, n * hidden).iter().map(|v| v * 3.0).collect(),
        norm: random_vec(seed + 1, hidden).iter().map(|v| 1.0 + v * 0.5).collect(),
        gate: weight(seed + 2, ffn, hidden, wtype),
        up: weight(seed + 3, ffn, hidden, wtype),
    }
}

fn check(gpu: &Gpu, hidden: usize, ffn: usize, n: usize, wtype: WeightType, mapping: FfnMapping) {
    let c = case(hidden, ffn, n, wtype);
    let (gate, up) = (c.gate.dequantize(), c.up.dequantize());
    let want = reference::ffn_gate_up(&c.x, &c.norm, EPS, &gate, &up);
    let tol = tolerance(&reference::rms_norm(&c.x, &c.norm, EPS), &gate, &up, hidden);

    let x = Tensor::from_slice(gpu, &[n, hidden], &c.x).unwrap();
    let norm = Tensor::from_slice(gpu, &[hidden], &c.norm).unwrap();
    let gate_gpu = buffer_weight(gpu, &c.gate).unwrap();
    let up_gpu = buffer_weight(gpu, &c.up).unwrap();
    let h = Tensor::zeros(gpu, DType::F32, &[n, ffn]).unwrap();
    let d = ops::ffn::ffn_gate_up_with(gpu, &x, &norm, EPS, &gate_gpu, &up_gpu, &h, mapping).unwrap();
    ops::run(gpu, &[&d]).unwrap();
    let got = h.read::<f32>(gpu).unwrap();
    assert_within(
        &format!("ffn_gate_up {wtype} {mapping:?} n={n} {hidden}->{ffn} [{}]", gpu.features()),
        &got,
        &want,
        &tol,
    );
}

#[test]
fn mobilellm_shapes_every_type() {
    for gpu in gpus() {
        for (hidden, ffn) in [(576, 1536), (960, 2560)] {
            for wtype in WeightType::ALL {
                for n in [1, 5] {
                    check(gpu, hidden, ffn, n, wtype, FfnMapping::PerRow);
                }
            }
        }
        // The team mapping (what GPUs run) decodes blocks with the same code as the per-row one: two types
        // at one MobileLLM width suffice here; the odd shapes run it for every type.
        for wtype in [WeightType::Q8_0, WeightType::Q4_1] {
            check(gpu, 576, 1536, 5, wtype, FfnMapping::Teams);
        }
        for wtype in [WeightType::F16, WeightType::Q4_1] {
            check(gpu, 576, 1536, 64, wtype, FfnMapping::PerRow);
        }
        check(gpu, 576, 1536, 64, WeightType::Q4_0, FfnMapping::Teams);
    }
}

#[test]
fn odd_shapes_every_type_both_mappings() {
    for gpu in gpus() {
        for mapping in [FfnMapping::PerRow, FfnMapping::Teams] {
            for (hidden, ffn) in [(32, 33), (96, 7), (1600, 20)] {
                for wtype in WeightType::ALL {
                    for n in [1, 5, 64] {
                        check(gpu, hidden, ffn, n, wtype, mapping);
                    }
                }
            }
            // Every tile size and every count of positions past the end of the last tile.
            for n in 1..=17 {
                check(gpu, 64, 9, n, WeightType::Q8_0, mapping);
            }
        }
    }
}

#[test]
fn silu_mul_matches_twin() {
    for gpu in gpus() {
        let count = 1000;
        let g: Vec<f32> = random_vec(5, count).iter().map(|v| v * 20.0).collect();
        let u = random_vec(6, count);
        let (g_gpu, u_gpu) =
            (Tensor::from_slice(gpu, &[count], &g).unwrap(), Tensor::from_slice(gpu, &[count], &u).unwrap());
        let out = Tensor::zeros(gpu, DType::F32, &[count]).unwrap();
        let d = ops::ffn::silu_mul(gpu, &g_gpu, &u_gpu, &out).unwrap();
        ops::run(gpu, &[&d]).unwrap();
        // One exp, one division and one product: a few ulps; 1e-6 relative, 1e-7 absolute near zero.
        assert_close("silu_mul", &out.read::<f32>(gpu).unwrap(), &reference::silu_mul(&g, &u), 1e-7, 1e-6);
    }
}

#[test]
fn rejects_bad_inputs() {
    let gpu = &gpus()[0];
    let x = Tensor::zeros(gpu, DType::F32, &[2, 64]).unwrap();
    let norm = Tensor::zeros(gpu, DType::F32, &[64]).unwrap();
    let h = Tensor::zeros(gpu, DType::F32, &[2, 8]).unwrap();
    let g = buffer_weight(gpu, &weight(1, 8, 64, WeightType::Q4_0)).unwrap();
    let u = buffer_weight(gpu, &weight(2, 8, 64, WeightType::Q4_0)).unwrap();
    assert!(ops::ffn::ffn_gate_up(gpu, &x, &norm, EPS, &g, &u, &h).is_ok());

    let u_tex = GpuWeight::upload_as(gpu, &weight(2, 8, 64, WeightType::Q4_0), WeightStorage::Texture).unwrap();
    let err = ops::ffn::ffn_gate_up(gpu, &x, &norm, EPS, &g, &u_tex, &h).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }) && err.to_string().contains("Texture"), "{err}");

    let u8_0 = buffer_weight(gpu, &weight(2, 8, 64, WeightType::Q8_0)).unwrap();
    let err = ops::ffn::ffn_gate_up(gpu, &x, &norm, EPS, &g, &u8_0, &h).unwrap_err();
    assert!(matches!(err, Error::DType { .. }) && err.to_string().contains("q8_0"), "{err}");

    let u_short = buffer_weight(gpu, &weight(2, 7, 64, WeightType::Q4_0)).unwrap();
    let err = ops::ffn::ffn_gate_up(gpu, &x, &norm, EPS, &g, &u_short, &h).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("[7, 64]"), "{err}");

    let h_bad = Tensor::zeros(gpu, DType::F32, &[3, 8]).unwrap();
    let err = ops::ffn::ffn_gate_up(gpu, &x, &norm, EPS, &g, &u, &h_bad).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("[3, 8]"), "{err}");

    let x_bad = Tensor::zeros(gpu, DType::F32, &[2, 63]).unwrap();
    let err = ops::ffn::ffn_gate_up(gpu, &x_bad, &norm, EPS, &g, &u, &h).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");

    let err = ops::ffn::ffn_gate_up(gpu, &x, &norm, f32::NAN, &g, &u, &h).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");

    // f32 accepts any in_features, but the fused kernel reads x in whole blocks of 32.
    let g48 = buffer_weight(gpu, &weight(1, 8, 48, WeightType::F32)).unwrap();
    let u48 = buffer_weight(gpu, &weight(2, 8, 48, WeightType::F32)).unwrap();
    let (x48, n48) =
        (Tensor::zeros(gpu, DType::F32, &[2, 48]).unwrap(), Tensor::zeros(gpu, DType::F32, &[48]).unwrap());
    let err = ops::ffn::ffn_gate_up(gpu, &x48, &n48, EPS, &g48, &u48, &h).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("48"), "{err}");
}

/// Bound on |GPU - CPU| for x + Wd·h: the GPU's h is within `tol_h` of the CPU's h (a two-sided bound,
/// see [`tolerance`]), which moves row i by at most Σ_j |Wd[i,j]|·tol_h[j]; the down sums of `ffn` terms
/// are reordered, γ·Σ_j |Wd[i,j]·h_j| with γ as in [`tolerance`]; and the residual add rounds once.
fn block_tolerance(x: &[f32], h: &[f32], tol_h: &[f32], down: &[f32], hidden: usize) -> Vec<f32> {
    let ffn = down.len() / hidden;
    let gamma = 16.0 * (ffn as f32).sqrt() * f32::EPSILON + 1e-6;
    let mut tol = Vec::new();
    for (p, xrow) in x.chunks(hidden).enumerate() {
        let (hrow, trow) = (&h[p * ffn..(p + 1) * ffn], &tol_h[p * ffn..(p + 1) * ffn]);
        for (i, xi) in xrow.iter().enumerate() {
            let wd = &down[i * ffn..(i + 1) * ffn];
            let prop: f32 = wd.iter().zip(trow).map(|(w, t)| w.abs() * t).sum();
            let sum: f32 = wd.iter().zip(hrow).map(|(w, v)| (w * v).abs()).sum();
            tol.push(prop + gamma * sum + xi.abs() * f32::EPSILON + 1e-6);
        }
    }
    tol
}

/// The two-dispatch block (fused gate/up, then the down GEMV accumulating into x) equals the unfused
/// six-dispatch chain on the GPU (rms_norm, gemv gate, gemv up, silu_mul, gemv down, add) and the CPU
/// twin. Two types (one unscaled, one nibble-packed) at the 125M shape, decode and a short prefill.
#[test]
fn fused_block_equals_unfused_chain() {
    let (hidden, ffn) = (576, 1536);
    for gpu in gpus() {
        for wtype in [WeightType::F16, WeightType::Q4_0] {
            for n in [1, 5] {
                let c = case(hidden, ffn, n, wtype);
                let down_host = weight(99, hidden, ffn, wtype);
                let (gate, up, down) = (c.gate.dequantize(), c.up.dequantize(), down_host.dequantize());
                let want = reference::ffn_block(&c.x, &c.norm, EPS, &gate, &up, &down);
                let h_cpu = reference::ffn_gate_up(&c.x, &c.norm, EPS, &gate, &up);
                let tol_h = tolerance(&reference::rms_norm(&c.x, &c.norm, EPS), &gate, &up, hidden);
                let tol = block_tolerance(&c.x, &h_cpu, &tol_h, &down, hidden);

                let x = Tensor::from_slice(gpu, &[n, hidden], &c.x).unwrap();
                let norm = Tensor::from_slice(gpu, &[hidden], &c.norm).unwrap();
                let (gw, uw) = (buffer_weight(gpu, &c.gate).unwrap(), buffer_weight(gpu, &c.up).unwrap());
                let dw = GpuWeight::upload(gpu, &down_host).unwrap();
                let h = Tensor::zeros(gpu, DType::F32, &[n, ffn]).unwrap();
                let fused = ops::ffn::ffn_block(gpu, &x, &norm, EPS, &gw, &uw, &dw, &h).unwrap();
                assert_eq!(fused.len(), 2);
                ops::run(gpu, &fused.iter().collect::<Vec<_>>()).unwrap();
                let got_fused = x.read::<f32>(gpu).unwrap();

                let x = Tensor::from_slice(gpu, &[n, hidden], &c.x).unwrap();
                let normed = Tensor::zeros(gpu, DType::F32, &[n, hidden]).unwrap();
                let g = Tensor::zeros(gpu, DType::F32, &[n, ffn]).unwrap();
                let u = Tensor::zeros(gpu, DType::F32, &[n, ffn]).unwrap();
                let y = Tensor::zeros(gpu, DType::F32, &[n, hidden]).unwrap();
                let out = Tensor::zeros(gpu, DType::F32, &[n, hidden]).unwrap();
                let chain = [
                    ops::rms_norm::rms_norm(gpu, &x, &norm, &normed, EPS).unwrap(),
                    ops::gemv::gemv(gpu, &gw, &normed, &g, 0, false).unwrap(),
                    ops::gemv::gemv(gpu, &uw, &normed, &u, 0, false).unwrap(),
                    ops::ffn::silu_mul(gpu, &g, &u, &h).unwrap(),
                    ops::gemv::gemv(gpu, &dw, &h, &y, 0, false).unwrap(),
                    ops::elementwise::add(gpu, &x, &y, &out).unwrap(),
                ];
                ops::run(gpu, &chain.iter().collect::<Vec<_>>()).unwrap();
                let got_chain = out.read::<f32>(gpu).unwrap();

                let what = format!("ffn_block {wtype} n={n} [{}]", gpu.features());
                assert_within(&format!("{what} fused vs CPU"), &got_fused, &want, &tol);
                assert_within(&format!("{what} unfused vs CPU"), &got_chain, &want, &tol);
                // Each side is within tol of the CPU, so within 2·tol of each other.
                let tol2: Vec<f32> = tol.iter().map(|t| 2.0 * t).collect();
                assert_within(&format!("{what} fused vs unfused"), &got_fused, &got_chain, &tol2);
            }
        }
    }
}

/// The planner's FFN: the GEMV kernel's NORM + SWIGLU variant on a stacked [gate; up] weight, against the
/// same CPU twin and the same argued tolerance, for every type, decode and batched rows.
#[test]
fn swiglu_gemv_on_stacked_weight_matches_twin() {
    for gpu in gpus() {
        for (hidden, ffn, n) in [(576, 1536, 1), (576, 1536, 5), (96, 33, 3), (960, 2560, 1)] {
            for wtype in WeightType::ALL {
                if hidden == 960 && !matches!(wtype, WeightType::Q4_0 | WeightType::Q8_0) {
                    continue; // keep the file's run time in budget: the big shape for the two decode types
                }
                let c = case(hidden, ffn, n, wtype);
                let (gate, up) = (c.gate.dequantize(), c.up.dequantize());
                let want = reference::ffn_gate_up(&c.x, &c.norm, EPS, &gate, &up);
                let tol = tolerance(&reference::rms_norm(&c.x, &c.norm, EPS), &gate, &up, hidden);
                let stacked = ops::ffn::fuse_gate_up(&c.gate, &c.up).unwrap();
                let w = GpuWeight::upload(gpu, &stacked).unwrap();
                let x = Tensor::from_slice(gpu, &[n, hidden], &c.x).unwrap();
                let norm = Tensor::from_slice(gpu, &[hidden], &c.norm).unwrap();
                let h = Tensor::zeros(gpu, DType::F32, &[n, ffn]).unwrap();
                ops::run(gpu, &[&ops::ffn::ffn_swiglu(gpu, &x, &norm, EPS, &w, &h).unwrap()]).unwrap();
                let what = format!("ffn_swiglu {wtype} n={n} {hidden}->{ffn} [{}]", gpu.features());
                assert_within(&what, &h.read::<f32>(gpu).unwrap(), &want, &tol);
            }
        }
    }
}
