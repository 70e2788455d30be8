//! CPU twins of every kernel family, named like the launchers in [`crate::ops`]. They compute in f32
//! like the GPU (accumulating in f32), so GPU-vs-CPU differences come only from summation order.

mod attention;
mod elementwise;
mod embedding;
mod ffn;
pub mod forward;
mod gemv;
mod kv_shift;
mod rms_norm;
mod sample;

pub use attention::{
    attention_decode, attention_prefill, qkv_rope, rope, rope_cos_sin, rope_cos_sin_at, rope_frequency, rope_shift,
    QkvShape, RopeLayout,
};
pub use elementwise::add;
pub use embedding::embedding;
pub use ffn::{ffn_block, ffn_gate_up, silu, silu_mul, swiglu_stacked};
pub use gemv::gemv;
pub use kv_shift::kv_shift;
pub use rms_norm::rms_norm;
pub use sample::{
    argmax_rows, log_probability, penalised_row, sample, sample_logprob, sample_masked, sample_masked_trace,
    sample_order_key, sample_trace, sample_uniform, top_logprobs, SampleTrace,
};
