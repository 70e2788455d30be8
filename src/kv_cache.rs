//! The KV cache: one slot per *executed* layer (with block-wise layer sharing a unique layer runs twice
//! and each execution has its own slot), f16 where the device has SHADER_F16, else f32.
//!
//! Layout of one slot (one binding): `[2][kv_heads][capacity][head_dim]`: all of K, then all of V; within
//! each, one KV head's positions are contiguous, so a decode workgroup that owns a KV head streams one
//! contiguous range of memory.
//!
//! A cache may hold several independent sequences ([`KvCache::with_sequences`], for batched decoding of
//! many sequences at once, `Model::decode_batch`): sequence `s` of a slot is the one-sequence layout above,
//! starting [`KvCache::sequence_stride`] elements after sequence `s - 1`, so each sequence's K and V are one
//! contiguous range that a buffer or texture copy can duplicate. Kernels reach sequence `s` by adding
//! `s * sequence_stride` to their one-sequence offsets.
//!
//! Storage follows the device's [`WeightStorage`]: a storage buffer, or (CPU drivers) an `rgba32uint`
//! texture holding the same bytes in order, 16 per texel and [`TEXTURE_ROW_TEXELS`] texels per row, read
//! with `textureLoad` (on lavapipe one SIMD gather per 16 bytes, where a storage load is a per-lane loop
//! per word: measured 9x faster) and written whole texels at a time by `rope_cache`. A texture slot needs
//! each head row to fill whole texels (head_dim a multiple of 8 in f16, 4 in f32).

use crate::device::{Gpu, WeightStorage};
use crate::error::{Error, Result};
use crate::quant::TEXTURE_ROW_TEXELS;
use crate::tensor::{map_read, read_buffer, DType, Tensor};

/// One slot's storage.
#[derive(Debug, Clone)]
enum Slot {
    Buffer(Tensor),
    Texture { texture: wgpu::Texture, view: wgpu::TextureView },
}

/// GPU KV cache for a whole model: `slots` executed layers, `capacity` positions each (per sequence).
#[derive(Debug, Clone)]
pub struct KvCache {
    slots: Vec<Slot>,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    sequences: usize,
    // Elements from one sequence's start to the next's within a slot (see `texture_stride`).
    sequence_stride: usize,
}

/// A host copy of one slot, widened to f32 (for tests and checks).
#[derive(Debug, Clone, PartialEq)]
pub struct KvMirror {
    /// KV heads.
    pub kv_heads: usize,
    /// Positions per head.
    pub capacity: usize,
    /// Elements per head vector.
    pub head_dim: usize,
    /// Keys, `[kv_heads][capacity][head_dim]`.
    pub k: Vec<f32>,
    /// Values, `[kv_heads][capacity][head_dim]`.
    pub v: Vec<f32>,
}

impl KvMirror {
    /// An all-zero mirror.
    pub fn zeros(kv_heads: usize, capacity: usize, head_dim: usize) -> KvMirror {
        let n = kv_heads * capacity * head_dim;
        KvMirror { kv_heads, capacity, head_dim, k: vec![0.0; n], v: vec![0.0; n] }
    }
    /// The key of KV head `h` at position `pos`.
    pub fn key(&self, h: usize, pos: usize) -> &[f32] {
        let o = (h * self.capacity + pos) * self.head_dim;
        &self.k[o..o + self.head_dim]
    }
    /// The value of KV head `h` at position `pos`.
    pub fn value(&self, h: usize, pos: usize) -> &[f32] {
        let o = (h * self.capacity + pos) * self.head_dim;
        &self.v[o..o + self.head_dim]
    }
    /// Stores rows `k`, `v` (`[n, kv_heads * head_dim]`, the projection layout) at positions `pos..pos+n`,
    /// rounding through f16 when `dtype` is F16 (as the GPU cache stores them).
    pub fn store(&mut self, pos: usize, k: &[f32], v: &[f32], dtype: DType) {
        let width = self.kv_heads * self.head_dim;
        let round = |x: f32| if dtype == DType::F16 { half::f16::from_f32(x).to_f32() } else { x };
        for (r, (krow, vrow)) in k.chunks(width).zip(v.chunks(width)).enumerate() {
            for h in 0..self.kv_heads {
                let o = (h * self.capacity + pos + r) * self.head_dim;
                for d in 0..self.head_dim {
                    self.k[o + d] = round(krow[h * self.head_dim + d]);
                    self.v[o + d] = round(vrow[h * self.head_dim + d]);
                }
            }
        }
    }
}

/// How many cache slots a model needs: one per executed layer (`2 * layers` with block-wise sharing).
pub fn executed_layers(unique_layers: usize, layer_sharing: bool) -> usize {
    if layer_sharing {
        unique_layers * 2
    } else {
        unique_layers
    }
}

/// Texels from one sequence's start to the next in a texture slot whose sequences hold `texels` each: whole
/// texture rows for sequences of a row or more, else a power of two (a divisor of the row), so no sequence
/// straddles a row and copying one is one rectangle. One sequence needs no padding.
fn texture_stride(texels: usize, sequences: usize) -> usize {
    match sequences {
        1 => texels,
        _ if texels >= TEXTURE_ROW_TEXELS => texels.next_multiple_of(TEXTURE_ROW_TEXELS),
        _ => texels.next_power_of_two(),
    }
}

impl KvCache {
    /// Allocates `slots` zeroed slots of `capacity` positions, `kv_heads` heads of `head_dim` each, in f16
    /// when the device has SHADER_F16, else f32. Each slot must fit one binding (128 MiB by default).
    pub fn new(gpu: &Gpu, slots: usize, capacity: usize, kv_heads: usize, head_dim: usize) -> Result<KvCache> {
        let dtype = if gpu.features().f16 { DType::F16 } else { DType::F32 };
        Self::with_dtype(gpu, slots, capacity, kv_heads, head_dim, dtype)
    }

    /// Like [`KvCache::new`] with an explicit storage type (F16 needs SHADER_F16).
    pub fn with_dtype(
        gpu: &Gpu,
        slots: usize,
        capacity: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        Self::with_sequences(gpu, slots, 1, capacity, kv_heads, head_dim, dtype)
    }

    /// Like [`KvCache::with_dtype`] with `sequences` independent sequences of `capacity` positions in each
    /// slot (see the module docs). All of a slot's sequences must fit one binding (128 MiB by default).
    pub fn with_sequences(
        gpu: &Gpu,
        slots: usize,
        sequences: usize,
        capacity: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        match dtype {
            DType::F32 => {}
            DType::F16 if gpu.features().f16 => {}
            DType::F16 => {
                return Err(Error::Unsupported {
                    what: "SHADER_F16".into(),
                    needed: "an f16 KV cache is read and written by shaders as f16".into(),
                })
            }
            DType::U32 => {
                return Err(Error::DType { what: "KV cache".into(), got: "u32".into(), expected: "f16 or f32".into() })
            }
        }
        if slots == 0 || capacity == 0 || kv_heads == 0 || sequences == 0 {
            return Err(Error::invalid(
                "KV cache size",
                format!("{slots} slots x {sequences} sequences x {capacity} positions x {kv_heads} kv heads"),
                "all at least 1",
            ));
        }
        if head_dim == 0 || !head_dim.is_multiple_of(4) || head_dim > 256 {
            return Err(Error::invalid("KV cache head_dim", head_dim, "a multiple of 4 in 4..=256"));
        }
        let sequence_bytes = [2, kv_heads, capacity, head_dim, dtype.size()]
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .unwrap_or(usize::MAX);
        let texture_fits =
            gpu.weight_storage() == WeightStorage::Texture && (head_dim * dtype.size()).is_multiple_of(16);
        let stride_bytes =
            if texture_fits { 16 * texture_stride(sequence_bytes / 16, sequences) } else { sequence_bytes };
        let slot_bytes = stride_bytes.saturating_mul(sequences - 1).saturating_add(sequence_bytes);
        // One binding's worth per slot whatever the storage, so a context that plans on one device plans on all.
        if slot_bytes as u64 > gpu.max_binding_bytes() {
            return Err(Error::Capacity {
                what: format!(
                    "kv cache slot 0 [{sequences}, 2, {kv_heads}, {capacity}, {head_dim}] ({dtype}) in bytes"
                ),
                requested: slot_bytes,
                capacity: gpu.max_binding_bytes() as usize,
            });
        }
        let texels = slot_bytes / 16;
        let texture =
            texture_fits && texels.div_ceil(TEXTURE_ROW_TEXELS) <= gpu.limits().max_texture_dimension_2d as usize;
        let sequence_stride = if texture { stride_bytes } else { sequence_bytes } / dtype.size();
        let slots = (0..slots)
            .map(|i| {
                let label = format!("kv cache slot {i}");
                if !texture {
                    let shape = [sequences * 2, kv_heads, capacity, head_dim];
                    return Tensor::zeros_labeled(gpu, &label, dtype, &shape).map(Slot::Buffer);
                }
                let (width, height) = (texels.min(TEXTURE_ROW_TEXELS), texels.div_ceil(TEXTURE_ROW_TEXELS));
                let usage = wgpu::TextureUsages::TEXTURE_BINDING
                    | wgpu::TextureUsages::STORAGE_BINDING
                    | wgpu::TextureUsages::COPY_DST
                    | wgpu::TextureUsages::COPY_SRC;
                let texture = gpu.create_texture_with(&label, width as u32, height as u32, usage)?;
                let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
                Ok(Slot::Texture { texture, view })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { slots, capacity, kv_heads, head_dim, dtype, sequences, sequence_stride })
    }

    /// Positions each slot holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// KV heads.
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }
    /// Elements per head vector.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Storage type (F16 or F32).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of slots (executed layers).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }
    /// GPU memory used by the whole cache.
    pub fn size_bytes(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| match s {
                Slot::Buffer(t) => t.size_bytes(),
                Slot::Texture { texture, .. } => texture.width() as u64 * texture.height() as u64 * 16,
            })
            .sum()
    }
    /// Whether the slots are textures (see the module docs) rather than storage buffers.
    pub fn is_texture(&self) -> bool {
        matches!(self.slots.first(), Some(Slot::Texture { .. }))
    }
    /// Slot `i` as a binding: its buffer (`[2, kv_heads, capacity, head_dim]`, K then V, per sequence) or its
    /// texture view (for `texture_2d<u32>` reads and `texture_storage_2d<rgba32uint, write>` writes).
    pub fn binding(&self, i: usize) -> Result<wgpu::BindingResource<'_>> {
        Ok(match self.slot(i)? {
            Slot::Buffer(t) => t.buffer().as_entire_binding(),
            Slot::Texture { view, .. } => wgpu::BindingResource::TextureView(view),
        })
    }

    /// Independent sequences per slot (1 unless made by [`KvCache::with_sequences`]).
    pub fn sequences(&self) -> usize {
        self.sequences
    }
    /// Elements (of [`KvCache::dtype`]) from the start of one sequence to the next within a slot: the
    /// one-sequence size `2 * kv_heads * capacity * head_dim`, or more where texture slots pad each
    /// sequence to whole texture rows (or to a power-of-two share of one row).
    pub fn sequence_stride(&self) -> usize {
        self.sequence_stride
    }

    /// Bytes of one sequence's contents (a texture slot may hold padding past them).
    fn sequence_bytes(&self) -> usize {
        2 * self.kv_heads * self.capacity * self.head_dim * self.dtype.size()
    }

    /// Bytes of a slot's contents, all sequences with the padding between them.
    fn slot_bytes(&self) -> usize {
        (self.sequences - 1) * self.sequence_stride * self.dtype.size() + self.sequence_bytes()
    }

    fn check_sequence(&self, seq: usize) -> Result<()> {
        if seq >= self.sequences {
            return Err(Error::invalid("KV cache sequence", seq, format!("below {}", self.sequences)));
        }
        Ok(())
    }

    /// Copies sequence `from`'s contents (every position, every slot) over sequence `to`'s, on the GPU.
    pub fn copy_sequence(&self, gpu: &Gpu, from: usize, to: usize) -> Result<()> {
        self.copy_sequence_from(gpu, self, from, to)
    }

    /// Copies sequence `from` of `source` (every position, every slot) over sequence `to` of this cache, on
    /// the GPU: a one-sequence cache's context into one of a batch's sequences, or back. The two caches must
    /// have the same slots, capacity, heads, head_dim, storage type and storage (buffer or texture).
    pub fn copy_sequence_from(&self, gpu: &Gpu, source: &KvCache, from: usize, to: usize) -> Result<()> {
        source.check_sequence(from)?;
        self.check_sequence(to)?;
        let shape = |c: &KvCache| (c.slots.len(), c.capacity, c.kv_heads, c.head_dim, c.dtype, c.is_texture());
        if shape(source) != shape(self) {
            return Err(Error::invalid(
                "KV cache to copy a sequence from",
                format!("{:?}", shape(source)),
                format!("this cache's (slots, capacity, kv heads, head_dim, type, texture) {:?}", shape(self)),
            ));
        }
        if std::ptr::eq(source, self) && from == to {
            return Ok(());
        }
        let mut encoder =
            gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kv sequence copy") });
        let bytes = self.sequence_bytes();
        // WebGPU forbids a copy within one buffer or texture: within a cache, the sequence goes through a
        // scratch copy (one, made here and reused by every slot: copies run in order).
        let mut scratch_buffer = None;
        let mut scratch_texture = None;
        for (src, dst) in source.slots.iter().zip(&self.slots) {
            match (src, dst) {
                (Slot::Buffer(a), Slot::Buffer(b)) => {
                    let stride = |c: &KvCache| (c.sequence_stride * c.dtype.size()) as u64;
                    let (at, to_at) = (from as u64 * stride(source), to as u64 * stride(self));
                    if a.buffer() != b.buffer() {
                        encoder.copy_buffer_to_buffer(a.buffer(), at, b.buffer(), to_at, bytes as u64);
                        continue;
                    }
                    let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
                    let scratch = match &scratch_buffer {
                        Some(s) => s,
                        None => scratch_buffer.insert(gpu.create_buffer("kv sequence scratch", bytes as u64, usage)?),
                    };
                    encoder.copy_buffer_to_buffer(a.buffer(), at, scratch, 0, bytes as u64);
                    encoder.copy_buffer_to_buffer(scratch, 0, b.buffer(), to_at, bytes as u64);
                }
                (Slot::Texture { texture: a, .. }, Slot::Texture { texture: b, .. }) => {
                    // A sequence starts a texture row, or (under a row) a power-of-two share of one:
                    // its texels are one rectangle, whole rows wide or one row high.
                    let texels = bytes / 16;
                    let (width, height) = (texels.min(TEXTURE_ROW_TEXELS), texels.div_ceil(TEXTURE_ROW_TEXELS));
                    let extent =
                        wgpu::Extent3d { width: width as u32, height: height as u32, depth_or_array_layers: 1 };
                    let at = |texture, cache: &KvCache, seq: usize| {
                        let t = seq * cache.sequence_stride * cache.dtype.size() / 16;
                        let (x, y) = ((t % TEXTURE_ROW_TEXELS) as u32, (t / TEXTURE_ROW_TEXELS) as u32);
                        wgpu::TexelCopyTextureInfo {
                            texture,
                            mip_level: 0,
                            origin: wgpu::Origin3d { x, y, z: 0 },
                            aspect: wgpu::TextureAspect::All,
                        }
                    };
                    if a != b {
                        encoder.copy_texture_to_texture(at(a, source, from), at(b, self, to), extent);
                        continue;
                    }
                    let usage = wgpu::TextureUsages::COPY_SRC | wgpu::TextureUsages::COPY_DST;
                    let scratch = match &scratch_texture {
                        Some(s) => s,
                        None => scratch_texture.insert(gpu.create_texture_with(
                            "kv sequence scratch",
                            width as u32,
                            height as u32,
                            usage,
                        )?),
                    };
                    encoder.copy_texture_to_texture(at(a, source, from), scratch.as_image_copy(), extent);
                    encoder.copy_texture_to_texture(scratch.as_image_copy(), at(b, self, to), extent);
                }
                _ => return Err(Error::Device("KV cache slots of mixed storage".into())),
            }
        }
        gpu.submit_and_wait([encoder.finish()])
    }

    fn slot(&self, i: usize) -> Result<&Slot> {
        self.slots.get(i).ok_or_else(|| Error::invalid("KV cache slot", i, format!("below {}", self.slots.len())))
    }

    /// Writes `bytes` at byte `offset` of slot `slot` (texture slots: offset and length multiples of 16).
    fn write_bytes(&self, gpu: &Gpu, slot: usize, offset: usize, bytes: &[u8]) -> Result<()> {
        match self.slot(slot)? {
            Slot::Buffer(t) => gpu.queue().write_buffer(t.buffer(), offset as u64, bytes),
            Slot::Texture { texture, .. } => {
                // Texel runs split at texture rows.
                let mut texel = offset / 16;
                let mut rest = bytes;
                while !rest.is_empty() {
                    let x = texel % TEXTURE_ROW_TEXELS;
                    let run = (TEXTURE_ROW_TEXELS - x).min(rest.len() / 16);
                    let (head, tail) = rest.split_at(run * 16);
                    gpu.queue().write_texture(
                        wgpu::TexelCopyTextureInfo {
                            texture,
                            mip_level: 0,
                            origin: wgpu::Origin3d { x: x as u32, y: (texel / TEXTURE_ROW_TEXELS) as u32, z: 0 },
                            aspect: wgpu::TextureAspect::All,
                        },
                        head,
                        wgpu::TexelCopyBufferLayout {
                            offset: 0,
                            bytes_per_row: Some(head.len() as u32),
                            rows_per_image: None,
                        },
                        wgpu::Extent3d { width: run as u32, height: 1, depth_or_array_layers: 1 },
                    );
                    texel += run;
                    rest = tail;
                }
            }
        }
        Ok(())
    }

    /// The bytes of slot `slot`, in layout order.
    fn read_bytes(&self, gpu: &Gpu, slot: usize) -> Result<Vec<u8>> {
        match self.slot(slot)? {
            Slot::Buffer(t) => read_buffer(gpu, t.buffer(), 0, t.size_bytes()),
            Slot::Texture { texture, .. } => {
                let (width, height) = (texture.width(), texture.height());
                // Rows of a texture-to-buffer copy are padded to 256 bytes.
                let row = (width as u64 * 16).next_multiple_of(256);
                let staging = gpu.create_buffer(
                    "kv readback",
                    row * height as u64,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                )?;
                let mut encoder =
                    gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kv readback") });
                encoder.copy_texture_to_buffer(
                    texture.as_image_copy(),
                    wgpu::TexelCopyBufferInfo {
                        buffer: &staging,
                        layout: wgpu::TexelCopyBufferLayout {
                            offset: 0,
                            bytes_per_row: Some(row as u32),
                            rows_per_image: None,
                        },
                    },
                    texture.size(),
                );
                gpu.submit_and_wait([encoder.finish()])?;
                let padded = map_read(gpu, &staging, row * height as u64)?;
                let slot_bytes = self.slot_bytes();
                let mut bytes = Vec::with_capacity(slot_bytes);
                for r in padded.chunks(row as usize) {
                    bytes.extend_from_slice(&r[..width as usize * 16]);
                }
                bytes.truncate(slot_bytes);
                Ok(bytes)
            }
        }
    }

    /// Checks that a step writing `n` positions from `pos` stays inside the cache; call before writing the
    /// step uniform and submitting (kernels also refuse out-of-range writes, silently).
    pub fn check_step(&self, pos: usize, n: usize) -> Result<()> {
        let end = pos.saturating_add(n);
        if n == 0 {
            return Err(Error::invalid("step length n", n, "at least 1"));
        }
        if end > self.capacity {
            return Err(Error::Capacity { what: "KV cache positions".into(), requested: end, capacity: self.capacity });
        }
        Ok(())
    }

    /// Writes K and V rows (`[n, kv_heads * head_dim]` f32 each, the projection layout) into slot `slot` at
    /// positions `pos..pos+n`, converting to the storage type. For tests and tools; the model writes the
    /// cache from the QKV kernel.
    pub fn write(&self, gpu: &Gpu, slot: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let width = self.kv_heads * self.head_dim;
        if k.len() != v.len() || k.is_empty() || !k.len().is_multiple_of(width) {
            return Err(Error::shape("KV rows", &[k.len(), v.len()], format!("two equal multiples of {width}")));
        }
        let n = k.len() / width;
        self.check_step(pos, n)?;
        self.slot(slot)?;
        let es = self.dtype.size();
        for (part, rows) in [(0usize, k), (1, v)] {
            for h in 0..self.kv_heads {
                let mut bytes = Vec::with_capacity(n * self.head_dim * es);
                for r in 0..n {
                    let src = &rows[r * width + h * self.head_dim..][..self.head_dim];
                    match self.dtype {
                        DType::F16 => {
                            for &x in src {
                                bytes.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
                            }
                        }
                        _ => bytes.extend_from_slice(bytemuck::cast_slice(src)),
                    }
                }
                let elem = ((part * self.kv_heads + h) * self.capacity + pos) * self.head_dim;
                // head_dim is a multiple of 4, so offsets and sizes are 4-byte aligned for both types (and
                // whole texels where the slots are textures).
                self.write_bytes(gpu, slot, elem * es, &bytes)?;
            }
        }
        Ok(())
    }

    /// The stored bytes of positions `0..n` of slot `slot`: for K then V, each KV head's `n * head_dim`
    /// elements in the storage type (a session state's layout, see `model::state`).
    pub fn read_positions(&self, gpu: &Gpu, slot: usize, n: usize) -> Result<Vec<u8>> {
        self.check_positions(n)?;
        let bytes = self.read_bytes(gpu, slot)?;
        let (run, es) = (n * self.head_dim, self.dtype.size());
        let mut out = Vec::with_capacity(2 * self.kv_heads * run * es);
        for row in 0..2 * self.kv_heads {
            let start = row * self.capacity * self.head_dim * es;
            out.extend_from_slice(&bytes[start..start + run * es]);
        }
        Ok(out)
    }

    /// Writes what [`KvCache::read_positions`] gave (positions `0..n`, this cache's storage type) into slot
    /// `slot`. The length is checked before anything is written.
    pub fn write_positions(&self, gpu: &Gpu, slot: usize, n: usize, bytes: &[u8]) -> Result<()> {
        self.check_positions(n)?;
        self.slot(slot)?;
        let run = n * self.head_dim * self.dtype.size();
        if bytes.len() != 2 * self.kv_heads * run {
            return Err(Error::invalid(
                "KV positions bytes",
                bytes.len(),
                format!(
                    "{} (2 x {} heads x {n} positions x {} bytes)",
                    2 * self.kv_heads * run,
                    self.kv_heads,
                    run / n.max(1)
                ),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        for (row, chunk) in bytes.chunks_exact(run).enumerate() {
            // Rows start at multiples of head_dim elements: whole texels where the slots are textures.
            self.write_bytes(gpu, slot, row * self.capacity * self.head_dim * self.dtype.size(), chunk)?;
        }
        Ok(())
    }

    fn check_positions(&self, n: usize) -> Result<()> {
        if n > self.capacity {
            return Err(Error::Capacity { what: "KV cache positions".into(), requested: n, capacity: self.capacity });
        }
        Ok(())
    }

    /// Reads slot `slot` back to the host, widened to f32 (sequence 0 of a cache with several).
    pub fn read(&self, gpu: &Gpu, slot: usize) -> Result<KvMirror> {
        self.read_sequence(gpu, slot, 0)
    }

    /// Reads sequence `seq` of slot `slot` back to the host, widened to f32.
    pub fn read_sequence(&self, gpu: &Gpu, slot: usize, seq: usize) -> Result<KvMirror> {
        self.check_sequence(seq)?;
        let start = seq * self.sequence_stride * self.dtype.size();
        let bytes = self.read_bytes(gpu, slot)?[start..start + self.sequence_bytes()].to_vec();
        let all: Vec<f32> = match self.dtype {
            DType::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            _ => bytemuck::pod_collect_to_vec(&bytes),
        };
        let half_len = all.len() / 2;
        Ok(KvMirror {
            kv_heads: self.kv_heads,
            capacity: self.capacity,
            head_dim: self.head_dim,
            k: all[..half_len].to_vec(),
            v: all[half_len..].to_vec(),
        })
    }
}

/// `bytes` of `from` elements as `to` elements (f16 <-> f32; the same type is a copy).
pub(crate) fn convert_storage(bytes: &[u8], from: DType, to: DType) -> Vec<u8> {
    match (from, to) {
        (DType::F16, DType::F32) => {
            bytes.chunks_exact(2).flat_map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes()).collect()
        }
        (DType::F32, DType::F16) => bytes
            .chunks_exact(4)
            .flat_map(|b| half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
            .collect(),
        _ => bytes.to_vec(),
    }
}
