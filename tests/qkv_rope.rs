//! Fused RMSNorm + QKV projection + RoPE + KV-cache write vs its CPU twin, under both feature sets.
//!
//! Tolerance argument. Both sides use the same dequantized weights (`HostWeight::dequantize` gives exactly
//! the values the GPU forms) and the same RoPE cos/sin (the table's f64-computed values), so differences
//! come from f32 summation order: the RMSNorm sum (~1e-6 relative, see tests/rms_norm.rs) and the dot
//! product over `hidden` (576..960) products: the GPU sums 32-element blocks with fma and scales once per
//! block (d * sum(q x)), the CPU sums (d q) x in sequence. With inputs in [-1, 1) (x scaled by 2), outputs
//! are ~sqrt(hidden/3) ~ 14..18 and sum |w x| <= ~400; reordering such a sum moves it by about
//! sqrt(hidden) * 2^-24 * sum|w x| ~ 7e-4 at worst in practice (random-walk rounding), hence abs 1e-3,
//! rel 1e-4 (RoPE's two products add ~1 ulp). K/V in an f16 cache are rounded by each side from its own f32
//! value, so a value may land one f16 step apart: rel 2^-10 (~1e-3) on top, for the f16 cache only.
mod common;

use common::{assert_close, gpus, random_vec, ShapeRng};
use mobilellm_kernels::kv_cache::{KvCache, KvMirror};
use mobilellm_kernels::ops::gemv::GemvFusion;
use mobilellm_kernels::ops::qkv_rope::{
    fuse_qkv, qkv_rope, qkv_rope_lanes, rope_cache, QkvRopeOperands, QkvTarget, RopeTable,
};
use mobilellm_kernels::ops::{self, StepBuffer, StepParams};
use mobilellm_kernels::quant::{GpuWeight, HostWeight, WeightType};
use mobilellm_kernels::reference::{self, QkvShape, RopeLayout};
use mobilellm_kernels::{DType, Error, Tensor};

const ABS: f32 = 1e-3;
const REL: f32 = 1e-4;
const REL_F16: f32 = 1e-3;

struct Case<'a> {
    heads: usize,
    kv_heads: usize,
    hd: usize,
    hidden: usize,
    wtype: WeightType,
    layout: RopeLayout,
    /// (pos, n) steps run with the same dispatch, grid sized for max_n.
    steps: &'a [(usize, usize)],
}

/// The three ways to the same result.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// `qkv_rope`, one dispatch (GPUs).
    Fused,
    /// A normed GEMV into a Q|K|V scratch, then `rope_cache` (the CPU-driver prefill).
    Split,
    /// `qkv_rope_lanes`, one dispatch (the CPU-driver decode).
    Lanes,
}

fn check(c: &Case) {
    check_path(c, Path::Fused);
}

fn check_path(c: &Case, path: Path) {
    let capacity = 160;
    let max_n = c.steps.iter().map(|s| s.1).max().unwrap();
    let s =
        QkvShape { heads: c.heads, kv_heads: c.kv_heads, head_dim: c.hd, theta: 10000.0, layout: c.layout, eps: 1e-5 };
    let (qr, kr) = (c.heads * c.hd, c.kv_heads * c.hd);
    let seed = (c.hidden * 7 + c.heads) as u64;
    let mk = |rows: usize, off: u64| {
        HostWeight::quantize(c.wtype, rows, c.hidden, &random_vec(seed + off, rows * c.hidden)).unwrap()
    };
    let fused = fuse_qkv(&mk(qr, 1), &mk(kr, 2), &mk(kr, 3)).unwrap();
    let w_cpu = fused.dequantize();
    let norm: Vec<f32> = random_vec(seed + 4, c.hidden).iter().map(|v| 1.0 + 0.5 * v).collect();
    for gpu in gpus() {
        let what = format!(
            "qkv_rope {}/{} hd {} hidden {} {} {:?} [{}]",
            c.heads,
            c.kv_heads,
            c.hd,
            c.hidden,
            c.wtype,
            c.layout,
            gpu.features()
        );
        let cache = KvCache::new(gpu, 2, capacity, c.kv_heads, c.hd).unwrap();
        // Random old contents in slot 1: positions the step does not write must stay as they were.
        let old_k = random_vec(seed + 5, capacity * kr);
        let old_v = random_vec(seed + 6, capacity * kr);
        cache.write(gpu, 1, 0, &old_k, &old_v).unwrap();
        let mut mirror = KvMirror::zeros(c.kv_heads, capacity, c.hd);
        mirror.store(0, &old_k, &old_v, cache.dtype());
        let rope = RopeTable::new(gpu, capacity, c.hd, s.theta).unwrap();
        let w = GpuWeight::upload(gpu, &fused).unwrap();
        let norm_gpu = Tensor::from_slice(gpu, &[c.hidden], &norm).unwrap();
        let x_gpu = Tensor::zeros(gpu, DType::F32, &[max_n, c.hidden]).unwrap();
        let q_gpu = Tensor::zeros(gpu, DType::F32, &[max_n, qr]).unwrap();
        let buf = StepBuffer::new(gpu).unwrap();
        let qkv_gpu = Tensor::zeros(gpu, DType::F32, &[max_n, qr + 2 * kr]).unwrap();
        let target = QkvTarget { step: &buf, rope: &rope, layout: c.layout, q_out: &q_gpu, cache: &cache, slot: 1 };
        let operands = QkvRopeOperands { x: &x_gpu, norm_w: &norm_gpu, eps: s.eps, w_qkv: &w, target };
        let dispatches = match path {
            Path::Split => {
                let fusion = GemvFusion { norm: Some((&norm_gpu, s.eps)), swiglu: false };
                vec![
                    ops::gemv::gemv_fused(gpu, &w, &x_gpu, &qkv_gpu, fusion).unwrap(),
                    rope_cache(gpu, &qkv_gpu, &target).unwrap(),
                ]
            }
            Path::Fused => vec![qkv_rope(gpu, &operands).unwrap()],
            Path::Lanes => {
                let d = qkv_rope_lanes(gpu, &operands);
                vec![d.unwrap().unwrap_or_else(|| panic!("{what}: qkv_rope_lanes declined the shape"))]
            }
        };
        let d: Vec<&ops::Dispatch> = dispatches.iter().collect();
        for &(pos, n) in c.steps {
            let x: Vec<f32> =
                random_vec(seed + pos as u64 * 3 + n as u64, max_n * c.hidden).iter().map(|v| 2.0 * v).collect();
            x_gpu.write(gpu, &x).unwrap();
            cache.check_step(pos, n).unwrap();
            buf.write(gpu, &StepParams { pos: pos as u32, n: n as u32, ..Default::default() });
            ops::run(gpu, &d).unwrap();
            let (q, k, v) = reference::qkv_rope(&x[..n * c.hidden], &norm, &w_cpu, pos, s);
            let got = q_gpu.read::<f32>(gpu).unwrap();
            assert_close(&format!("{what} q pos {pos} n {n}"), &got[..n * qr], &q, ABS, REL);
            mirror.store(pos, &k, &v, cache.dtype());
            let got = cache.read(gpu, 1).unwrap();
            let rel = if cache.dtype() == DType::F16 { REL_F16 } else { REL };
            assert_close(&format!("{what} cache K pos {pos} n {n}"), &got.k, &mirror.k, ABS, rel);
            assert_close(&format!("{what} cache V pos {pos} n {n}"), &got.v, &mirror.v, ABS, rel);
            // Keep the mirror equal to the GPU cache so later steps compare only their own writes.
            mirror = got;
        }
        // Slot 0 was never written.
        let zero = cache.read(gpu, 0).unwrap();
        assert!(zero.k.iter().chain(&zero.v).all(|&v| v == 0.0), "{what}: slot 0 touched");
    }
}

const DECODE_AND_PREFILL: &[(usize, usize)] = &[(0, 7), (7, 1), (8, 1), (100, 3), (159, 1)];

/// MobileLLM-350M's attention shape.
const WIDTH_350M: Case<'static> = Case {
    heads: 15,
    kv_heads: 5,
    hd: 64,
    hidden: 960,
    wtype: WeightType::Q4_0,
    layout: RopeLayout::Halves,
    steps: &[(0, 7), (31, 1)],
};

/// head_dim 32: 4 lanes per workgroup in the lanes entry.
const SMALL_HEAD: Case<'static> = Case {
    heads: 4,
    kv_heads: 2,
    hd: 32,
    hidden: 128,
    wtype: WeightType::Q8_0,
    layout: RopeLayout::Interleaved,
    steps: DECODE_AND_PREFILL,
};

#[test]
fn every_weight_type_125m_shape_halves() {
    for wtype in [WeightType::F32, WeightType::F16, WeightType::Q8_0, WeightType::Q4_0, WeightType::Q4_1] {
        check(&Case {
            heads: 9,
            kv_heads: 3,
            hd: 64,
            hidden: 576,
            wtype,
            layout: RopeLayout::Halves,
            steps: DECODE_AND_PREFILL,
        });
    }
}

#[test]
fn interleaved_rope_and_other_shapes() {
    // GGUF files: interleaved RoPE with Q4_1 (SmolLM2's GGUF) and Q8_0; head_dim 32; no grouping; 350M width.
    check(&Case {
        heads: 9,
        kv_heads: 3,
        hd: 64,
        hidden: 576,
        wtype: WeightType::Q4_1,
        layout: RopeLayout::Interleaved,
        steps: DECODE_AND_PREFILL,
    });
    check(&Case {
        heads: 4,
        kv_heads: 2,
        hd: 32,
        hidden: 96,
        wtype: WeightType::Q8_0,
        layout: RopeLayout::Interleaved,
        steps: &[(0, 1), (0, 128), (130, 30)],
    });
    check(&Case {
        heads: 8,
        kv_heads: 8,
        hd: 32,
        hidden: 100,
        wtype: WeightType::F32,
        layout: RopeLayout::Halves,
        steps: &[(5, 2), (0, 1)],
    });
    check(&WIDTH_350M);
}

/// Seeded random shapes on both devices through each path: query heads in groups of 1-6 over 1-4 KV heads,
/// both RoPE layouts, steps of 1-40 positions anywhere in a 160-position cache, and the head dims and
/// widths each path takes: one-dispatch `qkv_rope` head dims in multiples of 16; `qkv_rope_lanes` multiples
/// of 8 and widths in whole blocks; the split path any head dim the KV cache takes (multiples of 4) and
/// (f32/f16) any width.
#[test]
fn seeded_random_shapes() {
    let mut rng = ShapeRng::new(13);
    for _ in 0..6 {
        let path = rng.pick(&[Path::Fused, Path::Split, Path::Lanes]);
        let wtype = rng.pick(&WeightType::ALL);
        let kv_heads = rng.range(1, 4);
        let steps: Vec<(usize, usize)> = (0..2)
            .map(|_| {
                let n = if path == Path::Lanes || rng.chance(50) { 1 } else { rng.range(2, 40) };
                (rng.range(0, 160 - n), n)
            })
            .collect();
        let hd = match path {
            Path::Fused => 16 * rng.range(1, 8),
            Path::Lanes => 8 * rng.range(1, 16),
            Path::Split => 4 * rng.range(1, 32),
        };
        let hidden = match wtype {
            WeightType::F32 | WeightType::F16 if path != Path::Lanes => rng.range(1, 600),
            _ => 32 * rng.range(1, 20),
        };
        let heads = kv_heads * rng.range(1, 6);
        let layout = rng.pick(&[RopeLayout::Halves, RopeLayout::Interleaved]);
        check_path(&Case { heads, kv_heads, hd, hidden, wtype, layout, steps: &steps }, path);
    }
}

#[test]
fn fuse_is_bit_exact_and_rejects_mismatch() {
    let a = HostWeight::quantize(WeightType::Q4_1, 3, 64, &random_vec(1, 192)).unwrap();
    let b = HostWeight::quantize(WeightType::Q4_1, 2, 64, &random_vec(2, 128)).unwrap();
    let f = fuse_qkv(&a, &b, &b).unwrap();
    assert_eq!(f.slice_rows(0, 3).unwrap(), a);
    assert_eq!(f.slice_rows(5, 7).unwrap(), b);
    let c = HostWeight::quantize(WeightType::Q8_0, 2, 64, &random_vec(2, 128)).unwrap();
    assert!(matches!(fuse_qkv(&a, &c, &b).unwrap_err(), Error::Shape { .. }));
}

/// Operands with eps 1e-5, the halves layout and cache slot 0, for the shape checks.
fn plain_operands<'a>(
    step: &'a StepBuffer,
    x: &'a Tensor,
    norm_w: &'a Tensor,
    w_qkv: &'a GpuWeight,
    rope: &'a RopeTable,
    q_out: &'a Tensor,
    cache: &'a KvCache,
) -> QkvRopeOperands<'a> {
    let target = QkvTarget { step, rope, layout: RopeLayout::Halves, q_out, cache, slot: 0 };
    QkvRopeOperands { x, norm_w, eps: 1e-5, w_qkv, target }
}

#[test]
fn rejects_bad_shapes() {
    let gpu = &gpus()[0];
    let cache = KvCache::new(gpu, 1, 16, 2, 32).unwrap();
    let rope = RopeTable::new(gpu, 16, 32, 10000.0).unwrap();
    let w =
        GpuWeight::upload(gpu, &HostWeight::quantize(WeightType::F32, 8 * 32, 64, &vec![0.0; 8 * 32 * 64]).unwrap())
            .unwrap();
    let norm = Tensor::zeros(gpu, DType::F32, &[64]).unwrap();
    let buf = StepBuffer::new(gpu).unwrap();
    let x = Tensor::zeros(gpu, DType::F32, &[4, 64]).unwrap();
    let q = Tensor::zeros(gpu, DType::F32, &[4, 4 * 32]).unwrap();
    let ok = plain_operands(&buf, &x, &norm, &w, &rope, &q, &cache);
    assert!(qkv_rope(gpu, &ok).is_ok());
    // Weight rows for 6 query heads, but q_out has 4.
    let q6 = Tensor::zeros(gpu, DType::F32, &[4, 6 * 32]).unwrap();
    let err = qkv_rope(gpu, &QkvRopeOperands { target: QkvTarget { q_out: &q6, ..ok.target }, ..ok }).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    // More rows per step than the cache holds.
    let x17 = Tensor::zeros(gpu, DType::F32, &[17, 64]).unwrap();
    let q17 = Tensor::zeros(gpu, DType::F32, &[17, 4 * 32]).unwrap();
    let target = QkvTarget { q_out: &q17, ..ok.target };
    let err = qkv_rope(gpu, &QkvRopeOperands { x: &x17, target, ..ok }).unwrap_err();
    assert!(matches!(err, Error::Capacity { .. }), "{err}");
    // RoPE table shorter than the cache.
    let short = RopeTable::new(gpu, 8, 32, 10000.0).unwrap();
    let err = qkv_rope(gpu, &QkvRopeOperands { target: QkvTarget { rope: &short, ..ok.target }, ..ok }).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

/// The two RoPE layouts are the same rotation up to llama.cpp's Q/K row permutation (GGUF element 2i is
/// HF element i, 2i+1 is i + head_dim/2): interleaved(P x) == P halves(x). Also: position 0 is the
/// identity and the rotation keeps each pair's norm.
#[test]
fn rope_layouts_agree_up_to_the_gguf_permutation() {
    let (hd, heads) = (64, 3);
    let x = random_vec(11, heads * hd);
    let perm = |v: &[f32]| -> Vec<f32> {
        let mut out = vec![0.0; v.len()];
        for (h, head) in v.chunks(hd).enumerate() {
            for i in 0..hd / 2 {
                out[h * hd + 2 * i] = head[i];
                out[h * hd + 2 * i + 1] = head[i + hd / 2];
            }
        }
        out
    };
    for pos in [0usize, 1, 17, 2047] {
        let mut a = x.clone();
        reference::rope(&mut a, pos, hd, 10000.0, RopeLayout::Halves);
        let mut b = perm(&x);
        reference::rope(&mut b, pos, hd, 10000.0, RopeLayout::Interleaved);
        assert_eq!(perm(&a), b, "pos {pos}");
        if pos == 0 {
            assert_eq!(a, x);
        }
        let norm = |v: &[f32]| v.iter().map(|t| t * t).sum::<f32>();
        assert!((norm(&a) - norm(&x)).abs() < 1e-4 * norm(&x), "pos {pos}: rotation changed the norm");
    }
    // The angle of pair i at position p is p * theta^(-2i/d) (HF's inv_freq).
    let (c, s) = reference::rope_cos_sin(3, 5, 64, 10000.0);
    let angle = 3.0 * 10000f64.powf(-10.0 / 64.0);
    assert!((c as f64 - angle.cos()).abs() < 1e-7 && (s as f64 - angle.sin()).abs() < 1e-7);
}

/// Every weight type at the 125M shape, both RoPE layouts among them, and a small head_dim 32 case.
fn every_type_and_a_small_head(path: Path) {
    for (wtype, layout) in [
        (WeightType::Q4_0, RopeLayout::Halves),
        (WeightType::Q4_1, RopeLayout::Interleaved),
        (WeightType::Q8_0, RopeLayout::Halves),
        (WeightType::F16, RopeLayout::Interleaved),
        (WeightType::F32, RopeLayout::Halves),
    ] {
        let c = Case { heads: 9, kv_heads: 3, hd: 64, hidden: 576, wtype, layout, steps: DECODE_AND_PREFILL };
        check_path(&c, path);
    }
    check_path(&SMALL_HEAD, path);
}

#[test]
fn split_gemv_and_rope_cache_path() {
    every_type_and_a_small_head(Path::Split);
}

#[test]
fn lanes_entry_every_type_both_layouts_and_widths() {
    every_type_and_a_small_head(Path::Lanes);
    // 350M width; head_dim 32 (4 lanes per workgroup: no broadcasts) with halves too; head_dim 128.
    check_path(&WIDTH_350M, Path::Lanes);
    let c = Case { layout: RopeLayout::Halves, wtype: WeightType::Q4_0, ..SMALL_HEAD };
    check_path(&c, Path::Lanes);
    let c = Case {
        heads: 2,
        kv_heads: 1,
        hd: 128,
        hidden: 64,
        wtype: WeightType::Q4_1,
        layout: RopeLayout::Halves,
        steps: &[(3, 1), (4, 2)],
    };
    check_path(&c, Path::Lanes);
}

#[test]
fn lanes_entry_declines_shapes_it_cannot_take() {
    let gpu = &gpus()[0];
    let (heads, kvn, hd, capacity) = (2, 1, 32, 8);
    let cache = KvCache::new(gpu, 1, capacity, kvn, hd).unwrap();
    let rope = RopeTable::new(gpu, capacity, hd, 10000.0).unwrap();
    let buf = StepBuffer::new(gpu).unwrap();
    let q = Tensor::zeros(gpu, DType::F32, &[1, heads * hd]).unwrap();
    let lanes = |hidden: usize| {
        let w = HostWeight::quantize(WeightType::F32, (heads + 2 * kvn) * hd, hidden, &random_vec(1, 128 * hidden));
        let w = GpuWeight::upload(gpu, &w.unwrap()).unwrap();
        let x = Tensor::zeros(gpu, DType::F32, &[1, hidden]).unwrap();
        let norm = Tensor::zeros(gpu, DType::F32, &[hidden]).unwrap();
        qkv_rope_lanes(gpu, &plain_operands(&buf, &x, &norm, &w, &rope, &q, &cache)).unwrap().is_some()
    };
    assert!(lanes(64), "hidden 64 fits");
    // hidden 100 leaves a partial 32-column block (an f32 weight allows it; the lanes entry does not).
    assert!(!lanes(100), "hidden 100 must be declined, for the caller's fallback");
}
