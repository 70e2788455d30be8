//! Embedding lookup launcher (`kernels/embedding.wgsl`), CPU twin [`crate::reference::embedding`].
//!
//! `out[t] = table[ids[t]]` for `n` token ids, the table a weight matrix of any
//! [`crate::quant::WeightType`] (`rows = vocab`, `cols = hidden`) dequantized to f32 on the fly. A table larger than one storage binding is
//! held as several row chunks ([`upload_table`], [`upload_table_chunked`], or [`HostWeight::slice_rows`] by hand); the lookup emits
//! one dispatch per chunk, each writing only the tokens whose id falls in its rows.
//!
//! Ids are checked on the host before they are written ([`validate_ids`], [`write_ids`]); an id at or
//! beyond the vocabulary that reaches the GPU anyway is clamped to the last row, never read out of bounds.

use bytemuck::{Pod, Zeroable};

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::ops::{make_dispatch, uniform, Dispatch, StepBuffer, MAX_GROUPS_PER_DIM};
use crate::quant::{GpuWeight, HostWeight, WeightDesc};
use crate::shader::{ShaderVariant, EMBEDDING};
use crate::tensor::{DType, Tensor};

/// Invocations per token: each writes 4 columns per step (hidden 576 = 144 vec4: 3 steps).
const WORKGROUP: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    desc: WeightDesc,
    n: u32,
    row_start: u32,
    vocab: u32,
    hidden: u32,
}

/// The planned dispatches of one lookup, one per row chunk of the table.
#[derive(Debug)]
pub struct Embedding {
    dispatches: Vec<Dispatch>,
}

impl Embedding {
    /// The dispatches (any order: they write disjoint tokens).
    pub fn dispatches(&self) -> Vec<&Dispatch> {
        self.dispatches.iter().collect()
    }
    /// Records every dispatch into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            d.record(pass);
        }
    }
}

/// Checks that every id is below `vocab`, naming the first bad one.
pub fn validate_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        Some((i, &id)) => Err(Error::invalid(
            format!("token id at position {i}"),
            id,
            format!("an id below the vocabulary size {vocab}"),
        )),
        None => Ok(()),
    }
}

/// Validates `ids` against `vocab` and writes them to the start of `tensor` (u32, at least `ids.len()` long;
/// a planned prefill writes fewer ids than its capacity and passes the count as `StepParams::n`).
pub fn write_ids(gpu: &Gpu, tensor: &Tensor, ids: &[u32], vocab: usize) -> Result<()> {
    validate_ids(ids, vocab)?;
    if tensor.dtype() != DType::U32 {
        return Err(Error::DType { what: "token ids".into(), got: tensor.dtype().to_string(), expected: "u32".into() });
    }
    if ids.is_empty() || ids.len() > tensor.len() {
        return Err(Error::shape(
            "token ids",
            &[ids.len()],
            format!("1..={} ids for {:?}", tensor.len(), tensor.shape()),
        ));
    }
    gpu.queue().write_buffer(tensor.buffer(), 0, bytemuck::cast_slice(ids));
    Ok(())
}

/// Uploads an embedding table as row chunks that each fit one storage binding (one chunk when it fits).
pub fn upload_table(gpu: &Gpu, host: &HostWeight) -> Result<Vec<GpuWeight>> {
    upload_table_chunked(gpu, host, gpu.max_binding_bytes())
}

/// Uploads an embedding table as row chunks of at most `max_chunk_bytes` each (one chunk when it fits).
pub fn upload_table_chunked(gpu: &Gpu, host: &HostWeight, max_chunk_bytes: u64) -> Result<Vec<GpuWeight>> {
    if host.size_bytes() <= max_chunk_bytes {
        return Ok(vec![GpuWeight::upload(gpu, host)?]);
    }
    // Bytes per row rounded up; once per chunk, a half-used scale word at its end (q8_0 / q4_0) and up to a
    // texel of a texture's padding.
    let per_row = host.size_bytes().div_ceil(host.rows.max(1) as u64);
    let rows_per_chunk = (max_chunk_bytes.saturating_sub(4 + 16) / per_row) as usize;
    if rows_per_chunk == 0 {
        return Err(Error::invalid(
            "embedding chunk size in bytes",
            max_chunk_bytes,
            format!("at least one row ({per_row} bytes)"),
        ));
    }
    (0..host.rows)
        .step_by(rows_per_chunk)
        .map(|start| GpuWeight::upload(gpu, &host.slice_rows(start, (start + rows_per_chunk).min(host.rows))?))
        .collect()
}

/// Plans `out[t] = table[ids[t]]` for `t < n`, with `n = ids.len()` and `out` `[n, hidden]` f32. `table`
/// lists the row chunks of the embedding in vocabulary order (same type and width). With `step`, only the
/// first `min(step.n, n)` tokens are looked up (a planned prefill of any length up to `n`).
pub fn embedding(
    gpu: &Gpu,
    table: &[GpuWeight],
    ids: &Tensor,
    out: &Tensor,
    step: Option<&StepBuffer>,
) -> Result<Embedding> {
    let Some(first) = table.first() else {
        return Err(Error::invalid("embedding table chunks", 0, "at least one row chunk"));
    };
    let (wtype, hidden) = (first.wtype(), first.cols());
    for (i, chunk) in table.iter().enumerate() {
        if chunk.wtype() != wtype || chunk.cols() != hidden || chunk.storage() != first.storage() {
            return Err(Error::invalid(
                format!("embedding table chunk {i}"),
                format!("{} with {} columns in a {:?}", chunk.wtype(), chunk.cols(), chunk.storage()),
                format!("{wtype} with {hidden} columns in a {:?} like chunk 0", first.storage()),
            ));
        }
    }
    let vocab: usize = table.iter().map(GpuWeight::rows).sum();
    if ids.dtype() != DType::U32 {
        return Err(Error::DType {
            what: "embedding ids".into(),
            got: ids.dtype().to_string(),
            expected: "u32".into(),
        });
    }
    let n = ids.len();
    if n > MAX_GROUPS_PER_DIM as usize {
        return Err(Error::invalid("embedding token count", n, "at most 65535 per lookup"));
    }
    out.expect("embedding output", DType::F32, &[n, hidden])?;
    if vocab > u32::MAX as usize {
        return Err(Error::invalid("embedding vocabulary", vocab, "fewer than 2^32 rows"));
    }
    let variant = first.variant(ShaderVariant::new()).flag_if("STEP_N", step.is_some()).constant("WG", WORKGROUP);
    let pipeline = gpu.pipeline(&EMBEDDING, "embedding", &variant)?;
    let mut dispatches = Vec::with_capacity(table.len());
    let mut row_start = 0;
    for (i, chunk) in table.iter().enumerate() {
        let params = uniform(
            gpu,
            "embedding params",
            &Params {
                desc: chunk.desc(),
                n: n as u32,
                row_start: row_start as u32,
                vocab: vocab as u32,
                hidden: hidden as u32,
            },
        )?;
        let mut resources = vec![
            (0, params.as_entire_binding()),
            (1, ids.buffer().as_entire_binding()),
            (2, chunk.binding()),
            (3, out.buffer().as_entire_binding()),
        ];
        if let Some(step) = step {
            resources.push((4, step.buffer().as_entire_binding()));
        }
        dispatches.push(make_dispatch(
            gpu,
            format!("embedding:embedding[{wtype} chunk {i}]"),
            pipeline.clone(),
            &resources,
            [n as u32, 1, 1],
            vec![params.clone()],
        )?);
        row_start += chunk.rows();
    }
    Ok(Embedding { dispatches })
}
