//! Decode attention rows: unsplit vs split (flash-decoding chunks of `DECODE_CHUNK`) vs lanes
//! (`decode_lanes`, what CPU devices use) at contexts 64, 128,
//! 512 and 2048 over a cache of capacity 2048, for 9/3 and 15/5 heads, f16 and f32 KV cache. Bytes: the
//! K and V read for the context (plus q and the output), so GB/s is the KV stream rate.
//! (Moved here from the ignored micro-bench in tests/attention.rs.)
//! Prefill rows: the tiled kernel vs `prefill_lanes` (what CPU devices with subgroups use) for n = 64 and
//! 256 new positions onto an empty f16 cache.
//! Context shift rows (`kv_shift`): one slot of capacity 2048, full, dropping 1024 positions after 16 (the
//! moved rows read and written once each in the slot's type, and once each way through the f32 scratch).

use mobilellm_kernels::kv_cache::KvCache;
use mobilellm_kernels::model::RopeLayout;
use mobilellm_kernels::ops::attention::{
    attention_decode, attention_prefill, attention_prefill_tiled, auto_chunk, Split, DECODE_CHUNK,
};
use mobilellm_kernels::ops::kv_shift::{kv_shift, scratch_len, Shift};
use mobilellm_kernels::ops::qkv_rope::RopeTable;
use mobilellm_kernels::ops::{Dispatch, StepBuffer, StepParams};
use mobilellm_kernels::{DType, Tensor};

use crate::common::Bench;
use crate::shapes::{data, models, Shape};

/// Capacity of the benchmarked cache: a planner with context 2048.
const CAPACITY: usize = 2048;

pub fn bench_attention(b: &mut Bench) {
    let contexts: &[usize] = if b.args.quick { &[128, 2048] } else { &[64, 128, 512, 2048] };
    let auto = match auto_chunk(b.gpu.device_class(), CAPACITY) {
        Some(c) => format!("split {c}"),
        None if b.gpu.is_cpu_class() => "lanes".to_string(),
        None => "unsplit".to_string(),
    };
    let mut summary = Vec::new();
    for m in models(b) {
        for dtype in [DType::F16, DType::F32] {
            let tag = format!("{}/{} {dtype}", m.heads, m.kv_heads);
            if !b.args.wants(&format!("attention {tag}")) {
                continue;
            }
            if dtype == DType::F16 && !b.gpu.features().f16 {
                println!("attention {tag}: skipped (no SHADER_F16 on this device)");
                continue;
            }
            let gpu = &b.gpu;
            let width = m.heads * m.head_dim;
            let (cache, step, q, out) = decode_operands(b, m, dtype);
            let off = attention_decode(gpu, &step, &q, &cache, 0, &out, Split::Off).expect("decode");
            let split = attention_decode(gpu, &step, &q, &cache, 0, &out, Split::Chunk(DECODE_CHUNK)).expect("decode");
            let lanes = attention_decode(gpu, &step, &q, &cache, 0, &out, Split::Lanes).expect("decode");
            // Two even chunks: balances 3 KV heads over 2 host threads (1.5 rounds instead of 2).
            let chunks = 2;
            let split_lanes = Split::LanesChunks(chunks);
            let lanes_split = attention_decode(gpu, &step, &q, &cache, 0, &out, split_lanes).expect("decode");
            let mut pays_from = None;
            for &ctx in contexts {
                cache.check_step(ctx - 1, 1).expect("ctx within capacity");
                step.write(&b.gpu, &StepParams { pos: (ctx - 1) as u32, n: 1, top_p: 1.0, ..Default::default() });
                let bytes = (2 * ctx * m.kv_heads * m.head_dim * dtype.size() + 2 * width * 4) as u64;
                let name = format!("{tag} ctx {ctx} cap {CAPACITY}");
                let (n_off, n_split) = (format!("unsplit {name}"), format!("split{DECODE_CHUNK} {name}"));
                let (n_lanes, n_lanes_split) = (format!("lanes {name}"), format!("lanes/{chunks} {name}"));
                let us = b.add_blocks(
                    "attention",
                    &[
                        (&n_off, &refs(&off)),
                        (&n_split, &refs(&split)),
                        (&n_lanes, &refs(&lanes)),
                        (&n_lanes_split, &refs(&lanes_split)),
                    ],
                    bytes,
                );
                let (u, s, l, ls) = (us[0], us[1], us[2], us[3]);
                b.note(format!(
                    "split / unsplit = {:.2}, lanes / unsplit = {:.2}, lanes/{chunks} / lanes = {:.2} (auto at \
                     capacity {CAPACITY}: {auto})",
                    s / u,
                    l / u,
                    ls / l
                ));
                // Pays: at least 5% faster (closer is within the spread of runs on a shared machine).
                if s < 0.95 * u && pays_from.is_none() {
                    pays_from = Some(ctx);
                }
                summary.push((name, u, s, l, ls));
            }
            let verdict = match pays_from {
                Some(ctx) => format!("split pays from ctx {ctx} on"),
                None => format!("split never pays (by >= 5%; ctx {contexts:?}) on"),
            };
            println!("attention {tag}: {verdict} this device");
        }
    }
    if !summary.is_empty() {
        println!(
            "attention summary (µs: unsplit | split{DECODE_CHUNK} | lanes | lanes in chunks | split/unsplit | \
             lanes/unsplit | chunks/lanes)"
        );
        for (name, u, s, l, ls) in summary {
            println!(
                "  {name:<28} {u:>10.1} {s:>10.1} {l:>10.1} {ls:>10.1} {:>6.2} {:>6.2} {:>6.2}",
                s / u,
                l / u,
                ls / l
            );
        }
    }
}

pub fn bench_attention_prefill(b: &mut Bench) {
    let sizes: &[usize] = if b.args.quick { &[64] } else { &[64, 256] };
    for m in models(b) {
        let dtype = if b.gpu.features().f16 { DType::F16 } else { DType::F32 };
        let tag = format!("{}/{} {dtype}", m.heads, m.kv_heads);
        if !b.args.wants(&format!("attention prefill {tag}")) {
            continue;
        }
        let gpu = &b.gpu;
        let max_n = *sizes.last().expect("sizes");
        let cache = KvCache::with_dtype(gpu, 1, max_n, m.kv_heads, m.head_dim, dtype).expect("cache");
        let kv_len = max_n * m.kv_heads * m.head_dim;
        cache.write(gpu, 0, 0, &data(21, kv_len, 1.0), &data(22, kv_len, 1.0)).expect("fill cache");
        let step = StepBuffer::new(gpu).expect("step");
        let width = m.heads * m.head_dim;
        let q = Tensor::from_slice(gpu, &[max_n, width], &data(23, max_n * width, 1.0)).expect("q");
        let out = Tensor::zeros(gpu, DType::F32, &[max_n, width]).expect("out");
        let tiled = attention_prefill_tiled(gpu, &step, &q, &cache, 0, &out).expect("prefill");
        let chosen = attention_prefill(gpu, &step, &q, &cache, 0, &out).expect("prefill");
        for &n in sizes {
            step.write(&b.gpu, &StepParams { pos: 0, n: n as u32, top_p: 1.0, ..Default::default() });
            let bytes = (2 * n * m.kv_heads * m.head_dim * dtype.size() + 2 * n * width * 4) as u64;
            let (n_tiled, n_chosen) = (format!("tiled {tag} n {n}"), format!("{} {tag} n {n}", chosen.name()));
            let mut rows: Vec<(&str, Vec<&Dispatch>)> = vec![(&n_tiled, vec![&tiled])];
            if chosen.name() != tiled.name() {
                rows.push((&n_chosen, vec![&chosen]));
            }
            let blocks: Vec<(&str, &[&Dispatch])> = rows.iter().map(|(n, d)| (*n, d.as_slice())).collect();
            let us = b.add_blocks("attention", &blocks, bytes);
            if us.len() == 2 {
                b.note(format!("tiled / {} = {:.2}", chosen.name(), us[0] / us[1]));
            }
        }
    }
}

fn refs(ds: &[Dispatch]) -> Vec<&Dispatch> {
    ds.iter().collect()
}

/// `ATTN_SWEEP=1`: how one decode tile's time grows with the positions in it (unsplit, 9/3 heads, the
/// device's KV dtype, contexts 1..128 over a cache of capacity 2048): a flat line is per-tile latency (the
/// barriers and serial steps), a slope the per-position work.
pub fn sweep_attention(b: &mut Bench) {
    let Some(m) = models(b).first() else { return };
    let dtype = if b.gpu.features().f16 { DType::F16 } else { DType::F32 };
    let gpu = &b.gpu;
    let width = m.heads * m.head_dim;
    let (cache, step, q, out) = decode_operands(b, m, dtype);
    let off = attention_decode(gpu, &step, &q, &cache, 0, &out, Split::Off).expect("decode");
    let split = attention_decode(gpu, &step, &q, &cache, 0, &out, Split::Chunk(DECODE_CHUNK)).expect("decode");
    for ctx in [1, 2, 8, 16, 32, 48, 64, 65, 96, 128] {
        step.write(&b.gpu, &StepParams { pos: (ctx - 1) as u32, n: 1, top_p: 1.0, ..Default::default() });
        let bytes = (2 * ctx * m.kv_heads * m.head_dim * dtype.size() + 2 * width * 4) as u64;
        let name = format!("{}/{} {dtype} ctx {ctx}", m.heads, m.kv_heads);
        let (n_off, n_split) = (format!("sweep unsplit {name}"), format!("sweep split{DECODE_CHUNK} {name}"));
        b.add_blocks("attention", &[(&n_off, &refs(&off)), (&n_split, &refs(&split))], bytes);
    }
}

pub fn bench_kv_shift(b: &mut Bench) {
    let shift = Shift { used: CAPACITY, keep: 16, discard: CAPACITY / 2 };
    for m in models(b) {
        for dtype in [DType::F16, DType::F32] {
            let name = format!("{}x{} {dtype} drop {} of {}", m.kv_heads, m.head_dim, shift.discard, shift.used);
            if !b.args.wants(&format!("kv_shift {name}")) || (dtype == DType::F16 && !b.gpu.features().f16) {
                continue;
            }
            let (cache, ..) = decode_operands(b, m, dtype);
            let rope = RopeTable::new(&b.gpu, CAPACITY, m.head_dim, 10_000.0).expect("rope");
            let scratch = Tensor::zeros(&b.gpu, DType::F32, &[scratch_len(&cache)]).expect("scratch");
            let shift = kv_shift(&b.gpu, &cache, &rope, RopeLayout::Halves, shift, &scratch).expect("kv_shift");
            let moved = 2 * m.kv_heads * m.head_dim * (CAPACITY - 16 - CAPACITY / 2);
            let bytes = (moved * (2 * dtype.size() + 2 * 4)) as u64;
            b.add_block("kv_shift", &name, &shift.iter().collect::<Vec<_>>(), bytes);
        }
    }
}

/// A filled cache of capacity [`CAPACITY`], a step buffer, one query row and its output for shape `m`.
fn decode_operands(b: &Bench, m: &Shape, dtype: DType) -> (KvCache, StepBuffer, Tensor, Tensor) {
    let gpu = &b.gpu;
    let cache = KvCache::with_dtype(gpu, 1, CAPACITY, m.kv_heads, m.head_dim, dtype).expect("cache");
    let kv_len = CAPACITY * m.kv_heads * m.head_dim;
    cache.write(gpu, 0, 0, &data(21, kv_len, 1.0), &data(22, kv_len, 1.0)).expect("fill cache");
    let step = StepBuffer::new(gpu).expect("step");
    let width = m.heads * m.head_dim;
    let q = Tensor::from_slice(gpu, &[1, width], &data(23, width, 1.0)).expect("q");
    let out = Tensor::zeros(gpu, DType::F32, &[1, width]).expect("out");
    (cache, step, q, out)
}
