//! Batched decoding of several sequences (`Model::decode_batch`) against the transformers goldens of the
//! tiny models (`tests/data/tiny-*`, the ones `tests/model.rs` checks the one-sequence path with): three
//! sequences advanced together, with prompts fed as interleaved rows of one batch, row counts changing from
//! batch to batch, a sequence filled from the one-sequence context, copied, and moved back; under both
//! feature sets, both texture reads, GPU launch rules (split decode with its merge) and f16 / f32 caches.
//! Sequences sampled in a batch, each with its own settings and mask, draw what they draw alone.
mod common;

use common::{data_dir, gpu_rules_gpu, gpus, max_diff, other_texture_reads_gpu, sentencepiece_checkpoint, Golden};
use mobilellm_kernels::model::{HostModel, Model, PlanOptions, RowLogprobs, Sampling};
use mobilellm_kernels::ops::sample::{Penalties, TokenMask};
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

/// A pick and what its row reported.
type Pick = (u32, RowLogprobs);

/// The one-sequence API's picks for `prompt` with `sampling`, `mask` and `logprobs` (the pick's, how many
/// best candidates): the prefill's pick, then `steps` decode steps.
fn alone(model: &mut Model, prompt: &[u32], how: &How, steps: usize) -> Vec<Pick> {
    model.reset();
    set_alone(model, how);
    let report = |model: &Model, token: u32| {
        let top = model.last_top_logprobs().to_vec();
        (token, RowLogprobs { logprob: model.last_logprob(), top })
    };
    let first = model.prefill(prompt).unwrap();
    let mut picks = vec![report(model, first)];
    for _ in 0..steps {
        let token = model.step(picks[picks.len() - 1].0).unwrap();
        picks.push(report(model, token));
    }
    set_alone(model, &How::default());
    picks
}

/// How a sequence picks: settings, mask, log-probabilities.
#[derive(Clone, Default)]
struct How {
    sampling: Sampling,
    mask: Option<TokenMask>,
    logprobs: (bool, usize),
}

fn set_alone(model: &mut Model, how: &How) {
    model.set_sampling(how.sampling).unwrap();
    model.set_token_mask(how.mask.as_ref()).unwrap();
    model.set_logprobs(how.logprobs.0);
    model.set_top_logprobs(how.logprobs.1).unwrap();
}

/// The same picks, and log-probabilities within 1e-5: the two paths' logits agree to ~1e-7 and each sums
/// 512 exponentials in f32 (~1e-7 relative), so 1e-5 leaves two orders of magnitude.
fn assert_same_picks(got: &[Pick], want: &[Pick], what: &str) {
    let ids = |p: &[Pick]| {
        p.iter()
            .map(|(t, r)| (*t, r.logprob.is_some(), r.top.iter().map(|c| c.0).collect()))
            .collect::<Vec<(u32, bool, Vec<u32>)>>()
    };
    assert_eq!(ids(got), ids(want), "{what}");
    for ((_, g), (_, w)) in got.iter().zip(want) {
        let values = |r: &RowLogprobs| r.logprob.into_iter().chain(r.top.iter().map(|c| c.1)).collect::<Vec<f32>>();
        for (a, b) in values(g).into_iter().zip(values(w)) {
            assert!((a - b).abs() <= 1e-5 && a <= 0.0, "{what}: log-probability {a} vs {b}");
        }
    }
}

/// Four sequences sampled together, each its own way: greedy (one-token prompt); top-k with penalties over
/// its last 8 tokens, reporting each pick's log-probability and the 3 best candidates; top-p and min-p under
/// a mask, with penalties over the prompt fed by the one-sequence prefill (`context_to_sequence` carries the
/// tokens the penalties look at), reporting the 5 best candidates; and a copy of the second one
/// (`copy_sequence` carries the tokens too), with the same settings, reporting nothing. Each draws, token for
/// token, what the one-sequence path draws with the same settings and seed, and reports the same: the seed
/// of a draw is `seed + position` both ways, and the logits agree to ~1e-7
/// (`batched_sequences_match_the_goldens`), so a pick could only differ at a near tie (probability ~1e-6 per
/// draw; the seeds here are fixed).
#[test]
fn each_sequence_samples_as_it_would_alone() {
    let g = Golden::open("tiny-shared");
    let prompts = [g.ids("single_prompt_ids"), g.ids("prompt_ids"), g.ids("prompt_ids")[1..].to_vec()];
    let penalties = Penalties { repeat: 1.5, frequency: 0.3, presence: 0.2 };
    let top_k = Sampling { temperature: 0.9, top_k: 20, seed: 5, penalties, penalty_last_n: 8, ..Sampling::default() };
    let repeat = Penalties { repeat: 1.3, ..Penalties::OFF };
    let top_p =
        Sampling { temperature: 1.3, top_p: 0.9, min_p: 0.02, seed: 11, penalties: repeat, ..Sampling::default() };
    let mask = TokenMask::allowing(VOCAB, (0..VOCAB as u32).step_by(3)).unwrap();
    let hows = [
        How::default(),
        How { sampling: top_k, logprobs: (true, 3), ..How::default() },
        How { sampling: top_p, mask: Some(mask.clone()), logprobs: (false, 5) },
        How { sampling: top_k, ..How::default() },
    ];
    let steps = 10;
    for gpu in gpus() {
        let mut model = load(gpu, "tiny-shared", DType::F32, 64);
        // Sequence 3 is a copy of sequence 1 after its prompt.
        let want: Vec<Vec<Pick>> =
            (0..4).map(|s| alone(&mut model, &prompts[[0, 1, 2, 1][s]], &hows[s], steps)).collect();
        model.reserve_sequences(4).unwrap();
        for (seq, how) in hows.iter().enumerate() {
            model.set_sequence_sampling(seq, how.sampling).unwrap();
            model.set_sequence_mask(seq, how.mask.as_ref()).unwrap();
            model.set_sequence_logprobs(seq, how.logprobs.0, how.logprobs.1).unwrap();
        }
        assert_eq!(model.sequence_sampling(1).unwrap(), &top_k);
        // Prompts 0 and 1 as interleaved rows of one batch; prompt 2 by the one-sequence prefill.
        let mut rows = Vec::new();
        for i in 0..prompts[0].len().max(prompts[1].len()) {
            rows.extend((0..2).filter_map(|seq| prompts[seq].get(i).map(|&t| (seq, t))));
        }
        let picks = model.decode_batch(&rows).unwrap();
        let pick_of = |model: &Model, row: usize| (picks[row], model.batch_logprobs()[row].clone());
        let last_row = |seq: usize| rows.iter().rposition(|r| r.0 == seq).unwrap();
        let mut got = vec![vec![pick_of(&model, last_row(0))], vec![pick_of(&model, last_row(1))]];
        model.copy_sequence(1, 3).unwrap();
        model.reset();
        set_alone(&mut model, &hows[2]);
        let token = model.prefill(&prompts[2]).unwrap();
        got.push(vec![(token, RowLogprobs { logprob: None, top: model.last_top_logprobs().to_vec() })]);
        got.push(vec![(got[1][0].0, RowLogprobs::default())]);
        set_alone(&mut model, &How::default());
        model.context_to_sequence(2).unwrap();
        for _ in 0..steps {
            let rows: Vec<(usize, u32)> = got.iter().enumerate().map(|(seq, p)| (seq, p[p.len() - 1].0)).collect();
            let picks = model.decode_batch(&rows).unwrap();
            assert_eq!(model.batch_logprobs().len(), rows.len());
            for (seq, (&pick, row)) in picks.iter().zip(model.batch_logprobs()).enumerate() {
                got[seq].push((pick, row.clone()));
            }
        }
        for (seq, (got, want)) in got.iter().zip(&want).enumerate() {
            // Sequence 3 reports nothing, its twin alone (sequence 1's settings) does.
            let want: Vec<Pick> = match seq {
                3 => want.iter().map(|(t, _)| (*t, RowLogprobs::default())).collect(),
                _ => want.clone(),
            };
            assert_same_picks(got, &want, &format!("sequence {seq} [{}]", gpu.describe()));
        }
        assert!(got[2].iter().all(|p| mask.is_allowed(p.0)));
        assert_ne!(got[1], got[0], "sampling differs from greedy decoding");
    }
}

#[test]
fn bad_sampling_settings_change_nothing() {
    let gpu = &gpus()[0];
    let mut model = load(gpu, "tiny-plain", DType::F32, 8);
    assert!(model.set_sequence_sampling(0, Sampling::greedy()).is_err(), "no sequences reserved");
    model.reserve_sequences(2).unwrap();
    let good = Sampling { temperature: 0.5, seed: 3, ..Sampling::default() };
    model.set_sequence_sampling(1, good).unwrap();
    for bad in [
        Sampling { temperature: -1.0, ..good },
        Sampling { top_p: 0.0, ..good },
        Sampling { top_k: 65, ..good },
        Sampling { penalty_last_n: 65, ..good },
        Sampling { penalties: Penalties { repeat: 0.0, ..Penalties::OFF }, ..good },
    ] {
        let err = model.set_sequence_sampling(1, bad).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{bad:?}: {err}");
        assert_eq!(model.sequence_sampling(1).unwrap(), &good);
    }
    assert!(model.set_sequence_sampling(2, good).is_err());
    assert!(model.set_sequence_mask(0, Some(&TokenMask::all(VOCAB + 1))).is_err());
    assert!(model.set_sequence_mask(0, Some(&TokenMask::none(VOCAB))).is_err());
    assert!(model.set_sequence_mask(2, None).is_err());
    assert!(model.set_sequence_logprobs(0, true, 21).is_err());
    assert!(model.set_sequence_logprobs(2, true, 0).is_err());
    // A mask set, then lifted: greedy again.
    model.set_sequence_mask(0, Some(&TokenMask::allowing(VOCAB, [7]).unwrap())).unwrap();
    assert_eq!(model.decode_batch(&[(0, 1)]).unwrap(), [7]);
    model.set_sequence_mask(0, None).unwrap();
    model.clear_sequence(0).unwrap();
    let (free, _) = model.decode_batch_logits(&[(0, 1)]).unwrap();
    let mut reference = load(gpu, "tiny-plain", DType::F32, 8);
    assert_eq!(free[0], reference.prefill(&[1]).unwrap());
}

/// `generate_batch` (continuous batching) gives each prompt what `reset` + `generate` gives it alone, with
/// the model's sampling settings (temperature, top-k, penalties): six prompts through two sequences (so
/// finished ones make room for the rest) and through eight (all at once), ending by a stop token, by
/// `max_new`, by a full context (a 60-token prompt at context 64) and by the callback, the last prefilled
/// from the 40 tokens it shares with the one before. The same argument as
/// `each_sequence_samples_as_it_would_alone` makes the comparison exact.
#[test]
fn generate_batch_answers_as_generate_does() {
    let g = Golden::open("tiny-shared");
    let long: Vec<u32> = g.ids("prompt_ids").into_iter().cycle().take(60).collect();
    // The last prompt shares 40 tokens with the one before it: its prefill starts there.
    let shared = [&long[..40], &g.ids("forced_ids")[..3]].concat();
    let prompts = vec![
        g.ids("prompt_ids"),
        g.ids("single_prompt_ids"),
        g.ids("prompt_ids")[2..].to_vec(),
        g.ids("forced_ids"),
        long,
        shared,
    ];
    let penalties = Penalties { repeat: 1.2, frequency: 0.1, presence: 0.1 };
    let sampling =
        Sampling { temperature: 0.8, top_k: 30, seed: 9, penalties, penalty_last_n: 16, ..Sampling::default() };
    let (max_new, cut_after) = (9, 4);
    // The callback ends prompt 3 after `cut_after` tokens.
    let keep_going = |i: usize, count: usize| i != 3 || count < cut_after;
    for gpu in gpus() {
        let mut model = load(gpu, "tiny-shared", DType::F32, 64);
        model.set_sampling(sampling).unwrap();
        let alone = |model: &mut Model, stop: &[u32]| -> Vec<Vec<u32>> {
            prompts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    model.reset();
                    let mut count = 0;
                    model
                        .generate(p, max_new, stop, |_| {
                            count += 1;
                            keep_going(i, count)
                        })
                        .unwrap()
                })
                .collect()
        };
        // A stop token that ends prompt 1 early.
        let stop = [alone(&mut model, &[])[1][2]];
        let want = alone(&mut model, &stop);
        assert_eq!(want[1].len(), 3, "the stop token ends prompt 1");
        assert_eq!(want[3].len(), cut_after, "the callback ends prompt 3");
        assert_eq!(want[4].len(), 5, "the context ends prompt 4 (60 + 4 fed)");
        assert!(want.iter().any(|w| w.len() == max_new));
        for max_sequences in [2, 8] {
            let mut counts = vec![0; prompts.len()];
            let got = model
                .generate_batch(&prompts, max_new, &stop, max_sequences, |i, _| {
                    counts[i] += 1;
                    keep_going(i, counts[i])
                })
                .unwrap();
            assert_eq!(got, want, "{max_sequences} sequences [{}]", gpu.describe());
            assert_eq!(model.position(), 0);
        }
        assert_eq!(model.sequences(), 6, "reserved for the first call's 2, then for 6 prompts under 8");
        // Checked first: nothing runs.
        let mut called = false;
        let bad = [prompts[0].clone(), vec![]];
        assert!(model.generate_batch(&bad, 4, &[], 2, |_, _| std::mem::replace(&mut called, true)).is_err());
        let bad = [prompts[0].clone(), vec![VOCAB as u32]];
        assert!(model.generate_batch(&bad, 4, &[], 2, |_, _| std::mem::replace(&mut called, true)).is_err());
        assert!(model.generate_batch(&prompts, 4, &[], 0, |_, _| true).is_err());
        model.set_token_mask(Some(&TokenMask::all(VOCAB))).unwrap();
        assert!(model.generate_batch(&prompts, 4, &[], 2, |_, _| true).is_err());
        assert!(!called);
        model.set_token_mask(None).unwrap();
        assert_eq!(model.generate_batch::<Vec<u32>>(&[], 4, &[], 2, |_, _| true).unwrap(), Vec::<Vec<u32>>::new());
    }
}

/// `mobilellm batch` on a checkpoint directory with a tokenizer (tiny-plain's weights, the SentencePiece
/// vocabulary of `tests/data/hf-tokenizers/sentencepiece`): three prompts, two at a time, sampled; each
/// answer is the text the library's one-sequence `generate` gives for that prompt with the same settings,
/// with `--stop` the part of it before the stop string (a piece of the first answer), and with `--json`
/// what `generate_constrained` gives it under a JSON recognizer of its own.
#[test]
fn cli_batch_answers_each_prompt_as_generate_does() {
    use mobilellm_kernels::tokenizer::Tokenizer;
    use mobilellm_kernels::{FeatureSet, GpuOptions};
    let dir = sentencepiece_checkpoint("mobilellm-batch-checkpoint");
    let prompts = ["The capital of France is", "Once upon a time", "One, two,"];
    let tok = Tokenizer::from_hf_dir(&dir).unwrap().unwrap();
    let options = GpuOptions { features: FeatureSet::NONE, ..GpuOptions::from_env().unwrap() };
    let gpu = Gpu::with_options(&options).unwrap();
    let host = HostModel::from_safetensors_dir(&dir, WeightType::F32).unwrap();
    let mut model = Model::new(&gpu, &host, &PlanOptions { context: 64, ..PlanOptions::default() }).unwrap();
    model.set_sampling(Sampling { temperature: 0.8, top_k: 40, seed: 3, ..Sampling::default() }).unwrap();
    let eos = tok.eos().unwrap();
    let want: Vec<(String, usize)> = prompts
        .iter()
        .map(|prompt| {
            model.reset();
            let ids = model.generate(&tok.encode(prompt, true), 7, &[eos], |_| true).unwrap();
            (tok.decode(ids.strip_suffix(&[eos]).unwrap_or(&ids)), ids.len())
        })
        .collect();
    let batch = |extra: &[&str]| -> Vec<serde_json::Value> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mobilellm"))
            .args(["batch", "--jsonl", "--max-new", "7", "--context", "64", "--max-sequences", "2"])
            .args(["--temperature", "0.8", "--top-k", "40", "--seed", "3", "--model"])
            .arg(&dir)
            .args(prompts.iter().flat_map(|p| ["--prompt", p]))
            .args(extra)
            .env("MOBILELLM_FEATURES", "none")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let answers = batch(&[]);
    assert_eq!(answers.len(), prompts.len());
    for ((prompt, answer), (text, tokens)) in prompts.iter().zip(&answers).zip(&want) {
        assert_eq!(answer["prompt"], *prompt);
        assert_eq!(answer["text"], *text, "{prompt}");
        assert_eq!(answer["tokens"], *tokens);
    }
    // Two characters from the middle of the first answer.
    let first = &want[0].0;
    let chars: Vec<(usize, char)> = first.char_indices().collect();
    assert!(chars.len() >= 4, "{first:?}");
    let (from, to) = (chars[chars.len() / 2].0, chars.get(chars.len() / 2 + 2).map_or(first.len(), |c| c.0));
    let stop = &first[from..to];
    for ((prompt, answer), (text, _)) in prompts.iter().zip(batch(&["--stop", stop])).zip(&want) {
        let before = text.find(stop).map_or(&text[..], |at| &text[..at]);
        assert_eq!(answer["text"], before, "{prompt}, stop {stop:?}");
    }
    // --json: each answer under its own JSON recognizer, as generate_constrained gives it.
    for (prompt, answer) in prompts.iter().zip(batch(&["--json"])) {
        use mobilellm_kernels::constrain::{Constraint, JsonConstraint};
        let mut json = JsonConstraint::new(&tok, &[eos]);
        model.reset();
        let ids =
            model.generate_constrained(&tok.encode(prompt, true), 7, &[eos], |g| json.mask_after(g), |_| true).unwrap();
        let text = tok.decode(ids.strip_suffix(&[eos]).unwrap_or(&ids));
        // A JSON value's start, after any whitespace.
        assert!(text.trim_start().chars().next().is_none_or(|c| "{[\"-0123456789tfn".contains(c)), "{text:?}");
        assert_eq!(answer["text"], text, "{prompt} --json");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `generate_batch_constrained` gives each prompt what `generate_constrained` gives it alone: a mask per
/// prompt and step (a rule on the id, the step and the prompt: ids with `(id + step + prompt) % 3 == 0`),
/// sampled with penalties, three prompts through two sequences. Every token obeys its mask; the masks are
/// lifted afterwards, also when the hook fails midway.
#[test]
fn generate_batch_constrained_answers_as_generate_constrained_does() {
    let g = Golden::open("tiny-shared");
    let prompts = [g.ids("prompt_ids"), g.ids("single_prompt_ids"), g.ids("forced_ids")];
    let rule = |i: usize, step: usize| {
        TokenMask::allowing(VOCAB, (0..VOCAB as u32).filter(|id| (*id as usize + step + i).is_multiple_of(3))).unwrap()
    };
    let penalties = Penalties { repeat: 1.3, ..Penalties::OFF };
    let sampling = Sampling { temperature: 0.9, top_k: 20, seed: 4, penalties, ..Sampling::default() };
    let max_new = 8;
    for gpu in gpus() {
        let mut model = load(gpu, "tiny-shared", DType::F32, 64);
        model.set_sampling(sampling).unwrap();
        let want: Vec<Vec<u32>> = (0..prompts.len())
            .map(|i| {
                model.reset();
                let allowed = |generated: &[u32]| Ok(rule(i, generated.len()));
                model.generate_constrained(&prompts[i], max_new, &[], allowed, |_| true).unwrap()
            })
            .collect();
        let got = model
            .generate_batch_constrained(
                &prompts,
                max_new,
                &[],
                2,
                |i, generated| Ok(rule(i, generated.len())),
                |_, _| true,
            )
            .unwrap();
        assert_eq!(got, want, "[{}]", gpu.describe());
        for (i, tokens) in got.iter().enumerate() {
            assert!(tokens.iter().enumerate().all(|(step, &id)| rule(i, step).is_allowed(id)), "{tokens:?}");
        }
        assert!(!model.has_token_mask());
        // A hook that fails on prompt 2's third pick: the error comes back and no mask stays.
        let failing = |i: usize, generated: &[u32]| match (i, generated.len()) {
            (2, 2) => Err(mobilellm_kernels::Error::invalid("test constraint", "step 2", "a mask")),
            (i, step) => Ok(rule(i, step)),
        };
        assert!(model.generate_batch_constrained(&prompts, max_new, &[], 2, failing, |_, _| true).is_err());
        assert!(!model.has_token_mask());
        model.set_sampling(Sampling::greedy()).unwrap();
        let free = model.generate_batch(&prompts, 3, &[], 2, |_, _| true).unwrap();
        for (i, tokens) in free.iter().enumerate() {
            model.reset();
            assert_eq!(tokens, &model.generate(&prompts[i], 3, &[], |_| true).unwrap(), "unconstrained again");
        }
    }
}
