//! Decode and prefill attention vs their CPU twins over the KV cache, under both feature sets (f16 cache
//! with all features, f32 cache with none).
//!
//! Tolerance argument. The CPU twin runs on the cache *read back* from the GPU, so with an f16 cache both
//! sides see the very same f16-rounded K/V: the storage rounding cancels and only f32 arithmetic differs.
//! Inputs are in [-1, 1), so a score is `q.k / sqrt(hd)` with |score| <= sqrt(hd) = 8; reassociating its hd
//! products (vec4 grouping) changes it by about sqrt(hd) * 2^-24 * |score| ~ 4e-6 (worst case 8x that), which
//! perturbs each softmax weight by that relative amount; WGSL's `exp` is within 3 + 2|x| ulp (|x| <= 16:
//! ~2e-6 relative). Online rescaling (exp(m_old - m_new)) adds a few ulp per tile. The output is a convex
//! combination of values in [-1, 1), so these relative weight errors give an absolute error well under 2e-5;
//! summing up to 2048 weights in another order adds ~sqrt(2048) * 2^-24 ~ 3e-6 relative. Hence abs 2e-5,
//! rel 1e-4.
mod common;

use common::{assert_close, gpu_rules_gpu, gpus, other_texture_reads_gpu, random_vec, ShapeRng};
use mobilellm_kernels::kv_cache::{KvCache, KvMirror};
use mobilellm_kernels::ops::attention::{
    attention_decode, attention_decode_rows, attention_prefill, attention_prefill_tiled, Split, DECODE_CHUNK,
};
use mobilellm_kernels::ops::{self, StepBuffer, StepParams};
use mobilellm_kernels::{reference, DType, Error, Gpu, Tensor};

const ABS: f32 = 2e-5;
const REL: f32 = 1e-4;

/// A cache whose every position (also those past any tested context) holds random K/V, so a kernel that
/// reads past the context fails.
fn filled_cache(gpu: &Gpu, capacity: usize, kv_heads: usize, hd: usize, seed: u64) -> (KvCache, KvMirror) {
    let cache = KvCache::new(gpu, 1, capacity, kv_heads, hd).unwrap();
    let k = random_vec(seed, capacity * kv_heads * hd);
    let v = random_vec(seed + 1, capacity * kv_heads * hd);
    cache.write(gpu, 0, 0, &k, &v).unwrap();
    let mirror = cache.read(gpu, 0).unwrap();
    let mut want = KvMirror::zeros(kv_heads, capacity, hd);
    want.store(0, &k, &v, cache.dtype());
    assert_eq!(mirror, want, "KvCache::write then read must equal KvMirror::store (same f16 rounding)");
    (cache, mirror)
}

fn step(gpu: &Gpu, buf: &StepBuffer, pos: usize, n: usize) {
    buf.write(gpu, &StepParams { pos: pos as u32, n: n as u32, ..Default::default() });
}

/// Builds the decode dispatches once per split mode and reuses them for every context (as the planner does).
fn check_decode(heads: usize, kv_heads: usize, hd: usize, capacity: usize, contexts: &[usize], splits: &[Split]) {
    for gpu in gpus().iter().chain(other_texture_reads_gpu()) {
        decode_cases(gpu, (heads, kv_heads, hd), capacity, contexts, splits);
    }
}

/// [`check_decode`] on one device; `shape` is (heads, kv_heads, head_dim).
fn decode_cases(
    gpu: &Gpu,
    (heads, kv_heads, hd): (usize, usize, usize),
    capacity: usize,
    contexts: &[usize],
    splits: &[Split],
) {
    let (cache, mirror) = filled_cache(gpu, capacity, kv_heads, hd, (heads * 131 + capacity) as u64);
    assert_eq!(cache.dtype(), if gpu.features().f16 { DType::F16 } else { DType::F32 });
    let buf = StepBuffer::new(gpu).unwrap();
    let q = Tensor::zeros(gpu, DType::F32, &[1, heads * hd]).unwrap();
    let out = Tensor::zeros(gpu, DType::F32, &[1, heads * hd]).unwrap();
    for &split in splits {
        let dispatches = attention_decode(gpu, &buf, &q, &cache, 0, &out, split).unwrap();
        for &ctx in contexts {
            let qv = random_vec((ctx * 7 + heads) as u64, heads * hd);
            q.write(gpu, &qv).unwrap();
            cache.check_step(ctx - 1, 1).unwrap();
            step(gpu, &buf, ctx - 1, 1);
            ops::run(gpu, &dispatches.iter().collect::<Vec<_>>()).unwrap();
            let want = reference::attention_decode(&qv, &mirror, ctx);
            assert_close(
                &format!("decode {heads}/{kv_heads} hd {hd} cap {capacity} ctx {ctx} {split:?} [{}]", gpu.features()),
                &out.read::<f32>(gpu).unwrap(),
                &want,
                ABS,
                REL,
            );
        }
    }
}

/// Batched decode (`attention_decode_rows`): rows of three sequences at scattered positions (a sequence's
/// first and last position, two rows of one sequence) in one dispatch, each against the twin on its own
/// sequence. The sequences are filled through `KvCache::copy_sequence` (random K/V written to sequence 0,
/// copied on, sequence 0 rewritten), so every position of every sequence differs and a row that reads
/// another sequence's positions, or past its own context, fails. Same tolerance as one sequence.
fn batched_decode_cases(gpu: &Gpu, (heads, kv_heads, hd): (usize, usize, usize), capacity: usize) {
    let dtype = if gpu.features().f16 { DType::F16 } else { DType::F32 };
    let cache = KvCache::with_sequences(gpu, 1, 3, capacity, kv_heads, hd, dtype).unwrap();
    let n = capacity * kv_heads * hd;
    for (seed, to) in [(11u64, Some(2)), (12, Some(1)), (13, None)] {
        cache.write(gpu, 0, 0, &random_vec(seed, n), &random_vec(seed + 100, n)).unwrap();
        if let Some(to) = to {
            cache.copy_sequence(gpu, 0, to).unwrap();
        }
    }
    let mirrors: Vec<KvMirror> = (0..3).map(|s| cache.read_sequence(gpu, 0, s).unwrap()).collect();
    assert_ne!(mirrors[1], mirrors[2], "the sequences hold different K/V");
    assert_eq!(cache.read(gpu, 0).unwrap(), mirrors[0], "read is sequence 0");
    let rows: Vec<(usize, usize)> = vec![(2, capacity - 1), (0, 0), (1, capacity / 3), (0, capacity / 2), (2, 1)];
    let table = Tensor::from_slice(
        gpu,
        &[rows.len(), 2],
        &rows.iter().flat_map(|&(s, p)| [s as u32, p as u32]).collect::<Vec<_>>(),
    )
    .unwrap();
    let width = heads * hd;
    let qv = random_vec((heads * 17 + capacity) as u64, rows.len() * width);
    let q = Tensor::from_slice(gpu, &[rows.len(), width], &qv).unwrap();
    let out = Tensor::zeros(gpu, DType::F32, &[rows.len(), width]).unwrap();
    for split in [Split::Auto, Split::Off, Split::Chunk(16), Split::Lanes, Split::LanesChunks(3)] {
        let dispatches = attention_decode_rows(gpu, &table, &q, &cache, 0, &out, split).unwrap();
        ops::run(gpu, &dispatches.iter().collect::<Vec<_>>()).unwrap();
        let got = out.read::<f32>(gpu).unwrap();
        for (r, &(seq, pos)) in rows.iter().enumerate() {
            let want = reference::attention_decode(&qv[r * width..(r + 1) * width], &mirrors[seq], pos + 1);
            assert_close(
                &format!(
                    "batched decode {heads}/{kv_heads} hd {hd} row {r} (sequence {seq} at {pos}) {split:?} [{}]",
                    gpu.describe()
                ),
                &got[r * width..(r + 1) * width],
                &want,
                ABS,
                REL,
            );
        }
    }
}

#[test]
fn batched_decode_rows_of_several_sequences() {
    for gpu in gpus().iter().chain(other_texture_reads_gpu()).chain(gpu_rules_gpu()) {
        // MobileLLM-125M's heads with a capacity that splits under GPU rules, 350M's, and no grouping.
        batched_decode_cases(gpu, (9, 3, 64), 200);
        batched_decode_cases(gpu, (15, 5, 64), 40);
        batched_decode_cases(gpu, (4, 4, 32), 70);
    }
}

#[test]
fn decode_125m_shape_long_cache() {
    // 9/3 heads, hd 64, capacity 2048: chunks of 64 (what Auto picks on GPUs); Off is one workgroup per KV
    // head; Lanes is what Auto picks on CPU devices.
    let splits = [Split::Chunk(DECODE_CHUNK), Split::Off, Split::Auto, Split::Lanes, Split::LanesChunks(2)];
    check_decode(9, 3, 64, 2048, &[1, 2, 63, 64, 65, 511, 2048], &splits);
}

#[test]
fn decode_350m_shape_ragged_capacity() {
    // 15/5 heads; capacity 300 is not a multiple of the 64 chunk (last chunk partial), full context 300.
    let splits = [Split::Chunk(DECODE_CHUNK), Split::Off, Split::Lanes, Split::LanesChunks(3)];
    check_decode(15, 5, 64, 300, &[1, 2, 64, 65, 129, 300], &splits);
}

#[test]
fn decode_small_heads_and_no_grouping() {
    // 4/2 heads hd 32, odd chunk and tile boundaries; 8/8 (group of 1).
    let splits = [Split::Chunk(16), Split::Off, Split::Auto, Split::Lanes, Split::LanesChunks(4)];
    check_decode(4, 2, 32, 65, &[1, 2, 3, 63, 64, 65], &splits);
    check_decode(8, 8, 32, 128, &[1, 65, 128], &[Split::Auto, Split::Chunk(64), Split::Lanes]);
    check_decode(8, 8, 64, 96, &[1, 33, 96], &[Split::Chunk(40), Split::Lanes]);
    // The lane kernels' written-out head ladder at its longest (8 heads a group), and one past it, where
    // Lanes falls back to the workgroup kernel.
    check_decode(8, 1, 32, 70, &[1, 9, 70], &[Split::Lanes, Split::LanesChunks(2)]);
    check_decode(9, 1, 32, 40, &[1, 17, 40], &[Split::Lanes]);
}

/// Head dims that do not tile the decode kernel's 64 threads evenly: 80 (20 quads a row, so 3 position
/// lanes and 4 threads idle in the V pass), 256 (64 quads: one lane), 12 (3 quads: 21 lanes, 1 idle thread).
/// The lane kernels take only multiples of 32, so `Lanes` runs the tiled kernel for 80 and 12.
#[test]
fn decode_head_dims_off_the_tile() {
    let splits = [Split::Off, Split::Chunk(DECODE_CHUNK), Split::Chunk(16), Split::Auto, Split::Lanes];
    check_decode(6, 2, 80, 150, &[1, 64, 65, 150], &splits);
    check_decode(4, 2, 256, 100, &[1, 63, 100], &splits);
    check_decode(6, 3, 12, 130, &[1, 2, 64, 129, 130], &splits);
}

/// The lane kernels at head dims of 4 (decode) and 3 (prefill) register pieces.
#[test]
fn lanes_head_dims() {
    check_decode(2, 1, 128, 40, &[1, 9, 40], &[Split::Lanes, Split::LanesChunks(3)]);
    check_prefill(4, 2, 96, 24, 9, &[(0, 9), (15, 9)]);
}

/// Prefill of each n onto an empty (pos 0) and a partly filled cache, with the grid sized for `max_n` rows.
/// The full-feature device runs both kernels (`prefill_lanes`, what `attention_prefill` picks on CPU
/// devices, and the tiled one); the bare device (no subgroups) has only the tiled one.
fn check_prefill(heads: usize, kv_heads: usize, hd: usize, capacity: usize, max_n: usize, cases: &[(usize, usize)]) {
    for (gpu, tiled) in gpus().iter().chain(other_texture_reads_gpu()).flat_map(|g| [(g, false), (g, true)]) {
        if tiled && !gpu.features().subgroups {
            continue; // the bare device's default is already the tiled kernel
        }
        prefill_cases(gpu, tiled, (heads, kv_heads, hd), capacity, max_n, cases);
    }
}

/// [`check_prefill`] on one device and kernel; `shape` is (heads, kv_heads, head_dim).
fn prefill_cases(
    gpu: &Gpu,
    tiled: bool,
    (heads, kv_heads, hd): (usize, usize, usize),
    capacity: usize,
    max_n: usize,
    cases: &[(usize, usize)],
) {
    let (cache, mirror) = filled_cache(gpu, capacity, kv_heads, hd, (heads * 17 + hd) as u64);
    let buf = StepBuffer::new(gpu).unwrap();
    let q = Tensor::zeros(gpu, DType::F32, &[max_n, heads * hd]).unwrap();
    let out = Tensor::zeros(gpu, DType::F32, &[max_n, heads * hd]).unwrap();
    let d = if tiled {
        attention_prefill_tiled(gpu, &buf, &q, &cache, 0, &out).unwrap()
    } else {
        attention_prefill(gpu, &buf, &q, &cache, 0, &out).unwrap()
    };
    for &(pos, n) in cases {
        let qv = random_vec((pos * 1000 + n) as u64, max_n * heads * hd);
        q.write(gpu, &qv).unwrap();
        cache.check_step(pos, n).unwrap();
        step(gpu, &buf, pos, n);
        ops::run(gpu, &[&d]).unwrap();
        let want = reference::attention_prefill(&qv[..n * heads * hd], &mirror, pos, n);
        let got = out.read::<f32>(gpu).unwrap();
        assert_close(
            &format!("{} {heads}/{kv_heads} hd {hd} pos {pos} n {n} [{}]", d.name(), gpu.features()),
            &got[..n * heads * hd],
            &want,
            ABS,
            REL,
        );
    }
}

#[test]
fn prefill_125m_shape() {
    check_prefill(9, 3, 64, 160, 128, &[(0, 1), (0, 7), (0, 128), (13, 1), (13, 7), (13, 128), (159, 1)]);
}

#[test]
fn prefill_other_groupings() {
    check_prefill(4, 2, 32, 80, 65, &[(0, 1), (0, 7), (0, 65), (15, 65), (79, 1)]);
    check_prefill(8, 8, 64, 40, 7, &[(0, 7), (33, 7)]);
    check_prefill(15, 5, 64, 72, 8, &[(0, 8), (64, 8)]);
    // The lane kernel's longest head ladder (8 heads a group), and one past it (the tiled kernel).
    check_prefill(8, 1, 32, 24, 9, &[(0, 9), (15, 9)]);
    check_prefill(9, 1, 32, 24, 9, &[(0, 9), (15, 9)]);
}

/// The tiled kernel (what GPUs run) at head dims of 3 and 4 register pieces, and at 48 (not a multiple of
/// 32), which takes its loop-indexed fallback. One device: each head dim is a pipeline compile per device.
#[test]
fn prefill_head_dims() {
    let gpu = &gpus()[0];
    prefill_cases(gpu, true, (4, 2, 96), 40, 9, &[(0, 9), (20, 9)]);
    prefill_cases(gpu, true, (2, 1, 128), 24, 5, &[(0, 5), (11, 5)]);
    prefill_cases(gpu, true, (6, 3, 48), 40, 9, &[(0, 9), (20, 9)]);
}

/// Seeded random shapes: query heads in groups of 1-8 over 1-5 KV heads, head dims that are multiples of 4
/// (the lane kernels' multiples of 32 most often), any capacity up to 600 and contexts inside it, the
/// device's own split choice and one other; then prefills of random length at random positions. Each shape
/// on one of the two test devices or under GPU rules (chunked splits, the tiled prefill), and only three: every shape is a pipeline compile per kernel, seconds each on
/// lavapipe with a cold shader cache.
#[test]
fn seeded_random_shapes() {
    let mut rng = ShapeRng::new(7);
    let gpus = gpus();
    let devices: Vec<&Gpu> = gpus.iter().chain(gpu_rules_gpu()).collect();
    for _ in 0..3 {
        let gpu = rng.pick(&devices);
        let kv_heads = rng.range(1, 5);
        let shape = (
            kv_heads * rng.range(1, 8),
            kv_heads,
            if rng.chance(70) { 32 * rng.range(1, 4) } else { 4 * rng.range(1, 40) },
        );
        let capacity = rng.range(1, 600);
        let contexts: Vec<usize> = (0..3).map(|_| rng.range(1, capacity)).collect();
        let splits = [Split::Off, Split::Lanes, Split::Chunk(rng.range(1, 128)), Split::LanesChunks(rng.range(2, 4))];
        decode_cases(gpu, shape, capacity, &contexts, &[Split::Auto, rng.pick(&splits)]);
        let max_n = rng.range(1, capacity.min(70));
        let cases: Vec<(usize, usize)> = (0..2)
            .map(|_| {
                let n = rng.range(1, max_n);
                (rng.range(0, capacity - n), n)
            })
            .collect();
        prefill_cases(gpu, false, shape, capacity, max_n, &cases);
    }
}

/// Decode equals the last row of a prefill of the same step (the two kernels agree on the cache).
#[test]
fn decode_is_last_prefill_row() {
    let gpu = &gpus()[0];
    let (cache, _) = filled_cache(gpu, 200, 3, 64, 5);
    let buf = StepBuffer::new(gpu).unwrap();
    let q = Tensor::from_slice(gpu, &[7, 9 * 64], &random_vec(9, 7 * 9 * 64)).unwrap();
    let a = Tensor::zeros(gpu, DType::F32, &[7, 9 * 64]).unwrap();
    let b = Tensor::zeros(gpu, DType::F32, &[7, 9 * 64]).unwrap();
    let p = attention_prefill(gpu, &buf, &q, &cache, 0, &a).unwrap();
    let d = attention_decode(gpu, &buf, &q, &cache, 0, &b, Split::Chunk(32)).unwrap();
    step(gpu, &buf, 100, 7);
    ops::run(gpu, &[&p, &d[0], &d[1]]).unwrap();
    let (a, b) = (a.read::<f32>(gpu).unwrap(), b.read::<f32>(gpu).unwrap());
    assert_close("decode vs prefill last row", &b[6 * 576..], &a[6 * 576..], ABS, REL);
}

#[test]
fn cache_sizes_and_capacity_errors() {
    for gpu in gpus() {
        // MobileLLM-125M with layer sharing: 30 unique layers run 60 times, 60 slots.
        let slots = mobilellm_kernels::kv_cache::executed_layers(30, true);
        let cache = KvCache::new(gpu, slots, 256, 3, 64).unwrap();
        assert_eq!(cache.slots(), 60);
        let elem = if gpu.features().f16 { 2 } else { 4 };
        assert_eq!(cache.size_bytes(), (60 * 2 * 3 * 256 * 64 * elem) as u64);
        assert!(cache.check_step(255, 1).is_ok());
        let err = cache.check_step(250, 7).unwrap_err();
        assert!(matches!(err, Error::Capacity { requested: 257, capacity: 256, .. }), "{err}");
        let err = cache.write(gpu, 0, 256, &[0.0; 192], &[0.0; 192]).unwrap_err();
        assert!(matches!(err, Error::Capacity { .. }), "{err}");
        assert!(cache.binding(60).is_err());
        // A prefill grid larger than the cache is refused when planned.
        let q = Tensor::zeros(gpu, DType::F32, &[257, 576]).unwrap();
        let buf = StepBuffer::new(gpu).unwrap();
        let err = attention_prefill(gpu, &buf, &q, &cache, 0, &q.clone()).unwrap_err();
        assert!(matches!(err, Error::Capacity { .. }), "{err}");
        // Query width not a multiple of the cache's KV heads.
        let q = Tensor::zeros(gpu, DType::F32, &[1, 4 * 64]).unwrap();
        let out = Tensor::zeros(gpu, DType::F32, &[1, 4 * 64]).unwrap();
        let err = attention_decode(gpu, &buf, &q, &cache, 0, &out, Split::Auto).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
}

/// The whole attention half of a layer as the planner wires it: `qkv_rope` (norm, projection, RoPE,
/// cache write) -> attention -> `gemv` o_proj with the residual add fused (accumulate), for a prefill of 7
/// positions and then one decode step (separate 7-row and 1-row plans sharing the cache), vs the CPU twins.
/// Tolerance: a wiring test. Weights ~ U(-1,1)/sqrt(hidden) keep q, k, v, attention and o_proj outputs
/// O(1), so the per-kernel errors argued in tests/qkv_rope.rs (~1e-3 on outputs of ~15, here ~5e-5) pass
/// through softmax and o_proj at about the same size; with an f16 cache each side rounds its own K/V and
/// may differ by one f16 step (2^-11 relative) on a few elements, moving scores by ~1e-4. abs 1e-3 rel 1e-3.
#[test]
fn attention_block_chain_with_fused_residual() {
    use mobilellm_kernels::ops::gemv::gemv;
    use mobilellm_kernels::ops::qkv_rope::{fuse_qkv, qkv_rope, QkvRopeOperands, QkvTarget, RopeTable};
    use mobilellm_kernels::quant::{GpuWeight, HostWeight, WeightType};
    use mobilellm_kernels::reference::{QkvShape, RopeLayout};
    let (heads, kvn, hd, hidden, capacity) = (9usize, 3usize, 64usize, 576usize, 32usize);
    let s = QkvShape { heads, kv_heads: kvn, head_dim: hd, theta: 10000.0, layout: RopeLayout::Halves, eps: 1e-5 };
    let scale = 1.0 / (hidden as f32).sqrt();
    let mk = |rows: usize, cols: usize, seed: u64| {
        let data: Vec<f32> = random_vec(seed, rows * cols).iter().map(|v| v * scale).collect();
        HostWeight::quantize(WeightType::Q8_0, rows, cols, &data).unwrap()
    };
    let wqkv = fuse_qkv(&mk(heads * hd, hidden, 1), &mk(kvn * hd, hidden, 2), &mk(kvn * hd, hidden, 3)).unwrap();
    let wo = mk(hidden, heads * hd, 4);
    let norm: Vec<f32> = random_vec(5, hidden).iter().map(|v| 1.0 + 0.5 * v).collect();
    let x0 = random_vec(6, 8 * hidden);
    for gpu in gpus() {
        let what = format!("attention block [{}]", gpu.features());
        let cache = KvCache::new(gpu, 1, capacity, kvn, hd).unwrap();
        let rope = RopeTable::new(gpu, capacity, hd, s.theta).unwrap();
        let (wqkv_g, wo_g) = (GpuWeight::upload(gpu, &wqkv).unwrap(), GpuWeight::upload(gpu, &wo).unwrap());
        let norm_g = Tensor::from_slice(gpu, &[hidden], &norm).unwrap();
        let buf = StepBuffer::new(gpu).unwrap();
        let plan = |rows: usize| {
            let x = Tensor::zeros(gpu, DType::F32, &[rows, hidden]).unwrap();
            let q = Tensor::zeros(gpu, DType::F32, &[rows, heads * hd]).unwrap();
            let a = Tensor::zeros(gpu, DType::F32, &[rows, heads * hd]).unwrap();
            let target = QkvTarget { step: &buf, rope: &rope, layout: s.layout, q_out: &q, cache: &cache, slot: 0 };
            let operands = QkvRopeOperands { x: &x, norm_w: &norm_g, eps: s.eps, w_qkv: &wqkv_g, target };
            let mut ds = vec![qkv_rope(gpu, &operands).unwrap()];
            if rows == 1 {
                ds.extend(attention_decode(gpu, &buf, &q, &cache, 0, &a, Split::Chunk(8)).unwrap());
            } else {
                ds.push(attention_prefill(gpu, &buf, &q, &cache, 0, &a).unwrap());
            }
            ds.push(gemv(gpu, &wo_g, &a, &x, 0, true).unwrap());
            (x, ds)
        };
        let (xp, prefill) = plan(7);
        let (xd, decode) = plan(1);
        let mut mirror = KvMirror::zeros(kvn, capacity, hd);
        for (pos, n, x, ds) in [(0usize, 7usize, &xp, &prefill), (7, 1, &xd, &decode)] {
            let xin = &x0[pos * hidden..(pos + n) * hidden];
            x.write(gpu, xin).unwrap();
            cache.check_step(pos, n).unwrap();
            step(gpu, &buf, pos, n);
            ops::run(gpu, &ds.iter().collect::<Vec<_>>()).unwrap();
            let (q, k, v) = reference::qkv_rope(xin, &norm, &wqkv.dequantize(), pos, s);
            mirror.store(pos, &k, &v, cache.dtype());
            let att = reference::attention_prefill(&q, &mirror, pos, n);
            let o = reference::gemv(&wo, &att);
            let want: Vec<f32> = xin.iter().zip(&o).map(|(a, b)| a + b).collect();
            assert_close(&format!("{what} pos {pos} n {n}"), &x.read::<f32>(gpu).unwrap(), &want, 1e-3, 1e-3);
        }
    }
}

#[test]
fn split_rule() {
    use mobilellm_kernels::ops::attention::{auto_chunk, SPLIT_ABOVE};
    use mobilellm_kernels::DeviceClass;
    assert_eq!(auto_chunk(DeviceClass::Gpu, SPLIT_ABOVE), None);
    assert_eq!(auto_chunk(DeviceClass::Gpu, SPLIT_ABOVE + 1), Some(DECODE_CHUNK));
    assert_eq!(auto_chunk(DeviceClass::Gpu, 2048), Some(64));
    // CPU devices never split (measured in `cargo bench --bench kernels -- attention`).
    assert_eq!(auto_chunk(DeviceClass::Cpu, 2048), None);
    assert_eq!(auto_chunk(DeviceClass::Cpu, 1 << 20), None);
}
