//! The KV cache: one slot per *executed* layer (with block-wise layer sharing a unique layer runs twice
//! and each execution has its own slot), f16 where the device has SHADER_F16, else f32.
//!
//! Layout of one slot (one buffer, so one binding): `[2][kv_heads][capacity][head_dim]`: all of K, then
//! all of V; within each, one KV head's positions are contiguous, so a decode workgroup that owns a KV
//! head streams one contiguous range of memory.

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::tensor::{read_buffer, DType, Tensor};

/// GPU KV cache for a whole model: `slots` executed layers, `capacity` positions each.
#[derive(Debug, Clone)]
pub struct KvCache {
    slots: Vec<Tensor>,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
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
        if slots == 0 || capacity == 0 || kv_heads == 0 {
            return Err(Error::invalid(
                "KV cache size",
                format!("{slots} slots x {capacity} positions x {kv_heads} kv heads"),
                "all at least 1",
            ));
        }
        if head_dim == 0 || !head_dim.is_multiple_of(4) || head_dim > 256 {
            return Err(Error::invalid("KV cache head_dim", head_dim, "a multiple of 4 in 4..=256"));
        }
        let slots = (0..slots)
            .map(|i| {
                Tensor::zeros_labeled(gpu, &format!("kv cache slot {i}"), dtype, &[2, kv_heads, capacity, head_dim])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { slots, capacity, kv_heads, head_dim, dtype })
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
        self.slots.iter().map(Tensor::size_bytes).sum()
    }
    /// The buffer of slot `i`: shape `[2, kv_heads, capacity, head_dim]` (K then V).
    pub fn slot(&self, i: usize) -> Result<&Tensor> {
        self.slots.get(i).ok_or_else(|| Error::invalid("KV cache slot", i, format!("below {}", self.slots.len())))
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
        let buffer = self.slot(slot)?.buffer();
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
                // head_dim is a multiple of 4, so offsets and sizes are 4-byte aligned for both types.
                gpu.queue().write_buffer(buffer, (elem * es) as u64, &bytes);
            }
        }
        Ok(())
    }

    /// Reads slot `slot` back to the host, widened to f32.
    pub fn read(&self, gpu: &Gpu, slot: usize) -> Result<KvMirror> {
        let t = self.slot(slot)?;
        let bytes = read_buffer(gpu, t.buffer(), 0, t.size_bytes())?;
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
