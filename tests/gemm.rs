//! GEMM (prefill) vs its CPU twin (same dequantized weights), every weight type.
//! `gemm` picks the row-slot kernel (`gemm_rows`) on GPUs and the windowed multi-vector GEMV on CPU devices,
//! so each form (and the tiled kernel) is tested here explicitly. Neither has feature-dependent paths (no subgroups, no f16), so the large cases run on
//! the full-feature device only and the bare device gets small cases per type.
mod common;

use common::{
    assert_product, bare_texture_gpu, gpu_rules_gpu, gpus, matrix_weight as weight, other_texture_reads_gpu,
    random_vec, ProductShape, ShapeRng,
};
use mobilellm_kernels::device::WeightStorage;
use mobilellm_kernels::ops::gemm::{gemm, gemm_rows, gemm_rows_with, gemm_tiled, RowSlots};
use mobilellm_kernels::ops::gemv::gemv_window;
use mobilellm_kernels::quant::{GpuWeight, HostWeight, WeightType};
use mobilellm_kernels::{ops, reference, DType, Error, Gpu, Tensor};

/// Both sides sum the same products of the same dequantized weights in different orders: the CPU left
/// to right (error <= cols * eps * sum|w x|, Higham), the GPU as cols/4 dot4 steps (<= (cols/4 + 4) *
/// eps * sum|w x|). Twice cols + 64 terms bounds the sum of both, rigorously; a single wrong weight among
/// `cols` (error ~ sum|w x| / cols) still exceeds it.
fn tolerance(cols: usize, abs_dot: f32) -> f32 {
    (2 * cols + 64) as f32 * f32::EPSILON * abs_dot + 1e-30
}

struct Case {
    wtype: WeightType,
    rows: usize,
    cols: usize,
    n: usize,
    offset: usize,
    extra: usize,
    accumulate: bool,
    tiled: bool,
    /// Force the windowed GEMV with this many rows per lane.
    window: Option<u32>,
    /// Force `gemm_rows` with this mapping (`None` inside: its default).
    slots: Option<Option<RowSlots>>,
}

impl Case {
    fn new(wtype: WeightType, rows: usize, cols: usize, n: usize) -> Case {
        Case { wtype, rows, cols, n, offset: 0, extra: 0, accumulate: false, tiled: false, window: None, slots: None }
    }
}

fn check(gpu: &Gpu, host: &HostWeight, c: &Case) {
    let (rows, cols, n) = (c.rows, c.cols, c.n);
    let w = GpuWeight::upload(gpu, host).unwrap();
    let x = random_vec(cols as u64 + n as u64 * 13, n * cols);
    let total = c.offset + rows + c.extra;
    let y0 = random_vec(99, n * total);
    let x_gpu = Tensor::from_slice(gpu, &[n, cols], &x).unwrap();
    let y_gpu = Tensor::from_slice(gpu, &[n, total], &y0).unwrap();
    let d = if let Some(rpt) = c.window {
        gemv_window(gpu, &w, &x_gpu, &y_gpu, c.offset, c.accumulate, rpt).unwrap().expect("a windowable shape")
    } else if let Some(slots) = c.slots {
        match slots {
            Some(slots) => gemm_rows_with(gpu, &w, &x_gpu, &y_gpu, c.offset, c.accumulate, slots).unwrap(),
            None => gemm_rows(gpu, &w, &x_gpu, &y_gpu, c.offset, c.accumulate).unwrap(),
        }
    } else if c.tiled {
        gemm_tiled(gpu, &w, &x_gpu, &y_gpu, c.offset, c.accumulate).unwrap()
    } else {
        gemm(gpu, &w, &x_gpu, &y_gpu, c.offset, c.accumulate).unwrap()
    };
    ops::run(gpu, &[&d]).unwrap();
    let got = y_gpu.read::<f32>(gpu).unwrap();
    let want = reference::gemv(host, &x);
    let deq = host.dequantize();
    let what = format!(
        "gemm {} {rows}x{cols} n={n} off={} acc={} tiled={} window={:?} slots={:?} [{}]",
        c.wtype,
        c.offset,
        c.accumulate,
        c.tiled,
        c.window,
        c.slots,
        gpu.features()
    );
    let shape = ProductShape { n, rows, cols, offset: c.offset, total, accumulate: c.accumulate };
    assert_product(&what, &shape, (&got, &y0), (&want, &deq, &x), tolerance);
}

#[test]
fn mobilellm_shapes_n64() {
    let gpu = &gpus()[0];
    // Every type at the small shapes; the large ones (4-10x the work) with the two most used types.
    for (rows, cols) in [(192, 576), (576, 1536), (320, 960), (1536, 576), (960, 2560)] {
        let types: &[WeightType] =
            if rows * cols <= 576 * 1536 { &WeightType::ALL } else { &[WeightType::F16, WeightType::Q4_0] };
        for &wtype in types {
            check(gpu, &weight(wtype, rows, cols), &Case::new(wtype, rows, cols, 64));
        }
    }
}

#[test]
fn batch_sizes() {
    let gpu = &gpus()[0];
    for wtype in WeightType::ALL {
        let host = weight(wtype, 576, 576);
        for n in [1, 3, 33, 257] {
            check(gpu, &host, &Case::new(wtype, 576, 576, n));
        }
    }
    // A prefill of 512 tokens through the 125M up projection.
    check(gpu, &weight(WeightType::Q4_0, 1536, 576), &Case::new(WeightType::Q4_0, 1536, 576, 512));
}

#[test]
fn awkward_shapes_both_devices() {
    for gpu in gpus() {
        for wtype in WeightType::ALL {
            for (rows, cols, n) in [(1, 32, 3), (33, 32, 1), (33, 4128, 3), (65, 64, 40)] {
                check(gpu, &weight(wtype, rows, cols), &Case::new(wtype, rows, cols, n));
            }
        }
        for wtype in [WeightType::F32, WeightType::F16] {
            for (rows, cols) in [(1, 1), (33, 7), (3, 33), (17, 100)] {
                check(gpu, &weight(wtype, rows, cols), &Case::new(wtype, rows, cols, 5));
            }
        }
    }
}

/// Seeded random shapes through `gemm`'s own choice (the windowed product on the test devices, `gemm_rows`
/// with its chosen row slots under GPU rules), plus the tiled kernel: 2-80 vectors, any row count,
/// widths in whole blocks (f32/f16: any width), output slices, accumulation.
#[test]
fn seeded_random_shapes() {
    let mut rng = ShapeRng::new(5);
    for _ in 0..16 {
        let wtype = rng.pick(&WeightType::ALL);
        let (rows, n) = (rng.range(1, 400), rng.range(2, 80));
        let cols = rng.width(wtype, 800, 40);
        let (offset, extra) = if rng.chance(30) { (rng.range(1, 9), rng.range(0, 5)) } else { (0, 0) };
        let case = Case {
            offset,
            extra,
            accumulate: rng.chance(30),
            tiled: rng.chance(25),
            ..Case::new(wtype, rows, cols, n)
        };
        let host = weight(wtype, rows, cols);
        for gpu in gpus().iter().chain(gpu_rules_gpu()) {
            check(gpu, &host, &case);
        }
    }
}

#[test]
fn offset_and_accumulate() {
    let gpu = &gpus()[0];
    for wtype in WeightType::ALL {
        let host = weight(wtype, 100, 576);
        for (offset, extra, accumulate) in [(0, 0, true), (37, 11, false), (37, 11, true)] {
            check(gpu, &host, &Case { offset, extra, accumulate, ..Case::new(wtype, 100, 576, 35) });
        }
    }
}

#[test]
fn rejects_bad_operands() {
    let gpu = &gpus()[0];
    let w = GpuWeight::upload(gpu, &weight(WeightType::Q8_0, 8, 64)).unwrap();
    let x = Tensor::zeros(gpu, DType::F32, &[40, 64]).unwrap();
    let y = Tensor::zeros(gpu, DType::F32, &[40, 8]).unwrap();
    let bad_x = Tensor::zeros(gpu, DType::F32, &[40, 96]).unwrap();
    let err = gemm(gpu, &w, &bad_x, &y, 0, false).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("64"), "{err}");
    let err = gemm(gpu, &w, &x, &y, 2, true).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("offset 2"), "{err}");
    let y16 = Tensor::zeros(gpu, DType::F16, &[40, 8]).unwrap();
    assert!(matches!(gemm(gpu, &w, &x, &y16, 0, false).unwrap_err(), Error::DType { .. }));
    let err = HostWeight::quantize(WeightType::Q4_1, 2, 100, &[0.0; 200]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("100"), "{err}");
}

/// The windowed GEMV (what `gemm` runs on CPU devices) on both devices (the subgroup-broadcast path and
/// the one without): tails of rows (rows not a multiple of a lane's turns nor of a workgroup's), of
/// vectors (n not a multiple of 8) and of columns (f32/f16); several windows; shapes it cannot window.
#[test]
fn windowed_gemv() {
    for gpu in gpus() {
        // Each variant costs a pipeline compile on lavapipe, so the bare device checks two types.
        let types: &[WeightType] =
            if gpu.features().subgroups { &WeightType::ALL } else { &[WeightType::Q4_0, WeightType::F16] };
        for rpt in [1, 3] {
            let window = Some(rpt);
            for &wtype in types {
                let host = weight(wtype, 203, 96);
                check(
                    gpu,
                    &host,
                    &Case { window, offset: 5, extra: 3, accumulate: true, ..Case::new(wtype, 203, 96, 13) },
                );
            }
            let host = weight(WeightType::F16, 9, 40);
            check(gpu, &host, &Case { window, ..Case::new(WeightType::F16, 9, 40, 17) });
        }
        // 4128 columns (16 512 bytes per vector): at most 3 vectors fit a 64 KiB window, and 2 keep every
        // window's x offset a multiple of 256 bytes, so 37 vectors take 19 windows. With texture weights x
        // goes to texels instead: one copy and one launch.
        let host = weight(WeightType::Q8_0, 64, 4128);
        check(gpu, &host, &Case { window: Some(2), ..Case::new(WeightType::Q8_0, 64, 4128, 37) });
        let w = GpuWeight::upload(gpu, &host).unwrap();
        let texels = w.storage() == WeightStorage::Texture;
        let x = Tensor::zeros(gpu, DType::F32, &[37, 4128]).unwrap();
        let y = Tensor::zeros(gpu, DType::F32, &[37, 64]).unwrap();
        let launches = gemv_window(gpu, &w, &x, &y, 0, false, 2).unwrap().unwrap().launches();
        assert_eq!(launches, if texels { 2 } else { 19 }, "[{}]", gpu.describe());
        for bad in [0, 17] {
            let err = gemv_window(gpu, &w, &x, &y, 0, false, bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        }
        // 33 output rows: no window size puts every window's y at an aligned offset, and 4128 columns fit
        // only 3 vectors per window, so 40 vectors do not window as uniforms (`gemm` falls back to one GEMV
        // per vector); as texels they need no windows.
        let host = weight(WeightType::Q4_1, 33, 4128);
        let w = GpuWeight::upload(gpu, &host).unwrap();
        let x = Tensor::zeros(gpu, DType::F32, &[40, 4128]).unwrap();
        let y = Tensor::zeros(gpu, DType::F32, &[40, 33]).unwrap();
        assert_eq!(gemv_window(gpu, &w, &x, &y, 0, false, 4).unwrap().is_some(), texels);
        check(gpu, &host, &Case::new(WeightType::Q4_1, 33, 4128, 40));
        if texels {
            check(gpu, &host, &Case { window: Some(4), ..Case::new(WeightType::Q4_1, 33, 4128, 40) });
        }
    }
}

/// x as texels in the windowed GEMV under the read modes and feature sets `gpus()` leaves out: sampled
/// texels with subgroups (the other texture-read device) and without subgroups (every lane fetching all
/// eight vectors), each with a vector tail, several row turns and the residual accumulate.
#[test]
fn windowed_gemv_x_texels_every_read_mode() {
    for gpu in other_texture_reads_gpu().into_iter().chain(bare_texture_gpu()) {
        for wtype in [WeightType::Q4_0, WeightType::Q8_0, WeightType::F16] {
            let host = weight(wtype, 203, 96);
            let case = Case { window: Some(3), offset: 5, extra: 3, accumulate: true, ..Case::new(wtype, 203, 96, 13) };
            check(gpu, &host, &case);
        }
        let w = GpuWeight::upload(gpu, &weight(WeightType::Q4_0, 64, 96)).unwrap();
        assert_eq!(w.storage(), WeightStorage::Texture);
        let x = Tensor::zeros(gpu, DType::F32, &[13, 96]).unwrap();
        let y = Tensor::zeros(gpu, DType::F32, &[13, 64]).unwrap();
        assert_eq!(gemv_window(gpu, &w, &x, &y, 0, false, 3).unwrap().unwrap().launches(), 2);
    }
}

/// Windows of 1 to 4 vectors (the kernel leaves the upper four lanes' accumulators out: HI) against the
/// CPU, every type, both devices (x as texels and as uniforms), with the residual accumulate and an odd
/// rows-per-lane count.
#[test]
fn windows_of_at_most_four_vectors() {
    for gpu in gpus() {
        for wtype in WeightType::ALL {
            let host = weight(wtype, 203, 96);
            for n in 1..=4 {
                let case =
                    Case { window: Some(3), offset: 5, extra: 3, accumulate: true, ..Case::new(wtype, 203, 96, n) };
                check(gpu, &host, &case);
            }
        }
    }
}

/// The tiled kernel (what GPUs run), forced on this device.
#[test]
fn tiled_kernel() {
    let gpu = &gpus()[0];
    let tiled = |wtype, rows, cols, n| Case { tiled: true, ..Case::new(wtype, rows, cols, n) };
    for wtype in WeightType::ALL {
        check(gpu, &weight(wtype, 192, 576), &tiled(wtype, 192, 576, 64));
        check(gpu, &weight(wtype, 33, 4128), &tiled(wtype, 33, 4128, 3));
        let host = weight(wtype, 100, 576);
        check(gpu, &host, &Case { offset: 37, extra: 11, accumulate: true, ..tiled(wtype, 100, 576, 35) });
        check(&gpus()[1], &host, &tiled(wtype, 100, 576, 5));
    }
    check(gpu, &weight(WeightType::Q4_0, 576, 576), &tiled(WeightType::Q4_0, 576, 576, 257));
    for wtype in [WeightType::F32, WeightType::F16] {
        check(gpu, &weight(wtype, 17, 100), &tiled(wtype, 17, 100, 5));
    }
}

/// The row-slot kernel (what GPUs run), forced here on both devices (subgroup reductions, and the
/// workgroup-memory tree without them): its default mapping at a MobileLLM shape, one and several slots per
/// workgroup and per subgroup, with tails of rows (odd counts: a thread's second row past the end), of
/// vectors (n not a multiple of 4) and of columns (f32/f16), offsets and accumulation.
#[test]
fn row_slot_kernel() {
    let slots = |wtype, rows, cols, n, s| Case { slots: Some(s), ..Case::new(wtype, rows, cols, n) };
    for gpu in gpus() {
        let types: &[WeightType] =
            if gpu.features().subgroups { &WeightType::ALL } else { &[WeightType::Q4_0, WeightType::F16] };
        for &wtype in types {
            check(gpu, &weight(wtype, 192, 576), &slots(wtype, 192, 576, 64, None));
            let host = weight(wtype, 101, 576);
            let mapping = Some(RowSlots { wg: 64, tpr: 8 });
            check(gpu, &host, &Case { offset: 37, extra: 11, accumulate: true, ..slots(wtype, 101, 576, 35, mapping) });
            let mapping = Some(RowSlots { wg: 32, tpr: 32 });
            check(gpu, &weight(wtype, 33, 4128), &slots(wtype, 33, 4128, 3, mapping));
        }
        for wtype in [WeightType::F32, WeightType::F16] {
            let mapping = Some(RowSlots { wg: 16, tpr: 4 });
            check(gpu, &weight(wtype, 17, 100), &slots(wtype, 17, 100, 5, mapping));
            check(gpu, &weight(wtype, 3, 7), &slots(wtype, 3, 7, 9, mapping));
        }
    }
    let gpu = &gpus()[0];
    check(gpu, &weight(WeightType::Q4_0, 576, 576), &slots(WeightType::Q4_0, 576, 576, 257, None));
    // Mappings the kernel cannot hold are typed errors, not launches.
    let w = GpuWeight::upload(gpu, &weight(WeightType::Q8_0, 8, 64)).unwrap();
    let x = Tensor::zeros(gpu, DType::F32, &[4, 64]).unwrap();
    let y = Tensor::zeros(gpu, DType::F32, &[4, 8]).unwrap();
    for bad in [RowSlots { wg: 512, tpr: 8 }, RowSlots { wg: 48, tpr: 8 }, RowSlots { wg: 32, tpr: 64 }] {
        let err = gemm_rows_with(gpu, &w, &x, &y, 0, false, bad).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{bad:?}: {err}");
    }
    // One thread per workgroup covers 2 rows: 131072 rows would need 65536 workgroups, one past the limit.
    let rows = 131_072;
    let w = GpuWeight::upload(gpu, &weight(WeightType::F16, rows, 32)).unwrap();
    let x = Tensor::zeros(gpu, DType::F32, &[1, 32]).unwrap();
    let y = Tensor::zeros(gpu, DType::F32, &[1, rows]).unwrap();
    let err = gemm_rows_with(gpu, &w, &x, &y, 0, false, RowSlots { wg: 1, tpr: 1 }).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("131070"), "{err}");
    assert!(gemm_rows_with(gpu, &w, &x, &y, 0, false, RowSlots { wg: 2, tpr: 1 }).is_ok());
}
