//! RMSNorm launcher (`kernels/rms_norm.wgsl`), CPU twin [`crate::reference::rms_norm`].

use bytemuck::{Pod, Zeroable};

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::ops::{base_variant, make_dispatch, small_kernel_workgroup, uniform, Dispatch, MAX_GROUPS_PER_DIM};
use crate::shader::RMS_NORM;
use crate::tensor::{DType, Tensor};

/// Threads per row on GPUs (CPU drivers: `ops::small_kernel_workgroup`). Rows are short (576..1600):
/// 128 threads read 4-13 values each.
const WORKGROUP: u32 = 128;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    cols: u32,
    rows: u32,
    eps: f32,
    _pad: u32,
}

/// `y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight` for every row `r` of `x` (`[rows, cols]`, f32).
/// `y` may not alias `x`.
pub fn rms_norm(gpu: &Gpu, x: &Tensor, weight: &Tensor, y: &Tensor, eps: f32) -> Result<Dispatch> {
    let cols = *weight.shape().last().unwrap_or(&0);
    weight.expect("rms_norm weight", DType::F32, &[cols])?;
    let rows = x.expect_rows("rms_norm input", DType::F32, cols)?;
    y.expect("rms_norm output", DType::F32, x.shape())?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid("rms_norm eps", eps, "a finite value >= 0"));
    }
    if rows > MAX_GROUPS_PER_DIM as usize {
        return Err(Error::invalid("rms_norm rows", rows, "at most 65535"));
    }
    let variant = base_variant(gpu)
        .flag_if("VEC4", cols.is_multiple_of(4))
        .constant("WG", small_kernel_workgroup(gpu, WORKGROUP));
    let pipeline = gpu.pipeline(&RMS_NORM, "rms_norm", &variant)?;
    let params = uniform(gpu, "rms_norm params", &Params { cols: cols as u32, rows: rows as u32, eps, _pad: 0 })?;
    make_dispatch(
        gpu,
        "rms_norm:rms_norm".into(),
        pipeline,
        &[
            (0, params.as_entire_binding()),
            (1, x.buffer().as_entire_binding()),
            (2, weight.buffer().as_entire_binding()),
            (3, y.buffer().as_entire_binding()),
        ],
        [rows as u32, 1, 1],
        vec![params.clone()],
    )
}
