//! CPU twin of `kernels/kv_shift.wgsl` (see [`crate::ops::kv_shift`]).

use super::attention::{rope_shift, RopeLayout};
use crate::kv_cache::KvMirror;
use crate::ops::kv_shift::Shift;
use crate::tensor::DType;

/// What `ops::kv_shift` does to one slot, on its host copy: positions `keep + discard .. used` of every head
/// move to `keep ..`, keys turned back by `discard` positions ([`rope_shift`] with `freqs`, one per pair),
/// rounded through f16 when the cache stores `dtype` F16; positions from `used - discard` on keep what
/// they held. `shift` must fit the mirror (`keep + discard <= used <= capacity`).
pub fn kv_shift(mirror: &mut KvMirror, shift: Shift, freqs: &[f64], layout: RopeLayout, dtype: DType) {
    let Shift { used, keep, discard } = shift;
    let (capacity, head_dim) = (mirror.capacity, mirror.head_dim);
    let round = |x: f32| if dtype == DType::F16 { half::f16::from_f32(x).to_f32() } else { x };
    for (values, turn) in [(&mut mirror.k, true), (&mut mirror.v, false)] {
        for head in values.chunks_exact_mut(capacity * head_dim) {
            let mut rows = head[(keep + discard) * head_dim..used * head_dim].to_vec();
            if turn {
                rows.chunks_exact_mut(head_dim)
                    .for_each(|row| rope_shift(row, -(discard as i64), head_dim, freqs, layout));
            }
            for (to, from) in head[keep * head_dim..].iter_mut().zip(rows) {
                *to = round(from);
            }
        }
    }
}
