//! The SwiGLU feed-forward block (`kernels/ffn.wgsl`), CPU twin [`crate::reference::ffn_gate_up`].
//!
//! [`ffn_gate_up`] is one dispatch for `h = silu(Wg·n) ⊙ (Wu·n)` with `n = rms_norm(x)·w_norm`: the
//! post-attention norm, both projections, SiLU and the product, writing only `h`. [`silu_mul`] is the
//! middle step of the unfused chain (for comparisons and benchmarks).

use bytemuck::{Pod, Zeroable};

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::ops::{base_variant, grid_1d, make_dispatch, uniform, Dispatch, MAX_GROUPS_PER_DIM};
use crate::quant::{GpuWeight, HostWeight, WeightDesc};
use crate::shader::{ShaderVariant, FFN};
use crate::tensor::{DType, Tensor};

/// Invocations per workgroup (a power of two for the workgroup-memory reduction).
const WORKGROUP: u32 = 64;
/// Output rows (of both Wg and Wu) per workgroup: 1536 / 8 = 192 workgroups at the 125M shape.
const ROWS: u32 = 8;
/// Lanes per row without subgroups: 8 teams of 8 share the 64 invocations, one row each per round;
/// 8 lanes stride over 18 (125M) or 30 (350M) blocks per row.
const TEAM: u32 = 8;

/// CPU drivers: one SIMD batch of 8 invocations per workgroup, each owning 8 rows of Wg and Wu, so
/// every x load serves 16 weight rows (the GEMV launcher's finding on lavapipe, too).
const CPU_WORKGROUP: u32 = 8;
const CPU_RPT: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    hidden: u32,
    ffn: u32,
    n: u32,
    eps: f32,
    gate: WeightDesc,
    up: WeightDesc,
}

/// Positions per workgroup: decode reads the weights once; a prefill reuses each decoded weight block
/// for up to 8 positions (their accumulators stay in registers).
fn tile_for(n: usize) -> u32 {
    match n {
        1 => 1,
        2..=4 => 4,
        _ => 8,
    }
}

/// How [`ffn_gate_up_with`] maps output rows to invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnMapping {
    /// 8 invocations per workgroup, 8 output rows each, no cross-lane reduction: best on CPU drivers
    /// (lavapipe), whose SIMD lanes then run whole rows side by side.
    PerRow,
    /// 8 rows per workgroup, each owned by a team of lanes striding over its blocks: a subgroup (any size)
    /// reducing with `subgroupAdd`, or without subgroups 8 invocations reducing through workgroup memory.
    /// Best on GPUs, where lanes of one row read adjacent blocks together.
    Teams,
}

impl FfnMapping {
    /// The mapping for this device: [`FfnMapping::PerRow`] on CPU adapters, else [`FfnMapping::Teams`].
    pub fn choose(gpu: &Gpu) -> FfnMapping {
        if gpu.adapter_info().device_type == wgpu::DeviceType::Cpu {
            FfnMapping::PerRow
        } else {
            FfnMapping::Teams
        }
    }
}

/// The fused gate/up step: `h[p] = silu(Wg·n_p) ⊙ (Wu·n_p)` with `n_p = x[p] / rms(x[p]) · norm_weight`
/// for every row `p` of `x` (`[n, hidden]` f32). `gate` and `up` are `[ffn, hidden]` weights of one type;
/// `h` is `[n, ffn]` f32 and is the only buffer written. `hidden` must be a multiple of 32.
pub fn ffn_gate_up(
    gpu: &Gpu,
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    gate: &GpuWeight,
    up: &GpuWeight,
    h: &Tensor,
) -> Result<Dispatch> {
    ffn_gate_up_with(gpu, x, norm_weight, eps, gate, up, h, FfnMapping::choose(gpu))
}

/// [`ffn_gate_up`] with an explicit work mapping (for tests and tuning).
#[allow(clippy::too_many_arguments)]
pub fn ffn_gate_up_with(
    gpu: &Gpu,
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    gate: &GpuWeight,
    up: &GpuWeight,
    h: &Tensor,
    mapping: FfnMapping,
) -> Result<Dispatch> {
    let hidden = gate.cols();
    let ffn = gate.rows();
    if !hidden.is_multiple_of(32) {
        return Err(Error::invalid("ffn hidden size (in_features of gate_proj)", hidden, "a multiple of 32"));
    }
    if up.wtype() != gate.wtype() {
        return Err(Error::DType {
            what: "ffn up_proj weight".into(),
            got: up.wtype().to_string(),
            expected: format!("{} (the type of gate_proj)", gate.wtype()),
        });
    }
    if up.rows() != ffn || up.cols() != hidden {
        return Err(Error::shape(
            "ffn up_proj weight",
            &[up.rows(), up.cols()],
            format!("[{ffn}, {hidden}] like gate_proj"),
        ));
    }
    norm_weight.expect("ffn norm weight", DType::F32, &[hidden])?;
    let n = x.expect_rows("ffn input", DType::F32, hidden)?;
    let h_rows = h.expect_rows("ffn output h", DType::F32, ffn)?;
    if h_rows != n {
        return Err(Error::shape("ffn output h", h.shape(), format!("[{n}, {ffn}] (one row per input row)")));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid("ffn norm eps", eps, "a finite value >= 0"));
    }
    let (Some(gate_buffer), Some(up_buffer)) = (gate.buffer(), up.buffer()) else {
        return Err(Error::Unsupported {
            what: format!("ffn_gate_up on weights in a {:?}", gate.storage().max(up.storage())),
            needed: "gate and up weights in storage buffers (WeightStorage::Buffer); ffn_swiglu reads either".into(),
        });
    };
    let tile = tile_for(n);
    let tiles = n.div_ceil(tile as usize);
    if tiles > MAX_GROUPS_PER_DIM as usize {
        return Err(Error::invalid("ffn positions", n, format!("at most {}", MAX_GROUPS_PER_DIM * tile)));
    }
    // (invocations, rows per workgroup, lanes per row, rows per invocation)
    let (wg, rows_per_group, team, rpt) = match mapping {
        FfnMapping::PerRow => (CPU_WORKGROUP, CPU_WORKGROUP * CPU_RPT, 1, CPU_RPT),
        FfnMapping::Teams => (WORKGROUP, ROWS, TEAM, 1),
    };
    let variant = base_variant(gpu)
        .flag(gate.wtype().flag())
        .constant("WG", wg)
        .constant("RPT", rpt)
        .constant("ROWS", rows_per_group)
        .constant("TPR", team)
        .constant("TILE", tile);
    let pipeline = gpu.pipeline(&FFN, "ffn_gate_up", &variant)?;
    let params = uniform(
        gpu,
        "ffn params",
        &Params { hidden: hidden as u32, ffn: ffn as u32, n: n as u32, eps, gate: gate.desc(), up: up.desc() },
    )?;
    make_dispatch(
        gpu,
        format!("ffn:ffn_gate_up[{}]", gate.wtype()),
        pipeline,
        &[
            (0, params.as_entire_binding()),
            (1, x.buffer().as_entire_binding()),
            (2, norm_weight.buffer().as_entire_binding()),
            (3, gate_buffer.as_entire_binding()),
            (4, up_buffer.as_entire_binding()),
            (5, h.buffer().as_entire_binding()),
        ],
        [(ffn as u32).div_ceil(rows_per_group), tiles as u32, 1],
        vec![params.clone()],
    )
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SiluMulParams {
    count: u32,
    _pad: [u32; 3],
}

/// `out = silu(gate) ⊙ up`, elementwise over f32 tensors of one shape (the unfused chain's middle step).
/// `out` may alias neither input.
pub fn silu_mul(gpu: &Gpu, gate: &Tensor, up: &Tensor, out: &Tensor) -> Result<Dispatch> {
    gate.expect("silu_mul gate", DType::F32, gate.shape())?;
    up.expect("silu_mul up", DType::F32, gate.shape())?;
    out.expect("silu_mul output", DType::F32, gate.shape())?;
    let count = gate.len() as u32;
    const WG: u32 = 256;
    // The file's other constants do not affect this entry point; W_F32 just selects a valid variant.
    let variant = ShaderVariant::new()
        .flag("W_F32")
        .constant("WG", WG)
        .constant("ROWS", 1)
        .constant("TPR", 1)
        .constant("TILE", 1)
        .constant("RPT", 1);
    let pipeline = gpu.pipeline(&FFN, "silu_mul", &variant)?;
    let params = uniform(gpu, "silu_mul params", &SiluMulParams { count, _pad: [0; 3] })?;
    make_dispatch(
        gpu,
        "ffn:silu_mul".into(),
        pipeline,
        &[
            (10, params.as_entire_binding()),
            (11, gate.buffer().as_entire_binding()),
            (12, up.buffer().as_entire_binding()),
            (13, out.buffer().as_entire_binding()),
        ],
        grid_1d(count.div_ceil(WG)),
        vec![params.clone()],
    )
}

/// The whole feed-forward block with its residual, as two dispatches to record in order:
/// [`ffn_gate_up`] (`h` = silu(Wg·n) ⊙ (Wu·n), `n` = rms_norm(x)·norm_weight), then the down projection
/// accumulated into the residual stream, `x += Wd·h` ([`crate::ops::gemv::gemv`] with `accumulate`).
/// `down` is `[hidden, ffn]`; `h` (`[n, ffn]` f32) is scratch that the caller may reuse between layers.
#[allow(clippy::too_many_arguments)]
pub fn ffn_block(
    gpu: &Gpu,
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    gate: &GpuWeight,
    up: &GpuWeight,
    down: &GpuWeight,
    h: &Tensor,
) -> Result<Vec<Dispatch>> {
    if down.rows() != gate.cols() || down.cols() != gate.rows() {
        return Err(Error::shape(
            "ffn down_proj weight",
            &[down.rows(), down.cols()],
            format!("[{}, {}] (hidden, ffn)", gate.cols(), gate.rows()),
        ));
    }
    let gate_up = ffn_gate_up(gpu, x, norm_weight, eps, gate, up, h)?;
    let down = crate::ops::gemv::gemv(gpu, down, h, x, 0, true)?;
    Ok(vec![gate_up, down])
}

/// Stacks `gate` and `up` (`[ffn, hidden]`, one type) row-wise into the `[2 ffn, hidden]` weight that
/// [`ffn_swiglu`] reads, bit-exactly (through the GGUF block bytes).
pub fn fuse_gate_up(gate: &HostWeight, up: &HostWeight) -> Result<HostWeight> {
    if up.wtype != gate.wtype || up.rows != gate.rows || up.cols != gate.cols {
        return Err(Error::shape(
            format!("up_proj ({}) stacked with gate_proj ({})", up.wtype, gate.wtype),
            &[up.rows, up.cols],
            format!("[{}, {}] of type {}", gate.rows, gate.cols, gate.wtype),
        ));
    }
    let mut bytes = gate.to_gguf_bytes();
    bytes.extend(up.to_gguf_bytes());
    HostWeight::from_gguf_bytes(gate.wtype, gate.rows * 2, gate.cols, &bytes)
}

/// The fused gate/up step on a stacked `[gate; up]` weight ([`fuse_gate_up`]): `h = silu(Wg·n) ⊙ (Wu·n)`
/// with `n = rmsnorm(x)·norm_weight`, as one dispatch of the GEMV kernel's NORM + SWIGLU variant, so it
/// runs with the GEMV's tuned mapping. `x` is `[n, hidden]`, `h` `[n, ffn]`.
pub fn ffn_swiglu(
    gpu: &Gpu,
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    gate_up: &GpuWeight,
    h: &Tensor,
) -> Result<Dispatch> {
    crate::ops::gemv::gemv_fused(
        gpu,
        gate_up,
        x,
        h,
        crate::ops::gemv::GemvFusion { norm: Some((norm_weight, eps)), swiglu: true },
    )
}
