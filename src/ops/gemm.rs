//! Matrix-matrix products for a batch of vectors (prefill), every weight type (`kernels/gemm.wgsl`).
//! Same semantics as [`crate::ops::gemv::gemv`]: `x` `[n, in]`, `y` `[n, total_out]`, output column
//! offset, optional in-place accumulate. Three forms: [`gemm_rows`] (GPUs: the GEMV's mapping, 2 rows x 4
//! vectors per thread), [`gemm_tiled`] (tiles of 64 rows x 32 vectors within 12 KiB of workgroup memory) and, on CPU
//! devices, the windowed multi-vector GEMV ([`gemv_window`]).

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::ops::gemv::{check_operands, gemv, gemv_window, GemvMapping, WINDOW_MIN_VECTORS, WINDOW_RPT};
use crate::ops::{base_variant, make_dispatch, uniform, Dispatch, MAX_GROUPS_PER_DIM};
use crate::quant::{GpuWeight, WeightDesc};
use crate::shader::{ShaderVariant, GEMM};
use crate::tensor::Tensor;

/// Rows of `W` per workgroup tile.
pub const TILE_ROWS: usize = 64;
/// Vectors of `x` per workgroup tile.
pub const TILE_VECTORS: usize = 32;

/// Rows each thread of [`gemm_rows`] carries (fixed in the kernel, written out).
pub const ROWS_PER_THREAD: u32 = 2;
/// Vectors each thread of [`gemm_rows`] carries (fixed in the kernel, written out): each block's quants
/// and scale, read once per row, feed 4 vectors.
pub const ROWS_VECTORS: u32 = 4;

/// How [`gemm_rows`] maps threads: `wg` threads per workgroup, `tpr` threads per row slot (powers of two,
/// `tpr <= wg <= 256`). With subgroups a subgroup takes whole slots whatever its size, as in the GEMV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowSlots {
    /// Threads per workgroup.
    pub wg: u32,
    /// Threads sharing one row slot (striding over its 4-column quads).
    pub tpr: u32,
}

impl RowSlots {
    /// The GEMV's table ([`GemvMapping::choose`]) for this device and shape.
    pub fn choose(gpu: &Gpu, rows: usize, cols: usize) -> RowSlots {
        let m = GemvMapping::choose(gpu, rows, cols);
        RowSlots { wg: m.wg, tpr: m.tpr }
    }
}

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
/// GPUs get [`gemm_rows`]. CPU devices (lavapipe), where every storage load in a
/// loop is a per-lane gather and workgroup memory and barriers are slow, get the windowed multi-vector
/// GEMV ([`gemv_window`]: lanes are rows, 8 vectors each, x as texels or a uniform, shared by subgroup broadcasts),
/// or, for fewer than [`WINDOW_MIN_VECTORS`] vectors and shapes it cannot window, one GEMV per vector.
pub fn gemm(gpu: &Gpu, w: &GpuWeight, x: &Tensor, y: &Tensor, out_offset: usize, accumulate: bool) -> Result<Dispatch> {
    if gpu.is_cpu_class() {
        if x.shape().first().is_some_and(|&n| n < WINDOW_MIN_VECTORS) {
            return gemv(gpu, w, x, y, out_offset, accumulate);
        }
        return match gemv_window(gpu, w, x, y, out_offset, accumulate, WINDOW_RPT)? {
            Some(d) => Ok(d),
            None => gemv(gpu, w, x, y, out_offset, accumulate),
        };
    }
    gemm_rows(gpu, w, x, y, out_offset, accumulate)
}

/// The GEMV's mapping over a batch (`gemm_rows` entry): the threads of a row slot stride over its 4-column
/// quads (coalesced reads of x and of the quants), each carrying [`ROWS_PER_THREAD`] rows for
/// [`ROWS_VECTORS`] vectors, so the grid is thousands of small workgroups. On an H100 the tiled kernel's few
/// dozen workgroups each walked every block of their rows behind two barriers (576x576 at n = 64: 18
/// workgroups, 88 µs, 19x one GEMV; this kernel: 14.5 µs).
pub fn gemm_rows(
    gpu: &Gpu,
    w: &GpuWeight,
    x: &Tensor,
    y: &Tensor,
    out_offset: usize,
    accumulate: bool,
) -> Result<Dispatch> {
    gemm_rows_with(gpu, w, x, y, out_offset, accumulate, RowSlots::choose(gpu, w.rows(), w.cols()))
}

/// [`gemm_rows`] with an explicit thread mapping (for tests and tuning).
pub fn gemm_rows_with(
    gpu: &Gpu,
    w: &GpuWeight,
    x: &Tensor,
    y: &Tensor,
    out_offset: usize,
    accumulate: bool,
    slots: RowSlots,
) -> Result<Dispatch> {
    let RowSlots { wg, tpr } = slots;
    if !(wg.is_power_of_two() && wg <= 256 && tpr.is_power_of_two() && tpr <= wg) {
        return Err(Error::invalid(
            "gemm_rows mapping",
            format!("{slots:?}"),
            "wg a power of two <= 256, tpr a power of two <= wg",
        ));
    }
    let variant = w.variant(base_variant(gpu)).flag("ROWS").constant("WG", wg).constant("TPR", tpr);
    let tile = ((wg / tpr * ROWS_PER_THREAD) as usize, ROWS_VECTORS as usize);
    launch(gpu, "gemm_rows", &variant, Product { w, x, y, out_offset, accumulate }, tile)
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
    // The tiled entry has fixed tiles; the mapping constants belong to `gemm_rows` (unused here).
    let variant = w.variant(ShaderVariant::new()).constant("WG", 64).constant("TPR", 1);
    launch(gpu, "gemm", &variant, Product { w, x, y, out_offset, accumulate }, (TILE_ROWS, TILE_VECTORS))
}

impl Params {
    fn new(w: &GpuWeight, n: usize, y_stride: usize, out_offset: usize, accumulate: bool) -> Params {
        Params {
            w: w.desc(),
            n: n as u32,
            y_stride: y_stride as u32,
            out_offset: out_offset as u32,
            accumulate: accumulate as u32,
        }
    }
}

/// The operands of one product: `y[:, out_offset..] (+)= W·x`.
struct Product<'a> {
    w: &'a GpuWeight,
    x: &'a Tensor,
    y: &'a Tensor,
    out_offset: usize,
    accumulate: bool,
}

/// Checks the operands and launches either entry on a grid of `(rows, vectors)` tiles.
fn launch(
    gpu: &Gpu,
    entry: &str,
    variant: &ShaderVariant,
    Product { w, x, y, out_offset, accumulate }: Product<'_>,
    (tile_rows, tile_vectors): (usize, usize),
) -> Result<Dispatch> {
    let (n, y_stride) = check_operands(w, x, y, out_offset)?;
    let groups_y = n.div_ceil(tile_vectors);
    if groups_y > MAX_GROUPS_PER_DIM as usize {
        return Err(Error::shape(
            "x of gemm",
            x.shape(),
            format!("at most {} vectors", MAX_GROUPS_PER_DIM as usize * tile_vectors),
        ));
    }
    let groups_x = w.rows().div_ceil(tile_rows);
    if groups_x > MAX_GROUPS_PER_DIM as usize {
        return Err(Error::shape(
            "weight of gemm",
            &[w.rows(), w.cols()],
            format!("at most {} rows for {tile_rows} rows per workgroup", MAX_GROUPS_PER_DIM as usize * tile_rows),
        ));
    }
    let grid = [groups_x as u32, groups_y as u32, 1];
    let pipeline = gpu.pipeline(&GEMM, entry, variant)?;
    let params = uniform(gpu, "gemm params", &Params::new(w, n, y_stride, out_offset, accumulate))?;
    make_dispatch(
        gpu,
        format!("gemm:{}{}", if entry == "gemm" { "" } else { "rows_" }, w.wtype()),
        pipeline,
        &[
            (0, params.as_entire_binding()),
            (1, w.binding()),
            (2, x.buffer().as_entire_binding()),
            (3, y.buffer().as_entire_binding()),
        ],
        grid,
        vec![params.clone()],
    )
}
