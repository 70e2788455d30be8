//! CPU twin of `kernels/embedding.wgsl`.

use crate::quant::HostWeight;

/// Rows `ids[t]` of `table` (`[vocab, hidden]`, any weight type) dequantized, as `[ids.len(), hidden]` f32.
/// Ids at or beyond the vocabulary read the last row, as the kernel's clamp does.
pub fn embedding(table: &HostWeight, ids: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * table.cols);
    for &id in ids {
        table.dequantize_row_into((id as usize).min(table.rows.saturating_sub(1)), &mut out);
    }
    out
}
