//! Safetensors checkpoints: one `model.safetensors` or shards listed by `model.safetensors.index.json`,
//! memory-mapped (no full-file copy in host memory), plus a small writer for tests and tools.
//!
//! Tensors are read either raw ([`Safetensors::raw`]: dtype, shape and the mapped bytes) or widened to f32
//! ([`Safetensors::tensor_f32`], from f32, f16 or bf16), with the shape checked against what the caller
//! expects. Every error names the tensor, the file and the numbers involved.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use ::safetensors::tensor::{Metadata, TensorInfo};
use ::safetensors::{SafeTensorError, SafeTensors};
use memmap2::Mmap;
use serde_json::Value;

pub use ::safetensors::Dtype;

use crate::error::{Error, Result};

/// Where a file's bytes live: a read-only memory map, or bytes owned in memory ([`Safetensors::from_bytes`]).
enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// One memory-mapped `.safetensors` file with its parsed header.
struct MappedFile {
    path: PathBuf,
    mmap: Backing,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|source| Error::Io { path: shown.clone(), source })?;
        let len = file.metadata().map_err(|source| Error::Io { path: shown.clone(), source })?.len();
        if len < 8 {
            return Err(Error::format(&shown, format!("file is {len} bytes, shorter than the 8-byte header length")));
        }
        // SAFETY: the map is read-only; like every memory-mapped loader we rely on the checkpoint not being
        // truncated or rewritten by another process while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io { path: shown.clone(), source })?;
        Self::parse(Backing::Mmap(mmap), path.to_path_buf())
    }

    fn parse(bytes: Backing, path: PathBuf) -> Result<Self> {
        let shown = path.display().to_string();
        if bytes.len() < 8 {
            return Err(Error::format(
                &shown,
                format!("file is {} bytes, shorter than the 8-byte header length", bytes.len()),
            ));
        }
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(&shown, describe_error(&e, &bytes)))?;
        let tensors = tensor_infos(&metadata);
        Ok(MappedFile { path, mmap: bytes, data_start: 8 + header_len, tensors })
    }

    fn bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let (s, e) = info.data_offsets;
        // read_metadata validated the offsets against the file length; checked again so a bug can't panic.
        self.mmap.get(self.data_start + s..self.data_start + e).ok_or_else(|| {
            Error::format(self.path.display().to_string(), format!("tensor data {s}..{e} lies outside the file"))
        })
    }
}

fn tensor_infos(metadata: &Metadata) -> HashMap<String, TensorInfo> {
    metadata.tensors().into_iter().map(|(name, info)| (name, info.clone())).collect()
}

/// Turns the crate's error into a message with the numbers a user needs (file length vs header promise).
fn describe_error(e: &SafeTensorError, bytes: &[u8]) -> String {
    match e {
        SafeTensorError::MetadataIncompleteBuffer => {
            let header_len = bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
            let data_end = bytes
                .get(8..8usize.saturating_add(header_len as usize))
                .and_then(|h| serde_json::from_slice::<Value>(h).ok())
                .and_then(|v| {
                    v.as_object()
                        .map(|m| m.values().filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64()).max().unwrap_or(0))
                })
                .unwrap_or(0);
            let expected = 8u64.saturating_add(header_len).saturating_add(data_end);
            format!(
                "file is {} bytes but its header describes {expected} bytes (8 + {header_len} header + {data_end} data): \
                 truncated or padded",
                bytes.len()
            )
        }
        SafeTensorError::InvalidHeaderLength => {
            let header_len = bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0);
            format!("header length {header_len} runs past the end of the {}-byte file (truncated?)", bytes.len())
        }
        SafeTensorError::HeaderTooLarge => "header length is larger than 100 MB (not a safetensors file?)".into(),
        SafeTensorError::InvalidHeader(u) => format!("header is not UTF-8: {u}"),
        SafeTensorError::InvalidHeaderDeserialization(j) => format!("header is not valid safetensors JSON: {j}"),
        SafeTensorError::InvalidOffset(name) => {
            let detail = offsets_detail(bytes, name).unwrap_or_default();
            format!(
                "tensor `{name}` has data offsets{detail} that leave a gap, overlap another tensor or run backwards \
                 (tensors must tile the data section in order)"
            )
        }
        SafeTensorError::TensorInvalidInfo => match size_mismatch(bytes) {
            Some((name, dtype, shape, s, e, want)) => format!(
                "tensor `{name}` ({dtype} {shape:?}) has data offsets [{s}, {e}] = {} bytes, expected {want} bytes",
                e.saturating_sub(s)
            ),
            None => "a tensor's data offsets do not match its shape and dtype".into(),
        },
        SafeTensorError::ValidationOverflow => "a tensor's shape has more elements than fit in memory".into(),
        SafeTensorError::MisalignedSlice => "a tensor of a sub-byte dtype does not end on a byte boundary".into(),
        other => format!("{other:?}"),
    }
}

/// The header JSON as an object, when the header length and text are sound (only for error messages).
fn header_object(bytes: &[u8]) -> Option<serde_json::Map<String, Value>> {
    let header_len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(header_len).ok()?)?;
    match serde_json::from_slice::<Value>(bytes.get(8..end)?).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn data_offsets(entry: &Value) -> Option<(u64, u64)> {
    let o = entry.get("data_offsets")?;
    Some((o.get(0)?.as_u64()?, o.get(1)?.as_u64()?))
}

/// ` [s, e] (the previous tensor ends at p)` for the named tensor.
fn offsets_detail(bytes: &[u8], name: &str) -> Option<String> {
    let header = header_object(bytes)?;
    let (s, e) = data_offsets(header.get(name)?)?;
    let mut all: Vec<(u64, u64)> =
        header.iter().filter(|(k, _)| *k != "__metadata__").filter_map(|(_, v)| data_offsets(v)).collect();
    all.sort_unstable();
    let prev_end = all.iter().take_while(|&&o| o < (s, e)).last().map_or(0, |&(_, pe)| pe);
    Some(format!(" [{s}, {e}] (the tensor before it ends at {prev_end})"))
}

/// Bytes per element of a safetensors dtype name; `None` for sub-byte or unknown types.
fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        _ => return None,
    })
}

/// The first tensor whose data size differs from its shape times its dtype size:
/// (name, dtype, shape, start, end, expected bytes).
fn size_mismatch(bytes: &[u8]) -> Option<(String, String, Vec<u64>, u64, u64, u64)> {
    let header = header_object(bytes)?;
    header.iter().filter(|(k, _)| *k != "__metadata__").find_map(|(name, v)| {
        let dtype = v.get("dtype")?.as_str()?;
        let shape: Vec<u64> = v.get("shape")?.as_array()?.iter().map(Value::as_u64).collect::<Option<_>>()?;
        let (s, e) = data_offsets(v)?;
        let want = shape.iter().try_fold(dtype_bytes(dtype)?, |acc, &d| acc.checked_mul(d))?;
        (e.checked_sub(s) != Some(want)).then(|| (name.clone(), dtype.to_string(), shape, s, e, want))
    })
}

/// A tensor as stored: dtype, shape and its bytes inside the memory map (little-endian, row-major).
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// Element type in the file.
    pub dtype: Dtype,
    /// Shape in the file.
    pub shape: &'a [usize],
    /// The tensor's bytes (not necessarily 4-byte aligned).
    pub bytes: &'a [u8],
    /// The file it lives in.
    pub file: &'a Path,
}

/// A safetensors checkpoint: a single file, or the shards of a `model.safetensors.index.json`.
pub struct Safetensors {
    files: Vec<MappedFile>,
    /// Tensor name -> index in `files`.
    location: HashMap<String, usize>,
    /// What was opened, for error messages.
    source: String,
}

impl std::fmt::Debug for Safetensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Safetensors").field("source", &self.source).field("tensors", &self.location.len()).finish()
    }
}

impl Safetensors {
    /// Opens a checkpoint. `path` is a `.safetensors` file, a `model.safetensors.index.json`, or a
    /// directory holding `model.safetensors.index.json` (sharded) or `model.safetensors`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            if index.is_file() {
                return Self::open_index(&index);
            }
            let single = path.join("model.safetensors");
            if single.is_file() {
                return Self::open_file(&single);
            }
            return Err(Error::format(
                path.display().to_string(),
                "directory has neither model.safetensors nor model.safetensors.index.json",
            ));
        }
        if path.extension().is_some_and(|e| e == "json") {
            return Self::open_index(path);
        }
        Self::open_file(path)
    }

    /// Opens one `.safetensors` file.
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self> {
        let file = MappedFile::open(path.as_ref())?;
        let location = file.tensors.keys().map(|k| (k.clone(), 0)).collect();
        Ok(Safetensors { source: file.path.display().to_string(), files: vec![file], location })
    }

    /// Parses a `.safetensors` file held in memory (tests, fuzzing, embedded models); `name` stands for
    /// the path in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<String>) -> Result<Self> {
        let file = MappedFile::parse(Backing::Owned(bytes), PathBuf::from(name.into()))?;
        let location = file.tensors.keys().map(|k| (k.clone(), 0)).collect();
        Ok(Safetensors { source: file.path.display().to_string(), files: vec![file], location })
    }

    /// Opens the shards named by a `model.safetensors.index.json` (`weight_map`: tensor name -> shard file,
    /// relative to the index's directory). Each shard is mapped once.
    pub fn open_index(index_path: impl AsRef<Path>) -> Result<Self> {
        let index_path = index_path.as_ref();
        let shown = index_path.display().to_string();
        let text = std::fs::read_to_string(index_path).map_err(|source| Error::Io { path: shown.clone(), source })?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&shown, format!("index is not valid JSON: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::format(&shown, "index has no `weight_map` object"))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shard_of_file: BTreeMap<String, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut location = HashMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::format(&shown, format!("weight_map entry `{name}` is {file}, expected a file name"))
            })?;
            let idx = match shard_of_file.get(file) {
                Some(&i) => i,
                None => {
                    files.push(MappedFile::open(&dir.join(file))?);
                    shard_of_file.insert(file.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            if !files[idx].tensors.contains_key(name) {
                return Err(Error::MissingTensor {
                    name: name.clone(),
                    source_name: format!("{} (listed for it by {shown})", files[idx].path.display()),
                });
            }
            location.insert(name.clone(), idx);
        }
        Ok(Safetensors { files, location, source: shown })
    }

    /// What was opened (file or index path).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.location.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    fn info(&self, name: &str) -> Result<(&MappedFile, &TensorInfo)> {
        let missing = || Error::MissingTensor { name: name.to_string(), source_name: self.source.clone() };
        let &idx = self.location.get(name).ok_or_else(missing)?;
        let file = &self.files[idx];
        let info = file.tensors.get(name).ok_or_else(missing)?;
        Ok((file, info))
    }

    /// The tensor as stored (any dtype), its bytes borrowed from the memory map.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let (file, info) = self.info(name)?;
        Ok(RawTensor { dtype: info.dtype, shape: &info.shape, bytes: file.bytes(info)?, file: &file.path })
    }

    /// Dtype and shape of a tensor without touching its data.
    pub fn dtype_and_shape(&self, name: &str) -> Result<(Dtype, &[usize])> {
        let (_, info) = self.info(name)?;
        Ok((info.dtype, &info.shape))
    }

    fn checked(&self, name: &str, expected_shape: &[usize]) -> Result<RawTensor<'_>> {
        let raw = self.raw(name)?;
        if raw.shape != expected_shape {
            return Err(Error::shape(
                format!("tensor `{name}` in {}", raw.file.display()),
                raw.shape,
                format!("{expected_shape:?}"),
            ));
        }
        Ok(raw)
    }

    /// The tensor widened to f32 (from F32, F16 or BF16), after checking its shape is `expected_shape`.
    pub fn tensor_f32(&self, name: &str, expected_shape: &[usize]) -> Result<Vec<f32>> {
        let raw = self.checked(name, expected_shape)?;
        let b = raw.bytes;
        Ok(match raw.dtype {
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => {
                return Err(Error::DType {
                    what: format!("tensor `{name}` in {}", raw.file.display()),
                    got: other.to_string(),
                    expected: "F32, F16 or BF16".into(),
                })
            }
        })
    }

    /// An I32 tensor (token ids in golden files), after checking its shape is `expected_shape`.
    pub fn tensor_i32(&self, name: &str, expected_shape: &[usize]) -> Result<Vec<i32>> {
        let raw = self.checked(name, expected_shape)?;
        if raw.dtype != Dtype::I32 {
            return Err(Error::DType {
                what: format!("tensor `{name}` in {}", raw.file.display()),
                got: raw.dtype.to_string(),
                expected: "I32".into(),
            });
        }
        Ok(raw.bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// Data of one tensor to write with [`write_safetensors`].
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// 32-bit signed integers (token ids).
    I32(&'a [i32]),
}

impl TensorData<'_> {
    fn len(&self) -> usize {
        match self {
            TensorData::F32(d) => d.len(),
            TensorData::I32(d) => d.len(),
        }
    }
}

/// Writes a `.safetensors` file of named tensors (header metadata `{"format": "pt"}`), readable by the
/// standard readers. Each entry is `(name, shape, data)`; the shape's product must equal the data length.
pub fn write_safetensors(path: impl AsRef<Path>, tensors: &[(&str, &[usize], TensorData<'_>)]) -> Result<()> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        let count: usize = shape.iter().product();
        if count != data.len() {
            return Err(Error::shape(
                format!("tensor `{name}` to write to {shown}"),
                shape,
                format!("a shape of {} elements (the data length)", data.len()),
            ));
        }
        let (dtype, bytes) = match data {
            TensorData::F32(d) => (Dtype::F32, d.iter().flat_map(|v| v.to_le_bytes()).collect()),
            TensorData::I32(d) => (Dtype::I32, d.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        owned.push((name.to_string(), dtype, shape.to_vec(), bytes));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, dtype, shape, bytes) in &owned {
        let view = ::safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| Error::format(&shown, format!("tensor `{name}`: {e:?}")))?;
        views.push((name.as_str(), view));
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    ::safetensors::serialize_to_file(views, metadata, path).map_err(|e| match e {
        SafeTensorError::IoError(source) => Error::Io { path: shown.clone(), source },
        other => Error::format(&shown, format!("{other:?}")),
    })
}
