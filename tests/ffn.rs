//! The fused SwiGLU feed-forward (the GEMV kernel's NORM+SWIGLU variant on a stacked [gate; up] weight,
//! `ops::ffn::ffn_swiglu`, and the planner's two-dispatch block `ops::ffn::ffn_block`) vs its CPU twin and
//! vs the unfused six-dispatch chain, under both feature sets.
//!
//! What runs where (lavapipe is 100-400x slower than native code, and every case runs twice):
//! - the 125M shape runs every weight type at n = 1 (decode) and n = 5 (a short prefill); the 350M shape
//!   every type at n = 1; n = 64 two types (one unscaled, one nibble-packed) at the 125M shape: the
//!   kernel's per-position loop does not depend on the type;
//! - the odd shapes (ffn not a multiple of any rows-per-workgroup, one block per row, wide rows) run every
//!   type at n = 1, 5 and 64: they are small.
mod common;

use common::{assert_close, bare_texture_gpu, gpu_rules_gpu, gpus, other_texture_reads_gpu, random_vec, ShapeRng};
use mobilellm_kernels::quant::{GpuWeight, HostWeight, WeightType};
use mobilellm_kernels::{ops, reference, DType, Error, Gpu, Tensor};

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

/// `ffn_swiglu` on the stacked weight against the CPU twin on the separate dequantized weights.
fn check(gpu: &Gpu, hidden: usize, ffn: usize, n: usize, wtype: WeightType) {
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

#[test]
fn mobilellm_shapes_every_type() {
    for gpu in gpus() {
        for wtype in WeightType::ALL {
            for n in [1, 5] {
                check(gpu, 576, 1536, n, wtype);
            }
            check(gpu, 960, 2560, 1, wtype);
        }
        for wtype in [WeightType::F16, WeightType::Q4_1] {
            check(gpu, 576, 1536, 64, wtype);
        }
    }
}

/// The windowed product reading x as texels (weights in textures) under the read modes and feature sets
/// `gpus()` leaves out: sampled texels with subgroups, and without subgroups (every lane fetching all eight
/// vectors, the norm's sums of squares included).
#[test]
fn x_texels_every_read_mode() {
    for gpu in other_texture_reads_gpu().into_iter().chain(bare_texture_gpu()) {
        check(gpu, 576, 1536, 5, WeightType::Q4_0);
        check(gpu, 96, 24, 17, WeightType::Q8_0);
    }
}

#[test]
fn odd_shapes_every_type() {
    for gpu in gpus() {
        // 24 and 264 (= 2 * 128 + 8): rows taken 8 at a time on CPU drivers, with groups past the end.
        // 11 positions of hidden 1600 take windows of 8 and 3 where x is bound as uniforms (at most 10
        // vectors of 1600 floats fit 64 KiB): a window of at most 4 drops its upper lanes (HI).
        for (hidden, ffn) in [(32, 33), (96, 7), (1600, 20), (96, 24), (64, 264)] {
            for wtype in WeightType::ALL {
                for n in [1, 5, 11, 64] {
                    check(gpu, hidden, ffn, n, wtype);
                }
            }
        }
        // Every count of positions up to 17 (rows of the grid's second dimension).
        for n in 1..=17 {
            check(gpu, 64, 9, n, WeightType::Q8_0);
        }
    }
}

/// Seeded random shapes through `ffn_swiglu`'s own choices on both devices and under GPU rules: hidden
/// widths in whole blocks (f32/f16: any width), any FFN width up to 700, one position (decode) or 2-70
/// (prefill).
#[test]
fn seeded_random_shapes() {
    let mut rng = ShapeRng::new(11);
    for _ in 0..12 {
        let wtype = rng.pick(&WeightType::ALL);
        let hidden = rng.width(wtype, 700, 24);
        let (ffn, n) = (rng.range(1, 700), if rng.chance(50) { 1 } else { rng.range(2, 70) });
        for gpu in gpus().iter().chain(gpu_rules_gpu()) {
            check(gpu, hidden, ffn, n, wtype);
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
    let h = Tensor::zeros(gpu, DType::F32, &[2, 32]).unwrap();
    let (g, u) = (weight(1, 32, 64, WeightType::Q4_0), weight(2, 32, 64, WeightType::Q4_0));
    let gu = GpuWeight::upload(gpu, &ops::ffn::fuse_gate_up(&g, &u).unwrap()).unwrap();
    let down = GpuWeight::upload(gpu, &weight(3, 64, 32, WeightType::Q4_0)).unwrap();
    assert!(ops::ffn::ffn_swiglu(gpu, &x, &norm, EPS, &gu, &h).is_ok());
    assert_eq!(ops::ffn::ffn_block(gpu, &x, &norm, EPS, &gu, &down, &h).unwrap().len(), 2);

    // Stacking needs one type and one shape.
    let err = ops::ffn::fuse_gate_up(&g, &weight(2, 32, 64, WeightType::Q8_0)).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("q8_0"), "{err}");
    let err = ops::ffn::fuse_gate_up(&g, &weight(2, 31, 64, WeightType::Q4_0)).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("[31, 64]"), "{err}");

    // A stacked weight has an even number of rows.
    let odd = GpuWeight::upload(gpu, &weight(4, 7, 64, WeightType::Q4_0)).unwrap();
    let err = ops::ffn::ffn_swiglu(gpu, &x, &norm, EPS, &odd, &h).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("even"), "{err}");

    let h_bad = Tensor::zeros(gpu, DType::F32, &[3, 32]).unwrap();
    assert!(matches!(ops::ffn::ffn_swiglu(gpu, &x, &norm, EPS, &gu, &h_bad).unwrap_err(), Error::Shape { .. }));
    let x_bad = Tensor::zeros(gpu, DType::F32, &[2, 63]).unwrap();
    assert!(matches!(ops::ffn::ffn_swiglu(gpu, &x_bad, &norm, EPS, &gu, &h).unwrap_err(), Error::Shape { .. }));
    let norm_bad = Tensor::zeros(gpu, DType::F32, &[63]).unwrap();
    assert!(ops::ffn::ffn_swiglu(gpu, &x, &norm_bad, EPS, &gu, &h).is_err());
    let err = ops::ffn::ffn_swiglu(gpu, &x, &norm, f32::NAN, &gu, &h).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");

    // The down projection must be [hidden, ffn].
    let down_bad = GpuWeight::upload(gpu, &weight(5, 64, 64, WeightType::Q4_0)).unwrap();
    let err = ops::ffn::ffn_block(gpu, &x, &norm, EPS, &gu, &down_bad, &h).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("[64, 32]"), "{err}");
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

/// A whole-block case: inputs, the down weight, the CPU twin's output and its [`block_tolerance`].
struct BlockCase {
    c: Case,
    down_host: HostWeight,
    want: Vec<f32>,
    tol: Vec<f32>,
}

fn block_case(hidden: usize, ffn: usize, n: usize, wtype: WeightType, down_seed: u64) -> BlockCase {
    let c = case(hidden, ffn, n, wtype);
    let down_host = weight(down_seed, hidden, ffn, wtype);
    let (gate, up, down) = (c.gate.dequantize(), c.up.dequantize(), down_host.dequantize());
    let want = reference::ffn_block(&c.x, &c.norm, EPS, &gate, &up, &down);
    let h_cpu = reference::ffn_gate_up(&c.x, &c.norm, EPS, &gate, &up);
    let tol_h = tolerance(&reference::rms_norm(&c.x, &c.norm, EPS), &gate, &up, hidden);
    let tol = block_tolerance(&c.x, &h_cpu, &tol_h, &down, hidden);
    BlockCase { c, down_host, want, tol }
}

/// The planner's two-dispatch block (`ffn_block`: `ffn_swiglu` on the stacked weight, then the down
/// projection accumulating into x; a GEMM for n > 1) equals the unfused six-dispatch chain on the GPU
/// (rms_norm, gemv gate, gemv up, silu_mul, gemv down, add) and the CPU twin. Two types (one unscaled,
/// one nibble-packed) at the 125M shape, decode and a short prefill, both feature sets, and with the GPU
/// rules forced (several threads per row; the stacked 3072-row weight strides over quads, `QUADS`).
/// Tolerance: each side is within [`block_tolerance`] of the CPU twin (the two GPU paths only reorder f32
/// sums, which that bound covers), hence within twice it of each other.
#[test]
fn fused_block_equals_unfused_chain() {
    use mobilellm_kernels::{DeviceClass, GpuOptions};
    let (hidden, ffn) = (576, 1536);
    let base = GpuOptions::from_env().unwrap();
    let forced = Gpu::with_options(&base.device_class(DeviceClass::Gpu)).unwrap();
    for gpu in gpus().iter().chain([&forced]) {
        for wtype in [WeightType::F16, WeightType::Q4_0] {
            for n in [1, 5] {
                let BlockCase { c, down_host, want, tol } = block_case(hidden, ffn, n, wtype, 99);

                let x = Tensor::from_slice(gpu, &[n, hidden], &c.x).unwrap();
                let norm = Tensor::from_slice(gpu, &[hidden], &c.norm).unwrap();
                let stacked = GpuWeight::upload(gpu, &ops::ffn::fuse_gate_up(&c.gate, &c.up).unwrap()).unwrap();
                let (gw, uw) = (GpuWeight::upload(gpu, &c.gate).unwrap(), GpuWeight::upload(gpu, &c.up).unwrap());
                let dw = GpuWeight::upload(gpu, &down_host).unwrap();
                let h = Tensor::zeros(gpu, DType::F32, &[n, ffn]).unwrap();
                let fused = ops::ffn::ffn_block(gpu, &x, &norm, EPS, &stacked, &dw, &h).unwrap();
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
                let tol2: Vec<f32> = tol.iter().map(|t| 2.0 * t).collect();
                assert_within(&format!("{what} fused vs unfused"), &got_fused, &got_chain, &tol2);
            }
        }
    }
}

/// The batched block the planner runs for prefill (`ffn_block_batched`: rms_norm, then GEMM on the stacked
/// weight + `swiglu_stacked` as on GPUs, or the fused SWIGLU product as on CPU drivers, then the down GEMM)
/// against the CPU twin, within [`block_tolerance`] (the same sums in other orders). Both forms run on the
/// test devices under their own rules and with the GPU rules forced (`gemm_rows`), for two types and a
/// batch that spans a GEMM tile edge.
#[test]
fn batched_block_matches_twin() {
    use mobilellm_kernels::{DeviceClass, GpuOptions};
    let (hidden, ffn) = (576, 1536);
    let serial = gpus();
    let base = GpuOptions::from_env().unwrap();
    let forced = Gpu::with_options(&base.clone().device_class(DeviceClass::Gpu)).unwrap();
    for gpu in serial.iter().chain([&forced]) {
        for wtype in [WeightType::F16, WeightType::Q4_0] {
            let n = 33;
            let BlockCase { c, down_host, want, tol } = block_case(hidden, ffn, n, wtype, 98);

            let x = Tensor::from_slice(gpu, &[n, hidden], &c.x).unwrap();
            let norm = Tensor::from_slice(gpu, &[hidden], &c.norm).unwrap();
            let stacked = GpuWeight::upload(gpu, &ops::ffn::fuse_gate_up(&c.gate, &c.up).unwrap()).unwrap();
            let dw = GpuWeight::upload(gpu, &down_host).unwrap();
            let normed = Tensor::zeros(gpu, DType::F32, &[n, hidden]).unwrap();
            let gate_up = Tensor::zeros(gpu, DType::F32, &[n, 2 * ffn]).unwrap();
            let h = Tensor::zeros(gpu, DType::F32, &[n, ffn]).unwrap();
            // Without the product buffer: the fused SWIGLU form, on a copy of x.
            let x_fused = Tensor::from_slice(gpu, &[n, hidden], &c.x).unwrap();
            let scratch = ops::ffn::BatchedFfnScratch { normed: &normed, gate_up: None, h: &h };
            let block = ops::ffn::ffn_block_batched(gpu, &x_fused, &norm, EPS, &stacked, &dw, &scratch).unwrap();
            assert_eq!(block.len(), 3);
            ops::run(gpu, &block.iter().collect::<Vec<_>>()).unwrap();
            let what = format!("ffn_block_batched {wtype} n={n} [{}]", gpu.describe());
            assert_within(&format!("{what} fused swiglu"), &x_fused.read::<f32>(gpu).unwrap(), &want, &tol);

            let scratch = ops::ffn::BatchedFfnScratch { normed: &normed, gate_up: Some(&gate_up), h: &h };
            let block = ops::ffn::ffn_block_batched(gpu, &x, &norm, EPS, &stacked, &dw, &scratch).unwrap();
            assert_eq!(block.len(), 4);
            ops::run(gpu, &block.iter().collect::<Vec<_>>()).unwrap();
            assert_within(&what, &x.read::<f32>(gpu).unwrap(), &want, &tol);
            // The middle step alone is exact up to exp's rounding: against the twin on the GPU's own gate|up.
            let mid = reference::swiglu_stacked(&gate_up.read::<f32>(gpu).unwrap(), ffn);
            let mid_tol: Vec<f32> = mid.iter().map(|v| v.abs() * 8.0 * f32::EPSILON + 1e-6).collect();
            assert_within(&format!("{what} swiglu_stacked"), &h.read::<f32>(gpu).unwrap(), &mid, &mid_tol);
        }
    }
    // A gate|up product whose width is not twice h's is a shape error.
    let gpu = &serial[0];
    let (gu, h) = (Tensor::zeros(gpu, DType::F32, &[2, 6]).unwrap(), Tensor::zeros(gpu, DType::F32, &[2, 4]).unwrap());
    assert!(matches!(ops::ffn::swiglu_stacked(gpu, &gu, &h), Err(Error::Shape { .. })));
}
