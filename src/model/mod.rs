//! Models: config, weight loading (safetensors, GGUF), the planner (scheduler), KV cache and sampler.

pub mod config;
pub mod gguf;
pub mod safetensors;
pub mod weights;

pub use config::{ModelConfig, RopeLayout};
pub use weights::{LayerWeightsF32, ModelWeightsF32};
