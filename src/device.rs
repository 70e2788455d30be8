//! Adapter choice, bring-your-own device, the optional features in use, and the pipeline cache.
//!
//! The crate asks only for [`wgpu::Limits::default()`] (WebGPU's limits) and three optional features:
//! `SHADER_F16` (f16 KV cache), `SUBGROUP` (subgroup reductions) and `TIMESTAMP_QUERY` (benchmarks).
//! Every kernel has a path without each of them, so a user can switch them off to dodge a driver bug
//! (`MOBILELLM_FEATURES=none`, or [`GpuOptions::features`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::shader::{KernelSource, ShaderVariant};

/// The optional device features this crate knows how to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FeatureSet {
    /// `SHADER_F16`: f16 arithmetic and storage in shaders (used for the KV cache).
    pub f16: bool,
    /// `SUBGROUP`: subgroup reductions instead of workgroup-memory trees.
    pub subgroups: bool,
    /// `TIMESTAMP_QUERY`: GPU timestamps for benchmarks.
    pub timestamps: bool,
}

impl FeatureSet {
    /// All optional features.
    pub const ALL: FeatureSet = FeatureSet { f16: true, subgroups: true, timestamps: true };
    /// No optional features: the portable fallback paths.
    pub const NONE: FeatureSet = FeatureSet { f16: false, subgroups: false, timestamps: false };

    /// Parses `none`, `all`, or a comma-separated list of `f16`, `subgroups`, `timestamps`.
    pub fn parse(text: &str) -> Result<FeatureSet> {
        let text = text.trim().to_ascii_lowercase();
        match text.as_str() {
            "all" | "" => return Ok(FeatureSet::ALL),
            "none" => return Ok(FeatureSet::NONE),
            _ => {}
        }
        let mut set = FeatureSet::NONE;
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "f16" | "shader_f16" => set.f16 = true,
                "subgroups" | "subgroup" => set.subgroups = true,
                "timestamps" | "timestamp" | "timestamp_query" => set.timestamps = true,
                other => {
                    return Err(Error::invalid(
                        "feature name",
                        format!("`{other}`"),
                        "`all`, `none`, or a comma list of `f16`, `subgroups`, `timestamps`",
                    ))
                }
            }
        }
        Ok(set)
    }

    /// The intersection of two sets.
    pub fn intersect(self, other: FeatureSet) -> FeatureSet {
        FeatureSet {
            f16: self.f16 && other.f16,
            subgroups: self.subgroups && other.subgroups,
            timestamps: self.timestamps && other.timestamps,
        }
    }

    fn from_wgpu(features: wgpu::Features) -> FeatureSet {
        FeatureSet {
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        }
    }

    fn to_wgpu(self) -> wgpu::Features {
        let mut f = wgpu::Features::empty();
        if self.f16 {
            f |= wgpu::Features::SHADER_F16;
        }
        if self.subgroups {
            f |= wgpu::Features::SUBGROUP;
        }
        if self.timestamps {
            f |= wgpu::Features::TIMESTAMP_QUERY;
        }
        f
    }
}

impl std::fmt::Display for FeatureSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names = Vec::new();
        if self.f16 {
            names.push("f16");
        }
        if self.subgroups {
            names.push("subgroups");
        }
        if self.timestamps {
            names.push("timestamps");
        }
        if names.is_empty() {
            write!(f, "none")
        } else {
            write!(f, "{}", names.join(","))
        }
    }
}

/// How kernels read the rgba32uint textures that hold weights ([`WeightStorage::Texture`]) and KV caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TextureReads {
    /// A sampled texture (`texture_2d<u32>`, `textureLoad(t, c, 0)`).
    Sampled,
    /// A read-only storage texture (`texture_storage_2d<rgba32uint, read>`). On lavapipe (Mesa 22.3) its
    /// load skips the sampled path's per-fetch mip-level and sampler work: in interleaved runs the q4_0
    /// GEMVs ran 1.15-1.25x and the f32 ones 1.3-2.3x faster than through sampled fetches.
    Storage,
}

impl TextureReads {
    /// Parses `sampled` or `storage` (as `MOBILELLM_TEXTURE_READS` takes them).
    pub fn parse(text: &str) -> Result<TextureReads> {
        match text.trim().to_ascii_lowercase().as_str() {
            "sampled" => Ok(TextureReads::Sampled),
            "storage" => Ok(TextureReads::Storage),
            other => Err(Error::invalid("texture reads", other, "`sampled` or `storage`")),
        }
    }
}

/// How to pick and open a device.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Optional features the crate may use (intersected with what the adapter offers).
    pub features: FeatureSet,
    /// Backends to consider.
    pub backends: wgpu::Backends,
    /// Only adapters whose name contains this (case-insensitive) are considered.
    pub adapter_name: Option<String>,
    /// Where weight matrices live; `None` picks by device class ([`WeightStorage::for_class`]).
    pub weight_storage: Option<WeightStorage>,
    /// Which launch rules to follow; `None` takes the adapter's ([`DeviceClass::of`]). Forcing
    /// [`DeviceClass::Gpu`] on a CPU driver runs the GPU plans there (how the tests check them end to end).
    pub device_class: Option<DeviceClass>,
    /// How kernels read weight and KV-cache textures; `None` takes storage reads where the adapter offers
    /// read-only storage access to rgba32uint textures, else sampled reads.
    pub texture_reads: Option<TextureReads>,
}

/// Which kernels and plans the crate picks for a device. The two classes differ in how memory accesses
/// become code, so each gets its own launch rules (GEMV mapping, weight storage, attention kernel, QKV
/// fusion, prefill GEMM); both sets are correct on every device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceClass {
    /// A CPU driver (lavapipe, SwiftShader): invocations are SIMD lanes, workgroups run on host threads.
    Cpu,
    /// A GPU: threads of a workgroup share coalesced loads, workgroup memory is fast.
    Gpu,
}

impl DeviceClass {
    /// The class of an adapter type: [`DeviceClass::Cpu`] for `wgpu::DeviceType::Cpu`, else GPU.
    pub fn of(device_type: wgpu::DeviceType) -> DeviceClass {
        if device_type == wgpu::DeviceType::Cpu {
            DeviceClass::Cpu
        } else {
            DeviceClass::Gpu
        }
    }

    /// Parses `cpu` or `gpu` (as in `MOBILELLM_DEVICE_CLASS`).
    pub fn parse(text: &str) -> Result<DeviceClass> {
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceClass::Cpu),
            "gpu" => Ok(DeviceClass::Gpu),
            other => Err(Error::invalid("device class", other, "`cpu` or `gpu`")),
        }
    }
}

/// Where a [`crate::quant::GpuWeight`] keeps its words: both hold the same layout and every kernel reads
/// either (the `WTEX` shader flag), so this is a speed choice per device, never a correctness one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightStorage {
    /// A storage buffer, `var<storage, read> weights: array<u32>`.
    Buffer,
    /// An `rgba32uint` 2D texture read with `textureLoad` (16 bytes per fetch), 4096 texels per texture row.
    /// On lavapipe (Mesa 22.3) every storage-buffer load is a per-lane scalar loop with a bounds check
    /// (~4 ns per lane per word under load, uniform address or not), while a texel fetch is one SIMD gather
    /// (~2 ns per lane for 4 words): a GEMV-shaped pass over 9 MiB took 19 ms from a buffer and 2.6 ms
    /// from a texture. Mobile engines read weights through the texture path on Adreno/Mali too.
    Texture,
}

impl WeightStorage {
    /// The default for a device class: textures on CPU drivers (measured), buffers on GPUs (unmeasured
    /// here, so the conventional choice).
    pub fn for_class(class: DeviceClass) -> WeightStorage {
        match class {
            DeviceClass::Cpu => WeightStorage::Texture,
            DeviceClass::Gpu => WeightStorage::Buffer,
        }
    }

    /// Parses `buffer` or `texture` (as in `MOBILELLM_WEIGHTS`).
    pub fn parse(text: &str) -> Result<WeightStorage> {
        match text.trim().to_ascii_lowercase().as_str() {
            "buffer" => Ok(WeightStorage::Buffer),
            "texture" => Ok(WeightStorage::Texture),
            other => Err(Error::invalid("weight storage", other, "`buffer` or `texture`")),
        }
    }
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            features: FeatureSet::ALL,
            backends: wgpu::Backends::all(),
            adapter_name: None,
            weight_storage: None,
            device_class: None,
            texture_reads: None,
        }
    }
}

impl GpuOptions {
    /// Defaults, overridden by `MOBILELLM_FEATURES` (`all`, `none`, or e.g. `f16,timestamps`),
    /// `MOBILELLM_BACKEND` (`vulkan`, `gl`, `metal`, `dx12`), `MOBILELLM_ADAPTER` (a name substring) and
    /// `MOBILELLM_WEIGHTS` (`buffer` or `texture`, see [`WeightStorage`]) and `MOBILELLM_DEVICE_CLASS`
    /// (`cpu` or `gpu`, see [`DeviceClass`]) and `MOBILELLM_TEXTURE_READS` (`sampled` or `storage`, see
    /// [`TextureReads`]).
    pub fn from_env() -> Result<Self> {
        let mut options = GpuOptions::default();
        if let Ok(text) = std::env::var("MOBILELLM_FEATURES") {
            options.features = FeatureSet::parse(&text)?;
        }
        if let Ok(text) = std::env::var("MOBILELLM_BACKEND") {
            options.backends = parse_backend(&text)?;
        }
        if let Ok(text) = std::env::var("MOBILELLM_ADAPTER") {
            if !text.is_empty() {
                options.adapter_name = Some(text);
            }
        }
        if let Ok(text) = std::env::var("MOBILELLM_WEIGHTS") {
            if !text.is_empty() {
                options.weight_storage = Some(WeightStorage::parse(&text)?);
            }
        }
        if let Ok(text) = std::env::var("MOBILELLM_DEVICE_CLASS") {
            if !text.is_empty() {
                options.device_class = Some(DeviceClass::parse(&text)?);
            }
        }
        if let Ok(text) = std::env::var("MOBILELLM_TEXTURE_READS") {
            if !text.is_empty() {
                options.texture_reads = Some(TextureReads::parse(&text)?);
            }
        }
        Ok(options)
    }

    /// Limits the optional features the crate may use.
    pub fn features(mut self, features: FeatureSet) -> Self {
        self.features = features;
        self
    }

    /// Limits the backends considered.
    pub fn backends(mut self, backends: wgpu::Backends) -> Self {
        self.backends = backends;
        self
    }

    /// Fixes where weight matrices live instead of choosing by device class.
    pub fn weight_storage(mut self, storage: WeightStorage) -> Self {
        self.weight_storage = Some(storage);
        self
    }

    /// Follows the launch rules of `class` instead of the adapter's.
    pub fn device_class(mut self, class: DeviceClass) -> Self {
        self.device_class = Some(class);
        self
    }

    /// Fixes how kernels read weight and KV-cache textures.
    pub fn texture_reads(mut self, reads: TextureReads) -> Self {
        self.texture_reads = Some(reads);
        self
    }
}

/// Parses a backend name as used by `MOBILELLM_BACKEND`.
pub fn parse_backend(text: &str) -> Result<wgpu::Backends> {
    Ok(match text.trim().to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => wgpu::Backends::VULKAN,
        "gl" | "gles" | "opengl" => wgpu::Backends::GL,
        "metal" => wgpu::Backends::METAL,
        "dx12" | "d3d12" => wgpu::Backends::DX12,
        "all" | "" => wgpu::Backends::all(),
        other => {
            return Err(Error::invalid("backend", format!("`{other}`"), "`vulkan`, `gl`, `metal`, `dx12` or `all`"))
        }
    })
}

struct GpuInner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    features: FeatureSet,
    limits: wgpu::Limits,
    weight_storage: WeightStorage,
    texture_reads: TextureReads,
    class: DeviceClass,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    // Textures that dispatches write and then read within one sequence, one per size (`staging_texture`).
    staging: Mutex<HashMap<(u32, u32), wgpu::Texture>>,
    // Errors wgpu reports outside an error scope (late validation), surfaced by the next call.
    uncaptured: Arc<Mutex<Option<String>>>,
    // Set once by the device-lost callback; sticky: every later call fails with `Error::DeviceLost`.
    lost: Arc<Mutex<Option<String>>>,
    // Successful `create_buffer` calls (every buffer the crate makes goes through it).
    buffers_created: AtomicU64,
    // Fault injection: 0 = off, k = the k-th upcoming `create_buffer` call fails as if out of memory.
    simulated_oom: AtomicUsize,
}

/// A wgpu device and queue with the crate's feature choices and pipeline cache. Cheap to clone.
///
/// On the GL backend use one `Gpu` from one thread at a time: wgpu's GL device shares one context behind a
/// lock that panics after a 1 s wait ("Could not lock adapter context"), which a long submission on a slow
/// driver (llvmpipe) exceeds. Vulkan, Metal and DX12 devices may be shared between threads freely.
///
/// ```no_run
/// # fn main() -> mobilellm_kernels::Result<()> {
/// let gpu = mobilellm_kernels::Gpu::new()?;
/// println!("{} on {:?}, features {}", gpu.adapter_name(), gpu.backend(), gpu.features());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.inner.info.name)
            .field("backend", &self.inner.info.backend)
            .field("features", &self.inner.features)
            .finish()
    }
}

fn device_type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u32 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    }
}

impl Gpu {
    /// Opens the best adapter (discrete > integrated > virtual > CPU; Vulkan/Metal/DX12 before GL),
    /// honouring the `MOBILELLM_*` environment variables (see [`GpuOptions::from_env`]).
    pub fn new() -> Result<Gpu> {
        Gpu::with_options(&GpuOptions::from_env()?)
    }

    /// Opens the best adapter under explicit options (the environment is not read).
    pub fn with_options(options: &GpuOptions) -> Result<Gpu> {
        pollster::block_on(Self::open(options))
    }

    async fn open(options: &GpuOptions) -> Result<Gpu> {
        // Native backends first; GL (which probes windowing systems noisily) only if they find nothing.
        let mut adapters = Self::adapters(options.backends & wgpu::Backends::PRIMARY).await;
        if adapters.is_empty() {
            adapters = Self::adapters(options.backends).await;
        }
        if let Some(name) = &options.adapter_name {
            let needle = name.to_ascii_lowercase();
            adapters.retain(|a| a.get_info().name.to_ascii_lowercase().contains(&needle));
        }
        // Compute shaders are all we need; GL adapters without them are useless.
        adapters.retain(|a| a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS));
        adapters.sort_by_key(|a| {
            let info = a.get_info();
            (device_type_rank(info.device_type), backend_rank(info.backend))
        });
        let Some(adapter) = adapters.into_iter().next() else {
            return Err(Error::NoAdapter {
                detail: format!(
                    "backends {:?}{}",
                    options.backends,
                    options.adapter_name.as_ref().map(|n| format!(", name containing `{n}`")).unwrap_or_default()
                ),
            });
        };
        let offered = FeatureSet::from_wgpu(adapter.features());
        let features = offered.intersect(options.features);
        let limits = wgpu::Limits::default();
        let adapter_limits = adapter.limits();
        if adapter_limits.max_storage_buffers_per_shader_stage < limits.max_storage_buffers_per_shader_stage
            || adapter_limits.max_compute_workgroup_storage_size < limits.max_compute_workgroup_storage_size
        {
            return Err(Error::Unsupported {
                what: format!(
                    "WebGPU default limits (adapter `{}` offers {} storage buffers per stage, {} bytes of workgroup memory)",
                    adapter.get_info().name,
                    adapter_limits.max_storage_buffers_per_shader_stage,
                    adapter_limits.max_compute_workgroup_storage_size
                ),
                needed: "8 storage buffers per stage and 16384 bytes of workgroup memory".into(),
            });
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("mobilellm"),
                required_features: features.to_wgpu(),
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Device(format!("request_device on `{}` failed: {e}", adapter.get_info().name)))?;
        let class = options.device_class.unwrap_or(DeviceClass::of(adapter.get_info().device_type));
        let storage = options.weight_storage.unwrap_or(WeightStorage::for_class(class));
        let format = adapter.get_texture_format_features(wgpu::TextureFormat::Rgba32Uint);
        let storage_reads = format.allowed_usages.contains(wgpu::TextureUsages::STORAGE_BINDING)
            && format.flags.contains(wgpu::TextureFormatFeatureFlags::STORAGE_READ_ONLY);
        let reads = match options.texture_reads {
            Some(TextureReads::Storage) if !storage_reads => {
                return Err(Error::Unsupported {
                    what: format!("read-only storage textures of rgba32uint on `{}`", adapter.get_info().name),
                    needed: "TextureReads::Sampled".into(),
                })
            }
            Some(reads) => reads,
            None if storage_reads => TextureReads::Storage,
            None => TextureReads::Sampled,
        };
        Ok(Gpu::assemble(device, queue, adapter.get_info(), features, limits, (storage, reads), class))
    }

    async fn adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
        if backends.is_empty() {
            return Vec::new();
        }
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        wgpu::Instance::new(desc).enumerate_adapters(backends).await
    }

    /// Wraps an engine's existing device and queue. The crate uses only the optional features that
    /// `device` was created with (and that `allowed` permits). `info` is the adapter's description,
    /// used for the subgroup size range and reports; pass `None` if unknown.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: Option<wgpu::AdapterInfo>,
        allowed: FeatureSet,
    ) -> Result<Gpu> {
        let limits = device.limits();
        let default = wgpu::Limits::default();
        if limits.max_storage_buffers_per_shader_stage < default.max_storage_buffers_per_shader_stage {
            return Err(Error::Unsupported {
                what: format!("{} storage buffers per shader stage", limits.max_storage_buffers_per_shader_stage),
                needed: format!("{} (WebGPU default)", default.max_storage_buffers_per_shader_stage),
            });
        }
        let features = FeatureSet::from_wgpu(device.features()).intersect(allowed);
        let info = info.unwrap_or(wgpu::AdapterInfo {
            name: "external device".into(),
            vendor: 0,
            device: 0,
            device_type: wgpu::DeviceType::Other,
            device_pci_bus_id: String::new(),
            driver: String::new(),
            driver_info: String::new(),
            backend: wgpu::Backend::Noop,
            subgroup_min_size: 4,
            subgroup_max_size: 128,
            transient_saves_memory: None,
            limit_bucket: None,
        });
        let class = DeviceClass::of(info.device_type);
        // Without the adapter its texture format features are unknown: sampled reads work everywhere.
        let storage = (WeightStorage::for_class(class), TextureReads::Sampled);
        Ok(Gpu::assemble(device, queue, info, features, limits, storage, class))
    }

    fn assemble(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        features: FeatureSet,
        limits: wgpu::Limits,
        (weight_storage, texture_reads): (WeightStorage, TextureReads),
        class: DeviceClass,
    ) -> Gpu {
        let uncaptured = Arc::new(Mutex::new(None));
        let sink = uncaptured.clone();
        // wgpu's default handler panics; a library must turn these into errors instead.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = Arc::clone(&lost);
        // wgpu drops errors caused by a lost device and reports the loss only through this callback, which
        // it calls from a poll (a destroyed device is lost once its queue is empty).
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = lost_sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| {
                if message.is_empty() {
                    format!("{reason:?}")
                } else {
                    format!("{reason:?}: {message}")
                }
            });
        });
        Gpu {
            inner: Arc::new(GpuInner {
                device,
                queue,
                info,
                features,
                limits,
                weight_storage,
                texture_reads,
                class,
                pipelines: Mutex::new(HashMap::new()),
                staging: Mutex::new(HashMap::new()),
                uncaptured,
                lost,
                buffers_created: AtomicU64::new(0),
                simulated_oom: AtomicUsize::new(0),
            }),
        }
    }

    /// The launch rules this device follows ([`GpuOptions::device_class`]).
    pub fn device_class(&self) -> DeviceClass {
        self.inner.class
    }

    /// Whether this device follows the CPU-driver launch rules.
    pub fn is_cpu_class(&self) -> bool {
        self.inner.class == DeviceClass::Cpu
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }
    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }
    /// The adapter's description.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }
    /// The adapter's name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub fn adapter_name(&self) -> &str {
        &self.inner.info.name
    }
    /// The backend in use.
    pub fn backend(&self) -> wgpu::Backend {
        self.inner.info.backend
    }
    /// The optional features in use.
    pub fn features(&self) -> FeatureSet {
        self.inner.features
    }
    /// Where [`crate::quant::GpuWeight::upload`] puts weight matrices on this device.
    pub fn weight_storage(&self) -> WeightStorage {
        self.inner.weight_storage
    }
    /// How kernels read weight and KV-cache textures ([`GpuOptions::texture_reads`]).
    pub fn texture_reads(&self) -> TextureReads {
        self.inner.texture_reads
    }
    /// The limits the device was created with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }
    /// The subgroup size range the adapter reports (kernels are correct for any size 4..=128).
    pub fn subgroup_size_range(&self) -> (u32, u32) {
        (self.inner.info.subgroup_min_size, self.inner.info.subgroup_max_size)
    }
    /// The largest buffer that may be bound as one storage binding.
    pub fn max_binding_bytes(&self) -> u64 {
        self.inner.limits.max_storage_buffer_binding_size.min(self.inner.limits.max_buffer_size)
    }
    /// A one-line description: adapter, backend, features and subgroup sizes.
    pub fn describe(&self) -> String {
        let (lo, hi) = self.subgroup_size_range();
        format!(
            "{} ({:?}, {:?}), features: {}, subgroup size {}..={}, weights in {}",
            self.adapter_name(),
            self.backend(),
            self.inner.info.device_type,
            self.features(),
            lo,
            hi,
            match (self.weight_storage(), self.texture_reads()) {
                (WeightStorage::Buffer, _) => "buffers",
                (WeightStorage::Texture, TextureReads::Storage) => "textures (storage reads)",
                (WeightStorage::Texture, TextureReads::Sampled) => "textures (sampled reads)",
            }
        ) + &if self.inner.class == DeviceClass::of(self.inner.info.device_type) {
            String::new()
        } else {
            format!(", {:?} launch rules (forced)", self.inner.class)
        }
    }

    /// The pipeline for `entry` of `kernel` in `variant`, compiled once per device and cached.
    pub fn pipeline(
        &self,
        kernel: &KernelSource,
        entry: &str,
        variant: &ShaderVariant,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = format!("{}:{}:{}", kernel.name, entry, variant.key());
        if let Some(p) = self.lock_pipelines().get(&key) {
            return Ok(p.clone());
        }
        self.check_lost()?;
        let source = variant.preprocess(kernel)?;
        let device = &self.inner.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            self.check_lost()?;
            return Err(Error::Shader {
                kernel: kernel.name.to_string(),
                variant: format!("{entry} {}", variant.key()),
                message: err.to_string(),
            });
        }
        let pipeline = Arc::new(pipeline);
        self.lock_pipelines().insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Number of pipelines compiled so far on this device.
    pub fn pipeline_count(&self) -> usize {
        self.lock_pipelines().len()
    }

    fn lock_pipelines(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<wgpu::ComputePipeline>>> {
        // A poisoned cache only means another thread panicked mid-insert; the map is still valid.
        self.inner.pipelines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device's shared `rgba32uint` staging texture of `width` x `height` texels, made on first use: a
    /// dispatch sequence writes it, then reads it (`Dispatch` records its launches in order), so every
    /// sequence that stages operands of one size can share one texture, whatever order they run in.
    pub(crate) fn staging_texture(&self, width: u32, height: u32) -> Result<wgpu::Texture> {
        let lock = || self.inner.staging.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = lock().get(&(width, height)) {
            return Ok(t.clone());
        }
        // COPY_DST lets wgpu zero the new texture by a buffer copy; without it wgpu clears it another way
        // inside the first pass that writes it, after which lavapipe's timestamp queries read ~0 (seen as
        // a 64 MiB copy "taking" 14 us in the decode benchmark).
        let texture = self.create_texture_with(
            "staging texels",
            width,
            height,
            self.texture_read_usage() | wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
        )?;
        Ok(lock().entry((width, height)).or_insert(texture).clone())
    }

    /// Bytes of the shared staging textures made so far (see [`crate::model::MemoryReport::scratch`]).
    pub fn staging_bytes(&self) -> u64 {
        let staging = self.inner.staging.lock().unwrap_or_else(|e| e.into_inner());
        staging.keys().map(|&(w, h)| u64::from(w) * u64::from(h) * 16).sum()
    }

    /// Creates an `rgba32uint` 2D texture for a weight matrix ([`WeightStorage::Texture`]), turning an
    /// allocation failure into [`Error::OutOfMemory`].
    pub fn create_texture(&self, label: &str, width: u32, height: u32) -> Result<wgpu::Texture> {
        self.create_texture_with(label, width, height, self.texture_read_usage() | wgpu::TextureUsages::COPY_DST)
    }

    /// The usage kernels read this device's textures through ([`TextureReads`]).
    fn texture_read_usage(&self) -> wgpu::TextureUsages {
        match self.texture_reads() {
            TextureReads::Sampled => wgpu::TextureUsages::TEXTURE_BINDING,
            TextureReads::Storage => wgpu::TextureUsages::STORAGE_BINDING,
        }
    }

    /// [`Gpu::create_texture`] with explicit usages (the KV cache's textures are also written by shaders).
    pub(crate) fn create_texture_with(
        &self,
        label: &str,
        width: u32,
        height: u32,
        usage: wgpu::TextureUsages,
    ) -> Result<wgpu::Texture> {
        self.check_lost()?;
        let device = &self.inner.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let texture = device.create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Uint,
            usage,
            view_formats: &[],
        });
        if let Some(err) = pollster::block_on(validation.pop()) {
            return Err(Error::Gpu {
                context: format!("creating texture `{label}` of {width}x{height} texels"),
                message: err.to_string(),
            });
        }
        if pollster::block_on(oom.pop()).is_some() {
            return Err(Error::OutOfMemory(format!("allocating texture `{label}` of {width}x{height} texels")));
        }
        Ok(texture)
    }

    /// Creates a buffer, turning an allocation failure into [`Error::OutOfMemory`] (which leaves the device
    /// and everything on it usable: wgpu 30 treats a failed buffer allocation as non-fatal), a size beyond
    /// the device's `max_buffer_size` into [`Error::Capacity`], and a lost device into [`Error::DeviceLost`].
    /// Both messages name `label` and the size.
    pub fn create_buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        self.check_lost()?;
        if size > self.inner.limits.max_buffer_size {
            return Err(Error::Capacity {
                what: format!("buffer `{label}` (bytes)"),
                requested: size as usize,
                capacity: self.inner.limits.max_buffer_size as usize,
            });
        }
        let oom = || Error::OutOfMemory(format!("allocating buffer `{label}` of {size} bytes"));
        let countdown = self.inner.simulated_oom.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1));
        if countdown == Ok(1) {
            return Err(oom());
        }
        let device = &self.inner.device;
        let oom_scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        });
        if let Some(err) = pollster::block_on(validation.pop()) {
            return Err(Error::Gpu {
                context: format!("creating buffer `{label}` of {size} bytes"),
                message: err.to_string(),
            });
        }
        if pollster::block_on(oom_scope.pop()).is_some() {
            return Err(oom());
        }
        // On a lost device wgpu hands out an invalid buffer and reports nothing in the scopes.
        self.check_lost()?;
        self.inner.buffers_created.fetch_add(1, Ordering::Relaxed);
        Ok(buffer)
    }

    /// How many buffers [`Gpu::create_buffer`] has made on this device so far. Every buffer the crate
    /// allocates (tensors, weights, uniforms, staging) goes through it, so a caller can check that a loop
    /// allocates nothing: read it before and after.
    pub fn buffers_created(&self) -> u64 {
        self.inner.buffers_created.load(Ordering::Relaxed)
    }

    /// Fault injection for testing error paths: after `Some(after)` more successful calls, one call to
    /// [`Gpu::create_buffer`] fails with [`Error::OutOfMemory`], as a driver allocation failure would, without
    /// touching the device (`Some(0)`: the very next call). `None` cancels a pending failure.
    pub fn simulate_oom(&self, after: Option<usize>) {
        self.inner.simulated_oom.store(after.map_or(0, |a| a.saturating_add(1)), Ordering::SeqCst);
    }

    /// Whether the device has been lost (destroyed, driver reset, removed). A lost device stays lost:
    /// every later call that touches it returns [`Error::DeviceLost`]; recreate the `Gpu` and what was on it.
    /// Loss is noticed when wgpu polls the device, so this may turn true only after the next wait.
    pub fn is_lost(&self) -> bool {
        self.inner.lost.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// [`Error::DeviceLost`] if the device is known to be lost.
    pub(crate) fn check_lost(&self) -> Result<()> {
        match self.inner.lost.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(message) => Err(Error::DeviceLost(message.clone())),
            None => Ok(()),
        }
    }

    /// Submits command buffers and waits for the queue to finish them.
    pub fn submit_and_wait(&self, commands: impl IntoIterator<Item = wgpu::CommandBuffer>) -> Result<()> {
        let index = self.submit(commands)?;
        self.wait(Some(index))
    }

    /// Submits command buffers without waiting (pair with [`Gpu::wait`]); fails on a lost device.
    pub fn submit(&self, commands: impl IntoIterator<Item = wgpu::CommandBuffer>) -> Result<wgpu::SubmissionIndex> {
        self.check_lost()?;
        Ok(self.inner.queue.submit(commands))
    }

    /// Waits for a submission (or all work) to finish; reports any error wgpu raised meanwhile.
    pub fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let polled = self.inner.device.poll(wgpu::PollType::Wait { submission_index: index, timeout: None });
        if polled.is_err() {
            // On a lost device the submission was dropped, so waiting for it fails before wgpu runs the
            // maintenance that reports the loss; one plain poll runs it.
            let _ = self.inner.device.poll(wgpu::PollType::Poll);
        }
        // A loss outranks whatever the poll returned.
        self.check_lost()?;
        polled.map_err(|e| Error::Gpu { context: "waiting for the GPU".into(), message: e.to_string() })?;
        self.take_error()
    }

    /// Returns (and clears) an error wgpu reported outside any call of ours, or [`Error::DeviceLost`]
    /// (not cleared) if the device is lost.
    pub fn take_error(&self) -> Result<()> {
        self.check_lost()?;
        let mut slot = self.inner.uncaptured.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(message) => Err(Error::Gpu { context: "a previous GPU operation".into(), message }),
            None => Ok(()),
        }
    }
}
