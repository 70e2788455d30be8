//! The SwiGLU feed-forward block, CPU twins [`crate::reference::ffn_gate_up`],
//! [`crate::reference::ffn_block`] and [`crate::reference::swiglu_stacked`].
//!
//! One fused FFN: [`ffn_swiglu`] runs `h = silu(Wg·n) ⊙ (Wu·n)` with `n = rms_norm(x)·w_norm` as one
//! dispatch of the GEMV kernel's NORM + SWIGLU variant (`kernels/gemv.wgsl`) on the stacked `[gate; up]`
//! weight from [`fuse_gate_up`], and [`ffn_block`] adds the down projection accumulating into the
//! residual stream: the two dispatches the planner records per layer. [`silu_mul`] is the middle step of
//! the unfused six-dispatch chain (for comparisons and benchmarks).
//!
//! (An older dedicated kernel, `kernels/ffn.wgsl`, ran gate/up on separate weights. `cargo bench --bench
//! kernels -- ffn` on lavapipe measured it 1.07-1.47x slower than [`ffn_swiglu`] + down at decode for every
//! weight type, so it was retired; at a prefill of 64 its 8-position weight-tile reuse was 0.72-0.86x the
//! time of this path, which is the case for a GEMM with a SWIGLU epilogue, not for a second FFN kernel.)

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::ops::elementwise::{binary, launch};
use crate::ops::Dispatch;
use crate::quant::{GpuWeight, HostWeight};
use crate::tensor::{DType, Tensor};

/// `out = silu(gate) ⊙ up`, elementwise over f32 tensors of one shape (the unfused chain's middle step).
/// `out` may alias neither input.
pub fn silu_mul(gpu: &Gpu, gate: &Tensor, up: &Tensor, out: &Tensor) -> Result<Dispatch> {
    binary(gpu, "silu_mul", ["silu_mul gate", "silu_mul up", "silu_mul output"], gate, up, out)
}

/// `h[r, j] = silu(gu[r, j]) ⊙ gu[r, ffn + j]`: the middle step of [`ffn_block_batched`], on the product
/// `gu` (`[n, 2 ffn]` f32) of a GEMM with the stacked `[gate; up]` weight; `h` is `[n, ffn]`.
pub fn swiglu_stacked(gpu: &Gpu, gu: &Tensor, h: &Tensor) -> Result<Dispatch> {
    let (n, width) = match h.shape() {
        [n, w] if *w > 0 => (*n, *w),
        other => return Err(Error::shape("swiglu_stacked output", other, "[n, ffn] with ffn > 0")),
    };
    h.expect("swiglu_stacked output", DType::F32, &[n, width])?;
    gu.expect("swiglu_stacked input (gate | up)", DType::F32, &[n, 2 * width])?;
    let resources = [(1, gu.buffer().as_entire_binding()), (3, h.buffer().as_entire_binding())];
    launch(gpu, "swiglu_stacked", (n * width) as u32, width as u32, &resources)
}

/// Scratch for [`ffn_block_batched`]: the normalised input `[n, hidden]`, optionally the gate|up product
/// `[n, 2 ffn]` (f32), and `h` (`[n, ffn]`) as for [`ffn_block`].
pub struct BatchedFfnScratch<'a> {
    /// `rms_norm(x)·norm_weight`.
    pub normed: &'a Tensor,
    /// The GEMM's output on the stacked weight: given, gate|up runs as that GEMM plus [`swiglu_stacked`]
    /// (GPUs); `None`, as the fused SWIGLU product on the normalised rows (CPU drivers).
    pub gate_up: Option<&'a Tensor>,
    /// `silu(gate) ⊙ up`.
    pub h: &'a Tensor,
}

/// The feed-forward block for a batch of rows (prefill), reading each weight once per tile of vectors:
/// `rms_norm` into `scratch.normed`, then gate|up, then the down product accumulating into `x`.
/// - With `scratch.gate_up` (GPUs): the batched product ([`crate::ops::gemm::gemm`]) on the stacked `[gate; up]` weight and
///   [`swiglu_stacked`]; four dispatches. [`ffn_block`]'s fused first step is a GEMV per row, which on a
///   GPU dequantizes every weight once per row.
/// - Without (CPU drivers): the SWIGLU product of [`crate::ops::gemv::gemv_fused`] on the normalised rows
///   (the windowed GEMV, 8 rows per weight read); three dispatches. Folding the norm into that product
///   instead makes every workgroup recompute its rows' RMS and scale every weight it reads: callgrind on
///   lavapipe, q4_0 3072x576 at n = 64, 147M instructions against 114M without the norm (1.4x the time
///   when first measured, before the RMS was shared out among the lanes).
pub fn ffn_block_batched(
    gpu: &Gpu,
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    gate_up: &GpuWeight,
    down: &GpuWeight,
    scratch: &BatchedFfnScratch<'_>,
) -> Result<Vec<Dispatch>> {
    check_down(gate_up, down)?;
    let mut dispatches = vec![crate::ops::rms_norm::rms_norm(gpu, x, norm_weight, scratch.normed, eps)?];
    match scratch.gate_up {
        Some(product) => {
            dispatches.push(crate::ops::gemm::gemm(gpu, gate_up, scratch.normed, product, 0, false)?);
            dispatches.push(swiglu_stacked(gpu, product, scratch.h)?);
        }
        None => {
            let fusion = crate::ops::gemv::GemvFusion { norm: None, swiglu: true };
            dispatches.push(crate::ops::gemv::gemv_fused(gpu, gate_up, scratch.normed, scratch.h, fusion)?);
        }
    }
    dispatches.push(crate::ops::gemm::gemm(gpu, down, scratch.h, x, 0, true)?);
    Ok(dispatches)
}

/// `down` must be `[hidden, ffn]` for the stacked `gate_up` `[2 ffn, hidden]`.
fn check_down(gate_up: &GpuWeight, down: &GpuWeight) -> Result<()> {
    let (hidden, ffn) = (gate_up.cols(), gate_up.rows() / 2);
    if down.rows() != hidden || down.cols() != ffn {
        return Err(Error::shape(
            "ffn down_proj weight",
            &[down.rows(), down.cols()],
            format!("[{hidden}, {ffn}] (hidden, ffn of the stacked gate/up weight)"),
        ));
    }
    Ok(())
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

/// The whole feed-forward block with its residual, as two dispatches to record in order: [`ffn_swiglu`]
/// (`h = silu(Wg·n) ⊙ (Wu·n)`, `n = rms_norm(x)·norm_weight`, on the stacked `gate_up` weight
/// `[2 ffn, hidden]` from [`fuse_gate_up`]), then the down projection accumulated into the residual
/// stream, `x += Wd·h` (a GEMV for one row of `x`, a GEMM for more, as the planner runs them).
/// `down` is `[hidden, ffn]`; `h` (`[n, ffn]` f32) is scratch that the caller may reuse between layers.
pub fn ffn_block(
    gpu: &Gpu,
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    gate_up: &GpuWeight,
    down: &GpuWeight,
    h: &Tensor,
) -> Result<Vec<Dispatch>> {
    check_down(gate_up, down)?;
    let gate_up = ffn_swiglu(gpu, x, norm_weight, eps, gate_up, h)?;
    let rows = x.shape().first().copied().unwrap_or(0);
    let down = if rows == 1 {
        crate::ops::gemv::gemv(gpu, down, h, x, 0, true)?
    } else {
        crate::ops::gemm::gemm(gpu, down, h, x, 0, true)?
    };
    Ok(vec![gate_up, down])
}
