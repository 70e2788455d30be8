//! Perplexity (`Model::perplexity`) and continuation scores (`Model::score`): the planned GPU model against
//! its CPU twin scoring the same tokens with the same formulas, through prefill pieces smaller than the text;
//! a model whose logits are all zero has perplexity exactly the vocabulary size; bad arguments are typed
//! errors that run nothing.
mod common;

use common::gpus;
use mobilellm_kernels::model::perplexity::{nlls, summarize};
use mobilellm_kernels::model::{HostModel, Model, ModelWeightsF32, PlanOptions};
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::reference::forward::CpuModel;
use mobilellm_kernels::DType;

fn tiny_plain() -> HostModel {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-plain");
    HostModel::from_safetensors_dir(&dir, WeightType::F32).unwrap()
}

#[test]
fn perplexity_matches_the_cpu_twin() {
    let host = tiny_plain();
    let vocab = host.config.vocab_size;
    let text: Vec<u32> = (0..130u32).map(|i| (i * 37 + 11) % vocab as u32).collect();
    let chunk = 40;
    // The twin scores each whole chunk from one prefill: rows chunk/2 ..= chunk-2 score the next token.
    let mut twin_nlls = Vec::new();
    for piece in text.chunks_exact(chunk) {
        let mut cpu = CpuModel::new(host.config.clone(), host.dequantized()).unwrap();
        let logits = cpu.prefill(piece).unwrap();
        let rows = &logits[chunk / 2 * vocab..(chunk - 1) * vocab];
        twin_nlls.extend(nlls(rows, vocab, &piece[chunk / 2 + 1..]));
    }
    let twin = summarize(&twin_nlls);
    assert_eq!(twin.scored, 3 * (chunk / 2 - 1), "3 whole chunks; the 10 tokens after them are not used");
    for gpu in gpus() {
        // Prefill pieces of 8 rows: a chunk spans five of them.
        let options = PlanOptions { context: 64, max_batch: 8, kv_dtype: Some(DType::F32) };
        let mut model = Model::new(gpu, &host, &options).unwrap();
        let got = model.perplexity(&text, chunk).unwrap();
        eprintln!("[{}] PPL {:.6} (twin {:.6}) +- {:.4}", gpu.features(), got.value(), twin.value(), got.nll_std_error);
        assert_eq!(got.scored, twin.scored);
        // Logits agree within the f32 contract of 1e-4 (tests/model.rs); an NLL moves by at most twice that.
        assert!((got.mean_nll - twin.mean_nll).abs() <= 2e-4, "{got:?} vs {twin:?}");
        assert!((got.nll_std_error - twin.nll_std_error).abs() <= 2e-4);
    }
}

#[test]
fn zero_logits_give_the_vocabulary_size() {
    let config = tiny_plain().config;
    let mut weights = ModelWeightsF32::random(&config, 1).unwrap();
    weights.final_norm.iter_mut().for_each(|w| *w = 0.0);
    let host = HostModel::from_f32(config.clone(), &weights, WeightType::F32).unwrap();
    let gpu = &gpus()[0];
    let mut model = Model::new(gpu, &host, &PlanOptions { context: 32, max_batch: 16, kv_dtype: None }).unwrap();
    let text: Vec<u32> = (0..64).collect();
    let ppl = model.perplexity(&text, 32).unwrap();
    assert!((ppl.value() - config.vocab_size as f64).abs() < 1e-9, "{ppl:?}");
    assert_eq!(ppl.scored, 2 * 15);
    assert!(ppl.nll_std_error < 1e-12, "every NLL is ln(vocab): {ppl:?}");
}

#[test]
fn bad_perplexity_arguments_run_nothing() {
    let host = tiny_plain();
    let gpu = &gpus()[0];
    let mut model = Model::new(gpu, &host, &PlanOptions { context: 32, max_batch: 16, kv_dtype: None }).unwrap();
    model.prefill(&[1, 2, 3]).unwrap();
    let text: Vec<u32> = (0..64).collect();
    for (tokens, chunk, why) in [
        (&text[..], 1, "2..=32"),
        (&text[..], 33, "2..=32"),
        (&text[..10], 16, "at least one chunk"),
        (&[600u32; 40][..], 16, "600"),
    ] {
        let e = model.perplexity(tokens, chunk).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
        assert_eq!(model.position(), 3, "nothing ran");
    }
}

/// `Model::score`: each continuation token's log-probability equals the CPU twin's log-softmax of the row
/// before it (within 2e-4, as above), across prefill pieces; a second continuation of the same context
/// (its cache prefix reused) scores as on a fresh model; bad arguments are typed errors.
#[test]
fn scores_of_continuations_match_the_cpu_twin() {
    let host = tiny_plain();
    let vocab = host.config.vocab_size;
    let context: Vec<u32> = (0..11u32).map(|i| (i * 29 + 3) % vocab as u32).collect();
    let options: [Vec<u32>; 2] = [(0..13u32).map(|i| (i * 7 + 100) % vocab as u32).collect(), vec![42, 7, 300]];
    let twin = |continuation: &[u32]| -> Vec<f64> {
        let mut cpu = CpuModel::new(host.config.clone(), host.dequantized()).unwrap();
        let all: Vec<u32> = context.iter().chain(continuation).copied().collect();
        let logits = cpu.prefill(&all).unwrap();
        let rows = &logits[(context.len() - 1) * vocab..(all.len() - 1) * vocab];
        nlls(rows, vocab, continuation).into_iter().map(|nll| -nll).collect()
    };
    for gpu in gpus() {
        let options_gpu = PlanOptions { context: 64, max_batch: 4, kv_dtype: Some(DType::F32) };
        let mut model = Model::new(gpu, &host, &options_gpu).unwrap();
        for option in &options {
            let got = model.score(&context, option).unwrap();
            let want = twin(option);
            assert_eq!(got.len(), option.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 2e-4 && *g <= 0.0, "token {i} [{}]: {g} vs {w}", gpu.features());
            }
            let mut fresh = Model::new(gpu, &host, &options_gpu).unwrap();
            let again = fresh.score(&context, option).unwrap();
            assert!(got.iter().zip(&again).all(|(a, b)| (a - b).abs() <= 1e-4), "reused prefix: {got:?} vs {again:?}");
        }
        let bad: [(&[u32], &[u32], &str); 4] = [
            (&[], &[1], "at least one"),
            (&[1], &[], "at least one"),
            (&[1; 60], &[2; 5], "65"),
            (&[1], &[600], "600"),
        ];
        for (context, continuation, why) in bad {
            let e = model.score(context, continuation).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}
