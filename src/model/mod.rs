//! Models: config, weight loading (safetensors, GGUF), the planner (scheduler), KV cache and sampler.

pub mod config;
pub mod decode;
pub mod export;
pub mod gguf;
pub mod host;
pub mod lookup;
pub mod perplexity;
pub mod planner;
pub mod safetensors;
pub mod state;
pub mod weights;

pub use config::{ModelConfig, RopeLayout};
pub use host::{HostLayer, HostModel};
pub use lookup::{LookupOptions, LookupStats};
pub use perplexity::Perplexity;
pub use planner::{MemoryReport, Model, PlanOptions, RowLogprobs, Sampling};
pub use state::SessionState;
pub use weights::{LayerWeightsF32, ModelWeightsF32};
