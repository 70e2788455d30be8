// Workgroup-wide reductions, included by kernels that need them (`#include reduce`).
// Every invocation of the workgroup must call them from uniform control flow; all get the result.
// The subgroup path never assumes a subgroup size: it is correct for any size from 4 to 128,
// and for workgroups that subgroups do not divide evenly.

struct Lanes {
    @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
#endif
}

var<workgroup> reduce_scratch: array<f32, WG>;

#if SUBGROUPS
fn workgroup_sum(value: f32, lanes: Lanes) -> f32 {
    let partial = subgroupAdd(value);
    if lanes.sg_lane == 0u {
        reduce_scratch[lanes.sg_id] = partial;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < lanes.sg_count; i++) {
        total += reduce_scratch[i];
    }
    workgroupBarrier();
    return total;
}

fn workgroup_max(value: f32, lanes: Lanes) -> f32 {
    let partial = subgroupMax(value);
    if lanes.sg_lane == 0u {
        reduce_scratch[lanes.sg_id] = partial;
    }
    workgroupBarrier();
    var best = reduce_scratch[0];
    for (var i = 1u; i < lanes.sg_count; i++) {
        best = max(best, reduce_scratch[i]);
    }
    workgroupBarrier();
    return best;
}
#else
// Tree reduction in workgroup memory; WG must be a power of two (the launchers check).
fn workgroup_sum(value: f32, lanes: Lanes) -> f32 {
    reduce_scratch[lanes.lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lanes.lid < stride {
            reduce_scratch[lanes.lid] += reduce_scratch[lanes.lid + stride];
        }
        workgroupBarrier();
    }
    let total = reduce_scratch[0];
    workgroupBarrier();
    return total;
}

fn workgroup_max(value: f32, lanes: Lanes) -> f32 {
    reduce_scratch[lanes.lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lanes.lid < stride {
            reduce_scratch[lanes.lid] = max(reduce_scratch[lanes.lid], reduce_scratch[lanes.lid + stride]);
        }
        workgroupBarrier();
    }
    let best = reduce_scratch[0];
    workgroupBarrier();
    return best;
}
#endif
