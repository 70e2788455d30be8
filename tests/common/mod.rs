//! Shared test helpers: the devices every GPU test runs on, and argued comparisons.
#![allow(dead_code)]

use std::sync::OnceLock;

use mobilellm_kernels::{FeatureSet, Gpu, GpuOptions, WeightStorage};

/// The two feature sets every kernel is tested under: everything the adapter offers, and nothing.
/// The first keeps weights where the device prefers them (textures on CPU drivers), the second in storage
/// buffers, so both weight storages are exercised on every machine (`MOBILELLM_WEIGHTS` fixes both).
/// Panics (fails the test loudly) when there is no adapter: GPU tests must never pass silently.
pub fn gpus() -> &'static [Gpu] {
    static GPUS: OnceLock<Vec<Gpu>> = OnceLock::new();
    GPUS.get_or_init(|| {
        let base = GpuOptions::from_env().expect("MOBILELLM_* environment variables are invalid");
        [
            (FeatureSet::ALL, base.weight_storage),
            (FeatureSet::NONE, base.weight_storage.or(Some(WeightStorage::Buffer))),
        ]
        .into_iter()
        .map(|(features, storage)| {
            let options = GpuOptions { weight_storage: storage, ..base.clone() };
            let gpu = Gpu::with_options(&options.features(base.features.intersect(features)))
                .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
            eprintln!("test device: {}", gpu.describe());
            gpu
        })
        .collect()
    })
}

/// Deterministic pseudo-random values in [-1, 1) (xorshift), so failures reproduce.
pub fn random_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Asserts `|got - want| <= abs + rel * |want|` elementwise, reporting the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let mut excess = (g - w).abs() - (abs + rel * w.abs());
        if excess.is_nan() {
            // NaN on either side is a failure unless both are NaN.
            excess = if g.is_nan() && w.is_nan() { 0.0 } else { f32::INFINITY };
        }
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!("{what}: element {i} got {} want {} (abs {abs}, rel {rel})", got[i], want[i]);
    }
}
