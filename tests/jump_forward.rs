//! Jump-forward decoding (`Model::generate_jump_forward`): the bytes a constraint forces, against a brute
//! force over the grammar; continuation encoding that spells its text; and the real SmolLM2 answering to a
//! schema with forced text fed unpicked, every pick checked against the masked argmax of the logits that a
//! fresh model computes over the whole answer.
mod common;
#[path = "support/smollm2.rs"]
mod smollm2;

use common::{gpus, ShapeRng};
use mobilellm_kernels::constrain::{
    json_schema_to_gbnf_with, Constraint, Grammar, GrammarConstraint, JsonConstraint, JsonLayout,
};
use mobilellm_kernels::model::gguf::GgufFile;
use mobilellm_kernels::model::{HostModel, Model, PlanOptions, Sampling};
use mobilellm_kernels::tokenizer::Tokenizer;
use serde_json::{json, Value};

fn grammar(text: &str) -> Grammar {
    Grammar::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The forced bytes by brute force: while the text is no sentence and exactly one byte keeps it a prefix of
/// the language, that byte.
fn brute_force_forced(g: &Grammar, text: &[u8], limit: usize) -> Vec<u8> {
    let mut forced = Vec::new();
    let mut t = text.to_vec();
    while forced.len() < limit && !std::str::from_utf8(&t).is_ok_and(|s| g.accepts(s)) {
        let open: Vec<u8> = (0..=255u8).filter(|&b| g.is_prefix(&[&t[..], &[b]].concat())).collect();
        if open.len() != 1 {
            break;
        }
        forced.push(open[0]);
        t.push(open[0]);
    }
    forced
}

#[test]
fn forced_bytes_equal_the_brute_force() {
    let grammars = [
        r#"root ::= "{\"name\": \"" [a-z]+ "\", \"age\": " [0-9]+ "}""#,
        r#"root ::= "ab" ("cd" | "ce") "é中" [xy]* "!""#,
        r#"root ::= item ("," item)* "." item ::= "key" [0-9] "=" ("true" | "false")"#,
    ];
    // Single bytes, so a walk can stop anywhere, and a few longer pieces.
    let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    vocab.extend(["ab", "key", "true", "fal"].iter().map(|s| s.as_bytes().to_vec()));
    let stop = vocab.len() as u32;
    vocab.push(Vec::new());
    let mut rng = ShapeRng::new(5);
    let mut checked = 0;
    for text in grammars {
        let g = grammar(text);
        let mut c = GrammarConstraint::with_vocabulary(g.clone(), vocab.clone(), &[stop]);
        for _walk in 0..20 {
            c.reset();
            let mut written = Vec::new();
            for _ in 0..40 {
                let limit = rng.pick(&[1, 3, 256]);
                assert_eq!(c.forced_bytes(limit), brute_force_forced(&g, &written, limit), "{text} after {written:?}");
                checked += 1;
                let allowed: Vec<u32> = c.mask().unwrap().ids().collect();
                let id = rng.pick(&allowed);
                if id == stop {
                    assert!(c.forced_bytes(256).is_empty(), "a whole sentence forces nothing");
                    break;
                }
                c.accept(id).unwrap();
                written.extend(&vocab[id as usize]);
            }
        }
    }
    assert!(checked > 500, "{checked} states checked");
}

#[test]
fn json_forces_the_rest_of_a_keyword() {
    let file = GgufFile::open(smollm2::gguf_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let mut c = JsonConstraint::new(&tokenizer, &[]);
    assert!(c.forced_bytes(256).is_empty(), "any value may start a document");
    for (start, rest) in [("[t", "rue"), ("[f", "alse"), ("{\"a\": n", "ull"), ("[nu", "ll")] {
        c.reset();
        for id in tokenizer.encode_continuation(start) {
            c.accept(id).unwrap();
        }
        assert_eq!(c.forced_bytes(256), rest.as_bytes(), "after {start:?}");
        assert_eq!(c.forced_bytes(1), &rest.as_bytes()[..1], "after {start:?}, limited to 1");
    }
}

#[test]
fn continuations_spell_their_text() {
    let file = GgufFile::open(smollm2::gguf_path()).unwrap();
    let smollm2 = Tokenizer::from_gguf(&file).unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/hf-tokenizers/sentencepiece-hf");
    let sentencepiece = Tokenizer::from_hf_dir(dir).unwrap().expect("a tokenizer.json");
    for tokenizer in [&smollm2, &sentencepiece] {
        for text in ["\", \"country\": \"", "capital", " leading space", "<|im_end|> is text here", "é中!", "\n  x"] {
            let ids = tokenizer.encode_continuation(text);
            let spelled: Vec<u8> = ids.iter().flat_map(|&id| tokenizer.token_bytes(id).into_owned()).collect();
            assert_eq!(String::from_utf8_lossy(&spelled), text, "{:?}", tokenizer.kind());
            assert!(ids.iter().all(|&id| !tokenizer.is_special(id)), "{text:?}: special tokens are not matched");
        }
    }
}

/// The masked argmax of a row of logits, and whether `pick` is one within `tolerance` of it.
fn is_masked_argmax(logits: &[f32], allowed: &[u32], pick: u32, tolerance: f32) -> bool {
    let best = allowed.iter().map(|&id| logits[id as usize]).fold(f32::NEG_INFINITY, f32::max);
    allowed.contains(&pick) && logits[pick as usize] >= best - tolerance
}

/// SmolLM2 answers to a schema in the spaced layout: the answer is valid, the keys' text is forced (fewer
/// passes than tokens), and every pick is the greedy one under the mask given the tokens before it, as a
/// fresh model computes the logits of the whole answer in one prefill.
#[test]
fn smollm2_jumps_forward_through_a_schema() {
    let gpu = &gpus()[0];
    let file = GgufFile::open(smollm2::gguf_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let host = HostModel::from_gguf(&file, None).unwrap();
    let options = PlanOptions { context: 256, ..PlanOptions::default() };
    let mut model = Model::new(gpu, &host, &options).unwrap();
    model.set_sampling(Sampling::greedy()).unwrap();
    let schema = json!({"type": "object", "properties": {
        "country": {"type": "string", "maxLength": 20},
        "capital": {"type": "string", "maxLength": 20},
        "continent": {"enum": ["Africa", "America", "Asia", "Europe", "Oceania"]}
    }, "required": ["country", "capital", "continent"]});
    let g = grammar(&json_schema_to_gbnf_with(&schema, JsonLayout::Spaced).unwrap());
    let prompt =
        tokenizer.encode_chat(&[("user", "Give the country, capital and continent of France as JSON.")], true).unwrap();
    let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    let mut constraint = GrammarConstraint::new(g.clone(), &tokenizer, &stop);
    let mut seen = Vec::new();
    let start = std::time::Instant::now();
    let out = model
        .generate_jump_forward(&prompt, 80, &stop, &mut constraint, &tokenizer, |id| {
            seen.push(id);
            true
        })
        .unwrap();
    let jump_s = start.elapsed().as_secs_f64();
    assert_eq!(seen, out.tokens, "on_token saw every token, forced ones included, in order");
    assert_eq!(out.tokens.last().copied(), tokenizer.eos(), "the document ended and the model stopped");
    let text = tokenizer.decode(&out.tokens[..out.tokens.len() - 1]);
    assert!(g.accepts(&text), "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(doc["capital"].as_str().is_some_and(|c| c.contains("Paris")), "{text}");
    assert_eq!(doc["continent"], "Europe", "{text}");
    assert_eq!(out.passes + out.forced, out.tokens.len(), "each pass picks one token");
    assert!(out.forced >= 6, "the keys' text is forced: {out:?}");
    // The prompt and every token but the last pick went into the cache.
    assert_eq!(model.position(), prompt.len() + out.tokens.len() - 1);

    // Replay: the logits of the whole answer from a fresh model, and the mask at each token.
    let mut fresh = Model::new(gpu, &host, &options).unwrap();
    let fed = [&prompt[..], &out.tokens[..out.tokens.len() - 1]].concat();
    let (_, logits) = fresh.prefill_logits(&fed).unwrap();
    let vocab = host.config.vocab_size;
    let mut replay = GrammarConstraint::new(g, &tokenizer, &stop);
    let mut picks = 0;
    for (i, &token) in out.tokens.iter().enumerate() {
        let allowed: Vec<u32> = replay.mask().unwrap().ids().collect();
        assert!(allowed.contains(&token), "token {i} ({token}) is one the mask allowed");
        let row = &logits[(prompt.len() - 1 + i) * vocab..][..vocab];
        // Forced tokens need not be the model's pick; the others are its greedy one. Decode steps and one
        // prefill of the whole answer sum in different orders (logits agree to about 1e-4): near-ties count.
        if is_masked_argmax(row, &allowed, token, 1e-2) {
            picks += 1;
        }
        replay.accept(token).unwrap();
    }
    assert!(picks >= out.passes, "{picks} tokens are the masked argmax, {} were picked", out.passes);

    // The same schema picked token by token, for the numbers.
    let mut plain = Model::new(gpu, &host, &options).unwrap();
    plain.set_sampling(Sampling::greedy()).unwrap();
    constraint.reset();
    let start = std::time::Instant::now();
    let steps =
        plain.generate_constrained(&prompt, 80, &stop, |generated| constraint.mask_after(generated), |_| true).unwrap();
    let plain_s = start.elapsed().as_secs_f64();
    eprintln!(
        "{text}\njump-forward: {} tokens ({} forced) in {} passes, {:.0} ms; one pick per token: {} tokens, \
         {:.0} ms ({:?})",
        out.tokens.len(),
        out.forced,
        out.passes,
        jump_s * 1e3,
        steps.len(),
        plain_s * 1e3,
        tokenizer.decode(&steps)
    );
}

/// `max_new` and `on_token` bound the forced tokens as they bound picks; the cache holds every token
/// reported but the last, as `generate` leaves it.
#[test]
fn forced_tokens_respect_max_new_and_on_token() {
    let gpu = &gpus()[0];
    let file = GgufFile::open(smollm2::gguf_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let host = HostModel::from_gguf(&file, None).unwrap();
    let mut model = Model::new(gpu, &host, &PlanOptions { context: 128, ..PlanOptions::default() }).unwrap();
    let g = grammar(r#"root ::= "The answer to the question is, as far as anyone knows: " [a-z]+ ".""#);
    let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    let prompt = tokenizer.encode("Question:", false);
    let mut c = GrammarConstraint::new(g, &tokenizer, &stop);
    let out = model.generate_jump_forward(&prompt, 3, &stop, &mut c, &tokenizer, |_| true).unwrap();
    assert_eq!((out.tokens.len(), out.forced, out.passes), (3, 2, 1), "{out:?}");
    assert_eq!(model.position(), prompt.len() + 2);
    assert!(tokenizer.decode(&out.tokens).starts_with("The answer"), "{:?}", tokenizer.decode(&out.tokens));

    model.reset();
    c.reset();
    let out = model.generate_jump_forward(&prompt, 50, &stop, &mut c, &tokenizer, |_| false).unwrap();
    assert_eq!((out.tokens.len(), out.forced, out.passes), (1, 1, 1), "{out:?}");
    assert_eq!(model.position(), prompt.len(), "every token reported but the last is in the cache");

    model.reset();
    c.reset();
    let out = model.generate_jump_forward(&prompt, 0, &stop, &mut c, &tokenizer, |_| true).unwrap();
    assert_eq!(out, Default::default());
}
