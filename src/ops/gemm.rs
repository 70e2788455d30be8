//! Matrix-matrix products for a batch of vectors (prefill), every weight type (`kernels/gemm.wgsl`).
//! Same semantics as [`crate::ops::gemv::gemv`]: `x` `[n, in]`, `y` `[n, total_out]`, output column
//! offset, optional in-place accumulate. Tiles of 64 rows x 32 vectors within 12 KiB of workgroup memory.

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::ops::gemv::{check_operands, gemv, gemv_window, WINDOW_RPT};
use crate::ops::{make_dispatch, uniform, Dispatch, MAX_GROUPS_PER_DIM};
use crate::quant::{GpuWeight, WeightDesc};
use crate::shader::{ShaderVariant, GEMM};
use crate::tensor::Tensor;

/// Rows of `W` per workgroup tile.
pub const TILE_ROWS: usize = 64;
/// Vectors of `x` per workgroup tile.
pub const TILE_VECTORS: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    w: WeightDesc,
    n: u32,
    y_stride: u32,
    out_offset: u32,
    accumulate: u32,
}

/// `y[:, out_offset..][.., :rows] = W·x` (or `+=` when `accumulate`) for `x` `[n, in]`.
/// GPUs get the tiled kernel ([`gemm_tiled`]). CPU devices (lavapipe), where every storage load in a
/// loop is a per-lane gather and workgroup memory and barriers are slow, get the windowed multi-vector
/// GEMV ([`gemv_window`]: lanes are rows, 8 vectors each, x as a uniform shared by subgroup broadcasts),
/// or, for shapes it cannot window, one GEMV per vector.
pub fn gemm(gpu: &Gpu, w: &GpuWeight, x: &Tensor, y: &Tensor, out_offset: usize, accumulate: bool) -> Result<Dispatch> {
    if gpu.is_cpu_class() {
        return match gemv_window(gpu, w, x, y, out_offset, accumulate, WINDOW_RPT)? {
            Some(d) => Ok(d),
            None => gemv(gpu, w, x, y, out_offset, accumulate),
        };
    }
    gemm_tiled(gpu, w, x, y, out_offset, accumulate)
}

/// The tiled kernel on any device (64 rows x 32 vectors per workgroup).
pub fn gemm_tiled(
    gpu: &Gpu,
    w: &GpuWeight,
    x: &Tensor,
    y: &Tensor,
    out_offset: usize,
    accumulate: bool,
) -> Result<Dispatch> {
    let (n, y_stride) = check_operands(w, x, y, out_offset)?;
    let groups_y = n.div_ceil(TILE_VECTORS);
    if groups_y > MAX_GROUPS_PER_DIM as usize {
        return Err(Error::shape(
            "x of gemm",
            x.shape(),
            format!("at most {} vectors", MAX_GROUPS_PER_DIM as usize * TILE_VECTORS),
        ));
    }
    let groups_x = w.rows().div_ceil(TILE_ROWS) as u32;
    let pipeline = gpu.pipeline(&GEMM, "gemm", &w.variant(ShaderVariant::new()))?;
    let params = Params {
        w: w.desc(),
        n: n as u32,
        y_stride: y_stride as u32,
        out_offset: out_offset as u32,
        accumulate: accumulate as u32,
    };
    let params = uniform(gpu, "gemm params", &params)?;
    make_dispatch(
        gpu,
        format!("gemm:{}", w.wtype()),
        pipeline,
        &[
            (0, params.as_entire_binding()),
            (1, w.binding()),
            (2, x.buffer().as_entire_binding()),
            (3, y.buffer().as_entire_binding()),
        ],
        [groups_x, groups_y as u32, 1],
        vec![params.clone()],
    )
}
