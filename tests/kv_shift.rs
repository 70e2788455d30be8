//! Context shift on the GPU (`ops::kv_shift`) against its CPU twin (`reference::kv_shift`): f16 and f32
//! caches in buffers and in textures (one row and several), both RoPE layouts, shifts that move nothing,
//! one position or most of the cache; typed errors for shifts that do not fit.
mod common;

use common::{gpu_rules_gpu, gpus, random_vec};
use mobilellm_kernels::kv_cache::{KvCache, KvMirror};
use mobilellm_kernels::model::RopeLayout;
use mobilellm_kernels::ops::kv_shift::{kv_shift, scratch_len, Shift};
use mobilellm_kernels::ops::qkv_rope::RopeTable;
use mobilellm_kernels::{ops, reference, DType, Error, Gpu, Tensor};

const THETA: f32 = 10_000.0;

/// A cache of `slots` slots filled with random rows at every position.
fn filled_cache(gpu: &Gpu, dtype: DType, slots: usize, capacity: usize, kv_heads: usize, head_dim: usize) -> KvCache {
    let cache = KvCache::with_dtype(gpu, slots, capacity, kv_heads, head_dim, dtype).unwrap();
    let width = kv_heads * head_dim;
    for slot in 0..slots {
        let k: Vec<f32> = random_vec(slot as u64 * 2 + 1, capacity * width).iter().map(|v| 2.0 * v).collect();
        let v = random_vec(slot as u64 * 2 + 2, capacity * width);
        cache.write(gpu, slot, 0, &k, &v).unwrap();
    }
    cache
}

/// The largest difference the GPU may show against the twin at `want`: the twin rounds `a cos + b sin` once
/// per product and once for the sum, a GPU may fuse a product into the sum (WGSL allows it), which moves
/// the f32 result by at most an ulp of the products (|a|, |b| <= 2, so 2^-21); an f16 cache can then round
/// to the neighbouring half, one f16 ulp of the value.
fn tolerance(want: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F16 => (2.0f32).powi((want.abs().max(6.2e-5)).log2().floor() as i32 - 10),
        _ => 2.0f32.powi(-21),
    }
}

fn check_shift(gpu: &Gpu, dtype: DType, shape: (usize, usize, usize), shift: Shift, layout: RopeLayout) {
    let (capacity, kv_heads, head_dim) = shape;
    let slots = 2;
    let cache = filled_cache(gpu, dtype, slots, capacity, kv_heads, head_dim);
    let rope = RopeTable::new(gpu, capacity, head_dim, THETA).unwrap();
    let freqs: Vec<f64> = (0..head_dim / 2).map(|i| reference::rope_frequency(i, head_dim, THETA, None)).collect();
    let mut want: Vec<KvMirror> = (0..slots).map(|s| cache.read(gpu, s).unwrap()).collect();
    for mirror in &mut want {
        reference::kv_shift(mirror, shift, &freqs, layout, dtype);
    }
    let scratch = Tensor::zeros(gpu, DType::F32, &[scratch_len(&cache)]).unwrap();
    let dispatches = kv_shift(gpu, &cache, &rope, layout, shift, &scratch).unwrap();
    let moved = shift.used - shift.keep - shift.discard;
    assert_eq!(dispatches.len(), if moved > 0 && shift.discard > 0 { 2 * slots } else { 0 });
    ops::run(gpu, &dispatches.iter().collect::<Vec<_>>()).unwrap();
    let what = format!(
        "{dtype} {} {shape:?} {shift:?} {layout:?} [{}]",
        if cache.is_texture() { "texture" } else { "buffer" },
        gpu.features()
    );
    let mut rounded_apart = 0;
    for (slot, want) in want.iter().enumerate() {
        let got = cache.read(gpu, slot).unwrap();
        // Values are copied: bit for bit, moved or not.
        assert_eq!(got.v, want.v, "values, slot {slot}, {what}");
        for (i, (&g, &w)) in got.k.iter().zip(&want.k).enumerate() {
            assert!((g - w).abs() <= tolerance(w, dtype), "key element {i} of slot {slot}: {g} vs {w}, {what}");
            rounded_apart += usize::from(g != w);
        }
    }
    assert!(rounded_apart * 100 <= want.len() * want[0].k.len(), "{rounded_apart} keys differ, {what}");
}

#[test]
fn gpu_shift_matches_the_twin() {
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        let dtypes: &[DType] = if gpu.features().f16 { &[DType::F16, DType::F32] } else { &[DType::F32] };
        for &dtype in dtypes {
            // (capacity, kv_heads, head_dim) and shifts: SmolLM2's shape dropping most of a full cache; one
            // position at the front; nothing moved; a cache spread over several texture rows.
            let cases = [
                ((300, 3, 64), Shift { used: 300, keep: 4, discard: 150 }),
                ((40, 1, 8), Shift { used: 37, keep: 0, discard: 1 }),
                ((64, 2, 128), Shift { used: 64, keep: 63, discard: 1 }),
                ((64, 2, 16), Shift { used: 50, keep: 10, discard: 0 }),
                ((2100, 4, 16), Shift { used: 2050, keep: 10, discard: 1000 }),
            ];
            for (shape, shift) in cases {
                for layout in [RopeLayout::Halves, RopeLayout::Interleaved] {
                    check_shift(gpu, dtype, shape, shift, layout);
                }
            }
        }
    }
}

#[test]
fn shifts_that_do_not_fit_are_typed_errors() {
    let gpu = &gpus()[0];
    let cache = filled_cache(gpu, DType::F32, 1, 32, 1, 8);
    let rope = RopeTable::new(gpu, 32, 8, THETA).unwrap();
    let scratch = Tensor::zeros(gpu, DType::F32, &[scratch_len(&cache)]).unwrap();
    let layout = RopeLayout::Halves;
    let shift = |used, keep, discard| Shift { used, keep, discard };
    for bad in [shift(33, 0, 4), shift(20, 10, 11), shift(32, usize::MAX, 1)] {
        assert!(matches!(kv_shift(gpu, &cache, &rope, layout, bad, &scratch), Err(Error::InvalidArgument { .. })));
    }
    let short_rope = RopeTable::new(gpu, 8, 8, THETA).unwrap();
    let e = kv_shift(gpu, &cache, &short_rope, layout, shift(32, 0, 8), &scratch).unwrap_err();
    assert!(e.to_string().contains("RoPE table"), "{e}");
    let small = Tensor::zeros(gpu, DType::F32, &[scratch_len(&cache) - 1]).unwrap();
    let e = kv_shift(gpu, &cache, &rope, layout, shift(32, 0, 8), &small).unwrap_err();
    assert!(e.to_string().contains("scratch"), "{e}");
    // A failed plan leaves the cache as it was.
    assert_eq!(cache.read(gpu, 0).unwrap(), filled_cache(gpu, DType::F32, 1, 32, 1, 8).read(gpu, 0).unwrap());
}
