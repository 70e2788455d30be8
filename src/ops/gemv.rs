//! Matrix-vector products `y = W·x` / `y += W·x` for every weight type (`kernels/gemv.wgsl`).
//!
//! `x` is `[n, in]` (n vectors), `y` is `[n, total_out]`; the `rows` outputs of `W` land at columns
//! `out_offset..out_offset + rows` of each `y` row, so a matrix split by rows (an LM head larger than one
//! binding) writes its slice of a wider output. `accumulate` adds into `y` in place (the residual add),
//! through one read_write binding.

use crate::device::{DeviceClass, Gpu, WeightStorage};
use crate::error::{Error, Result};
use crate::ops::{
    base_variant, broadcasts_of_8, fits_uniform, make_dispatch, prefix_binding, uniform, Dispatch, MAX_GROUPS_PER_DIM,
};
use crate::quant::{GpuWeight, WeightDesc};
use crate::shader::{ShaderVariant, GEMV};
use crate::tensor::{DType, Tensor};

/// How threads map onto rows: `wg` threads per workgroup, `tpr` threads per row (a power of two
/// dividing `wg`), `rpt` rows per thread. A workgroup covers `wg / tpr * rpt` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemvMapping {
    /// Threads per workgroup (power of two, at most 256).
    pub wg: u32,
    /// Threads sharing one row (power of two dividing `wg`); 1 = no reduction.
    pub tpr: u32,
    /// Rows each thread carries (1..=16), sharing each load of `x`.
    pub rpt: u32,
}

impl GemvMapping {
    /// Rows per workgroup.
    pub fn rows_per_group(self) -> u32 {
        self.wg / self.tpr * self.rpt
    }

    /// The mapping for a device and shape, from a small table by device class and row length.
    ///
    /// - CPU devices (lavapipe): invocations are SIMD lanes of one core, so cross-lane reductions and
    ///   barriers cost more than they save: a thread owns 8-16 whole rows (one uniform x load feeds them all).
    /// - GPUs: threads of a row stride over its blocks, so neighbours read neighbouring 16..128-byte
    ///   blocks (coalesced). With subgroups a whole subgroup shares a row slot, so each subgroup owns exactly
    ///   one slot and loops over none: on an H100 the table before this (8 threads per row slot, so each
    ///   32-wide subgroup took 4 slots in turn) spent ~13 µs on any GEMV up to 1536x576, against 2.4 µs for
    ///   a copy, every slot waiting out its own memory latency. The H100 sweep (`GEMV_SWEEP=1`,
    ///   `benches/results/`) then picked one subgroup per workgroup and 2 rows per thread for the layer
    ///   matrices (q4_0 576x576: 4.7 µs, against 5.2 with 4 subgroups per workgroup and 14.5 with the old
    ///   table), and 4 subgroups of 4 rows per thread for LM heads (32000x576: 30.8 µs against 44.0).
    ///   Without subgroups (a workgroup-memory tree), short rows (in = 576 is 18 blocks) get 8 threads, long
    ///   rows 32.
    pub fn choose(gpu: &Gpu, rows: usize, cols: usize) -> GemvMapping {
        let subgroup_max = gpu.features().subgroups.then(|| gpu.subgroup_size_range().1);
        GemvMapping::for_device(gpu.device_class(), subgroup_max, rows, cols)
    }

    /// [`GemvMapping::choose`] from the device's facts alone: its class and, where subgroups are enabled,
    /// its largest subgroup size (any value: sizes outside 4..=128 are clamped, and the kernel is correct for
    /// subgroups smaller than the one a mapping was sized for).
    pub fn for_device(class: DeviceClass, subgroup_max: Option<u32>, rows: usize, cols: usize) -> GemvMapping {
        let blocks = cols.div_ceil(32);
        if class == DeviceClass::Cpu {
            // Measured on lavapipe (benches/kernels.rs, GEMV_SWEEP=1; a loaded shared machine, so only
            // large differences count): more rows per thread win (each x load feeds them all: 8 beat 4 by
            // 1.5-2x, 4 beat 1 by 3x), and a workgroup of 8 = one SIMD batch of lavapipe avoids running
            // several batches as coroutines (8x16 beat 16x8 by up to 2x). Under 1024 rows, 8 rows per
            // thread: a 576-row matrix is then 9 workgroups rather than 5 for the driver's host threads to
            // share (the 125M step's o/down GEMVs 0.92-0.93x the time, two plans alternated in one process,
            // against 0.97-0.98x for the unchanged FFN kernel between the same plans).
            let (wg, rpt) = if rows >= 1024 { (8, 16) } else { (8, 8) };
            return GemvMapping { wg, tpr: 1, rpt };
        }
        if let Some(subgroup_max) = subgroup_max {
            let tpr = subgroup_max.clamp(4, 128).next_power_of_two();
            return if rows >= 8192 {
                GemvMapping { wg: (4 * tpr).min(256), tpr, rpt: 4 }
            } else {
                GemvMapping { wg: tpr.max(32), tpr, rpt: 2 }
            };
        }
        let tpr = if blocks <= 24 {
            8
        } else if blocks <= 48 {
            16
        } else {
            32
        };
        GemvMapping { wg: 128, tpr, rpt: 2 }
    }

    fn check(self) -> Result<()> {
        let ok = self.wg.is_power_of_two()
            && self.wg <= 256
            && self.tpr.is_power_of_two()
            && self.tpr <= self.wg
            && (1..=16).contains(&self.rpt)
            && self.wg * self.rpt * 4 <= 16384;
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "GEMV mapping",
                format!("{self:?}"),
                "wg a power of two <= 256, tpr a power of two <= wg, rpt in 1..=16",
            ))
        }
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
    out_rows: u32,
    up_row: u32,
    eps: f32,
    _pad: u32,
}

/// Checks operands shared by GEMV and GEMM; returns (n, y_stride).
impl Params {
    /// A plain product (no norm, no SwiGLU): every row of `w` is an output.
    fn plain(w: &GpuWeight, n: usize, y_stride: usize, out_offset: usize, accumulate: bool) -> Params {
        Params {
            w: w.desc(),
            n: n as u32,
            y_stride: y_stride as u32,
            out_offset: out_offset as u32,
            accumulate: accumulate as u32,
            out_rows: w.rows() as u32,
            up_row: 0,
            eps: 0.0,
            _pad: 0,
        }
    }
}

/// The whole buffer, or under XUNI exactly the `vec4s` the shader's uniform array declares.
fn x_binding(t: &Tensor, vec4s: u32, uniform: bool) -> wgpu::BindingResource<'_> {
    if uniform {
        prefix_binding(t, 4 * vec4s as usize)
    } else {
        t.buffer().as_entire_binding()
    }
}

/// Sizes (in vec4) of x and the norm weight when the `gemv` entry reads them as uniforms (XUNI).
#[derive(Clone, Copy, Debug)]
struct XUniform {
    xv4: u32,
    nv4: u32,
}

/// Whether the `gemv` entry should read `x` (`[n, cols]`) and the norm weight as uniforms: only with one
/// thread per row (every lane reads the same x address; on lavapipe a uniform load is a SIMD gather where a
/// storage load is a per-lane loop; on GPUs a divergent uniform read would serialise, and TPR > 1 reads
/// diverge) and where they fit one uniform binding and the buffers allow it.
fn x_uniform(
    gpu: &Gpu,
    mapping: GemvMapping,
    x: &Tensor,
    n: usize,
    cols: usize,
    norm: Option<&Tensor>,
) -> Option<XUniform> {
    let ok = mapping.tpr == 1
        && gpu.is_cpu_class()
        && cols.is_multiple_of(4)
        && fits_uniform(gpu, x, n * cols)
        && norm.is_none_or(|t| fits_uniform(gpu, t, cols));
    ok.then_some(XUniform { xv4: (n * cols / 4) as u32, nv4: if norm.is_some() { (cols / 4) as u32 } else { 1 } })
}

/// Adds the XUNI flag and its array sizes (1 when off, so those variants share one pipeline).
/// `XN` (vectors per window of the `gemv_window` entry) is 1 outside that entry.
fn with_x_uniform(variant: crate::shader::ShaderVariant, u: Option<XUniform>) -> crate::shader::ShaderVariant {
    variant
        .flag_if("XUNI", u.is_some())
        .constant("XV4", u.map_or(1, |u| u.xv4))
        .constant("NV4", u.map_or(1, |u| u.nv4))
        .constant("XN", 1)
}

pub(crate) fn check_operands(w: &GpuWeight, x: &Tensor, y: &Tensor, out_offset: usize) -> Result<(usize, usize)> {
    let n = x.expect_rows("x of a matrix product", DType::F32, w.cols())?;
    if y.dtype() != DType::F32 {
        return Err(Error::DType {
            what: "y of a matrix product".into(),
            got: y.dtype().to_string(),
            expected: "f32".into(),
        });
    }
    let y_stride = *y.shape().last().unwrap_or(&0);
    if y.len() / y_stride.max(1) != n || out_offset + w.rows() > y_stride {
        return Err(Error::shape(
            "y of a matrix product",
            y.shape(),
            format!("[{n}, total_out] with total_out >= out_offset {out_offset} + rows {}", w.rows()),
        ));
    }
    if x.buffer() == y.buffer() {
        return Err(Error::invalid("x and y of a matrix product", "the same buffer", "distinct buffers"));
    }
    Ok((n, y_stride))
}

/// `y[:, out_offset..][.., :rows] = W·x` (or `+=` when `accumulate`), with the device's default mapping.
pub fn gemv(gpu: &Gpu, w: &GpuWeight, x: &Tensor, y: &Tensor, out_offset: usize, accumulate: bool) -> Result<Dispatch> {
    let mapping = GemvMapping::choose(gpu, w.rows(), w.cols());
    gemv_with(gpu, w, x, y, out_offset, accumulate, mapping)
}

/// [`gemv`] with an explicit thread mapping (for tests and tuning).
pub fn gemv_with(
    gpu: &Gpu,
    w: &GpuWeight,
    x: &Tensor,
    y: &Tensor,
    out_offset: usize,
    accumulate: bool,
    mapping: GemvMapping,
) -> Result<Dispatch> {
    mapping.check()?;
    let (n, y_stride) = check_operands(w, x, y, out_offset)?;
    if n > MAX_GROUPS_PER_DIM as usize {
        return Err(Error::shape("x of gemv", x.shape(), format!("at most {MAX_GROUPS_PER_DIM} vectors (use gemm)")));
    }
    let params = Params::plain(w, n, y_stride, out_offset, accumulate);
    single(gpu, w, x, y, &params, GemvFusion::default(), mapping)
}

/// The one-vector-per-workgroup launch (`gemv` entry) shared by [`gemv_with`] and [`gemv_fused_with`].
fn single(
    gpu: &Gpu,
    w: &GpuWeight,
    x: &Tensor,
    y: &Tensor,
    params: &Params,
    fusion: GemvFusion<'_>,
    mapping: GemvMapping,
) -> Result<Dispatch> {
    let (norm, swiglu) = (fusion.norm.map(|(t, _)| t), fusion.swiglu);
    let n = params.n as usize;
    let groups = params.out_rows.div_ceil(mapping.rows_per_group());
    let variant = w
        .variant(base_variant(gpu))
        .flag_if("NORM", norm.is_some())
        .flag_if("SWIGLU", swiglu)
        .flag_if("GROUP8", groups_of_8(w, mapping, params.out_rows as usize))
        .flag_if("QUADS", by_quads(w, mapping))
        .constant("WG", mapping.wg)
        .constant("TPR", mapping.tpr)
        .constant("RPT", mapping.rpt);
    let xu = x_uniform(gpu, mapping, x, n, w.cols(), norm);
    // XBCAST: where every lane reads the same x (XUNI), lanes 0..7 load a block's x once between them and
    // subgroup broadcasts share it (on lavapipe q4_0 GEMVs 1.13-1.47x faster than eight gathers each); the
    // workgroup must fill those 8 lanes.
    let variant = variant.flag_if("XBCAST", xu.is_some() && broadcasts_of_8(gpu) && mapping.wg.is_multiple_of(8));
    let pipeline = gpu.pipeline(&GEMV, "gemv", &with_x_uniform(variant, xu))?;
    let name = dispatch_name("", w, norm.is_some(), swiglu);
    let params = uniform(gpu, "gemv params", params)?;
    // Under XUNI the uniforms are bound exactly as large as the shader's arrays.
    let (xv4, nv4) = xu.map_or((0, 0), |u| (u.xv4, u.nv4));
    let mut bindings = vec![
        (0, params.as_entire_binding()),
        (1, w.binding()),
        (2, x_binding(x, xv4, xu.is_some())),
        (3, y.buffer().as_entire_binding()),
    ];
    if let Some(norm) = norm {
        bindings.push((4, x_binding(norm, nv4, xu.is_some())));
    }
    make_dispatch(gpu, name, pipeline, &bindings, [groups, n as u32, 1], vec![params.clone()])
}

/// Whether the `gemv` entry takes its rows 8 at a time (`GROUP8`, `dot_rows_x8` in `kernels/gemv.wgsl`): one
/// thread owns 8 or 16 whole rows of a texture weight, and the weight's and the output's row counts are
/// multiples of 8, so in the tiled texture layout the block of each aligned group of 8 rows is 8 neighbouring
/// blocks whose scales share one texel. On lavapipe, in interleaved runs against the per-row loop, the
/// quantized GEMVs at 576x576 .. 32000x576 ran 1.1-1.65x faster (q4_0 1.25-1.65x), f32/f16 level or better.
fn groups_of_8(w: &GpuWeight, mapping: GemvMapping, out_rows: usize) -> bool {
    w.storage() == WeightStorage::Texture
        && mapping.tpr == 1
        && matches!(mapping.rpt, 8 | 16)
        && w.rows().is_multiple_of(8)
        && out_rows.is_multiple_of(8)
}

/// Whether the `gemv` entry's row slots stride over 4-column quads (`QUADS`) instead of 32-column blocks:
/// with several threads per row (GPUs) and at least [`QUADS_FROM_ROWS`] weight rows. Measured on an H100:
/// the LM head (32000x576 q4_0 30.7 -> 21.9 µs), 2560x960 (9.0 -> 7.9) and the fused FFN's stacked gate/up
/// (3072x576 f32 31.3 -> 20.6, 5120x960 q4_0 35.0 -> 30.8) gain; below 2048 rows every shape lost
/// (576x1536 7.1 -> 9.2 µs, 960x2560 10.5 -> 13.5), and 1536x576 was level.
fn by_quads(w: &GpuWeight, mapping: GemvMapping) -> bool {
    mapping.tpr > 1 && w.rows() >= QUADS_FROM_ROWS
}

/// The smallest weight (in rows) whose GEMV strides over quads on GPUs (see `by_quads`).
pub const QUADS_FROM_ROWS: usize = 2048;

/// `gemv{entry}:…` or, with SWIGLU, `ffn:swiglu{entry}_…` (the profiler groups dispatches by the prefix).
fn dispatch_name(entry: &str, w: &GpuWeight, norm: bool, swiglu: bool) -> String {
    match (norm, swiglu) {
        (_, true) => format!("ffn:swiglu{entry}_{}", w.wtype()),
        (true, false) => format!("gemv{entry}:norm_{}", w.wtype()),
        (false, false) => format!("gemv{entry}:{}", w.wtype()),
    }
}

/// What a fused GEMV folds around the product (see `kernels/gemv.wgsl`); the default folds nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct GemvFusion<'a> {
    /// RMSNorm `x` first with this weight (`[in]` f32) and eps.
    pub norm: Option<(&'a Tensor, f32)>,
    /// `w` is `[gate; up]` stacked: write `silu(gate·x) ⊙ (up·x)` (`w.rows() / 2` outputs).
    pub swiglu: bool,
}

/// [`gemv`] with an RMSNorm prologue and/or a SwiGLU epilogue, same mapping table. Used by the planner for
/// the normed Q/K/V projection and the fused feed-forward (`ops::ffn::ffn_swiglu`).
/// With `n >= WINDOW_MIN_VECTORS` on CPU devices (prefill) it runs the windowed entry ([`gemv_window`]'s
/// kernel), so each weight is read once per 8 vectors instead of once per vector.
pub fn gemv_fused(gpu: &Gpu, w: &GpuWeight, x: &Tensor, y: &Tensor, fusion: GemvFusion<'_>) -> Result<Dispatch> {
    let out_rows = if fusion.swiglu { w.rows() / 2 } else { w.rows() };
    gemv_fused_with(gpu, w, x, y, fusion, GemvMapping::choose(gpu, out_rows, w.cols()))
}

/// [`gemv_fused`] with an explicit thread mapping (for tests and tuning); with SWIGLU, `rpt` counts output
/// rows, each reading one gate and one up row.
/// With `n >= WINDOW_MIN_VECTORS` on CPU devices the windowed entry runs where the shapes allow it, and
/// `mapping` is unused.
pub fn gemv_fused_with(
    gpu: &Gpu,
    w: &GpuWeight,
    x: &Tensor,
    y: &Tensor,
    fusion: GemvFusion<'_>,
    mapping: GemvMapping,
) -> Result<Dispatch> {
    mapping.check()?;
    let out_rows = if fusion.swiglu {
        if !w.rows().is_multiple_of(2) {
            return Err(Error::shape("stacked gate/up weight", &[w.rows(), w.cols()], "an even number of rows"));
        }
        w.rows() / 2
    } else {
        w.rows()
    };
    let n = x.expect_rows("x of a fused gemv", DType::F32, w.cols())?;
    y.expect("y of a fused gemv", DType::F32, &[n, out_rows])?;
    if n > MAX_GROUPS_PER_DIM as usize {
        return Err(Error::shape("x of gemv", x.shape(), format!("at most {MAX_GROUPS_PER_DIM} vectors")));
    }
    if x.buffer() == y.buffer() {
        return Err(Error::invalid("x and y of a matrix product", "the same buffer", "distinct buffers"));
    }
    if let Some((norm_w, eps)) = fusion.norm {
        norm_w.expect("norm weight of a fused gemv", DType::F32, &[w.cols()])?;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::invalid("rms_norm eps", eps, "a finite value >= 0"));
        }
    }
    let params = Params {
        w: w.desc(),
        n: n as u32,
        y_stride: out_rows as u32,
        out_offset: 0,
        accumulate: 0,
        out_rows: out_rows as u32,
        up_row: if fusion.swiglu { out_rows as u32 } else { 0 },
        eps: fusion.norm.map_or(0.0, |n| n.1),
        _pad: 0,
    };
    if n >= WINDOW_MIN_VECTORS && gpu.is_cpu_class() {
        if let Some(d) = window(gpu, w, x, y, &params, fusion, WINDOW_RPT)? {
            return Ok(d);
        }
    }
    single(gpu, w, x, y, &params, fusion, mapping)
}

/// The fewest vectors CPU devices multiply with the windowed entry; fewer go one GEMV launch each (the
/// short passes of jump-forward and speculative decoding). Its lanes carry 8 vectors whatever the count:
/// SmolLM2 passes of 2 / 3 / 4 tokens on lavapipe took 51 / 47-52 / 46 ms windowed and 27-35 / 34-38 /
/// 37-41 ms per vector; at 5 the two tie, from 6 on the window wins (a decode step: 19-22 ms). Windows of
/// at most 4 vectors now skip the upper lanes' work (synthetic 125M q4_0 passes of 2-4 tokens: 33-37 ms
/// windowed, 41-45 before), still no better than 26-38 ms per vector, so the threshold stays.
pub const WINDOW_MIN_VECTORS: usize = 5;

/// Rows each lane of the windowed entry computes in turn, by default (see [`gemv_window`]). Measured on
/// lavapipe (`GEMM_SWEEP=1 cargo bench --bench kernels`): 4 and 8 on par, 2 up to 1.4x slower.
pub const WINDOW_RPT: u32 = 4;

/// Vectors each lane of the windowed entry carries (grid y covers a window's vectors 8 at a time).
pub const WINDOW_LANE_VECTORS: usize = 8;

/// The windowed multi-vector product (`gemv_window` entry; CPU devices' prefill): `x` is bound as a
/// uniform one window of vectors at a time (one launch per window, at most 64 KiB each), or, where the
/// weights are textures, copied into a texture and read as texels in one launch; lanes are rows, and each
/// lane carries 8 vectors for `rpt` rows in turn. Same operands and semantics as [`gemv`].
/// Returns `Ok(None)` where the shapes do not allow windows (a row of x over 16 KiB, or no window size
/// meeting the device's binding-offset alignment); [`crate::ops::gemm::gemm`] then falls back.
pub fn gemv_window(
    gpu: &Gpu,
    w: &GpuWeight,
    x: &Tensor,
    y: &Tensor,
    out_offset: usize,
    accumulate: bool,
    rpt: u32,
) -> Result<Option<Dispatch>> {
    let (n, y_stride) = check_operands(w, x, y, out_offset)?;
    let params = Params::plain(w, n, y_stride, out_offset, accumulate);
    window(gpu, w, x, y, &params, GemvFusion::default(), rpt)
}

/// How many vectors each window of the `gemv_window` entry holds, or `None` where no window fits.
/// One window needs no alignment; several start at multiples of the window, so a window's bytes of x and
/// of y must be multiples of the device's offset alignments. Multiples of 8 (a full lane tile) first.
fn window_vectors(gpu: &Gpu, x: &Tensor, n: usize, cols: usize, y_stride: usize) -> Option<usize> {
    let limits = gpu.limits();
    let max_bytes = (limits.max_uniform_buffer_binding_size as usize).min(1 << 16);
    let most = max_bytes / (4 * cols.max(1));
    if !cols.is_multiple_of(4) || most == 0 || !x.buffer().usage().contains(wgpu::BufferUsages::UNIFORM) {
        return None;
    }
    if n <= most {
        return Some(n);
    }
    let aligned = |v: &usize| {
        (v * cols * 4).is_multiple_of(limits.min_uniform_buffer_offset_alignment as usize)
            && (v * y_stride * 4).is_multiple_of(limits.min_storage_buffer_offset_alignment as usize)
    };
    (1..=most).rev().filter(|v| v.is_multiple_of(8)).find(aligned).or_else(|| (1..=most).rev().find(aligned))
}

/// Whether the windowed product takes `x` as texels (XTEX: every vector in one launch, after an
/// `elementwise:to_texels` copy) rather than as uniform windows: where the weights are textures (the
/// device reads operands fastest that way; on lavapipe a texel fetch is one 16-byte gather per lane, a
/// uniform load at a lane-varying address a 4-byte gather plus reassembly) and x fits one texture.
fn x_as_texels(gpu: &Gpu, w: &GpuWeight, x: &Tensor, n: usize, cols: usize) -> bool {
    let max = gpu.limits().max_texture_dimension_2d as usize;
    w.storage() == WeightStorage::Texture
        && cols.is_multiple_of(4)
        && cols / 4 <= max
        && (1..=max).contains(&n)
        && x.buffer().usage().contains(wgpu::BufferUsages::STORAGE)
}

/// The windowed launch shared by [`gemv_window`] and the fused forms for `n > 1` on CPU devices.
fn window(
    gpu: &Gpu,
    w: &GpuWeight,
    x: &Tensor,
    y: &Tensor,
    params: &Params,
    fusion: GemvFusion<'_>,
    rpt: u32,
) -> Result<Option<Dispatch>> {
    let (norm, swiglu) = (fusion.norm.map(|(t, _)| t), fusion.swiglu);
    if !(1..=16).contains(&rpt) {
        return Err(Error::invalid("rows per lane of gemv_window", rpt, "1..=16"));
    }
    let (n, cols, y_stride) = (params.n as usize, w.cols(), params.y_stride as usize);
    let texels = x_as_texels(gpu, w, x, n, cols);
    let per_window = if texels { Some(n) } else { window_vectors(gpu, x, n, cols, y_stride) };
    let Some(per_window) = per_window else {
        return Ok(None);
    };
    if norm.is_some_and(|t| !fits_uniform(gpu, t, cols)) {
        return Ok(None);
    }
    const WG: u32 = 8;
    let subgroups = broadcasts_of_8(gpu);
    let groups = params.out_rows.div_ceil(WG * rpt);
    let params_buffer = uniform(gpu, "gemv params", params)?;
    let name = dispatch_name("_window", w, norm.is_some(), swiglu);
    let mut parts = Vec::new();
    // With texels, x is staged in a texture shared by every product of its size on this device: each
    // product's copy runs right before its own launch, so no product reads another's x.
    let x_view = if texels {
        let (width, rows) = ((cols / 4) as u32, n as u32);
        let view = gpu.staging_texture(width, rows)?.create_view(&Default::default());
        parts.push(crate::ops::elementwise::to_texels(gpu, x.buffer(), width, rows, &view)?);
        Some(view)
    } else {
        None
    };
    for first in (0..n).step_by(per_window) {
        let count = per_window.min(n - first);
        let variant = w
            .variant(ShaderVariant::new())
            .flag_if("SUBGROUPS", subgroups)
            .flag("XUNI")
            .flag_if("XTEX", texels)
            .flag_if("NORM", norm.is_some())
            .flag_if("SWIGLU", swiglu)
            .constant("WG", WG)
            .constant("TPR", 1)
            .constant("RPT", rpt)
            .constant("XV4", if texels { 1 } else { (count * cols / 4) as u32 })
            .constant("NV4", if norm.is_some() { (cols / 4) as u32 } else { 1 })
            .constant("XN", count as u32);
        let pipeline = gpu.pipeline(&GEMV, "gemv_window", &variant)?;
        let x_binding = match &x_view {
            Some(view) => wgpu::BindingResource::TextureView(view),
            None => range_binding(x, first * cols, count * cols),
        };
        let mut bindings = vec![
            (0, params_buffer.as_entire_binding()),
            (1, w.binding()),
            (2, x_binding),
            (3, range_binding(y, first * y_stride, count * y_stride)),
        ];
        if let Some(norm) = norm {
            bindings.push((4, prefix_binding(norm, cols)));
        }
        let grid = [groups, count.div_ceil(WINDOW_LANE_VECTORS) as u32, 1];
        parts.push(make_dispatch(gpu, name.clone(), pipeline, &bindings, grid, vec![params_buffer.clone()])?);
    }
    Ok(Some(Dispatch::sequence(name, parts)))
}

/// `floats` f32 of `t` from f32 index `start`.
fn range_binding(t: &Tensor, start: usize, floats: usize) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: t.buffer(),
        offset: start as u64 * 4,
        size: std::num::NonZeroU64::new(floats as u64 * 4),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table entry is a valid mapping, for every device class and any subgroup size a driver may
    /// report (Mali 16, Adreno 64 or 128, Intel 8..32, NVIDIA 32, software drivers 1 or 8).
    #[test]
    fn every_table_entry_is_valid() {
        let subgroups = [None, Some(0), Some(1), Some(4), Some(8), Some(16), Some(24), Some(32), Some(64), Some(128)];
        for class in [DeviceClass::Cpu, DeviceClass::Gpu] {
            for subgroup_max in subgroups.into_iter().chain([Some(256), Some(u32::MAX)]) {
                for (rows, cols) in [(1, 32), (192, 576), (1536, 576), (576, 1536), (960, 2560), (32000, 576)] {
                    let m = GemvMapping::for_device(class, subgroup_max, rows, cols);
                    assert!(m.check().is_ok(), "{class:?} subgroups {subgroup_max:?} {rows}x{cols}: {m:?}");
                    if let (DeviceClass::Gpu, Some(size)) = (class, subgroup_max) {
                        // One row slot per subgroup of the reported size: no slot loop.
                        assert_eq!(m.tpr, size.clamp(4, 128).next_power_of_two(), "{m:?}");
                    }
                }
            }
        }
    }
}
