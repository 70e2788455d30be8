//! RMSNorm kernel vs its CPU twin, under both feature sets.
mod common;

use common::{assert_close, gpus, random_vec, ShapeRng};
use mobilellm_kernels::{ops, reference, DType, Error, Tensor};

/// f32 sums of `cols` squares in a different order differ by at most ~cols * 2^-24 relative; the
/// result passes through one inverse sqrt and two products, so 1e-5 relative (plus 1e-6 absolute for
/// values near zero) bounds every shape up to 4097 columns.
const REL: f32 = 1e-5;
const ABS: f32 = 1e-6;

fn check(cols: usize, rows: usize) {
    for gpu in gpus() {
        let x: Vec<f32> = random_vec(cols as u64 * 31 + rows as u64, rows * cols).iter().map(|v| v * 3.0).collect();
        let w: Vec<f32> = random_vec(cols as u64, cols).iter().map(|v| 1.0 + v * 0.5).collect();
        let x_gpu = Tensor::from_slice(gpu, &[rows, cols], &x).unwrap();
        let w_gpu = Tensor::from_slice(gpu, &[cols], &w).unwrap();
        let y_gpu = Tensor::zeros(gpu, DType::F32, &[rows, cols]).unwrap();
        let d = ops::rms_norm::rms_norm(gpu, &x_gpu, &w_gpu, &y_gpu, 1e-5).unwrap();
        ops::run(gpu, &[&d]).unwrap();
        let want = reference::rms_norm(&x, &w, 1e-5);
        assert_close(
            &format!("rms_norm {rows}x{cols} [{}]", gpu.features()),
            &y_gpu.read::<f32>(gpu).unwrap(),
            &want,
            ABS,
            REL,
        );
    }
}

#[test]
fn mobilellm_widths() {
    for cols in [576, 960, 1600] {
        for rows in [1, 5, 64] {
            check(cols, rows);
        }
    }
}

#[test]
fn awkward_widths() {
    // 4 and 12: rows of one and three vec4 (VEC4), fewer than the lanes.
    for cols in [1, 4, 7, 12, 33, 4097] {
        for rows in [1, 3, 64] {
            check(cols, rows);
        }
    }
}

#[test]
fn every_row_count_up_to_64() {
    for rows in 1..=64 {
        check(33, rows);
    }
}

/// Seeded random shapes: widths 1-4096 (the tolerance's range; a third of them multiples of 4, the vec4 form),
/// 1-300 rows.
#[test]
fn seeded_random_shapes() {
    let mut rng = ShapeRng::new(29);
    for _ in 0..12 {
        let cols = if rng.chance(33) { 4 * rng.range(1, 1024) } else { rng.range(1, 4096) };
        check(cols, rng.range(1, 300));
    }
}

#[test]
fn rejects_bad_shapes_and_eps() {
    let gpu = &gpus()[0];
    let x = Tensor::zeros(gpu, DType::F32, &[2, 8]).unwrap();
    let w = Tensor::zeros(gpu, DType::F32, &[7]).unwrap();
    let y = Tensor::zeros(gpu, DType::F32, &[2, 8]).unwrap();
    let err = ops::rms_norm::rms_norm(gpu, &x, &w, &y, 1e-5).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("[2, 8]") && err.to_string().contains("7"), "{err}");
    let w = Tensor::zeros(gpu, DType::F32, &[8]).unwrap();
    let err = ops::rms_norm::rms_norm(gpu, &x, &w, &y, f32::NAN).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let y16 = Tensor::zeros(gpu, DType::F16, &[2, 8]).unwrap();
    let err = ops::rms_norm::rms_norm(gpu, &x, &w, &y16, 1e-5).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
}
