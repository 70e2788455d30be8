//! GPU tensors: a storage buffer with a dtype and a shape, uploaded from and read back to host slices.

use crate::device::Gpu;
use crate::error::{Error, Result};

/// Element types of activation tensors. (Weight matrices have their own formats: see [`crate::quant`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 32-bit unsigned integer (token ids).
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
        })
    }
}

/// Host element types that can be uploaded to / read back from a [`Tensor`].
pub trait Element: bytemuck::Pod {
    /// The matching dtype.
    const DTYPE: DType;
}
impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}

/// A dense tensor in a GPU storage buffer (row-major, last dimension contiguous).
///
/// ```no_run
/// # fn main() -> mobilellm_kernels::Result<()> {
/// use mobilellm_kernels::{Gpu, Tensor};
/// let gpu = Gpu::new()?;
/// let t = Tensor::from_slice(&gpu, &[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
/// assert_eq!(t.read::<f32>(&gpu)?, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Tensor {
    buffer: wgpu::Buffer,
    dtype: DType,
    shape: Vec<usize>,
}

fn element_count(shape: &[usize]) -> Result<usize> {
    let mut n: usize = 1;
    for &d in shape {
        n = n.checked_mul(d).ok_or_else(|| Error::shape("tensor", shape, "a product that fits in usize"))?;
    }
    if n == 0 || shape.is_empty() {
        return Err(Error::shape("tensor", shape, "at least one dimension, none of them zero"));
    }
    Ok(n)
}

impl Tensor {
    /// An uninitialised (zeroed) tensor.
    pub fn zeros(gpu: &Gpu, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        Self::zeros_labeled(gpu, "tensor", dtype, shape)
    }

    /// A zeroed tensor with a debug label.
    pub fn zeros_labeled(gpu: &Gpu, label: &str, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let n = element_count(shape)?;
        let bytes = n.checked_mul(dtype.size()).ok_or_else(|| {
            Error::shape(format!("tensor `{label}` ({dtype})"), shape, "a size in bytes that fits in usize")
        })? as u64;
        if bytes > gpu.max_binding_bytes() {
            return Err(Error::Capacity {
                what: format!("tensor `{label}` {shape:?} ({dtype}) in bytes"),
                requested: bytes as usize,
                capacity: gpu.max_binding_bytes() as usize,
            });
        }
        let buffer = gpu.create_buffer(
            label,
            bytes,
            // UNIFORM too: small activations are read as uniforms where that is faster (gemv's XUNI).
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        )?;
        Ok(Tensor { buffer, dtype, shape: shape.to_vec() })
    }

    /// A tensor holding `data`, whose length must equal the product of `shape`.
    pub fn from_slice<T: Element>(gpu: &Gpu, shape: &[usize], data: &[T]) -> Result<Tensor> {
        let t = Self::zeros(gpu, T::DTYPE, shape)?;
        t.write(gpu, data)?;
        Ok(t)
    }

    /// Overwrites the whole tensor with `data`.
    pub fn write<T: Element>(&self, gpu: &Gpu, data: &[T]) -> Result<()> {
        self.check_host::<T>(data.len())?;
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len().is_multiple_of(4) {
            gpu.queue().write_buffer(&self.buffer, 0, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            gpu.queue().write_buffer(&self.buffer, 0, &padded);
        }
        Ok(())
    }

    /// Reads the whole tensor back to the host (waits for the GPU).
    pub fn read<T: Element>(&self, gpu: &Gpu) -> Result<Vec<T>> {
        self.check_host::<T>(self.len())?;
        let bytes = read_buffer(gpu, &self.buffer, 0, (self.len() * self.dtype.size()) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn check_host<T: Element>(&self, len: usize) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::DType {
                what: "host data for tensor".into(),
                got: T::DTYPE.to_string(),
                expected: self.dtype.to_string(),
            });
        }
        if len != self.len() {
            return Err(Error::shape(
                "host data",
                &[len],
                format!("{} elements for shape {:?}", self.len(), self.shape),
            ));
        }
        Ok(())
    }

    /// The first `rows` rows of this tensor (`[rows, ..rest]`), sharing its buffer: kernels sized for fewer
    /// rows than a reused activation buffer holds bind the whole buffer and touch only these rows.
    pub fn view_rows(&self, rows: usize) -> Result<Tensor> {
        let have = self.shape.first().copied().unwrap_or(0);
        if rows == 0 || rows > have {
            return Err(Error::shape("row view", &self.shape, format!("between 1 and {have} rows, asked for {rows}")));
        }
        let mut shape = self.shape.clone();
        shape[0] = rows;
        Ok(Tensor { buffer: self.buffer.clone(), dtype: self.dtype, shape })
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Always false: tensors have at least one element.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Size in bytes of the data (the buffer may be padded to 4 bytes).
    pub fn size_bytes(&self) -> u64 {
        (self.len() * self.dtype.size()) as u64
    }

    /// Checks dtype and shape, naming `what` in the error.
    pub fn expect(&self, what: &str, dtype: DType, shape: &[usize]) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::DType { what: what.into(), got: self.dtype.to_string(), expected: dtype.to_string() });
        }
        if self.shape != shape {
            return Err(Error::shape(what, &self.shape, format!("{shape:?}")));
        }
        Ok(())
    }

    /// Checks the dtype and that the last dimension is `cols`; returns the number of rows.
    pub fn expect_rows(&self, what: &str, dtype: DType, cols: usize) -> Result<usize> {
        if self.dtype != dtype {
            return Err(Error::DType { what: what.into(), got: self.dtype.to_string(), expected: dtype.to_string() });
        }
        match self.shape.last() {
            Some(&c) if c == cols => Ok(self.len() / cols),
            _ => Err(Error::shape(what, &self.shape, format!("[.., {cols}]"))),
        }
    }
}

/// Copies `size` bytes at `offset` of `buffer` (which needs `COPY_SRC`) to the host. Waits for the GPU.
pub fn read_buffer(gpu: &Gpu, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
    let padded = size.next_multiple_of(4);
    let staging = gpu.create_buffer("readback", padded, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST)?;
    let mut encoder = gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
    encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, padded);
    gpu.submit_and_wait([encoder.finish()])?;
    map_read(gpu, &staging, size)
}

/// Maps a `MAP_READ` buffer, copies out `size` bytes and unmaps it.
pub fn map_read(gpu: &Gpu, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
    let padded = size.next_multiple_of(4);
    let (tx, rx) = std::sync::mpsc::channel();
    staging.slice(0..padded).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.wait(None)?;
    let mapped = rx.recv();
    // A map that fails because the device went away is a loss, not a mapping problem.
    gpu.check_lost()?;
    match mapped {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Error::Gpu { context: "mapping a readback buffer".into(), message: e.to_string() }),
        Err(_) => {
            return Err(Error::Gpu { context: "mapping a readback buffer".into(), message: "callback dropped".into() })
        }
    }
    let out = {
        let view = staging
            .slice(0..padded)
            .get_mapped_range()
            .map_err(|e| Error::Gpu { context: "reading a mapped buffer".into(), message: e.to_string() })?;
        view[..size as usize].to_vec()
    };
    staging.unmap();
    Ok(out)
}
