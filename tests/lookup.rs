//! Prompt-lookup decoding (`Model::generate_lookup`) against plain greedy decoding (`Model::generate`) on the
//! same model: the same tokens, the same final position, stops honoured inside accepted drafts, and drafts
//! accepted where the text repeats; only greedy sampling without penalties is taken.
mod common;

use common::{gpu_rules_gpu, gpus, tiny_config};
use mobilellm_kernels::model::{HostModel, LookupOptions, Model, PlanOptions, Sampling};
use mobilellm_kernels::ops::sample::Penalties;
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::Gpu;

fn model(gpu: &Gpu, host: &HostModel) -> Model {
    Model::new(gpu, host, &PlanOptions { context: 64, max_batch: 8, kv_dtype: None }).unwrap()
}

#[test]
fn lookup_decoding_gives_greedy_tokens() {
    // A small random model falls into a cycle of its own (here one token), which the lookup then drafts.
    let host = HostModel::synthetic(tiny_config(), WeightType::Q8_0, 21).unwrap();
    let prompt: Vec<u32> = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6].to_vec();
    // Under GPU launch rules too: batched products by `gemm_rows`, decode steps recorded ahead.
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        let (mut drafted, mut accepted) = (0, 0);
        {
            let p = &prompt;
            let mut plain = model(gpu, &host);
            let want = plain.generate(p, 30, &[], |_| true).unwrap();
            for options in
                [LookupOptions::default(), LookupOptions { ngram: 1, draft: 3 }, LookupOptions { ngram: 2, draft: 20 }]
            {
                let mut fast = model(gpu, &host);
                let (got, stats) = fast.generate_lookup(p, 30, &[], options, |_| true).unwrap();
                assert_eq!(got, want, "[{}] {options:?} {stats:?}", gpu.features());
                assert_eq!(fast.position(), plain.position());
                assert_eq!(fast.cached_tokens()[..fast.position()], plain.cached_tokens()[..plain.position()]);
                eprintln!("[{}] {options:?}: {stats:?}", gpu.features());
                // Every token after the first came from a draft, a pass's own pick or a step (a last pass's
                // pick may go unused when max_new ends the call).
                let made = stats.accepted + stats.passes + stats.steps;
                assert!((got.len() - 1..=got.len()).contains(&made), "{made} for {} tokens", got.len());
                (drafted, accepted) = (drafted + stats.drafted, accepted + stats.accepted);
            }
        }
        // Rejected drafts are exercised on SmolLM2 (`tests/smollm2.rs`): small random models repeat one token.
        assert!(accepted > 0 && drafted >= accepted, "drafts accepted: {accepted} of {drafted}");
        let mut plain = model(gpu, &host);
        let want = plain.generate(&prompt, 40, &[], |_| true).unwrap();

        // A stop token inside accepted drafts: the same tokens and position as plain decoding.
        let stop = [want[20]];
        let mut plain = model(gpu, &host);
        let want_stopped = plain.generate(&prompt, 40, &stop, |_| true).unwrap();
        let mut fast = model(gpu, &host);
        let (got, _) = fast.generate_lookup(&prompt, 40, &stop, LookupOptions::default(), |_| true).unwrap();
        assert_eq!((got, fast.position()), (want_stopped, plain.position()));
        // max_new inside a pass, and a callback that stops.
        let mut fast = model(gpu, &host);
        let (got, _) = fast.generate_lookup(&prompt, 17, &[], LookupOptions::default(), |_| true).unwrap();
        assert_eq!((got.as_slice(), fast.position()), (&want[..17], prompt.len() + 16));
        let mut fast = model(gpu, &host);
        let mut seen = 0;
        let (got, _) = fast
            .generate_lookup(&prompt, 40, &[], LookupOptions::default(), |_| {
                seen += 1;
                seen < 12
            })
            .unwrap();
        assert_eq!(got, want[..12]);
    }
}

#[test]
fn lookup_decoding_needs_greedy_sampling() {
    let host = HostModel::synthetic(tiny_config(), WeightType::Q8_0, 21).unwrap();
    let gpu = &gpus()[0];
    let mut m = model(gpu, &host);
    m.set_sampling(Sampling { temperature: 0.7, ..Sampling::greedy() }).unwrap();
    let e = m.generate_lookup(&[1, 2], 8, &[], LookupOptions::default(), |_| true).unwrap_err().to_string();
    assert!(e.contains("temperature 0.7") && e.contains("greedy"), "{e}");
    let penalties = Penalties { repeat: 1.2, ..Penalties::OFF };
    m.set_sampling(Sampling { penalties, ..Sampling::greedy() }).unwrap();
    assert!(m.generate_lookup(&[1, 2], 8, &[], LookupOptions::default(), |_| true).is_err());
    assert_eq!(m.position(), 0, "refused before anything ran");
}
