//! Models: config, weight loading (safetensors, GGUF), the planner (scheduler), KV cache and sampler.

pub mod config;
pub mod gguf;
pub mod safetensors;
