//! Perplexity (`Model::perplexity`): the planned GPU model against its CPU twin scoring the same chunks
//! with the same formulas, through prefill pieces smaller than a chunk; a model whose logits are all zero
//! has perplexity exactly the vocabulary size; bad arguments are typed errors that run nothing.
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
