//! One error type for the crate. Every message names the bad value and what was expected.

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter could be found.
    #[error("no GPU adapter found ({detail}). On headless Linux install a Vulkan driver: `apt-get install -y mesa-vulkan-drivers` (lavapipe)")]
    NoAdapter {
        /// What was tried.
        detail: String,
    },
    /// The device could not be created or lacks something needed.
    #[error("device error: {0}")]
    Device(String),
    /// A required device feature or limit is missing.
    #[error("the device lacks {what}: {needed}")]
    Unsupported {
        /// The missing capability.
        what: String,
        /// Why it is needed.
        needed: String,
    },
    /// A shader failed to compile or a pipeline failed to build.
    #[error("shader `{kernel}` ({variant}) failed: {message}")]
    Shader {
        /// Kernel file name.
        kernel: String,
        /// Variant description.
        variant: String,
        /// Compiler output.
        message: String,
    },
    /// A shape did not match what an operation expects.
    #[error("shape mismatch for {what}: got {got:?}, expected {expected}")]
    Shape {
        /// Which operand.
        what: String,
        /// The shape given.
        got: Vec<usize>,
        /// A description of the expected shape.
        expected: String,
    },
    /// A dtype did not match what an operation expects.
    #[error("dtype mismatch for {what}: got {got}, expected {expected}")]
    DType {
        /// Which operand.
        what: String,
        /// The dtype given.
        got: String,
        /// The dtype(s) accepted.
        expected: String,
    },
    /// A numeric argument outside its valid range.
    #[error("invalid {what}: got {got}, expected {expected}")]
    InvalidArgument {
        /// Which argument.
        what: String,
        /// The value given.
        got: String,
        /// The valid range.
        expected: String,
    },
    /// A model config whose numbers do not fit together.
    #[error("invalid config: {0}")]
    Config(String),
    /// A malformed or truncated model file (safetensors, GGUF, config.json).
    #[error("bad model file {path}: {message}")]
    Format {
        /// File path (or a description of the source).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor the model needs is absent.
    #[error("missing tensor `{name}` in {source_name}")]
    MissingTensor {
        /// The tensor name expected.
        name: String,
        /// Where it was looked for.
        source_name: String,
    },
    /// The GPU ran out of memory.
    #[error("out of GPU memory while {0}")]
    OutOfMemory(String),
    /// The device was lost (destroyed, driver reset or removed). Sticky: every later call on that device
    /// fails with this; recreate the [`crate::Gpu`] and what was on it.
    #[error("GPU device lost ({0}); recreate the Gpu and the models or tensors on it")]
    DeviceLost(String),
    /// A wgpu validation or runtime error caught at a boundary.
    #[error("GPU error while {context}: {message}")]
    Gpu {
        /// What was being done.
        context: String,
        /// The wgpu message.
        message: String,
    },
    /// Position or length beyond a capacity (context window, KV cache).
    #[error("capacity exceeded: {what} would reach {requested}, capacity is {capacity}")]
    Capacity {
        /// What overflowed.
        what: String,
        /// The size asked for.
        requested: usize,
        /// The size available.
        capacity: usize,
    },
    /// A malformed GGUF file, or one this crate cannot serve (see [`crate::model::gguf::GgufError`]).
    #[error("GGUF {path}: {error}")]
    Gguf {
        /// File path (or a description of the source).
        path: String,
        /// What is wrong.
        error: crate::model::gguf::GgufError,
    },
    /// Host I/O.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for [`Error::Shape`].
    pub fn shape(what: impl Into<String>, got: &[usize], expected: impl fmt::Display) -> Self {
        Error::Shape { what: what.into(), got: got.to_vec(), expected: expected.to_string() }
    }
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(what: impl Into<String>, got: impl fmt::Display, expected: impl fmt::Display) -> Self {
        Error::InvalidArgument { what: what.into(), got: got.to_string(), expected: expected.to_string() }
    }
    /// Shorthand for [`Error::Format`].
    pub fn format(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Format { path: path.into(), message: message.into() }
    }
}
