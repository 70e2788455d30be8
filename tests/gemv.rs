//! GEMV kernel vs its CPU twin (same dequantized weights), every weight type, both feature sets.
mod common;

use common::{assert_product, gpu_rules_gpu, gpus, matrix_weight as weight, random_vec, ProductShape, ShapeRng};
use mobilellm_kernels::ops::gemv::{gemv, gemv_with, GemvMapping};
use mobilellm_kernels::quant::{GpuWeight, HostWeight, WeightType};
use mobilellm_kernels::{ops, reference, DType, Error, Gpu, Tensor};

/// Both sides sum the same products `w*x` of the same dequantized weights, in different orders (the GPU
/// forms 32-column block sums, scales them by d, then adds up to 130 blocks; the CPU adds left to right).
/// A recursive f32 sum of k terms errs by at most k*eps*sum|w x| (Higham), so the two differ by at most
/// (cols + 32 + blocks + 2) * eps * sum|w x|, plus one rounding of d * sum(q x) (2 eps): that bound is
/// rigorous, and a single wrong weight among `cols` (error ~ sum|w x| / cols) still exceeds it.
fn tolerance(cols: usize, abs_dot: f32) -> f32 {
    let terms = cols + 32 + cols.div_ceil(32) + 4;
    terms as f32 * f32::EPSILON * abs_dot + 1e-30
}

struct Case {
    wtype: WeightType,
    rows: usize,
    cols: usize,
    n: usize,
    offset: usize,
    extra: usize,
    accumulate: bool,
    mapping: Option<GemvMapping>,
}

impl Case {
    fn new(wtype: WeightType, rows: usize, cols: usize, n: usize) -> Case {
        Case { wtype, rows, cols, n, offset: 0, extra: 0, accumulate: false, mapping: None }
    }
}

fn check(gpu: &Gpu, host: &HostWeight, c: &Case) {
    check_uploaded(gpu, host, &GpuWeight::upload(gpu, host).unwrap(), c);
}

/// [`check`] with the weight already uploaded (`w` holds `host`).
fn check_uploaded(gpu: &Gpu, host: &HostWeight, w: &GpuWeight, c: &Case) {
    let (rows, cols, n) = (c.rows, c.cols, c.n);
    let x = random_vec(cols as u64 + n as u64 * 13, n * cols);
    let total = c.offset + rows + c.extra;
    let y0 = random_vec(99, n * total);
    let x_gpu = Tensor::from_slice(gpu, &[n, cols], &x).unwrap();
    let y_gpu = Tensor::from_slice(gpu, &[n, total], &y0).unwrap();
    let d = match c.mapping {
        Some(m) => gemv_with(gpu, w, &x_gpu, &y_gpu, c.offset, c.accumulate, m).unwrap(),
        None => gemv(gpu, w, &x_gpu, &y_gpu, c.offset, c.accumulate).unwrap(),
    };
    ops::run(gpu, &[&d]).unwrap();
    let got = y_gpu.read::<f32>(gpu).unwrap();
    let want = reference::gemv(host, &x);
    let deq = host.dequantize();
    let what = format!(
        "gemv {} {rows}x{cols} n={n} off={} acc={} {:?} [{}]",
        c.wtype,
        c.offset,
        c.accumulate,
        c.mapping,
        gpu.features()
    );
    let shape = ProductShape { n, rows, cols, offset: c.offset, total, accumulate: c.accumulate };
    assert_product(&what, &shape, (&got, &y0), (&want, &deq, &x), tolerance);
}

fn check_all_types(rows: usize, cols: usize, ns: &[usize]) {
    for gpu in gpus() {
        for wtype in WeightType::ALL {
            let host = weight(wtype, rows, cols);
            for &n in ns {
                check(gpu, &host, &Case::new(wtype, rows, cols, n));
            }
        }
    }
}

#[test]
fn mobilellm_125m_shapes() {
    for (rows, cols) in [(192, 576), (576, 576), (1536, 576), (576, 1536)] {
        check_all_types(rows, cols, &[1, 3]);
    }
}

#[test]
fn mobilellm_350m_shapes() {
    for (rows, cols) in [(320, 960), (960, 960), (2560, 960), (960, 2560)] {
        check_all_types(rows, cols, &[1]);
    }
}

/// The LM heads (vocab x hidden), n = 1 only. Each (type, device) pair costs a large upload and CPU
/// reference, so the 125M head runs every type on the full-feature device and the two smallest-row-cost
/// types on the bare one; SmolLM2's 49152 head runs its shipped type (q4_1) and f16 on each device.
#[test]
fn lm_head_shapes() {
    let gpus = gpus();
    let [all, none] = &*gpus else { panic!("two devices") };
    for wtype in WeightType::ALL {
        let host = weight(wtype, 32000, 576);
        check(all, &host, &Case::new(wtype, 32000, 576, 1));
        if matches!(wtype, WeightType::Q4_0 | WeightType::Q8_0) {
            check(none, &host, &Case::new(wtype, 32000, 576, 1));
        }
    }
    for wtype in [WeightType::Q4_1, WeightType::F16] {
        let host = weight(wtype, 49152, 576);
        for gpu in [all, none] {
            check(gpu, &host, &Case::new(wtype, 49152, 576, 1));
        }
    }
}

#[test]
fn awkward_shapes() {
    for (rows, cols) in [(1, 32), (33, 32), (1, 4128), (33, 4128), (5, 64)] {
        check_all_types(rows, cols, &[1, 3]);
    }
    // f32/f16 take any width: partial last blocks.
    for gpu in gpus() {
        for wtype in [WeightType::F32, WeightType::F16] {
            for (rows, cols) in [(1, 1), (33, 7), (3, 33), (17, 100)] {
                check(gpu, &weight(wtype, rows, cols), &Case::new(wtype, rows, cols, 3));
            }
        }
    }
}

/// Seeded random shapes through the launcher's own mapping choice, on both devices and under GPU rules:
/// any row count (a tenth at 2048+, where threads stride over quads), widths in whole blocks up to 2048
/// (f32/f16: any width), 1-5 vectors, output slices inside wider rows, accumulation.
#[test]
fn seeded_random_shapes() {
    let mut rng = ShapeRng::new(3);
    for _ in 0..24 {
        let wtype = rng.pick(&WeightType::ALL);
        let rows = if rng.chance(10) { rng.range(2048, 2600) } else { rng.range(1, 700) };
        let cols = rng.width(wtype, 1100, 64);
        let (offset, extra) = if rng.chance(30) { (rng.range(1, 9), rng.range(0, 5)) } else { (0, 0) };
        let case = Case { offset, extra, accumulate: rng.chance(30), ..Case::new(wtype, rows, cols, rng.range(1, 5)) };
        let host = weight(wtype, rows, cols);
        for gpu in gpus().iter().chain(gpu_rules_gpu()) {
            check(gpu, &host, &case);
        }
    }
}

/// Every reduction path on this device: the default table picks one mapping per device class, so the
/// others (the GPU mappings on a CPU device, odd rows per thread, one thread per row) are forced here.
#[test]
fn every_mapping() {
    let mappings = [(8, 1, 16), (64, 1, 3), (128, 8, 2), (64, 4, 1), (32, 32, 8)];
    for gpu in gpus() {
        for wtype in WeightType::ALL {
            let host = weight(wtype, 70, 576);
            let host_odd = weight(wtype, 9, 1088);
            for (wg, tpr, rpt) in mappings {
                let m = Some(GemvMapping { wg, tpr, rpt });
                check(gpu, &host, &Case { mapping: m, ..Case::new(wtype, 70, 576, 2) });
                check(gpu, &host_odd, &Case { mapping: m, ..Case::new(wtype, 9, 1088, 1) });
            }
        }
    }
}

/// Row slots striding over 4-column quads (`QUADS`: several threads per row and at least 2048 rows), plain
/// and with the norm folded in, on both devices: rows past a workgroup's last slot, a partial last block
/// (f32/f16: the quads past `cols`), and the smallest quadded row count.
#[test]
fn quads() {
    use mobilellm_kernels::ops::gemv::{gemv_fused_with, GemvFusion, QUADS_FROM_ROWS};
    let eps = 1e-5;
    for gpu in gpus() {
        for wtype in WeightType::ALL {
            let cols = if matches!(wtype, WeightType::F32 | WeightType::F16) { 100 } else { 96 };
            for (rows, (wg, tpr, rpt)) in [(QUADS_FROM_ROWS + 3, (64, 8, 2)), (QUADS_FROM_ROWS, (32, 32, 1))] {
                let host = weight(wtype, rows, cols);
                let m = Some(GemvMapping { wg, tpr, rpt });
                check(gpu, &host, &Case { mapping: m, ..Case::new(wtype, rows, cols, 2) });
                let w = GpuWeight::upload(gpu, &host).unwrap();
                let x: Vec<f32> = random_vec(cols as u64 * 3 + 1, cols).iter().map(|v| 3.0 * v).collect();
                let norm: Vec<f32> = random_vec(cols as u64 + 5, cols).iter().map(|v| 1.0 + 0.5 * v).collect();
                let normed = reference::rms_norm(&x, &norm, eps);
                let x_gpu = Tensor::from_slice(gpu, &[1, cols], &x).unwrap();
                let norm_gpu = Tensor::from_slice(gpu, &[cols], &norm).unwrap();
                let y0 = vec![0.0; rows];
                let y_gpu = Tensor::from_slice(gpu, &[1, rows], &y0).unwrap();
                let fusion = GemvFusion { norm: Some((&norm_gpu, eps)), swiglu: false };
                let d = gemv_fused_with(gpu, &w, &x_gpu, &y_gpu, fusion, GemvMapping { wg, tpr, rpt }).unwrap();
                ops::run(gpu, &[&d]).unwrap();
                let got = y_gpu.read::<f32>(gpu).unwrap();
                let what = format!("quads norm+gemv {wtype} {rows}x{cols} [{}]", gpu.features());
                let shape = ProductShape { n: 1, rows, cols, offset: 0, total: rows, accumulate: false };
                let want = reference::gemv(&host, &normed);
                assert_product(&what, &shape, (&got, &y0), (&want, &host.dequantize(), &normed), norm_tolerance);
            }
        }
    }
}

/// Rows taken 8 at a time (`GROUP8`: one thread owns 8 or 16 rows of a texture weight whose rows are a
/// multiple of 8): row counts that end in a short texture tile (136 = 128 + 8, 200 = 128 + 72), that leave a
/// thread's second group (24 at 16 rows per thread) or every group of some threads (8) past the end, on
/// both devices with the weights forced into textures.
#[test]
fn groups_of_eight_rows() {
    use mobilellm_kernels::WeightStorage;
    for gpu in gpus() {
        for wtype in WeightType::ALL {
            for (rows, cols) in [(8, 64), (24, 576), (136, 96), (200, 576)] {
                let host = weight(wtype, rows, cols);
                let w = GpuWeight::upload_as(gpu, &host, WeightStorage::Texture).unwrap();
                for (wg, rpt) in [(8, 8), (16, 16)] {
                    let m = GemvMapping { wg, tpr: 1, rpt };
                    let case = Case { mapping: Some(m), accumulate: true, ..Case::new(wtype, rows, cols, 2) };
                    check_uploaded(gpu, &host, &w, &case);
                }
            }
        }
    }
}

/// The RMSNorm prologue under every reduction path: one thread alone (TPR = 1), a subgroup or a
/// workgroup-memory tree sharing the sum of squares. The CPU normalises first, then multiplies.
/// On top of [`tolerance`]: the sum of squares of `cols` terms errs by at most cols*eps relative, its
/// inverse square root by half that plus 2 ulp (WGSL's inverseSqrt bound), and x * inv_rms * w adds two
/// roundings: each normalised x is within (cols / 2 + 6) * eps relative of the CPU's, so the dot within
/// that times sum|w x|.
fn norm_tolerance(cols: usize, abs_dot: f32) -> f32 {
    tolerance(cols, abs_dot) + (cols / 2 + 6) as f32 * f32::EPSILON * abs_dot
}

#[test]
fn fused_norm_every_mapping() {
    use mobilellm_kernels::ops::gemv::{gemv_fused_with, GemvFusion};
    let mappings = [(8, 1, 16), (128, 8, 2), (64, 4, 1), (128, 32, 2), (32, 32, 8)];
    let eps = 1e-5;
    for gpu in gpus() {
        for wtype in WeightType::ALL {
            for (rows, cols, n) in [(70, 576, 1), (9, 1088, 2), (17, 100usize, 1)] {
                if !cols.is_multiple_of(32) && !matches!(wtype, WeightType::F32 | WeightType::F16) {
                    continue; // a partial last block: f32/f16 only
                }
                let host = weight(wtype, rows, cols);
                let w = GpuWeight::upload(gpu, &host).unwrap();
                let x: Vec<f32> = random_vec(cols as u64 * 5 + 1, n * cols).iter().map(|v| 3.0 * v).collect();
                let norm: Vec<f32> = random_vec(cols as u64 + 17, cols).iter().map(|v| 1.0 + 0.5 * v).collect();
                let normed: Vec<f32> = x.chunks(cols).flat_map(|row| reference::rms_norm(row, &norm, eps)).collect();
                let want = reference::gemv(&host, &normed);
                let deq = host.dequantize();
                let x_gpu = Tensor::from_slice(gpu, &[n, cols], &x).unwrap();
                let norm_gpu = Tensor::from_slice(gpu, &[cols], &norm).unwrap();
                let y0 = vec![0.0; n * rows];
                for (wg, tpr, rpt) in mappings {
                    let m = GemvMapping { wg, tpr, rpt };
                    let y_gpu = Tensor::from_slice(gpu, &[n, rows], &y0).unwrap();
                    let fusion = GemvFusion { norm: Some((&norm_gpu, eps)), swiglu: false };
                    let d = gemv_fused_with(gpu, &w, &x_gpu, &y_gpu, fusion, m).unwrap();
                    ops::run(gpu, &[&d]).unwrap();
                    let got = y_gpu.read::<f32>(gpu).unwrap();
                    let what = format!("norm+gemv {wtype} {rows}x{cols} n={n} {m:?} [{}]", gpu.features());
                    let shape = ProductShape { n, rows, cols, offset: 0, total: rows, accumulate: false };
                    assert_product(&what, &shape, (&got, &y0), (&want, &deq, &normed), norm_tolerance);
                }
            }
        }
    }
}

#[test]
fn offset_and_accumulate() {
    for gpu in gpus() {
        for wtype in WeightType::ALL {
            let host = weight(wtype, 100, 576);
            for (offset, extra, accumulate) in [(0, 0, true), (37, 11, false), (37, 11, true), (0, 5, false)] {
                let case = Case { offset, extra, accumulate, ..Case::new(wtype, 100, 576, 3) };
                check(gpu, &host, &case);
            }
        }
    }
}

/// An LM head split by rows: each part writes its slice of the one logits row.
#[test]
fn split_matrix_writes_its_slices() {
    let gpu = &gpus()[0];
    let host = weight(WeightType::Q8_0, 300, 576);
    let x = random_vec(5, 576);
    let x_gpu = Tensor::from_slice(gpu, &[1, 576], &x).unwrap();
    let y_gpu = Tensor::zeros(gpu, DType::F32, &[1, 300]).unwrap();
    let parts: Vec<GpuWeight> = [(0, 128), (128, 300)]
        .iter()
        .map(|&(a, b)| GpuWeight::upload(gpu, &host.slice_rows(a, b).unwrap()).unwrap())
        .collect();
    let d0 = gemv(gpu, &parts[0], &x_gpu, &y_gpu, 0, false).unwrap();
    let d1 = gemv(gpu, &parts[1], &x_gpu, &y_gpu, 128, false).unwrap();
    ops::run(gpu, &[&d0, &d1]).unwrap();
    let got = y_gpu.read::<f32>(gpu).unwrap();
    let want = reference::gemv(&host, &x);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "logit {i}: {g} vs {w}");
    }
}

#[test]
fn rejects_bad_operands() {
    let gpu = &gpus()[0];
    let err = HostWeight::quantize(WeightType::Q4_0, 4, 40, &[0.0; 160]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("40"), "{err}");
    let w = GpuWeight::upload(gpu, &weight(WeightType::Q4_0, 8, 64)).unwrap();
    let x = Tensor::zeros(gpu, DType::F32, &[2, 64]).unwrap();
    let y = Tensor::zeros(gpu, DType::F32, &[2, 8]).unwrap();
    let bad_x = Tensor::zeros(gpu, DType::F32, &[2, 32]).unwrap();
    let err = gemv(gpu, &w, &bad_x, &y, 0, false).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("64"), "{err}");
    let err = gemv(gpu, &w, &x, &y, 1, false).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("offset 1"), "{err}");
    let y3 = Tensor::zeros(gpu, DType::F32, &[3, 8]).unwrap();
    assert!(matches!(gemv(gpu, &w, &x, &y3, 0, false).unwrap_err(), Error::Shape { .. }));
    let y16 = Tensor::zeros(gpu, DType::F16, &[2, 8]).unwrap();
    assert!(matches!(gemv(gpu, &w, &x, &y16, 0, false).unwrap_err(), Error::DType { .. }));
    let bad = GemvMapping { wg: 64, tpr: 3, rpt: 1 };
    assert!(matches!(gemv_with(gpu, &w, &x, &y, 0, false, bad).unwrap_err(), Error::InvalidArgument { .. }));
}
