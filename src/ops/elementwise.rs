//! Elementwise launchers (`kernels/elementwise.wgsl`): residual add and the bandwidth-yardstick copy, and
//! the one launcher every entry of that file goes through (the FFN's `silu_mul` and `swiglu_stacked` too).
//! CPU twin: [`crate::reference::add`].

use bytemuck::{Pod, Zeroable};

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::ops::{grid_1d, make_dispatch, uniform, Dispatch};
use crate::shader::{ShaderVariant, ELEMENTWISE};
use crate::tensor::{DType, Tensor};

const WORKGROUP: u32 = 256;

/// Mirrors `Params` in `kernels/elementwise.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    count: u32,
    width: u32,
    _pad: [u32; 2],
}

/// One dispatch of elementwise entry `entry` over `count` invocations (`width`: the row width the entry
/// reads, where it has rows), with `resources` after the params at binding 0. The shared launcher of every
/// entry of `kernels/elementwise.wgsl`.
pub(crate) fn launch(
    gpu: &Gpu,
    entry: &str,
    count: u32,
    width: u32,
    resources: &[(u32, wgpu::BindingResource<'_>)],
) -> Result<Dispatch> {
    let pipeline = gpu.pipeline(&ELEMENTWISE, entry, &ShaderVariant::new().constant("WG", WORKGROUP))?;
    let params = uniform(gpu, &format!("{entry} params"), &Params { count, width, _pad: [0; 2] })?;
    let mut bindings = vec![(0, params.as_entire_binding())];
    bindings.extend(resources.iter().cloned());
    make_dispatch(
        gpu,
        format!("elementwise:{entry}"),
        pipeline,
        &bindings,
        grid_1d(count.div_ceil(WORKGROUP)),
        vec![params.clone()],
    )
}

/// A two-input entry (`add`, `silu_mul`): `out[i] = f(a[i], b[i])` over f32 tensors of one shape, checked
/// under the names in `what` (a, b, out).
pub(crate) fn binary(
    gpu: &Gpu,
    entry: &str,
    what: [&str; 3],
    a: &Tensor,
    b: &Tensor,
    out: &Tensor,
) -> Result<Dispatch> {
    a.expect(what[0], DType::F32, a.shape())?;
    b.expect(what[1], DType::F32, a.shape())?;
    out.expect(what[2], DType::F32, a.shape())?;
    let resources = [
        (1, a.buffer().as_entire_binding()),
        (2, b.buffer().as_entire_binding()),
        (3, out.buffer().as_entire_binding()),
    ];
    launch(gpu, entry, a.len() as u32, 0, &resources)
}

/// Copies the first `width * rows` 16-byte words of `src` into `texels` (an `rgba32uint` texture of at least
/// `width` x `rows`, word `i` to texel `(i % width, i / width)`): activations staged for a kernel that reads
/// them as texels (the windowed CPU product).
pub(crate) fn to_texels(
    gpu: &Gpu,
    src: &wgpu::Buffer,
    width: u32,
    rows: u32,
    texels: &wgpu::TextureView,
) -> Result<Dispatch> {
    let words = width as u64 * rows as u64;
    if words == 0 || words * 16 > src.size() || words > u32::MAX as u64 {
        return Err(Error::invalid(
            "texel copy size",
            format!("{width} x {rows} texels"),
            format!("non-empty and within the source buffer ({} bytes)", src.size()),
        ));
    }
    let source = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: src,
        offset: 0,
        size: std::num::NonZeroU64::new(words * 16),
    });
    launch(gpu, "to_texels", words as u32, width, &[(4, source), (6, wgpu::BindingResource::TextureView(texels))])
}

/// `sum = a + b`, elementwise over f32 tensors of one shape. `sum` may alias neither input.
pub fn add(gpu: &Gpu, a: &Tensor, b: &Tensor, sum: &Tensor) -> Result<Dispatch> {
    binary(gpu, "add", ["add lhs", "add rhs", "add output"], a, b, sum)
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
    let first_bytes = |buffer| {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer, offset: 0, size: std::num::NonZeroU64::new(bytes) })
    };
    launch(gpu, "copy", words, 0, &[(4, first_bytes(src)), (5, first_bytes(dst))])
}
