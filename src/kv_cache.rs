//! KV cache (being written).
