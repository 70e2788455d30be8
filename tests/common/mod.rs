//! Shared test helpers: the devices every GPU test runs on, and argued comparisons.
#![allow(dead_code)]

use std::cell::Cell;
use std::sync::{Condvar, Mutex, OnceLock};

use mobilellm_kernels::{FeatureSet, Gpu, GpuOptions, TextureReads, WeightStorage};

/// The two feature sets every kernel is tested under: everything the adapter offers, and nothing.
/// The first keeps weights where the device prefers them (textures on CPU drivers) and reads textures its
/// preferred way (storage reads where offered), the second keeps weights in storage buffers and reads
/// textures (its KV cache, and weights a test puts in textures) as sampled textures, so both weight storages
/// and both texture reads are exercised on every machine (`MOBILELLM_WEIGHTS` / `MOBILELLM_TEXTURE_READS`
/// fix both).
/// Panics (fails the test loudly) when there is no adapter: GPU tests must never pass silently.
///
/// On the GL backend the returned guard also holds a process-wide lock until it is dropped (the end of
/// `for gpu in gpus() { .. }`, or of the block around `let gpu = &gpus()[0];`), so GPU tests run one at a
/// time while CPU-only tests still run in parallel. wgpu's GL backend shares one EGL context per device
/// behind a lock that panics after waiting 1 s ("Could not lock adapter context"), and on llvmpipe one
/// thread's fence wait easily holds it longer. The lock is re-entrant per thread (a test may call
/// `gpus()` again) and is released on unwinding, so a failing test does not block the others.
pub fn gpus() -> Gpus {
    static GPUS: OnceLock<Vec<Gpu>> = OnceLock::new();
    let list = GPUS.get_or_init(|| {
        let base = GpuOptions::from_env().expect("MOBILELLM_* environment variables are invalid");
        [
            (FeatureSet::ALL, base.weight_storage, base.texture_reads),
            (
                FeatureSet::NONE,
                base.weight_storage.or(Some(WeightStorage::Buffer)),
                base.texture_reads.or(Some(TextureReads::Sampled)),
            ),
        ]
        .into_iter()
        .map(|(features, storage, texture_reads)| {
            let options = GpuOptions { weight_storage: storage, texture_reads, ..base.clone() };
            let gpu = Gpu::with_options(&options.features(base.features.intersect(features)))
                .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
            eprintln!("test device: {}", gpu.describe());
            gpu
        })
        .collect()
    });
    let serialize = list.iter().any(|g| g.backend() == wgpu::Backend::Gl);
    Gpus { list, _guard: serialize.then(GlGuard::acquire) }
}

/// A third device for kernels that read KV-cache textures: weights (and so the KV cache) in textures, read
/// the way the first of [`gpus`] does not (sampled where that one reads storage textures, and the reverse
/// where the adapter offers storage reads), so both texture reads of the attention kernels are checked.
/// `None` on GL (its tests run one device at a time) or where the adapter offers only sampled reads and the
/// first device already uses them.
pub fn other_texture_reads_gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    // Optional: an adapter without storage texture reads has no such device.
    extra_gpu(&GPU, false, |base| {
        let reads = match gpus()[0].texture_reads() {
            TextureReads::Storage => TextureReads::Sampled,
            TextureReads::Sampled => TextureReads::Storage,
        };
        Some(base.weight_storage(WeightStorage::Texture).texture_reads(reads))
    })
}

/// A device with neither f16 nor subgroups that keeps its weights in sampled textures: the combination
/// [`gpus`] leaves out (its bare device keeps weights in buffers), for the paths that read activations as
/// texels where weights are textures (the windowed CPU product). `None` on GL, whose tests run one device
/// at a time.
pub fn bare_texture_gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    extra_gpu(&GPU, true, |base| {
        Some(
            base.features(FeatureSet::NONE).weight_storage(WeightStorage::Texture).texture_reads(TextureReads::Sampled),
        )
    })
}

/// The adapter under GPU launch rules (`DeviceClass::Gpu` forced; all features the environment allows,
/// weights in buffers): the mappings, tiles and splits the launchers choose on real GPUs, for the random
/// sweeps. `None` on GL, whose tests run one device at a time.
pub fn gpu_rules_gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    extra_gpu(&GPU, true, |base| Some(base.device_class(mobilellm_kernels::DeviceClass::Gpu)))
}

/// A device beyond [`gpus`], made once in `cell` from the environment's options as `options` changes them:
/// `None` on GL (its tests run one device at a time), where `options` declines, or (unless `required`: then
/// the test fails loudly) where the adapter refuses the options.
fn extra_gpu(
    cell: &'static OnceLock<Option<Gpu>>,
    required: bool,
    options: impl FnOnce(GpuOptions) -> Option<GpuOptions>,
) -> Option<&'static Gpu> {
    cell.get_or_init(|| {
        if gpus()[0].backend() == wgpu::Backend::Gl {
            return None;
        }
        let base = GpuOptions::from_env().expect("MOBILELLM_* environment variables are invalid");
        let gpu = match Gpu::with_options(&options(base)?) {
            Ok(gpu) => gpu,
            Err(e) if required => panic!("GPU tests need an adapter: {e}"),
            Err(_) => return None,
        };
        eprintln!("test device: {}", gpu.describe());
        Some(gpu)
    })
    .as_ref()
}

/// The test devices, plus (on GL) the process-wide GPU lock; see [`gpus`].
pub struct Gpus {
    list: &'static [Gpu],
    _guard: Option<GlGuard>,
}

impl std::ops::Deref for Gpus {
    type Target = [Gpu];
    fn deref(&self) -> &[Gpu] {
        self.list
    }
}

impl IntoIterator for Gpus {
    type Item = &'static Gpu;
    type IntoIter = GpusIter;
    fn into_iter(self) -> GpusIter {
        GpusIter { inner: self.list.iter(), _guard: self._guard }
    }
}

/// Iterates the test devices, holding the GL lock (if any) until the loop ends.
pub struct GpusIter {
    inner: std::slice::Iter<'static, Gpu>,
    _guard: Option<GlGuard>,
}

impl Iterator for GpusIter {
    type Item = &'static Gpu;
    fn next(&mut self) -> Option<&'static Gpu> {
        self.inner.next()
    }
}

/// Process-wide, per-thread re-entrant lock (a flag + condvar, so it cannot be poisoned).
struct GlGuard;

static GL_HELD: Mutex<bool> = Mutex::new(false);
static GL_FREED: Condvar = Condvar::new();
thread_local! {
    static GL_DEPTH: Cell<usize> = const { Cell::new(0) };
}

impl GlGuard {
    fn acquire() -> GlGuard {
        GL_DEPTH.with(|depth| {
            if depth.get() == 0 {
                let mut held = GL_HELD.lock().unwrap_or_else(|p| p.into_inner());
                while *held {
                    held = GL_FREED.wait(held).unwrap_or_else(|p| p.into_inner());
                }
                *held = true;
            }
            depth.set(depth.get() + 1);
        });
        GlGuard
    }
}

impl Drop for GlGuard {
    fn drop(&mut self) {
        GL_DEPTH.with(|depth| {
            depth.set(depth.get() - 1);
            if depth.get() == 0 {
                *GL_HELD.lock().unwrap_or_else(|p| p.into_inner()) = false;
                GL_FREED.notify_one();
            }
        });
    }
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

/// A seeded stream of shape choices for the random-shape sweeps (llama.cpp's `test-backend-ops` idea:
/// many shapes no one picked by hand); every case's message names its shape, so a failure reproduces.
pub struct ShapeRng(u64);

impl ShapeRng {
    pub fn new(seed: u64) -> ShapeRng {
        ShapeRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }

    /// A weight width (`in_features`) for `wtype`: for f32/f16 any of `1..=any`, for the quantized types
    /// 1..=`blocks` whole blocks of 32.
    pub fn width(&mut self, wtype: mobilellm_kernels::quant::WeightType, any: usize, blocks: usize) -> usize {
        use mobilellm_kernels::quant::WeightType;
        match wtype {
            WeightType::F32 | WeightType::F16 => self.range(1, any),
            _ => 32 * self.range(1, blocks),
        }
    }
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

/// The layout of a matrix-product test: `x` `[n, cols]`, a `[rows, cols]` weight, and `y` `[n, total]`
/// whose columns `offset..offset + rows` receive the product (`accumulate`: added to what was there).
pub struct ProductShape {
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub offset: usize,
    pub total: usize,
    pub accumulate: bool,
}

/// Checks a GPU product `got` (`y` after the call; it held `y0` before) against the CPU twin `want`
/// (`[n, rows]`, computed from the dequantized weights `deq`): columns outside the slice unchanged bit for
/// bit, each output within `tolerance(cols, sum|w x|)` (the kernel's argued bound), plus one rounding of
/// the sum when accumulating.
pub fn assert_product(
    what: &str,
    s: &ProductShape,
    (got, y0): (&[f32], &[f32]),
    (want, deq, x): (&[f32], &[f32], &[f32]),
    tolerance: fn(usize, f32) -> f32,
) {
    let (rows, cols, total) = (s.rows, s.cols, s.total);
    for b in 0..s.n {
        let xr = &x[b * cols..(b + 1) * cols];
        for t in 0..total {
            let g = got[b * total + t];
            let base = y0[b * total + t];
            if t < s.offset || t >= s.offset + rows {
                assert_eq!(g, base, "{what}: y[{b}, {t}] outside the slice changed");
                continue;
            }
            let o = t - s.offset;
            let abs_dot: f32 = deq[o * cols..(o + 1) * cols].iter().zip(xr).map(|(a, v)| (a * v).abs()).sum();
            let mut w = want[b * rows + o];
            let mut tol = tolerance(cols, abs_dot);
            if s.accumulate {
                w += base;
                tol += w.abs() * f32::EPSILON;
            }
            assert!((g - w).abs() <= tol, "{what}: y[{b}, {t}] got {g} want {w} (tolerance {tol})");
        }
    }
}

/// A `[rows, cols]` test weight of type `wtype`: small values with every 97th ten times larger, like trained
/// matrices, seeded by the shape.
pub fn matrix_weight(
    wtype: mobilellm_kernels::quant::WeightType,
    rows: usize,
    cols: usize,
) -> mobilellm_kernels::quant::HostWeight {
    let data: Vec<f32> = random_vec(rows as u64 * 7919 + cols as u64, rows * cols)
        .iter()
        .enumerate()
        .map(|(i, v)| if i % 97 == 0 { v * 0.5 } else { v * 0.05 })
        .collect();
    mobilellm_kernels::quant::HostWeight::quantize(wtype, rows, cols, &data).unwrap()
}

/// A tiny model configuration (hidden 64, 2 layers, 4/2 heads of 16, vocab 96, 64 positions) for tests that
/// build whole models and must run in seconds on lavapipe.
pub fn tiny_config() -> mobilellm_kernels::model::config::ModelConfig {
    mobilellm_kernels::model::config::ModelConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        vocab_size: 96,
        max_position_embeddings: 64,
        ..mobilellm_kernels::model::config::ModelConfig::mobilellm_125m()
    }
}

/// A scratch directory under the system temp dir, named for this process and `name` (tests run in parallel
/// threads of one process: each takes its own name), emptied when made and removed when dropped.
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("mobilellm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
    pub fn join(&self, name: impl AsRef<std::path::Path>) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl AsRef<std::path::Path> for ScratchDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The directory of test data set `name` under `tests/data` (the tiny models: `tiny-plain`, `tiny-shared`).
pub fn data_dir(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// A checkpoint directory with a tokenizer, made under the temp dir as `<tag>-<process id>`: tiny-plain's
/// weights with the 512-token SentencePiece vocabulary of `tests/data/hf-tokenizers/sentencepiece`. The
/// caller removes it.
pub fn sentencepiece_checkpoint(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(data_dir("tiny-plain").join(name), dir.join(name)).unwrap();
    }
    std::fs::copy(data_dir("hf-tokenizers/sentencepiece/tokenizer.model"), dir.join("tokenizer.model")).unwrap();
    dir
}

/// The transformers goldens of a tiny model (`tests/data/<name>/golden.safetensors`): token ids and logits
/// (`[rows, vocab]`, vocab 512).
pub struct Golden {
    st: mobilellm_kernels::model::safetensors::Safetensors,
    pub vocab: usize,
}

impl Golden {
    pub fn open(name: &str) -> Golden {
        let path = data_dir(name).join("golden.safetensors");
        let st = mobilellm_kernels::model::safetensors::Safetensors::open_file(path).expect("golden file");
        Golden { st, vocab: 512 }
    }
    pub fn ids(&self, name: &str) -> Vec<u32> {
        let shape = self.st.dtype_and_shape(name).unwrap().1.to_vec();
        self.st.tensor_i32(name, &shape).unwrap().into_iter().map(|v| v as u32).collect()
    }
    pub fn f32(&self, name: &str) -> Vec<f32> {
        let shape = self.st.dtype_and_shape(name).unwrap().1.to_vec();
        self.st.tensor_f32(name, &shape).unwrap()
    }
}

/// Max |a - b| (equal lengths).
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
