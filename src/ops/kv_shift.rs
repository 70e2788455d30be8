//! Context-shift launcher (`kernels/kv_shift.wgsl`), CPU twin [`crate::reference::kv_shift`].
//!
//! A context shift (llama.cpp's) drops `discard` positions after the first `keep` and moves the rest down:
//! in every slot, the positions `keep + discard .. used` go to `keep ..`, keys turned back by `discard`
//! positions of RoPE (a rotation, so the attention scores between the moved keys and new queries are
//! those of the shorter sequence), values as they are. Two dispatches per slot through an f32 scratch
//! buffer (the moved range overlaps its destination), recorded in one pass: nothing goes through the host.

use bytemuck::{Pod, Zeroable};

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::RopeLayout;
use crate::ops::qkv_rope::RopeTable;
use crate::ops::{make_dispatch, uniform, Dispatch, MAX_GROUPS_PER_DIM};
use crate::shader::{ShaderVariant, KV_SHIFT};
use crate::tensor::{DType, Tensor};

/// Invocations per workgroup, on every device: the kernels have no barriers, so the reason CPU drivers
/// take small workgroups elsewhere (lavapipe switching between SIMD batches at each barrier) does not
/// hold, and larger ones cost less per invocation there (SmolLM2 at context 2048: 8 invocations 167 ms,
/// 64 82 ms, 256 80 ms).
const WORKGROUP: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    kv_heads: u32,
    capacity: u32,
    head_dim: u32,
    keep: u32,
    dropped: u32,
    moved: u32,
    _pad: [u32; 2],
}

/// Which positions a shift drops: of the `used` positions, `discard` after the first `keep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shift {
    /// Positions holding entries.
    pub used: usize,
    /// Positions kept at the start (a system prompt, say).
    pub keep: usize,
    /// Positions dropped after them.
    pub discard: usize,
}

/// f32 elements of the scratch buffer [`kv_shift`] needs for any shift of `cache`.
pub fn scratch_len(cache: &KvCache) -> usize {
    2 * cache.kv_heads() * cache.capacity() * cache.head_dim()
}

/// Plans the shift of every slot of `cache` (see the module docs): two dispatches per slot, to record in
/// order. `rope` is the table the keys were rotated with (its entry at `discard` turns them back);
/// `scratch` f32 with at least [`scratch_len`] elements. No dispatch when nothing moves. Positions
/// `used - discard .. used` keep what they held (they count as empty after the shift).
pub fn kv_shift(
    gpu: &Gpu,
    cache: &KvCache,
    rope: &RopeTable,
    layout: RopeLayout,
    shift: Shift,
    scratch: &Tensor,
) -> Result<Vec<Dispatch>> {
    let Shift { used, keep, discard } = shift;
    if used > cache.capacity() || keep.checked_add(discard).is_none_or(|end| end > used) {
        return Err(Error::invalid(
            "context shift",
            format!("keep {keep} + discard {discard} of {used} positions"),
            format!("keep + discard <= positions in use <= the cache's {}", cache.capacity()),
        ));
    }
    if rope.head_dim() != cache.head_dim() || discard >= rope.capacity() {
        return Err(Error::invalid(
            "context shift RoPE table",
            format!("head_dim {}, {} positions", rope.head_dim(), rope.capacity()),
            format!("head_dim {} and more than {discard} positions", cache.head_dim()),
        ));
    }
    if scratch.dtype() != DType::F32 || scratch.len() < scratch_len(cache) {
        return Err(Error::invalid(
            "context shift scratch",
            format!("{} {:?}", scratch.dtype(), scratch.shape()),
            format!("f32 with at least {} elements", scratch_len(cache)),
        ));
    }
    let moved = used - keep - discard;
    if discard == 0 || moved == 0 {
        return Ok(Vec::new());
    }
    let (kv_heads, head_dim) = (cache.kv_heads(), cache.head_dim());
    let per_word = if cache.dtype() == DType::F16 { 2 } else { 1 };
    let unit = if cache.is_texture() { 4 * per_word } else { per_word };
    if !head_dim.is_multiple_of(unit) {
        return Err(Error::invalid("context shift head_dim", head_dim, format!("a multiple of {unit}")));
    }
    let wg = WORKGROUP;
    let variant = ShaderVariant::new()
        .flag_if("KVTEX", cache.is_texture())
        .flag_if("PACKED16", per_word == 2)
        .flag(match layout {
            RopeLayout::Halves => "ROPE_HALVES",
            RopeLayout::Interleaved => "ROPE_INTERLEAVED",
        })
        .constant("WG", wg)
        .constant("UNIT", unit as u32);
    let gather = gpu.pipeline(&KV_SHIFT, "kv_shift_gather", &variant)?;
    let scatter = gpu.pipeline(&KV_SHIFT, "kv_shift_scatter", &variant)?;
    let narrow =
        |v: usize| u32::try_from(v).map_err(|_| Error::invalid("context shift size", v, "below 2^32 elements"));
    let params = Params {
        kv_heads: narrow(kv_heads)?,
        capacity: narrow(cache.capacity())?,
        head_dim: narrow(head_dim)?,
        keep: narrow(keep)?,
        dropped: narrow(discard)?,
        moved: narrow(moved)?,
        _pad: [0; 2],
    };
    let params = uniform(gpu, "kv_shift params", &params)?;
    let elements = narrow(2 * kv_heads * moved * head_dim)?;
    let grid = |invocations: u32| {
        let groups = invocations.div_ceil(wg);
        [groups.min(MAX_GROUPS_PER_DIM), groups.div_ceil(MAX_GROUPS_PER_DIM), 1]
    };
    let mut dispatches = Vec::with_capacity(2 * cache.slots());
    for slot in 0..cache.slots() {
        // A texture slot is read as a sampled texture and written as a storage one.
        let write_binding = if cache.is_texture() { 4 } else { 3 };
        dispatches.push(make_dispatch(
            gpu,
            "kv_shift:kv_shift_gather".into(),
            gather.clone(),
            &[
                (0, params.as_entire_binding()),
                (1, rope.tensor().buffer().as_entire_binding()),
                (2, scratch.buffer().as_entire_binding()),
                (3, cache.binding(slot)?),
            ],
            grid(elements / 2),
            vec![params.clone()],
        )?);
        dispatches.push(make_dispatch(
            gpu,
            "kv_shift:kv_shift_scatter".into(),
            scatter.clone(),
            &[
                (0, params.as_entire_binding()),
                (2, scratch.buffer().as_entire_binding()),
                (write_binding, cache.binding(slot)?),
            ],
            grid(elements / unit as u32),
            vec![params.clone()],
        )?);
    }
    Ok(dispatches)
}
