//! GGUF reader (v2/v3, little-endian) over a memory map, and a tiny writer for tests and tools.
//!
//! The reader parses the header, every metadata key/value (all value types, arrays included, nested too)
//! and the tensor table, checks every tensor's data range (inside the file, aligned, no overlaps) and then
//! hands out tensor data as slices of the map: no copy of the weights is made in host memory.
//!
//! Tensor types F32, F16, BF16, Q8_0, Q4_0 and Q4_1 are served ([`TensorType`]); a file may hold other
//! ggml types (Q4_K, ...): it still opens, and asking for such a tensor is a [`GgufError::UnsupportedTensorType`]
//! naming the type ([`GgufFile::tensor_bytes`] hands out any tensor's bytes: K-quants are converted on load). GGUF lists dimensions innermost first: a linear weight `[out_features, in_features]`
//! (row-major) has `dims = [in_features, out_features]`; [`GgufTensor::shape`] gives the row-major shape.
//!
//! RoPE layout: `llama` GGUF files made by llama.cpp's converter store the rows of `attn_q`/`attn_k`
//! PERMUTED so that RoPE rotates adjacent pairs `(x[2i], x[2i+1])` of each head (the INTERLEAVED layout),
//! not the `rotate_half` pairs `(x[i], x[i + head_dim/2])` of Hugging Face checkpoints. A loader that
//! uses the raw Q/K tensors must run the interleaved RoPE ([`GgufLlamaConfig::rope_interleaved`]).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays accepted (real files use one level): the parser recurses per level,
/// so a file of nested array headers must not be able to exhaust the stack.
pub const MAX_ARRAY_NESTING: usize = 8;

/// What is wrong with a GGUF file. Wrapped in [`Error::Gguf`] together with the file's path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    /// The file ends inside a section.
    #[error("truncated in {section}: needs {needed} bytes at offset {offset}, the file has {file_len}")]
    Truncated {
        /// Which section (`header`, `metadata key #3`, `tensor info #0 (`token_embd.weight`)`, ...).
        section: String,
        /// Where the read started.
        offset: u64,
        /// How many bytes the read needed.
        needed: u64,
        /// The file's length.
        file_len: u64,
    },
    /// The file does not start with `GGUF`.
    #[error("bad magic {got:02x?}, expected \"GGUF\" (47 47 55 46)")]
    BadMagic {
        /// The first four bytes.
        got: [u8; 4],
    },
    /// A version this reader does not know (v1 used 32-bit counts; big-endian files read as huge numbers).
    #[error("unsupported GGUF version {got}, expected 2 or 3 (little-endian)")]
    UnsupportedVersion {
        /// The version field.
        got: u32,
    },
    /// A metadata value type id outside 0..=12.
    #[error("metadata `{key}` has unknown value type id {got}, expected 0..=12")]
    UnknownValueType {
        /// The key (or `key[i]` inside an array).
        key: String,
        /// The type id.
        got: u32,
    },
    /// A string that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// Which string.
        what: String,
    },
    /// The same metadata key twice.
    #[error("duplicate metadata key `{key}`")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// The same tensor name twice.
    #[error("duplicate tensor `{name}`")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// `general.alignment` that is zero or not a power of two.
    #[error("general.alignment = {got}, expected a power of two")]
    BadAlignment {
        /// The value.
        got: u64,
    },
    /// A size that overflows, or rows that are not a whole number of blocks.
    #[error("tensor `{name}` of type {ty} has dims {dims:?}: {expected}")]
    BadDims {
        /// The tensor.
        name: String,
        /// Its type.
        ty: GgmlType,
        /// Its dims (innermost first).
        dims: Vec<u64>,
        /// What was expected.
        expected: String,
    },
    /// A tensor with no dimensions or more than [`MAX_DIMS`].
    #[error("tensor `{name}` has {got} dimensions, expected 1..=4")]
    BadDimCount {
        /// The tensor.
        name: String,
        /// Its dimension count.
        got: u32,
    },
    /// A tensor type id ggml does not define (its size cannot be known).
    #[error("tensor `{name}` has unknown ggml type {ty}")]
    UnknownTensorType {
        /// The tensor.
        name: String,
        /// The type (id, and name when it is a type ggml removed).
        ty: GgmlType,
    },
    /// A tensor offset that is not a multiple of the alignment.
    #[error("tensor `{name}` data offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        /// The tensor.
        name: String,
        /// Its offset, relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor whose bytes extend beyond the end of the file.
    #[error(
        "tensor `{name}` data [{start}, {end}) lies beyond the end of the file ({file_len} bytes): truncated file or bad offset"
    )]
    DataOutOfRange {
        /// The tensor.
        name: String,
        /// Absolute start offset.
        start: u64,
        /// Absolute end offset (exclusive).
        end: u64,
        /// The file's length.
        file_len: u64,
    },
    /// Two tensors sharing bytes.
    #[error("tensors `{a}` [{a_start}, {a_end}) and `{b}` (starting at {b_start}) overlap")]
    Overlap {
        /// The first tensor (lower offset).
        a: String,
        /// Its start, relative to the data section.
        a_start: u64,
        /// Its end, exclusive.
        a_end: u64,
        /// The second tensor.
        b: String,
        /// Its start.
        b_start: u64,
    },
    /// A tensor of a valid ggml type that this crate does not load.
    #[error("tensor `{name}` has type {ty}, which is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")]
    UnsupportedTensorType {
        /// The tensor.
        name: String,
        /// Its type.
        ty: GgmlType,
    },
    /// A metadata key that must be present.
    #[error("missing metadata key `{key}`")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata value of the wrong type.
    #[error("metadata `{key}` has type {got}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type found.
        got: String,
        /// The type expected.
        expected: String,
    },
    /// A metadata value out of range.
    #[error("metadata `{key}` = {got}, expected {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value.
        got: String,
        /// What was expected.
        expected: String,
    },
    /// `general.architecture` other than `llama`.
    #[error("architecture `{got}` is not supported, expected `llama`")]
    UnsupportedArchitecture {
        /// The architecture named by the file.
        got: String,
    },
}

/// A ggml tensor type id, with its name and block geometry where ggml defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

/// (id, name, elements per block, bytes per block); block size 0 marks ids ggml removed.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (4, "Q4_2", 0, 0),
    (5, "Q4_3", 0, 0),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (31, "Q4_0_4_4", 0, 0),
    (32, "Q4_0_4_8", 0, 0),
    (33, "Q4_0_8_8", 0, 0),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (36, "IQ4_NL_4_4", 0, 0),
    (37, "IQ4_NL_4_8", 0, 0),
    (38, "IQ4_NL_8_8", 0, 0),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// ggml's name for this id (`Q4_K`, ...), `None` for ids ggml never defined.
    pub fn name(self) -> Option<&'static str> {
        GGML_TYPES.get(self.0 as usize).map(|t| t.1)
    }
    /// `(elements per block, bytes per block)`, `None` when the size is unknown (undefined or removed id).
    pub fn block(self) -> Option<(u64, u64)> {
        GGML_TYPES.get(self.0 as usize).filter(|t| t.2 > 0).map(|t| (t.2, t.3))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self.block()) {
            (Some(n), Some(_)) => write!(f, "{n} (id {})", self.0),
            (Some(n), None) => write!(f, "{n} (id {}, removed from ggml)", self.0),
            _ => write!(f, "id {}", self.0),
        }
    }
}

/// The tensor types this crate loads (kept in their own format on the GPU, never widened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: f16 scale + 32 i8.
    Q8_0,
    /// Blocks of 32: f16 scale + 16 bytes of 4-bit quants (offset 8).
    Q4_0,
    /// Blocks of 32: f16 scale, f16 min + 16 bytes of 4-bit quants.
    Q4_1,
}

impl TensorType {
    /// The supported type for a ggml type id, if any.
    pub fn from_ggml(ty: GgmlType) -> Option<Self> {
        Some(match ty.0 {
            0 => TensorType::F32,
            1 => TensorType::F16,
            30 => TensorType::BF16,
            8 => TensorType::Q8_0,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            _ => return None,
        })
    }
    /// The ggml type id.
    pub fn ggml(self) -> GgmlType {
        GgmlType(match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::BF16 => 30,
            TensorType::Q8_0 => 8,
            TensorType::Q4_0 => 2,
            TensorType::Q4_1 => 3,
        })
    }
    /// `(elements per block, bytes per block)`.
    pub fn block(self) -> (u64, u64) {
        match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 | TensorType::BF16 => (1, 2),
            TensorType::Q8_0 => (32, 34),
            TensorType::Q4_0 => (32, 18),
            TensorType::Q4_1 => (32, 20),
        }
    }
}

/// Metadata value type ids (GGUF spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    /// 0
    U8 = 0,
    /// 1
    I8 = 1,
    /// 2
    U16 = 2,
    /// 3
    I16 = 3,
    /// 4
    U32 = 4,
    /// 5
    I32 = 5,
    /// 6
    F32 = 6,
    /// 7
    Bool = 7,
    /// 8
    String = 8,
    /// 9
    Array = 9,
    /// 10
    U64 = 10,
    /// 11
    I64 = 11,
    /// 12
    F64 = 12,
}

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
    /// The fewest bytes one value of this type takes (used to reject absurd array lengths before allocating).
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// Array of one element type (its items all have that type).
    Array(ValueType, Vec<MetaValue>),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl MetaValue {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(..) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }
    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// Any integer type, as i64 (u64 values above i64::MAX give `None`).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// A float (f32 or f64) or an integer, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// The items, if this is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(_, items) => Some(items),
            _ => None,
        }
    }
    fn type_name(&self) -> String {
        match self {
            MetaValue::Array(t, items) => format!("array of {} {:?}", items.len(), t),
            v => format!("{:?}", v.value_type()),
        }
    }
}

/// One row of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (`in_features`) first.
    pub dims: Vec<u64>,
    /// Its ggml type.
    pub ggml_type: GgmlType,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
    /// Size of its data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row-major shape (dims reversed): `[out_features, in_features]` for a linear weight.
    pub fn shape(&self) -> Vec<usize> {
        row_major(&self.dims)
    }
}

fn row_major(dims: &[u64]) -> Vec<usize> {
    dims.iter().rev().map(|&d| d as usize).collect()
}

/// A tensor served from the file: raw bytes in the file's own format, borrowed from the memory map.
#[derive(Debug, Clone, Copy)]
pub struct GgufTensor<'a> {
    /// Name.
    pub name: &'a str,
    /// Type.
    pub ty: TensorType,
    /// Dimensions, innermost first (`[in_features, out_features]` for a linear weight).
    pub dims: &'a [u64],
    /// Raw data (GGML block bytes for quantized types, little-endian values otherwise).
    pub data: &'a [u8],
}

impl GgufTensor<'_> {
    /// Row-major shape (dims reversed): `[out_features, in_features]` for a linear weight.
    pub fn shape(&self) -> Vec<usize> {
        row_major(self.dims)
    }
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// Config numbers of a `llama`-architecture GGUF file (the lead maps them onto `model::config::ModelConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufLlamaConfig {
    /// `llama.embedding_length`.
    pub hidden_size: usize,
    /// `llama.feed_forward_length`.
    pub intermediate_size: usize,
    /// `llama.block_count`.
    pub num_layers: usize,
    /// `llama.attention.head_count`.
    pub num_heads: usize,
    /// `llama.attention.head_count_kv` (defaults to `num_heads`, as in llama.cpp).
    pub num_kv_heads: usize,
    /// `hidden_size / num_heads` (GGUF has `attention.key_length` for other values; read when present).
    pub head_dim: usize,
    /// `llama.rope.dimension_count` (defaults to `head_dim`): the rotated part of each head.
    pub rope_dim: usize,
    /// `llama.rope.freq_base` (defaults to 10000, as in llama.cpp).
    pub rope_theta: f32,
    /// `llama.attention.layer_norm_rms_epsilon`.
    pub rms_norm_eps: f32,
    /// `llama.context_length`.
    pub context_length: usize,
    /// Length of `tokenizer.ggml.tokens` (else `llama.vocab_size`).
    pub vocab_size: usize,
    /// No `output.weight` tensor: the head is `token_embd.weight`.
    pub tied_embeddings: bool,
    /// Always `true` for GGUF `llama` files: Q/K rows are permuted for adjacent-pair RoPE (see module docs).
    pub rope_interleaved: bool,
}

/// GGUF tensor names of a `llama` model.
pub mod names {
    /// Token embedding `[vocab, hidden]` (dims `[hidden, vocab]`).
    pub const TOKEN_EMBD: &str = "token_embd.weight";
    /// Final norm.
    pub const OUTPUT_NORM: &str = "output_norm.weight";
    /// Untied LM head (absent when tied).
    pub const OUTPUT: &str = "output.weight";
    /// Per-block tensor suffixes.
    pub const BLOCK_PARTS: [&str; 9] =
        ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];
    /// `blk.{layer}.{part}.weight`.
    pub fn block(layer: usize, part: &str) -> String {
        format!("blk.{layer}.{part}.weight")
    }
}

enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An opened GGUF file.
pub struct GgufFile {
    backing: Backing,
    path: String,
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses a file. Tensor data is never copied.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let io = |source| Error::Io { path: shown.clone(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; like every mmap-based loader we rely on the file not being
        // truncated or rewritten while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Mmap(map), shown)
    }

    /// Parses a file held in memory (tests, embedded models). `name` is used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<String>) -> Result<Self> {
        Self::parse(Backing::Owned(bytes), name.into())
    }

    fn parse(backing: Backing, path: String) -> Result<Self> {
        match parse_layout(backing.bytes()) {
            Ok(p) => {
                let key_index = p.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
                let tensor_index = p.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
                Ok(GgufFile {
                    backing,
                    path,
                    version: p.version,
                    metadata: p.metadata,
                    key_index,
                    tensors: p.tensors,
                    tensor_index,
                    alignment: p.alignment,
                    data_offset: p.data_offset,
                })
            }
            Err(error) => Err(Error::Gguf { path, error }),
        }
    }

    fn err(&self, error: GgufError) -> Error {
        Error::Gguf { path: self.path.clone(), error }
    }

    /// The path (or name) the file was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Tensor data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }
    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }
    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }
    /// A metadata value that must be present.
    pub fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key).ok_or_else(|| self.err(GgufError::MissingKey { key: key.into() }))
    }
    fn wrong(&self, key: &str, v: &MetaValue, expected: &str) -> Error {
        self.err(GgufError::WrongType { key: key.into(), got: v.type_name(), expected: expected.into() })
    }
    /// A string value, `None` when absent, an error when of another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong(key, v, "string")),
        }
    }
    /// A non-negative integer value (any integer type), `None` when absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.wrong(key, v, "a non-negative integer")),
        }
    }
    /// A number (float or integer type) as f64, `None` when absent.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong(key, v, "a number")),
        }
    }
    /// A bool value, `None` when absent.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.wrong(key, v, "bool")),
        }
    }
    /// An array value, `None` when absent.
    pub fn get_array(&self, key: &str) -> Result<Option<&[MetaValue]>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| self.wrong(key, v, "array")),
        }
    }
    fn need<T>(&self, key: &str, v: Result<Option<T>>) -> Result<T> {
        v?.ok_or_else(|| self.err(GgufError::MissingKey { key: key.into() }))
    }
    fn need_usize(&self, key: &str) -> Result<usize> {
        let v = self.need(key, self.get_u64(key))?;
        if v == 0 || v > u32::MAX as u64 {
            return Err(self.err(GgufError::BadValue {
                key: key.into(),
                got: v.to_string(),
                expected: "a positive count below 2^32".into(),
            }));
        }
        Ok(v as usize)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        let key = "general.architecture";
        self.need(key, self.get_str(key))
    }

    /// The tensor table, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }
    /// One row of the tensor table.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    /// A tensor's raw data, type and dims. Missing tensor or a type outside [`TensorType`] is an error.
    pub fn tensor(&self, name: &str) -> Result<GgufTensor<'_>> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor { name: name.into(), source_name: self.path.clone() })?;
        let ty = TensorType::from_ggml(info.ggml_type)
            .ok_or_else(|| self.err(GgufError::UnsupportedTensorType { name: name.into(), ty: info.ggml_type }))?;
        // Ranges were checked against the file length at parse time.
        let start = (self.data_offset + info.offset) as usize;
        let data = &self.bytes()[start..start + info.n_bytes as usize];
        Ok(GgufTensor { name: &info.name, ty, dims: &info.dims, data })
    }

    /// A tensor's table row and raw bytes, whatever its type (one ggml knows the size of).
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor { name: name.into(), source_name: self.path.clone() })?;
        // Ranges were checked against the file length at parse time.
        let start = (self.data_offset + info.offset) as usize;
        Ok((info, &self.bytes()[start..start + info.n_bytes as usize]))
    }

    /// The config numbers of a `llama` file; another architecture is [`GgufError::UnsupportedArchitecture`].
    pub fn llama_config(&self) -> Result<GgufLlamaConfig> {
        let arch = self.architecture()?;
        if arch != "llama" {
            return Err(self.err(GgufError::UnsupportedArchitecture { got: arch.into() }));
        }
        let hidden_size = self.need_usize("llama.embedding_length")?;
        let intermediate_size = self.need_usize("llama.feed_forward_length")?;
        let num_layers = self.need_usize("llama.block_count")?;
        let num_heads = self.need_usize("llama.attention.head_count")?;
        let num_kv_heads = match self.get_u64("llama.attention.head_count_kv")? {
            None => num_heads,
            Some(_) => self.need_usize("llama.attention.head_count_kv")?,
        };
        let head_dim = match self.get_u64("llama.attention.key_length")? {
            Some(_) => self.need_usize("llama.attention.key_length")?,
            None => hidden_size / num_heads,
        };
        let rope_dim = match self.get_u64("llama.rope.dimension_count")? {
            Some(_) => self.need_usize("llama.rope.dimension_count")?,
            None => head_dim,
        };
        let rope_theta = self.get_f64("llama.rope.freq_base")?.unwrap_or(10000.0) as f32;
        let eps_key = "llama.attention.layer_norm_rms_epsilon";
        let rms_norm_eps = self.need(eps_key, self.get_f64(eps_key))? as f32;
        if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
            return Err(self.err(GgufError::BadValue {
                key: eps_key.into(),
                got: rms_norm_eps.to_string(),
                expected: "a positive finite number".into(),
            }));
        }
        let context_length = self.need_usize("llama.context_length")?;
        let vocab_size = match self.get_array("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len(),
            None => self.need_usize("llama.vocab_size")?,
        };
        Ok(GgufLlamaConfig {
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_dim,
            rope_theta,
            rms_norm_eps,
            context_length,
            vocab_size,
            tied_embeddings: self.tensor_info(names::OUTPUT).is_none(),
            rope_interleaved: true,
        })
    }
}

struct Parsed {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    section: String,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], GgufError> {
        let remaining = (self.b.len() - self.pos) as u64;
        if n > remaining {
            return Err(GgufError::Truncated {
                section: self.section.clone(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.b.len() as u64,
            });
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let n = self.u64()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::BadUtf8 { what: what() })
    }
    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }
    /// Fails as truncated when `count` items of at least `min` bytes each cannot fit (before allocating).
    fn check_count(&self, count: u64, min: u64) -> Result<(), GgufError> {
        match count.checked_mul(min) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(GgufError::Truncated {
                section: self.section.clone(),
                offset: self.pos as u64,
                needed: count.saturating_mul(min),
                file_len: self.b.len() as u64,
            }),
        }
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(self.array::<1>()?[0]),
            ValueType::I8 => MetaValue::I8(self.array::<1>()?[0] as i8),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => MetaValue::U32(self.u32()?),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            ValueType::Bool => MetaValue::Bool(self.array::<1>()?[0] != 0),
            ValueType::String => MetaValue::String(self.string(&|| format!("string value of `{key}`"))?),
            ValueType::U64 => MetaValue::U64(self.u64()?),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufError::BadValue {
                        key: key.into(),
                        got: format!("arrays nested more than {depth} deep"),
                        expected: format!("at most {MAX_ARRAY_NESTING} levels of nested arrays"),
                    });
                }
                let id = self.u32()?;
                let elem = ValueType::from_id(id)
                    .ok_or_else(|| GgufError::UnknownValueType { key: format!("{key}[]"), got: id })?;
                let n = self.u64()?;
                self.check_count(n, elem.min_size())?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(elem, items)
            }
        })
    }
}

fn parse_layout(b: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { b, pos: 0, section: "header".into() };
    let magic: [u8; 4] = c.array()?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { got: magic });
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion { got: version });
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor info at least 8+4+8+4+8:
    // capacities are capped by what the file can hold, so a corrupt count cannot allocate much; the loop
    // then ends in a truncation error at the section where the file runs out.
    let mut metadata = Vec::with_capacity(n_kv.min(c.remaining() / 13) as usize);
    let mut seen = HashMap::new();
    for i in 0..n_kv {
        c.section = format!("metadata key #{i}");
        let key = c.string(&|| format!("metadata key #{i}"))?;
        c.section = format!("metadata value of `{key}`");
        let id = c.u32()?;
        let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType { key: key.clone(), got: id })?;
        let value = c.value(ty, &key, 0)?;
        if seen.insert(key.clone(), ()).is_some() {
            return Err(GgufError::DuplicateKey { key });
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => return Err(GgufError::BadAlignment { got: v.as_u64().unwrap_or(0) }),
        },
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors.min(c.remaining() / 32) as usize);
    let mut names = HashMap::new();
    for i in 0..n_tensors {
        c.section = format!("tensor info #{i}");
        let name = c.string(&|| format!("name of tensor #{i}"))?;
        c.section = format!("tensor info #{i} (`{name}`)");
        let n_dims = c.u32()?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(GgufError::BadDimCount { name, got: n_dims });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64()?);
        }
        let ty = GgmlType(c.u32()?);
        let offset = c.u64()?;
        let (block, type_size) = ty.block().ok_or_else(|| GgufError::UnknownTensorType { name: name.clone(), ty })?;
        let bad = |expected: String| GgufError::BadDims { name: name.clone(), ty, dims: dims.clone(), expected };
        if dims[0] % block != 0 {
            return Err(bad(format!("the first (innermost) dim a multiple of the block size {block}")));
        }
        let n_bytes = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| (n / block).checked_mul(type_size))
            .ok_or_else(|| bad("a size that fits in 64 bits".into()))?;
        if offset % alignment != 0 {
            return Err(GgufError::Misaligned { name, offset, alignment });
        }
        if names.insert(name.clone(), ()).is_some() {
            return Err(GgufError::DuplicateTensor { name });
        }
        tensors.push(TensorInfo { name, dims, ggml_type: ty, offset, n_bytes });
    }

    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = b.len() as u64;
    if !tensors.is_empty() && data_offset > file_len {
        return Err(GgufError::Truncated {
            section: "alignment padding before the tensor data".into(),
            offset: c.pos as u64,
            needed: data_offset - c.pos as u64,
            file_len,
        });
    }
    for t in &tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(_), Some(e)) if e <= file_len => {}
            _ => {
                return Err(GgufError::DataOutOfRange {
                    name: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for w in order.windows(2) {
        if w[0].offset + w[0].n_bytes > w[1].offset {
            return Err(GgufError::Overlap {
                a: w[0].name.clone(),
                a_start: w[0].offset,
                a_end: w[0].offset + w[0].n_bytes,
                b: w[1].name.clone(),
                b_start: w[1].offset,
            });
        }
    }
    Ok(Parsed { version, metadata, tensors, alignment, data_offset })
}

/// Byte positions of the sections of a file made by [`GgufWriter`] (for truncation tests).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufLayout {
    /// End of the 24-byte header.
    pub header_end: usize,
    /// End of each metadata key/value.
    pub kv_ends: Vec<usize>,
    /// End of each tensor info.
    pub tensor_info_ends: Vec<usize>,
    /// Absolute offset of the data section.
    pub data_offset: usize,
    /// Absolute start of each tensor's data.
    pub tensor_starts: Vec<usize>,
    /// Absolute position of each tensor info's `offset` field (to corrupt it in tests).
    pub offset_fields: Vec<usize>,
}

/// A GGUF v3 writer: metadata in insertion order, tensors packed at the alignment (each padded to it, as
/// llama.cpp's reader expects).
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds (or replaces) a metadata value. `general.alignment` also sets the alignment used to write.
    pub fn meta(&mut self, key: &str, value: MetaValue) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value,
            None => self.metadata.push((key.into(), value)),
        }
        self
    }
    /// Adds an array of strings.
    pub fn meta_strings<S: AsRef<str>>(&mut self, key: &str, items: &[S]) -> &mut Self {
        let items = items.iter().map(|s| MetaValue::String(s.as_ref().into())).collect();
        self.meta(key, MetaValue::Array(ValueType::String, items))
    }
    /// Adds a tensor with raw data (not checked against `dims`, so tests can write broken files).
    pub fn tensor(&mut self, name: &str, ty: GgmlType, dims: &[u64], data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.into(), ty, dims.to_vec(), data));
        self
    }
    /// Adds an f32 tensor.
    pub fn tensor_f32(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, TensorType::F32.ggml(), dims, data)
    }
    /// Writes the `llama.*` and `general.architecture` keys for a config (tokenizer keys are separate).
    pub fn llama_config(&mut self, c: &GgufLlamaConfig) -> &mut Self {
        let u = |v: usize| MetaValue::U32(v as u32);
        self.meta("general.architecture", MetaValue::String("llama".into()))
            .meta("llama.embedding_length", u(c.hidden_size))
            .meta("llama.feed_forward_length", u(c.intermediate_size))
            .meta("llama.block_count", u(c.num_layers))
            .meta("llama.attention.head_count", u(c.num_heads))
            .meta("llama.attention.head_count_kv", u(c.num_kv_heads))
            .meta("llama.rope.dimension_count", u(c.rope_dim))
            .meta("llama.rope.freq_base", MetaValue::F32(c.rope_theta))
            .meta("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(c.rms_norm_eps))
            .meta("llama.context_length", u(c.context_length))
            .meta("llama.vocab_size", u(c.vocab_size))
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| *a > 0)
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Everything before the first tensor's data (header, metadata, tensor table, padding), the layout of
    /// the whole file, and each tensor's offset within the data section.
    fn head(&self) -> (Vec<u8>, GgufLayout, Vec<u64>) {
        let mut out = Vec::new();
        let mut layout = GgufLayout::default();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        layout.header_end = out.len();
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut out, v);
            layout.kv_ends.push(out.len());
        }
        let align = self.alignment();
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, ty, dims, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.0.to_le_bytes());
            layout.offset_fields.push(out.len());
            out.extend_from_slice(&offset.to_le_bytes());
            layout.tensor_info_ends.push(out.len());
            offsets.push(offset);
            offset = (offset + data.len() as u64).div_ceil(align) * align;
        }
        out.resize((out.len() as u64).div_ceil(align) as usize * align as usize, 0);
        layout.data_offset = out.len();
        layout.tensor_starts = offsets.iter().map(|off| layout.data_offset + *off as usize).collect();
        (out, layout, offsets)
    }

    /// The file's bytes and its section layout.
    pub fn to_bytes_with_layout(&self) -> (Vec<u8>, GgufLayout) {
        let mut out = Vec::new();
        let Ok(layout) = self.emit::<std::convert::Infallible>(|bytes| {
            out.extend_from_slice(bytes);
            Ok(())
        });
        (out, layout)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with_layout().0
    }

    /// Streams the file into `out` (tensor data is not copied first) and returns its layout.
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<GgufLayout> {
        self.emit(|bytes| out.write_all(bytes))
    }

    /// Hands the file's bytes to `sink` in order.
    fn emit<E>(&self, mut sink: impl FnMut(&[u8]) -> std::result::Result<(), E>) -> std::result::Result<GgufLayout, E> {
        let (head, layout, offsets) = self.head();
        sink(&head)?;
        let mut pos = 0u64;
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            sink(&vec![0; (off - pos) as usize])?;
            sink(data)?;
            pos = off + data.len() as u64;
        }
        // The last tensor is padded too: llama.cpp reads the data section as whole aligned sizes.
        let align = self.alignment();
        sink(&vec![0; (pos.div_ceil(align) * align - pos) as usize])?;
        Ok(layout)
    }

    /// Writes the file.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| Error::Io { path: path.display().to_string(), source };
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        self.write_to(&mut file).map_err(io)?;
        file.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)
    }

    /// Copies every metadata key of `file` that starts with `prefix` (e.g. `"tokenizer."`), in the file's
    /// order, replacing keys already set.
    pub fn copy_metadata(&mut self, file: &GgufFile, prefix: &str) -> &mut Self {
        for (key, value) in file.metadata().iter().filter(|(k, _)| k.starts_with(prefix)) {
            self.meta(key, value.clone());
        }
        self
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(t, items) => {
            out.extend_from_slice(&(*t as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}
