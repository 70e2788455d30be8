//! # mobilellm-kernels
//!
//! WGSL compute kernels and a planned, fused scheduler for small "deep and thin" language models
//! (MobileLLM, SmolLM2) on phone-class GPUs, through wgpu on Vulkan, Metal, DX12 and GL.
//!
//! Layers of the crate, data flowing one way:
//! - [`device`]: adapter choice or an engine's own device, optional features in use, pipeline cache;
//! - [`shader`]: the kernel sources in `kernels/*.wgsl` and the variant mechanism;
//! - [`tensor`]: GPU buffers with dtype and shape;
//! - [`ops`]: one launcher per kernel family, returning reusable [`ops::Dispatch`]es;
//! - [`reference`](mod@reference): the CPU twin of every kernel family, for tests and checks;
//! - [`model`]: config and weight loaders (safetensors, GGUF) and GGUF export, the planned model (prefill,
//!   decode, GPU sampling with token masks and log-probabilities, session states, context shifts,
//!   speculative decoding from prompt lookup or a draft model, perplexity) and its KV cache ([`kv_cache`]);
//! - [`tokenizer`]: GGUF and HF tokenizers, chat templates;
//! - [`constrain`]: constrained decoding (token masks from the host): JSON, GBNF grammars, JSON schemas.
//!
//! ```no_run
//! use mobilellm_kernels::{ops, reference, Gpu, Tensor, DType};
//! # fn main() -> mobilellm_kernels::Result<()> {
//! let gpu = Gpu::new()?; // honours MOBILELLM_FEATURES=none etc.
//! let x: Vec<f32> = (0..2 * 576).map(|i| (i as f32 * 0.01).sin()).collect();
//! let w = vec![1.0f32; 576];
//! let x_gpu = Tensor::from_slice(&gpu, &[2, 576], &x)?;
//! let w_gpu = Tensor::from_slice(&gpu, &[576], &w)?;
//! let y_gpu = Tensor::zeros(&gpu, DType::F32, &[2, 576])?;
//! let norm = ops::rms_norm::rms_norm(&gpu, &x_gpu, &w_gpu, &y_gpu, 1e-5)?;
//! ops::run(&gpu, &[&norm])?;
//! let y = y_gpu.read::<f32>(&gpu)?;
//! let expected = reference::rms_norm(&x, &w, 1e-5);
//! assert!(y.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bench;
pub mod constrain;
pub mod device;
pub mod error;
pub mod kv_cache;
pub mod model;
pub mod ops;
pub mod quant;
pub mod reference;
pub mod shader;
pub mod tensor;
pub mod tokenizer;

pub use device::{DeviceClass, FeatureSet, Gpu, GpuOptions, TextureReads, WeightStorage};
pub use error::{Error, Result};
pub use tensor::{DType, Tensor};

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
