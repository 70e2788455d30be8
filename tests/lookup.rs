//! Prompt-lookup decoding (`Model::generate_lookup`) against plain greedy decoding (`Model::generate`) on the
//! same model: the same tokens, the same final position, stops honoured inside accepted drafts, and drafts
//! accepted where the text repeats; only greedy sampling without penalties is taken. Under a constraint
//! (`Model::generate_lookup_constrained`): the tokens of masked greedy decoding, also where the constraint
//! forbids the drafts and the batched picks, and the real SmolLM2 copying JSON.
mod common;
#[path = "support/smollm2.rs"]
mod smollm2;

use common::{gpu_rules_gpu, gpus, tiny_config};
use mobilellm_kernels::constrain::{
    json_schema_to_gbnf_with, Constraint, Grammar, GrammarConstraint, JsonConstraint, JsonLayout,
};
use mobilellm_kernels::model::gguf::GgufFile;
use mobilellm_kernels::model::{HostModel, LookupOptions, Model, PlanOptions, Sampling};
use mobilellm_kernels::ops::sample::Penalties;
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::tokenizer::Tokenizer;
use mobilellm_kernels::{reference, Gpu};

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

/// The batched check's GPU picks: each row's argmax of the logits `prefill_logits` returns for the same
/// tokens, over chunks longer than `max_batch`, whatever the sampling settings; the cache then continues
/// as after a plain prefill.
#[test]
fn prefill_greedy_picks_each_rows_argmax() {
    let host = HostModel::synthetic(tiny_config(), WeightType::Q4_1, 8).unwrap();
    let vocab = host.config.vocab_size;
    let tokens: Vec<u32> = (0..19).map(|i| (i * 37 + 3) % vocab as u32).collect();
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        let mut with_logits = model(gpu, &host);
        let (_, logits) = with_logits.prefill_logits(&tokens).unwrap();
        let want = reference::argmax_rows(&logits, vocab);
        let mut picking = model(gpu, &host);
        picking.set_sampling(Sampling { temperature: 0.9, seed: 4, ..Sampling::default() }).unwrap();
        assert_eq!(picking.prefill_greedy(&tokens).unwrap(), want, "[{}]", gpu.features());
        assert_eq!(picking.position(), tokens.len());
        let mut plain = model(gpu, &host);
        plain.prefill(&tokens).unwrap();
        picking.set_sampling(Sampling::greedy()).unwrap();
        assert_eq!(picking.step(7).unwrap(), plain.step(7).unwrap());
        // A bad id is refused before anything runs.
        assert!(picking.prefill_greedy(&[vocab as u32]).is_err());
        assert_eq!(picking.position(), tokens.len() + 1);
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

fn checkpoint(name: &str, wtype: WeightType) -> HostModel {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    HostModel::from_safetensors_dir(&dir, wtype).unwrap()
}

/// Drafts from another model (speculative decoding): whatever the draft proposes, the tokens and final
/// position are the target's greedy ones. The target is the tiny trained-shape checkpoint; drafts: itself
/// (always accepted), itself in q4_0 (mostly), the layer-shared checkpoint (other weights: rejected). A
/// smaller draft context or a stop inside accepted drafts changes nothing.
#[test]
fn draft_model_decoding_gives_the_target_greedy_tokens() {
    let target_host = checkpoint("tiny-plain", WeightType::Q8_0);
    let drafts = [
        ("itself", target_host.clone()),
        ("q4_0", checkpoint("tiny-plain", WeightType::Q4_0)),
        ("other weights", checkpoint("tiny-shared", WeightType::Q4_0)),
    ];
    let prompt = [5, 6, 7, 8, 9, 3];
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        let mut plain = model(gpu, &target_host);
        let want = plain.generate(&prompt, 24, &[], |_| true).unwrap();
        let mut rates = Vec::new();
        for (name, host) in &drafts {
            let (mut drafted, mut accepted) = (0, 0);
            for max_draft in [2, 7] {
                let mut target = model(gpu, &target_host);
                let mut draft = model(gpu, host);
                let (got, stats) = target.generate_draft(&mut draft, &prompt, 24, &[], max_draft, |_| true).unwrap();
                eprintln!("[{}] draft {name}, {max_draft} per pass: {stats:?}", gpu.features());
                assert_eq!(got, want, "[{}] draft {name}, {max_draft}: {stats:?}", gpu.features());
                assert_eq!(target.position(), plain.position());
                assert_eq!(target.cached_tokens()[..target.position()], plain.cached_tokens()[..plain.position()]);
                let made = stats.accepted + stats.passes + stats.steps;
                assert!((got.len() - 1..=got.len()).contains(&made), "{made} for {} tokens", got.len());
                (drafted, accepted) = (drafted + stats.drafted, accepted + stats.accepted);
            }
            rates.push((accepted, drafted));
        }
        assert!(rates[0].0 == rates[0].1, "the target agrees with itself: {rates:?}");
        assert!(rates[1].0 > 0 && rates[1].0 <= rates[1].1, "{rates:?}");
        assert!(rates[2].0 < rates[2].1, "other weights' drafts are rejected: {rates:?}");
        // A stop inside accepted drafts, and a draft whose context runs out first (then plain steps).
        let stop = [want[10]];
        let mut plain = model(gpu, &target_host);
        let want_stopped = plain.generate(&prompt, 24, &stop, |_| true).unwrap();
        let mut target = model(gpu, &target_host);
        let mut draft = model(gpu, &target_host);
        let (got, _) = target.generate_draft(&mut draft, &prompt, 24, &stop, 4, |_| true).unwrap();
        assert_eq!((got, target.position()), (want_stopped, plain.position()));
        let mut target = model(gpu, &target_host);
        let options = PlanOptions { context: 16, max_batch: 8, kv_dtype: None };
        let mut short = Model::new(gpu, &target_host, &options).unwrap();
        let (got, stats) = target.generate_draft(&mut short, &prompt, 24, &[], 4, |_| true).unwrap();
        assert_eq!(got, want);
        assert!(stats.steps > 0 && stats.passes > 0, "drafts until the draft's context is full: {stats:?}");
    }
}

#[test]
fn draft_model_must_share_the_vocabulary_and_be_greedy() {
    let gpu = &gpus()[0];
    let host = HostModel::synthetic(tiny_config(), WeightType::Q8_0, 21).unwrap();
    let other_vocab = mobilellm_kernels::model::ModelConfig { vocab_size: 128, ..tiny_config() };
    let mut target = model(gpu, &host);
    let mut wide = model(gpu, &HostModel::synthetic(other_vocab, WeightType::Q8_0, 2).unwrap());
    let e = target.generate_draft(&mut wide, &[1, 2], 8, &[], 4, |_| true).unwrap_err().to_string();
    assert!(e.contains("128 tokens") && e.contains("96"), "{e}");
    let mut draft = model(gpu, &host);
    draft.set_sampling(Sampling { temperature: 0.5, ..Sampling::greedy() }).unwrap();
    let e = target.generate_draft(&mut draft, &[1, 2], 8, &[], 4, |_| true).unwrap_err().to_string();
    assert!(e.contains("draft model's sampling"), "{e}");
    assert_eq!((target.position(), draft.position()), (0, 0), "refused before anything ran");
}

/// Lookup under a grammar on a random model whose tokens spell letters (id i is letter i mod 26): the same
/// tokens and position as masked greedy decoding (`generate_constrained`) for grammars that allow its
/// cycle, cut it, or forbid it, so drafts are cut by the mask and batched picks are made again.
#[test]
fn constrained_lookup_gives_masked_greedy_tokens() {
    let host = HostModel::synthetic(tiny_config(), WeightType::Q8_0, 21).unwrap();
    let vocab: Vec<Vec<u8>> = (0..host.config.vocab_size).map(|i| vec![b'a' + (i % 26) as u8]).collect();
    let prompt: Vec<u32> = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6].to_vec();
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        let (mut accepted, mut repicks) = (0, 0);
        for text in ["root ::= [a-z]*", "root ::= [a-k]*", "root ::= [l-z]*", "root ::= ([a-m] [n-z])*"] {
            let g = Grammar::parse(text).unwrap();
            let mut c = GrammarConstraint::with_vocabulary(g, vocab.clone(), &[]);
            let mut plain = model(gpu, &host);
            let want = plain.generate_constrained(&prompt, 30, &[], |done| c.mask_after(done), |_| true).unwrap();
            for options in [LookupOptions::default(), LookupOptions { ngram: 1, draft: 5 }] {
                c.reset();
                let mut fast = model(gpu, &host);
                let (got, stats) =
                    fast.generate_lookup_constrained(&prompt, 30, &[], options, &mut c, None, |_| true).unwrap();
                assert_eq!(got, want, "[{}] {text} {options:?} {stats:?}", gpu.features());
                assert_eq!(fast.position(), plain.position());
                assert!(!fast.has_token_mask(), "the mask is lifted");
                eprintln!("[{}] {text} {options:?}: {stats:?}", gpu.features());
                accepted += stats.accepted;
                repicks += stats.repicks;
            }
        }
        assert!(accepted > 0 && repicks > 0, "drafts accepted {accepted}, picks made again {repicks}");
    }
}

/// Draft-model decoding under a grammar: the target's masked greedy tokens (`generate_constrained`)
/// whether the draft is the target itself or other weights, for grammars that allow, cut or forbid what
/// the models would write.
#[test]
fn constrained_draft_model_decoding_gives_masked_greedy_tokens() {
    let target_host = checkpoint("tiny-plain", WeightType::Q8_0);
    let other = checkpoint("tiny-shared", WeightType::Q4_0);
    let vocab: Vec<Vec<u8>> = (0..target_host.config.vocab_size).map(|i| vec![b'a' + (i % 26) as u8]).collect();
    let prompt = [5, 6, 7, 8, 9, 3];
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        let mut accepted = 0;
        for text in ["root ::= [a-z]*", "root ::= [a-k]*", "root ::= ([a-m] [n-z])*"] {
            let mut c = GrammarConstraint::with_vocabulary(Grammar::parse(text).unwrap(), vocab.clone(), &[]);
            let mut plain = model(gpu, &target_host);
            let want = plain.generate_constrained(&prompt, 24, &[], |done| c.mask_after(done), |_| true).unwrap();
            for (name, host) in [("itself", &target_host), ("other weights", &other)] {
                c.reset();
                let (mut target, mut draft) = (model(gpu, &target_host), model(gpu, host));
                let (got, stats) =
                    target.generate_draft_constrained(&mut draft, &prompt, 24, &[], 4, &mut c, None, |_| true).unwrap();
                assert_eq!(got, want, "[{}] {text}, draft {name}: {stats:?}", gpu.features());
                assert_eq!(target.position(), plain.position());
                accepted += stats.accepted;
            }
        }
        assert!(accepted > 0, "drafts accepted under the grammars");
    }
}

/// SmolLM2 asked to repeat a JSON document: under the JSON constraint the same tokens as masked greedy
/// decoding, most of them from accepted drafts; under a spaced schema with jump-forward, a sentence of
/// its grammar with keys forced and values drafted.
#[test]
fn smollm2_copies_json_with_drafts_under_a_constraint() {
    let gpu = &gpus()[0];
    let file = GgufFile::open(smollm2::gguf_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let host = HostModel::from_gguf(&file, None).unwrap();
    let options = PlanOptions { context: 256, ..PlanOptions::default() };
    let doc = r#"{"name": "Maria Lopez", "city": "Barcelona", "country": "Spain", "job": "civil engineer"}"#;
    let prompt = tokenizer.encode_chat(&[("user", &format!("Repeat this JSON exactly: {doc}"))], true).unwrap();
    let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    let mut json = JsonConstraint::new(&tokenizer, &stop);
    let mut plain = Model::new(gpu, &host, &options).unwrap();
    let want = plain.generate_constrained(&prompt, 60, &stop, |done| json.mask_after(done), |_| true).unwrap();
    json.reset();
    let mut fast = Model::new(gpu, &host, &options).unwrap();
    let lookup = LookupOptions::default();
    let (got, stats) = fast.generate_lookup_constrained(&prompt, 60, &stop, lookup, &mut json, None, |_| true).unwrap();
    assert_eq!(tokenizer.decode(&got), tokenizer.decode(&want));
    assert_eq!(got, want, "{stats:?}");
    assert!(stats.accepted * 2 >= got.len(), "most tokens from drafts: {stats:?} for {} tokens", got.len());
    eprintln!(
        "{}\nJSON, lookup: {} tokens in {} passes and {} steps",
        tokenizer.decode(&got),
        got.len(),
        stats.passes,
        stats.steps
    );

    let schema = serde_json::json!({"type": "object", "properties": {
        "name": {"type": "string"}, "city": {"type": "string"}, "country": {"type": "string"},
        "job": {"type": "string"}}, "required": ["name", "city", "country", "job"]});
    let g = Grammar::parse(&json_schema_to_gbnf_with(&schema, JsonLayout::Spaced).unwrap()).unwrap();
    let mut c = GrammarConstraint::new(g.clone(), &tokenizer, &stop);
    let mut fast = Model::new(gpu, &host, &options).unwrap();
    let (got, stats) =
        fast.generate_lookup_constrained(&prompt, 60, &stop, lookup, &mut c, Some(&tokenizer), |_| true).unwrap();
    let text = tokenizer.decode(got.strip_suffix(&stop[..]).unwrap_or(&got));
    assert!(g.accepts(&text), "{text}");
    assert!(stats.forced > 0 && stats.accepted > 0, "{stats:?}");
    eprintln!(
        "{text}\nschema, lookup and jump-forward: {} tokens ({} forced, {} drafted and accepted) in {} passes and \
         {} steps",
        got.len(),
        stats.forced,
        stats.accepted,
        stats.passes,
        stats.steps
    );
}
