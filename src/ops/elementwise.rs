//! Elementwise launchers (`kernels/elementwise.wgsl`): residual add and the bandwidth-yardstick copy.
//! CPU twin: [`crate::reference::add`].

use bytemuck::{Pod, Zeroable};

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::ops::{grid_1d, make_dispatch, uniform, Dispatch};
use crate::shader::{ShaderVariant, ELEMENTWISE};
use crate::tensor::{DType, Tensor};

const WORKGROUP: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    count: u32,
    _pad: [u32; 3],
}

/// `sum = a + b`, elementwise over f32 tensors of one shape. `sum` may alias neither input.
pub fn add(gpu: &Gpu, a: &Tensor, b: &Tensor, sum: &Tensor) -> Result<Dispatch> {
    a.expect("add lhs", DType::F32, a.shape())?;
    b.expect("add rhs", DType::F32, a.shape())?;
    sum.expect("add output", DType::F32, a.shape())?;
    let count = a.len() as u32;
    let pipeline = gpu.pipeline(&ELEMENTWISE, "add", &ShaderVariant::new().constant("WG", WORKGROUP))?;
    let params = uniform(gpu, "add params", &Params { count, _pad: [0; 3] })?;
    make_dispatch(
        gpu,
        "elementwise:add".into(),
        pipeline,
        &[
            (0, params.as_entire_binding()),
            (1, a.buffer().as_entire_binding()),
            (2, b.buffer().as_entire_binding()),
            (3, sum.buffer().as_entire_binding()),
        ],
        grid_1d(count.div_ceil(WORKGROUP)),
        vec![params.clone()],
    )
}

/// Copies the first `bytes` bytes of `src` to `dst` (a multiple of 16, within both buffers).
/// Reads and writes `bytes` each: the yardstick for every kernel's GB/s.
pub fn copy_buffer(gpu: &Gpu, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) -> Result<Dispatch> {
    if bytes == 0 || !bytes.is_multiple_of(16) || bytes > src.size() || bytes > dst.size() {
        return Err(Error::invalid(
            "copy size in bytes",
            bytes,
            format!("a non-zero multiple of 16 within both buffers ({} and {} bytes)", src.size(), dst.size()),
        ));
    }
    let words = (bytes / 16) as u32;
    let pipeline = gpu.pipeline(&ELEMENTWISE, "copy", &ShaderVariant::new().constant("WG", WORKGROUP))?;
    let params = uniform(gpu, "copy params", &Params { count: words, _pad: [0; 3] })?;
    make_dispatch(
        gpu,
        "elementwise:copy".into(),
        pipeline,
        &[
            (0, params.as_entire_binding()),
            (
                4,
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: src,
                    offset: 0,
                    size: std::num::NonZeroU64::new(bytes),
                }),
            ),
            (
                5,
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: dst,
                    offset: 0,
                    size: std::num::NonZeroU64::new(bytes),
                }),
            ),
        ],
        grid_1d(words.div_ceil(WORKGROUP)),
        vec![params.clone()],
    )
}
