//! Batched decoding of several sequences (`Model::decode_batch`) against the transformers goldens of the
//! tiny models (`tests/data/tiny-*`, the ones `tests/model.rs` checks the one-sequence path with): three
//! sequences advanced together, with prompts fed as interleaved rows of one batch, row counts changing from
//! batch to batch, a sequence filled from the one-sequence context, copied, and moved back; under both
//! feature sets, both texture reads, GPU launch rules (split decode with its merge) and f16 / f32 caches.
mod common;

use common::{data_dir, gpu_rules_gpu, gpus, max_diff, other_texture_reads_gpu, Golden};
use mobilellm_kernels::model::{HostModel, Model, PlanOptions};
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::{DType, Error, Gpu};

const VOCAB: usize = 512;

/// As in `tests/model.rs`: the goldens are f32 transformers runs; the GPU sums in other orders (~1e-6 on
/// logits below 0.8), so the contract 1e-4 holds with an f32 cache. An f16 cache rounds K and V to
/// 11 significant bits, moving logits by a few 1e-4: bound 1e-3.
const F32_BOUND: f32 = 1e-4;
const F16_KV_BOUND: f32 = 1e-3;

fn row(all: &[f32], i: usize) -> &[f32] {
    &all[i * VOCAB..(i + 1) * VOCAB]
}

fn load(gpu: &Gpu, name: &str, kv_dtype: DType, context: usize) -> Model {
    let host = HostModel::from_safetensors_dir(&data_dir(name), WeightType::F32).unwrap();
    Model::new(gpu, &host, &PlanOptions { context, max_batch: 16, kv_dtype: Some(kv_dtype) }).unwrap()
}

/// Runs the goldens of `name` as a batch of three sequences; returns the largest logit difference.
/// Sequence 0 takes the golden prompt and its greedy continuation, sequence 1 the one-token prompt and its
/// continuation, sequence 2 the prompt prefilled by the one-sequence path, then the forced tokens.
fn run_batch_goldens(model: &mut Model, name: &str) -> f32 {
    let g = Golden::open(name);
    let (prompt, gen, gen_logits) = (g.ids("prompt_ids"), g.ids("gen_ids"), g.f32("gen_logits"));
    let (single, single_gen) = (g.ids("single_prompt_ids"), g.ids("single_gen_ids"));
    let single_logits = g.f32("single_gen_logits");
    let (forced, forced_logits) = (g.ids("forced_ids"), g.f32("forced_logits"));
    let mut worst = 0.0f32;
    model.reserve_sequences(3).unwrap();
    assert_eq!(model.sequences(), 3);

    // Both prompts in one batch, their rows interleaved: each row's logits are its prefix's.
    let mut rows = Vec::new();
    for (i, &t) in prompt.iter().enumerate() {
        rows.push((0, t));
        if let Some(&s) = single.get(i) {
            rows.push((1, s));
        }
    }
    let (picks, logits) = model.decode_batch_logits(&rows).unwrap();
    let (prefill, single_prefill) = (g.f32("prefill_logits"), g.f32("single_prefill_logits"));
    let mut seen = [0usize; 2];
    for (r, &(seq, _)) in rows.iter().enumerate() {
        let want = if seq == 0 { row(&prefill, seen[0]) } else { row(&single_prefill, seen[1]) };
        worst = worst.max(max_diff(row(&logits, r), want));
        seen[seq] += 1;
    }
    assert_eq!(picks[rows.len() - 1], gen[0], "{name}: sequence 0's first greedy token");
    assert_eq!(picks[1], single_gen[0], "{name}: sequence 1's first greedy token");
    assert_eq!((model.sequence_len(0).unwrap(), model.sequence_len(1).unwrap()), (prompt.len(), 1));

    // Sequence 2: the prompt through the one-sequence prefill, copied in.
    model.reset();
    model.prefill(&prompt).unwrap();
    model.context_to_sequence(2).unwrap();
    assert_eq!(model.sequence_len(2).unwrap(), prompt.len());

    // Decode: the forced tokens alone first (a one-row batch), then all three sequences.
    for i in 0..forced.len() {
        let mut rows = vec![(2, forced[i])];
        if i > 0 {
            rows.extend([(0, gen[i - 1]), (1, single_gen[i - 1])]);
        }
        let (picks, logits) = model.decode_batch_logits(&rows).unwrap();
        worst = worst.max(max_diff(row(&logits, 0), row(&forced_logits, i)));
        if i > 0 {
            worst = worst.max(max_diff(row(&logits, 1), row(&gen_logits, i)));
            worst = worst.max(max_diff(row(&logits, 2), row(&single_logits, i)));
            assert_eq!((picks[1], picks[2]), (gen[i], single_gen[i]), "{name}: greedy tokens {i}");
        }
    }

    // Back to the one-sequence API: sequence 0's next logits.
    let next = g.f32("gen_next_logits");
    model.sequence_to_context(0).unwrap();
    assert_eq!(model.position(), prompt.len() + gen.len() - 1);
    let (_, logits) = model.step_logits(gen[gen.len() - 1]).unwrap();
    worst = worst.max(max_diff(&logits, &next));

    // A copy of sequence 0 continues exactly as sequence 0 does.
    model.copy_sequence(0, 1).unwrap();
    assert_eq!(model.sequence_len(1).unwrap(), model.sequence_len(0).unwrap());
    let last = gen[gen.len() - 1];
    let (picks, logits) = model.decode_batch_logits(&[(0, last), (1, last)]).unwrap();
    assert_eq!(picks[0], picks[1]);
    worst = worst.max(max_diff(row(&logits, 0), &next)).max(max_diff(row(&logits, 1), &next));
    worst
}

fn check(gpu: &Gpu, name: &str, context: usize) {
    let mut kv = vec![(DType::F32, F32_BOUND)];
    if gpu.features().f16 {
        kv.push((DType::F16, F16_KV_BOUND));
    }
    for (kv_dtype, bound) in kv {
        let worst = run_batch_goldens(&mut load(gpu, name, kv_dtype, context), name);
        eprintln!("{name} batch, {kv_dtype} KV, context {context} [{}]: max |logit diff| {worst:.2e}", gpu.describe());
        assert!(worst <= bound, "{name} batch, {kv_dtype} KV [{}]: {worst}", gpu.describe());
    }
}

#[test]
fn batched_sequences_match_the_goldens() {
    for gpu in gpus() {
        for name in ["tiny-shared", "tiny-plain"] {
            // 64: texture sequences share a row; 300: each spans whole rows.
            for context in [64, 300] {
                check(gpu, name, context);
            }
        }
    }
}

#[test]
fn batched_sequences_match_the_goldens_on_other_devices() {
    // GPU rules split decode attention above 128 positions: per-row chunks and merge.
    let others = [gpu_rules_gpu(), other_texture_reads_gpu()];
    for gpu in others.into_iter().flatten() {
        check(gpu, "tiny-shared", 300);
    }
}

#[test]
fn bad_batches_change_nothing() {
    let gpu = &gpus()[0];
    let mut model = load(gpu, "tiny-plain", DType::F32, 8);
    let is_invalid = |e: Error| matches!(e, Error::InvalidArgument { .. } | Error::Capacity { .. });
    assert!(is_invalid(model.decode_batch(&[(0, 1)]).unwrap_err()), "no sequences reserved");
    assert!(model.reserve_sequences(0).is_err());
    model.reserve_sequences(2).unwrap();
    model.decode_batch(&[(0, 5), (0, 6), (1, 7)]).unwrap();
    let lens = |m: &Model| (m.sequence_len(0).unwrap(), m.sequence_len(1).unwrap());
    assert_eq!(lens(&model), (2, 1));
    for bad in [vec![], vec![(0, 5), (2, 1)], vec![(0, VOCAB as u32)], vec![(1, 1); 8], vec![(0, 1); 17]] {
        let err = model.decode_batch(&bad).unwrap_err();
        assert!(is_invalid(err), "{bad:?}");
        assert_eq!(lens(&model), (2, 1), "{bad:?} changed the lengths");
    }
    assert!(model.sequence_len(2).is_err());
    assert!(model.copy_sequence(0, 2).is_err());
    assert!(model.clear_sequence(5).is_err());
    // Sequence 1 holds 7 more (8 positions): then it is full.
    model.decode_batch(&[(1, 1); 7]).unwrap();
    assert!(model.decode_batch(&[(1, 1)]).is_err());
    model.clear_sequence(1).unwrap();
    assert_eq!(lens(&model), (2, 0));
    model.decode_batch(&[(1, 1)]).unwrap();
}
