//! Tokenizers: every SmolLM2 case of `tests/data/smollm2/tokenizer_cases.json` against the real GGUF
//! (fetched with `tools/fetch-smollm2.sh` when missing), the golden prompts, decoding and streaming decode;
//! a synthetic llama (SentencePiece) vocabulary that needs no download; and HF tokenizer files
//! (`tests/data/hf-tokenizers`: `tokenizer.json`, SentencePiece `tokenizer.model`, `tokenizer_config.json`)
//! against the ids the `tokenizers`, `transformers` and `sentencepiece` libraries gave for them; and stop
//! strings on streamed text.

mod common;
#[path = "support/smollm2.rs"]
mod smollm2;

use std::sync::OnceLock;

use mobilellm_kernels::model::gguf::{GgufFile, GgufWriter, MetaValue, ValueType};
use mobilellm_kernels::tokenizer::{
    ChatTemplate, Date, SpacePrefix, TokenType, Tokenizer, TokenizerKind, Vocab, CHATML,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
    roundtrip: bool,
    ids_digits_split: Vec<u32>,
    digits_split_differs: bool,
}

fn cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/smollm2/tokenizer_cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn smollm2() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let gguf = GgufFile::open(smollm2::gguf_path()).unwrap();
        let start = std::time::Instant::now();
        let tok = Tokenizer::from_gguf(&gguf).unwrap();
        eprintln!("SmolLM2 tokenizer built in {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
        tok
    })
}

#[test]
fn smollm2_metadata() {
    let tok = smollm2();
    assert_eq!(tok.kind(), TokenizerKind::Gpt2);
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    assert!(!tok.vocab().add_bos, "SmolLM2 adds no BOS");
    assert_eq!(tok.token(1), Some("<|im_start|>"));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert!((0..17).all(|id| tok.is_special(id)) && !tok.is_special(17));
    // The file's own template (ChatML with a default system turn), rendered by the crate's Jinja engine.
    assert_eq!(
        tok.chat_prompt(&[("user", "Hi")], true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// llama.cpp-style ids (`ids_digits_split`, digits isolated by the `smollm` pre-tokenizer) for all 30 strings;
/// the two where transformers' GPT-2 regex differs are checked to differ from `ids` in the expected way.
#[test]
fn smollm2_encode_every_case() {
    let tok = smollm2();
    let cases = cases();
    assert_eq!(cases.len(), 30);
    let mut differs = 0;
    for (i, c) in cases.iter().enumerate() {
        let got = tok.encode(&c.text, false);
        assert_eq!(got, c.ids_digits_split, "case #{i} {:?}", c.text);
        // add_bos_token is false: add_special changes nothing.
        assert_eq!(tok.encode(&c.text, true), got, "case #{i}");
        if c.digits_split_differs {
            assert_ne!(got, c.ids);
            differs += 1;
        } else {
            assert_eq!(got, c.ids, "case #{i}");
        }
    }
    assert_eq!(differs, 2);
    // Throughput, for the record (opt-level 1 test profile).
    let text: String = cases.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join("\n").repeat(20);
    let start = std::time::Instant::now();
    let n = tok.encode(&text, false).len();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "encoded {} bytes -> {n} tokens in {:.1} ms ({:.2} MB/s)",
        text.len(),
        secs * 1e3,
        text.len() as f64 / secs / 1e6
    );
}

#[test]
fn smollm2_decode_every_case() {
    let tok = smollm2();
    for (i, c) in cases().iter().enumerate() {
        assert_eq!(tok.decode(&c.ids), c.decoded, "case #{i}");
        assert_eq!(tok.decode(&c.ids_digits_split), c.decoded, "case #{i}");
        assert_eq!(tok.try_decode(&c.ids).unwrap(), c.decoded);
        if c.roundtrip {
            assert_eq!(tok.decode(&tok.encode(&c.text, false)), c.text, "case #{i} round trip");
        } else {
            // #29: bytes missing from the vocabulary (0x04) are dropped.
            assert_ne!(c.decoded, c.text);
        }
    }
}

#[test]
fn smollm2_golden_prompts_and_generations() {
    #[derive(Deserialize)]
    struct Info {
        cases: std::collections::HashMap<String, GoldenCase>,
    }
    #[derive(Deserialize)]
    struct GoldenCase {
        kind: String,
        user_text: String,
        prompt_text: String,
        prompt_ids: Vec<u32>,
        gen_ids: Vec<u32>,
        gen_text: String,
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/smollm2/golden_info.json");
    let info: Info = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tok = smollm2();
    for (name, c) in &info.cases {
        if c.kind == "chat" {
            let prompt = tok.chat_prompt(&[("user", &c.user_text)], true).unwrap();
            assert_eq!(prompt, c.prompt_text, "case {name}");
            assert_eq!(tok.encode_chat(&[("user", &c.user_text)], true).unwrap(), c.prompt_ids);
        } else {
            assert_eq!(c.prompt_text, c.user_text);
        }
        assert_eq!(tok.encode(&c.prompt_text, true), c.prompt_ids, "case {name}");
        assert_eq!(tok.decode(&c.gen_ids), c.gen_text, "case {name}");
        let mut stream = tok.stream_decoder();
        let streamed: String = c.gen_ids.iter().map(|&id| stream.push(id)).collect();
        assert_eq!(streamed + &stream.finish(), c.gen_text);
    }
    // With an explicit system message the default one is not added; without a generation prompt, no tail.
    let p = tok.chat_prompt(&[("system", "Be brief."), ("user", "Hi")], false).unwrap();
    assert_eq!(p, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

/// Multi-byte characters split over byte-level tokens: the stream decoder holds bytes until a character
/// is complete, never emits U+FFFD for valid text, and always agrees with `decode`.
#[test]
fn smollm2_stream_decode_split_utf8() {
    let tok = smollm2();
    let mut held_back = 0;
    for (i, c) in cases().iter().enumerate() {
        let mut stream = tok.stream_decoder();
        let mut out = String::new();
        for &id in &c.ids {
            let piece = stream.push(id);
            if piece.is_empty() && !stream.pending().is_empty() {
                held_back += 1;
            }
            assert!(!piece.contains('\u{FFFD}'), "case #{i}: replacement character in stream");
            out.push_str(&piece);
        }
        assert!(stream.pending().is_empty(), "case #{i}: bytes left over");
        out.push_str(&stream.finish());
        assert_eq!(out, c.decoded, "case #{i}");
    }
    assert!(held_back > 10, "the emoji/CJK/Korean cases split characters over tokens ({held_back})");
    // "😀" is F0 9F 98 80: feed its byte tokens one by one.
    let ids = tok.encode("😀", false);
    assert!(ids.len() > 1);
    let mut stream = tok.stream_decoder();
    let pieces: Vec<String> = ids.iter().map(|&id| stream.push(id)).collect();
    assert!(pieces[..pieces.len() - 1].iter().all(String::is_empty));
    assert_eq!(pieces.last().unwrap(), "😀");
    // An incomplete character at the end of the stream is flushed as U+FFFD.
    let mut stream = tok.stream_decoder();
    assert_eq!(stream.push(ids[0]), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
}

#[test]
fn smollm2_rejects_out_of_range_ids() {
    let tok = smollm2();
    let e = tok.try_decode(&[504, 49152]).unwrap_err();
    assert!(e.to_string().contains("49152"), "{e}");
    assert_eq!(tok.decode(&[504, 49152]), "The", "decode skips ids outside the vocabulary");
}

/// A small llama (SentencePiece BPE) vocabulary written as a GGUF: scores decide the merges, `▁` marks
/// spaces, unknown characters fall back to `<0xXX>` tokens.
fn tiny_spm() -> Tokenizer {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut scores = vec![0.0f32; 3];
    let mut types = vec![2i32, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(6);
    }
    for (t, s) in [
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("he", -1.0),
        ("ll", -0.5),
        ("llo", -1.5),
        ("▁he", -2.0),
        ("hello", -2.5),
        ("▁hello", -3.0),
        ("<|im_start|>", 0.0),
    ] {
        tokens.push(t.into());
        scores.push(s);
        types.push(if t.starts_with("<|") { 4 } else { 1 });
    }
    let mut w = GgufWriter::new();
    w.meta("general.architecture", MetaValue::String("llama".into()))
        .meta("tokenizer.ggml.model", MetaValue::String("llama".into()))
        .meta_strings("tokenizer.ggml.tokens", &tokens)
        .meta(
            "tokenizer.ggml.scores",
            MetaValue::Array(ValueType::F32, scores.into_iter().map(MetaValue::F32).collect()),
        )
        .meta(
            "tokenizer.ggml.token_type",
            MetaValue::Array(ValueType::I32, types.into_iter().map(MetaValue::I32).collect()),
        )
        .meta("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .meta("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .meta("tokenizer.ggml.unknown_token_id", MetaValue::U32(0));
    Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes(), "tiny-spm").unwrap()).unwrap()
}

#[test]
fn synthetic_llama_spm() {
    let tok = tiny_spm();
    let id = |t: &str| tok.token_id(t).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Llama);
    assert_eq!(tok.vocab_size(), 3 + 256 + 12);
    // "▁hello": ll (-0.5), he (-1), llo (-1.5), ▁he (-2), then ▁he+llo = ▁hello (-3); `hello` (-2.5) never
    // forms because `he` was already taken by `▁he`.
    assert_eq!(tok.encode("hello", false), [id("▁hello")]);
    // "▁hell": no piece for "▁hell", so ▁he + ll.
    assert_eq!(tok.encode("hell", false), [id("▁he"), id("ll")]);
    // Equal scores: the leftmost pair merges first ("lll" -> ll + l).
    assert_eq!(tok.encode("lll", false), [id("▁"), id("ll"), id("l")]);
    // Byte fallback for a character that is not a piece: é = C3 A9; a space inside becomes ▁.
    assert_eq!(tok.encode("he é", false), [id("▁he"), id("▁"), id("<0xC3>"), id("<0xA9>")]);
    // BOS is added by default for llama files (add_bos_token absent); EOS is not.
    assert_eq!(tok.encode("hello", true), [1, id("▁hello")]);
    assert_eq!(tok.encode("", true), [1]);
    assert!(tok.encode("", false).is_empty());
    // Special tokens are matched whole; the text after one gets a space prefix again (llama.cpp).
    assert_eq!(tok.encode("<|im_start|>hello", false), [id("<|im_start|>"), id("▁hello")]);
    assert_eq!(tok.encode("<s>hello</s>", false), [1, id("▁hello"), 2]);
    // Decoding: ▁ -> space, byte tokens -> bytes, the encoder's leading space removed.
    assert_eq!(tok.decode(&tok.encode("he é hello", false)), "he é hello");
    assert_eq!(tok.decode(&[id("▁he"), id("ll"), id("o")]), "hello");
    let mut stream = tok.stream_decoder();
    assert_eq!(stream.push(id("▁he")), " he");
    assert_eq!(stream.push(id("<0xC3>")), "");
    assert_eq!(stream.push(id("<0xA9>")), "é");
    // Scores decide even when a converter also wrote merges (in an order that would merge differently).
    let mut with_merges = tok.vocab().clone();
    with_merges.merges = vec!["\u{2581} he".into(), "l l".into(), "h e".into(), "he llo".into(), "ll o".into()];
    let merged = Tokenizer::from_vocab(with_merges).unwrap();
    for text in ["hello", "hell", "lll", "he é hello"] {
        assert_eq!(merged.encode(text, false), tok.encode(text, false), "{text:?}");
    }
    // A file without a ChatML template still renders plain ChatML.
    assert_eq!(
        tok.chat_prompt(&[("user", "hi")], true).unwrap(),
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn synthetic_tokenizer_errors() {
    let base = || {
        let mut w = GgufWriter::new();
        w.meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
            .meta_strings("tokenizer.ggml.tokens", &["a", "b"]);
        w
    };
    let build = |w: &GgufWriter| Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes(), "t").unwrap());
    assert!(build(&base()).is_ok());
    let mut w = base();
    w.meta("tokenizer.ggml.model", MetaValue::String("bert".into()));
    assert!(build(&w).unwrap_err().to_string().contains("bert"));
    let mut w = base();
    w.meta("tokenizer.ggml.pre", MetaValue::String("qwen2".into()));
    assert!(build(&w).unwrap_err().to_string().contains("qwen2"));
    let mut w = base();
    w.meta("tokenizer.ggml.pre", MetaValue::String("llama-bpe".into()));
    let tok = build(&w).unwrap();
    assert!(tok.vocab().ignore_merges, "llama.cpp takes whole pre-tokens for llama-bpe");
    let mut w = base();
    w.meta("tokenizer.ggml.eos_token_id", MetaValue::U32(7));
    assert!(build(&w).unwrap_err().to_string().contains('7'));
    let mut w = base();
    w.meta("tokenizer.ggml.scores", MetaValue::Array(ValueType::F32, vec![MetaValue::F32(0.0)]));
    assert!(build(&w).is_err(), "scores shorter than the vocabulary");
    let mut w = base();
    // A template that does not parse: the tokenizer still loads; a chat prompt is an error naming the
    // template's problem.
    w.meta("tokenizer.chat_template", MetaValue::String("{% for m in messages %}[INST] {{ m.content }}".into()));
    let tok = build(&w).unwrap();
    let e = tok.chat_template().check().unwrap_err().to_string();
    assert!(e.contains("chat template") && e.contains("syntax error"), "{e}");
    assert!(tok.chat_prompt(&[("user", "x")], true).unwrap_err().to_string().contains("end of block"));
}

/// No template: ChatML. Templates that would run for hours or build gigabytes fail fast instead (fuel,
/// minijinja's size and recursion limits), and values nested as deep as fuel allows do not overflow the
/// stack; unknown strftime directives are errors naming them.
#[test]
fn chat_template_defaults_and_limits() {
    let chatml = ChatTemplate::from_file(None);
    assert_eq!(chatml.source(), CHATML);
    let prompt = chatml.render(&[("user", "a"), ("assistant", "b")], true, ("", ""), Date::from_days(0)).unwrap();
    assert_eq!(prompt, "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>assistant\n");
    for (runaway, why) in [
        ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "fuel"),
        ("{{ 'x' * 100000000000 }}", "fuel"),
        ("{{ 'x' | indent(1000000000) }}", "fuel"),
        ("{{ range(1000000000) | list | length }}", "too many elements"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion limit"),
    ] {
        let start = std::time::Instant::now();
        let e = ChatTemplate::new(runaway).render(&[], false, ("", ""), Date::from_days(0)).unwrap_err().to_string();
        assert!(e.contains(why) && start.elapsed().as_secs() < 10, "{runaway}: {e} after {:?}", start.elapsed());
    }
    // A value nested as deep as fuel allows (60 levels per iteration, 270 000 in all) is built, written out,
    // compared and dropped without overflowing a stack (they recurse; this crashed the chat-template fuzz
    // target at 60 000 levels on the 8 MiB main thread), and one level more per fuel unit runs out of fuel.
    let nest = |iterations: usize, output: &str| {
        let inner = format!("{}ns.x{}", "[".repeat(60), "]".repeat(60));
        let source = format!(
            "{{% set ns = namespace(x=[]) %}}{{% for i in range({iterations}) %}}{{% set ns.x = {inner} %}}\
             {{% endfor %}}{{{{ {output} }}}}"
        );
        ChatTemplate::new(source).render(&[], false, ("", ""), Date::from_days(0))
    };
    for output in ["ns.x|length", "ns.x|tojson|length", "ns.x == ns.x"] {
        assert!(nest(4500, output).is_ok(), "{output}");
    }
    assert!(nest(100_000, "ns.x|length").unwrap_err().to_string().contains("fuel"));
    let dated = ChatTemplate::new("{{ strftime_now('%d %Z') }}");
    assert!(dated.render(&[], false, ("", ""), Date::from_days(0)).unwrap_err().to_string().contains("%Z"));
}

/// One string of `tests/data/hf-tokenizers/cases.json` and the ids each library gave for it (see `make.py`
/// there). `sentencepiece` is absent where the text holds `<s>` / `</s>`: SentencePiece never matches control
/// tokens written in text, which this crate (like transformers and llama.cpp) does.
#[derive(Deserialize)]
struct HfCase {
    text: String,
    bytelevel: Vec<u32>,
    llama3: Vec<u32>,
    sentencepiece: Option<Vec<u32>>,
    sentencepiece_decoded: Option<String>,
    sentencepiece_hf: Vec<u32>,
    sentencepiece_legacy: Vec<u32>,
    sentencepiece_first: Vec<u32>,
}

#[derive(Deserialize)]
struct HfChat {
    messages: Vec<HfMessage>,
    bytelevel: Vec<u32>,
}

#[derive(Deserialize)]
struct HfMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct HfCases {
    cases: Vec<HfCase>,
    chat: HfChat,
}

fn hf_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hf-tokenizers").join(name)
}

fn hf_cases() -> &'static HfCases {
    static CASES: OnceLock<HfCases> = OnceLock::new();
    CASES.get_or_init(|| serde_json::from_str(&std::fs::read_to_string(hf_dir("cases.json")).unwrap()).unwrap())
}

fn hf_tokenizer(name: &str) -> Tokenizer {
    Tokenizer::from_hf_dir(hf_dir(name)).unwrap().unwrap_or_else(|| panic!("{name} has a tokenizer file"))
}

/// Encodes every case with `add_special` and compares with the chosen golden ids; returns the count.
fn check_cases(tok: &Tokenizer, what: &str, golden: impl Fn(&HfCase) -> Option<&Vec<u32>>) -> usize {
    let mut checked = 0;
    for case in &hf_cases().cases {
        let Some(expected) = golden(case) else { continue };
        assert_eq!(&tok.encode(&case.text, true), expected, "{what}: {:?}", case.text);
        checked += 1;
    }
    checked
}

#[test]
fn hf_bytelevel_tokenizer_json_matches_transformers() {
    let tok = hf_tokenizer("bytelevel");
    assert_eq!(tok.kind(), TokenizerKind::Gpt2);
    assert_eq!(tok.vocab().pre.as_deref(), Some("smollm"), "Digits(individual) then ByteLevel");
    assert_eq!((tok.bos(), tok.eos()), (tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")));
    assert!(!tok.vocab().add_bos, "no post-processor token and no add_bos_token");
    let n = check_cases(&tok, "bytelevel", |c| Some(&c.bytelevel));
    assert_eq!(n, 36);
    // Byte-level BPE over all 256 bytes: every string decodes back.
    for case in &hf_cases().cases {
        assert_eq!(tok.decode(&case.bytelevel), case.text);
    }
    // The ChatML template (from chat_template.jinja) with its default system message.
    let chat = &hf_cases().chat;
    let messages: Vec<(&str, &str)> = chat.messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
    assert_eq!(tok.encode_chat(&messages, true).unwrap(), chat.bytelevel);
}

#[test]
fn hf_llama3_tokenizer_json_matches_transformers() {
    // Llama-3's layout: its Split regex (contractions in any case, digits in threes), ByteLevel without a
    // regex, ignore_merges, and BOS from a ByteLevel + TemplateProcessing post-processor.
    let tok = hf_tokenizer("llama3");
    assert_eq!(tok.kind(), TokenizerKind::Gpt2);
    assert_eq!(tok.vocab().pre.as_deref(), Some("llama-bpe"));
    assert!(tok.vocab().ignore_merges);
    assert_eq!((tok.bos(), tok.eos()), (Some(0), Some(1)));
    assert!(tok.vocab().add_bos);
    assert_eq!(check_cases(&tok, "llama3", |c| Some(&c.llama3)), 36);
    for case in &hf_cases().cases {
        assert_eq!(tok.decode(&case.llama3[1..]), case.text);
    }
    // The same vocabulary as a GGUF with llama.cpp's `llama-bpe` pre-tokenizer encodes the same.
    let v = tok.vocab();
    let types: Vec<MetaValue> =
        v.token_types.iter().map(|&t| MetaValue::I32(if t.is_special() { 3 } else { 1 })).collect();
    let mut w = GgufWriter::new();
    w.meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", MetaValue::String("llama-bpe".into()))
        .meta_strings("tokenizer.ggml.tokens", &v.tokens)
        .meta_strings("tokenizer.ggml.merges", &v.merges)
        .meta("tokenizer.ggml.token_type", MetaValue::Array(ValueType::I32, types))
        .meta("tokenizer.ggml.bos_token_id", MetaValue::U32(0))
        .meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
    let gguf = Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes(), "llama3.gguf").unwrap()).unwrap();
    assert_eq!(check_cases(&gguf, "llama3 as GGUF", |c| Some(&c.llama3)), 36);
}

#[test]
fn hf_sentencepiece_model_matches_sentencepiece() {
    let tok = hf_tokenizer("sentencepiece");
    assert_eq!(tok.kind(), TokenizerKind::Llama);
    assert_eq!((tok.vocab().unk, tok.bos(), tok.eos()), (Some(0), Some(1), Some(2)));
    assert_eq!(tok.vocab().space_prefix, SpacePrefix::EverySegment, "add_dummy_prefix");
    assert_eq!(tok.vocab().token_types[3], TokenType::UserDefined, "<|tool|>");
    let mut checked = 0;
    for case in &hf_cases().cases {
        let (Some(ids), Some(decoded)) = (&case.sentencepiece, &case.sentencepiece_decoded) else { continue };
        assert_eq!(&tok.encode(&case.text, false), ids, "{:?}", case.text);
        // transformers' LlamaTokenizer default: BOS first.
        assert_eq!(tok.encode(&case.text, true)[1..], ids[..], "{:?}", case.text);
        assert_eq!(&tok.decode(ids), decoded, "{:?}", case.text);
        checked += 1;
    }
    assert_eq!(checked, 32);
}

#[test]
fn hf_sentencepiece_tokenizer_json_matches_transformers() {
    // The three layouts the same SentencePiece vocabulary is found in: transformers' conversion (doubled
    // leading ▁ + Metaspace, user-defined pieces split out), Llama-2's (Prepend + Replace) and the
    // non-legacy one (Metaspace, prefix on the first segment only).
    type Ids = fn(&HfCase) -> Option<&Vec<u32>>;
    let layouts: [(&str, SpacePrefix, Ids); 3] = [
        ("sentencepiece-hf", SpacePrefix::EverySegment, |c| Some(&c.sentencepiece_hf)),
        ("sentencepiece-legacy", SpacePrefix::EverySegment, |c| Some(&c.sentencepiece_legacy)),
        ("sentencepiece-first", SpacePrefix::FirstSegmentUnlessSpace, |c| Some(&c.sentencepiece_first)),
    ];
    let model = hf_tokenizer("sentencepiece");
    for (name, prefix, golden) in layouts {
        let tok = hf_tokenizer(name);
        assert_eq!(tok.kind(), TokenizerKind::Llama, "{name}");
        assert_eq!(tok.vocab().space_prefix, prefix, "{name}");
        assert_eq!(tok.vocab().tokens, model.vocab().tokens, "{name}: same vocabulary as tokenizer.model");
        assert!(tok.vocab().add_bos, "{name}: the <s> $A template");
        assert_eq!(check_cases(&tok, name, golden), 36, "{name}");
    }
}

#[test]
fn hf_dir_without_tokenizer_is_none() {
    assert!(Tokenizer::from_hf_dir(hf_dir("")).unwrap().is_none(), "cases.json alone is no tokenizer");
    let e = Tokenizer::from_hf_dir(hf_dir("no-such-dir")).unwrap();
    assert!(e.is_none());
}

/// Each unsupported or broken part of a tokenizer file is an error that names it; nothing panics.
#[test]
fn hf_tokenizer_errors_name_the_part() {
    let json = std::fs::read_to_string(hf_dir("bytelevel/tokenizer.json")).unwrap();
    let root: serde_json::Value = serde_json::from_str(&json).unwrap();
    let with = |pointer: &str, value: serde_json::Value| {
        let mut v = root.clone();
        *v.pointer_mut(pointer).unwrap() = value;
        Vocab::from_tokenizer_json(&v.to_string(), "t.json")
    };
    let err = |r: mobilellm_kernels::Result<Vocab>| r.map(|_| ()).unwrap_err().to_string();
    assert!(Vocab::from_tokenizer_json(&json, "t.json").is_ok());
    let e = err(with("/model/type", "WordPiece".into()));
    assert!(e.contains("model.type") && e.contains("WordPiece") && e.contains("t.json"), "{e}");
    // Llama-3 / Qwen2 style: a Split with their own regex before ByteLevel.
    let split = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    let e = err(with("/pre_tokenizer", split));
    assert!(e.contains("pre_tokenizer") && e.contains("Split"), "{e}");
    let e = err(with("/normalizer", serde_json::json!({"type": "NFC"})));
    assert!(e.contains("normalizer") && e.contains("NFC"), "{e}");
    let e = err(with("/pre_tokenizer/pretokenizers/1/add_prefix_space", true.into()));
    assert!(e.contains("pre_tokenizer"), "{e}");
    let e = err(with("/model/merges/0", 7.into()));
    assert!(e.contains("model.merges[0]"), "{e}");
    // Ids 0..2 are the added tokens; 4 is nobody's.
    let e = err(with("/model/vocab", serde_json::json!({"a": 3, "b": 5})));
    assert!(e.contains("token id 4"), "{e}");
    let half: String = json.chars().take(json.chars().count() / 2).collect();
    assert!(err(Vocab::from_tokenizer_json(&half, "t.json")).contains("not valid JSON"));
    // A SentencePiece model whose metaspace splits words, and an unknown post-processor.
    let spm = std::fs::read_to_string(hf_dir("sentencepiece-first/tokenizer.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&spm).unwrap();
    *v.pointer_mut("/pre_tokenizer/split").unwrap() = true.into();
    let e = err(Vocab::from_tokenizer_json(&v.to_string(), "t.json"));
    assert!(e.contains("Metaspace") && e.contains("split"), "{e}");
    let mut v: serde_json::Value = serde_json::from_str(&spm).unwrap();
    *v.pointer_mut("/model/byte_fallback").unwrap() = false.into();
    let e = err(Vocab::from_tokenizer_json(&v.to_string(), "t.json"));
    assert!(e.contains("byte_fallback"), "{e}");
    let e = err(with("/post_processor", serde_json::json!({"type": "RobertaProcessing"})));
    assert!(e.contains("post_processor") && e.contains("RobertaProcessing"), "{e}");
    // tokenizer_config.json naming a token the vocabulary lacks.
    let mut vocab = Vocab::from_tokenizer_json(&json, "t.json").unwrap();
    let before = vocab.clone();
    let e = vocab.apply_tokenizer_config(r#"{"eos_token": "<|nope|>"}"#, "c.json").unwrap_err().to_string();
    assert!(e.contains("eos_token") && e.contains("<|nope|>") && e.contains("c.json"), "{e}");
    assert!(vocab.apply_tokenizer_config("[1]", "c.json").is_err());
    assert_eq!(vocab.bos, before.bos);

    // tokenizer.model: every truncation is an error, never a panic; other model types are named.
    let model = std::fs::read(hf_dir("sentencepiece/tokenizer.model")).unwrap();
    for cut in (0..model.len()).step_by(97) {
        let _ = Vocab::from_sentencepiece(&model[..cut], "m.model");
    }
    let e = Vocab::from_sentencepiece(&model[..model.len() - 3], "m.model").unwrap_err().to_string();
    assert!(e.contains("m.model"), "{e}");
    assert!(Vocab::from_sentencepiece(b"", "m.model").unwrap_err().to_string().contains("no pieces"));
    // A hand-built ModelProto: one piece, trainer_spec.model_type = 1 (UNIGRAM).
    let unigram = [0x0a, 0x05, 0x0a, 0x01, b'a', 0x18, 0x01, 0x12, 0x02, 0x18, 0x01];
    let e = Vocab::from_sentencepiece(&unigram, "m.model").unwrap_err().to_string();
    assert!(e.contains("model_type") && e.contains("UNIGRAM"), "{e}");
    // The same with BPE but SentencePiece's default normalizer (collapses whitespace): refused by name.
    let bpe_default = [0x0a, 0x05, 0x0a, 0x01, b'a', 0x18, 0x01, 0x12, 0x02, 0x18, 0x02];
    let e = Vocab::from_sentencepiece(&bpe_default, "m.model").unwrap_err().to_string();
    assert!(e.contains("remove_extra_whitespaces"), "{e}");
}

/// A single long word (no pre-tokenizer split) encodes in O(n log n): merging by rescanning every pair after
/// each merge took 170 ms for 16 000 letters and grows as n² (minutes at 200 000); and the merge order is
/// the rank order, checked against a straightforward rescanning BPE on words of every length up to 300.
#[test]
fn long_words_merge_in_rank_order_without_quadratic_time() {
    let tok = hf_tokenizer("bytelevel");
    let v = tok.vocab();
    let ranks: std::collections::HashMap<(&str, &str), usize> =
        v.merges.iter().enumerate().map(|(rank, m)| (m.split_once(' ').unwrap(), rank)).collect();
    // Rescanning BPE over the vocabulary's own strings (every letter here is a one-byte token).
    let naive = |word: &str| -> Vec<u32> {
        let mut syms: Vec<String> = word.chars().map(String::from).collect();
        loop {
            let best = (0..syms.len().saturating_sub(1))
                .filter_map(|i| ranks.get(&(syms[i].as_str(), syms[i + 1].as_str())).map(|&r| (r, i)))
                .min();
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        syms.iter().map(|s| tok.token_id(s).unwrap()).collect()
    };
    let letters = "etaoinshrdlucmfwypvbgkjqxz";
    let word = |n: usize, seed: usize| -> String {
        (0..n).map(|i| letters.as_bytes()[(i * 7 + i * i * seed + seed) % 26 % (3 + seed % 23)] as char).collect()
    };
    for n in 1..=300 {
        let w = word(n, n % 29);
        assert_eq!(tok.encode(&w, false), naive(&w), "{w:?}");
    }
    let long = word(200_000, 5);
    let start = std::time::Instant::now();
    let ids = tok.encode(&long, false);
    let took = start.elapsed();
    assert!(!ids.is_empty() && ids.len() < long.len());
    assert!(took.as_secs_f64() < 5.0, "200 000-letter word took {took:?}");
    eprintln!("200 000-letter word: {} ids in {:.0} ms", ids.len(), took.as_secs_f64() * 1e3);
}

#[derive(Deserialize)]
struct ChatCase {
    template: String,
    messages: Vec<HfMessage>,
    add_generation_prompt: bool,
    /// What jinja2 rendered, or `error`: the message the template raised.
    prompt: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct ChatCases {
    date: String,
    days: i64,
    templates: std::collections::HashMap<String, String>,
    cases: Vec<ChatCase>,
}

/// Chat templates render what jinja2 renders, configured as transformers configures it
/// (`tests/data/chat-templates/make.py`): the layouts of Llama-3 (plain and 3.1 / 3.2's dated system block),
/// Zephyr, ChatML with a default system turn, Llama-2, Phi-3 and Gemma, and one template of the Jinja and
/// Python constructs templates use; a template that raises is an error carrying its message. Through a
/// tokenizer, the template's BOS is the only one.
#[test]
fn chat_templates_match_jinja() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/chat-templates/cases.json");
    let all: ChatCases = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let today = Date::from_days(all.days);
    assert_eq!(today.strftime("%d %b %Y").unwrap(), all.date);
    let mut errors = 0;
    for case in &all.cases {
        let template = ChatTemplate::new(all.templates[&case.template].as_str());
        template.check().unwrap();
        let messages: Vec<(&str, &str)> = case.messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        let specials = ("<|begin_of_text|>", "</s>");
        let got = template.render(&messages, case.add_generation_prompt, specials, today);
        match (&case.prompt, &case.error) {
            (Some(want), None) => assert_eq!(&got.unwrap(), want, "{} {:?}", case.template, messages),
            (None, Some(raised)) => {
                let e = got.unwrap_err().to_string();
                assert!(e.contains(raised), "{} {messages:?}: {e}", case.template);
                errors += 1;
            }
            _ => panic!("a case holds a prompt or an error"),
        }
    }
    assert_eq!((all.cases.len(), errors), (96, 8));
    // The Llama-3 test vocabulary (BOS added by its post-processor) with the dated template.
    let mut vocab = hf_tokenizer("llama3").vocab().clone();
    vocab.chat_template = Some(all.templates["llama3.2"].clone());
    let tok = Tokenizer::from_vocab(vocab).unwrap();
    let ids = tok.encode_chat(&[("user", "What is 2+3?")], true).unwrap();
    let bos = tok.bos().unwrap();
    assert_eq!((ids[0], ids.iter().filter(|&&id| id == bos).count()), (bos, 1), "{ids:?}");
    let text = tok.chat_prompt(&[("user", "What is 2+3?")], true).unwrap();
    assert!(text.starts_with("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date"));
}

/// Special tokens named only in `special_tokens_map.json` (older checkpoints) are read; where
/// `tokenizer_config.json` names them too, it wins.
#[test]
fn special_tokens_map_then_tokenizer_config() {
    let dir = std::env::temp_dir().join(format!("mobilellm-special-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(hf_dir("bytelevel/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let map =
        serde_json::json!({"eos_token": {"content": "<|endoftext|>", "lstrip": false}, "bos_token": "<|im_start|>"});
    std::fs::write(dir.join("special_tokens_map.json"), map.to_string()).unwrap();
    let tok = Tokenizer::from_hf_dir(&dir).unwrap().unwrap();
    assert_eq!((tok.bos(), tok.eos()), (tok.token_id("<|im_start|>"), tok.token_id("<|endoftext|>")));
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "<|im_end|>"}"#).unwrap();
    let tok = Tokenizer::from_hf_dir(&dir).unwrap().unwrap();
    assert_eq!((tok.bos(), tok.eos()), (tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")));
    std::fs::write(dir.join("special_tokens_map.json"), "[]").unwrap();
    let e = Tokenizer::from_hf_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("special_tokens_map.json") && e.contains("not a JSON object"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// HF added tokens with `lstrip` (the whitespace before is part of the match), `rstrip` (after) and
/// `single_word` (no match touching a letter, digit or `_`) encode as `tokenizers` encodes them, in the
/// byte-level and the SentencePiece-style layouts (`tests/data/hf-tokenizers/added_flags.py`).
#[test]
fn hf_added_token_flags_match_tokenizers() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/hf-tokenizers/added-flags.json");
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for entry in golden["tokens"].as_array().unwrap() {
        let layout = entry["layout"].as_str().unwrap();
        let file = hf_dir(layout).join("tokenizer.json");
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        json["added_tokens"].as_array_mut().unwrap().extend(entry["added_tokens"].as_array().unwrap().iter().cloned());
        let vocab = Vocab::from_tokenizer_json(&json.to_string(), "flags.json").unwrap();
        assert_eq!(vocab.added_token_flags.len(), 5, "{layout}");
        let tok = Tokenizer::from_vocab(vocab).unwrap();
        for case in golden["layouts"][layout].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(text, false), want, "{layout}: {text:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 42);
}

/// Each HF tokenizer written as GGUF `tokenizer.*` keys ([`Vocab::write_gguf`]) and read back encodes every
/// case as transformers does, unless the writer said what GGUF could not carry; SmolLM2's GGUF vocabulary
/// survives the trip field for field.
#[test]
fn tokenizers_written_as_gguf_encode_the_same() {
    type Ids = fn(&HfCase) -> Option<&Vec<u32>>;
    let segment = "user-defined tokens that do not start a segment for the space prefix";
    let ignore = "ignore_merges true with pre-tokenizer None";
    let merges = "merges of a llama tokenizer (this crate reads them; llama.cpp merges by scores)";
    let first = "space prefix FirstSegmentUnlessSpace (written as before every segment)";
    let layouts: [(&str, Ids, &[&str]); 6] = [
        ("bytelevel", |c| Some(&c.bytelevel), &[]),
        ("llama3", |c| Some(&c.llama3), &[]),
        ("sentencepiece", |c| c.sentencepiece.as_ref(), &[segment]),
        ("sentencepiece-hf", |c| Some(&c.sentencepiece_hf), &[ignore, segment, merges]),
        ("sentencepiece-legacy", |c| Some(&c.sentencepiece_legacy), &[ignore, merges]),
        ("sentencepiece-first", |c| Some(&c.sentencepiece_first), &[first, ignore, merges]),
    ];
    for (name, golden, expected_lost) in layouts {
        let tok = hf_tokenizer(name);
        let mut w = GgufWriter::new();
        let lost = tok.vocab().write_gguf(&mut w);
        assert_eq!(lost, expected_lost, "{name}");
        let back = Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes(), name).unwrap()).unwrap();
        assert_eq!(
            (back.vocab().tokens.len(), back.bos(), back.eos()),
            (tok.vocab().tokens.len(), tok.bos(), tok.eos())
        );
        assert_eq!(back.vocab().chat_template, tok.vocab().chat_template, "{name}");
        if lost.is_empty() {
            assert_eq!(check_cases(&back, name, golden), 36, "{name}");
        }
    }
    // Where the writer warns, encodings do differ: the warnings are not noise.
    let first_back = {
        let mut w = GgufWriter::new();
        hf_tokenizer("sentencepiece-first").vocab().write_gguf(&mut w);
        Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes(), "first").unwrap()).unwrap()
    };
    assert!(hf_cases().cases.iter().any(|c| first_back.encode(&c.text, true) != c.sentencepiece_first));

    let vocab = smollm2().vocab();
    let mut w = GgufWriter::new();
    assert!(vocab.write_gguf(&mut w).is_empty());
    let back = mobilellm_kernels::tokenizer::Vocab::from_gguf(&GgufFile::from_bytes(w.to_bytes(), "s").unwrap());
    assert_eq!(&back.unwrap(), vocab);
}

/// A vocabulary padded to a model's larger embedding (`Vocab::padded_to`, as llama.cpp's converter does):
/// `[PAD{id}]` placeholders of type Unused, the same encodings before and after a trip through GGUF keys;
/// a tokenizer larger than the model is an error.
#[test]
fn padded_vocabularies_encode_the_same() {
    let tok = hf_tokenizer("bytelevel");
    let n = tok.vocab().tokens.len();
    let padded = tok.vocab().padded_to(n + 5).unwrap();
    assert_eq!((padded.tokens.len(), padded.tokens[n + 4].as_str()), (n + 5, format!("[PAD{}]", n + 4).as_str()));
    assert_eq!(padded.token_types[n..], [TokenType::Unused; 5]);
    let mut w = GgufWriter::new();
    assert!(padded.write_gguf(&mut w).is_empty());
    let back = Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes(), "padded").unwrap()).unwrap();
    assert_eq!(back.vocab_size(), n + 5);
    assert_eq!(check_cases(&back, "padded", |c| Some(&c.bytelevel)), 36);
    assert_eq!(tok.vocab().padded_to(n).unwrap(), *tok.vocab());
    assert!(tok.vocab().padded_to(n - 1).unwrap_err().to_string().contains("at most"));
}

/// Stop strings on streamed text: for random texts cut into random pieces (characters of 1 to 4 bytes,
/// overlapping and repeating stop strings), the text let through is exactly the text before the first
/// match, found directly on the whole text, or all of it when none matches.
#[test]
fn stop_strings_cut_streamed_text_at_the_first_match() {
    use mobilellm_kernels::tokenizer::StopStrings;
    let alphabet = ["a", "b", "\n", "é", "中", "😀", "User:", " "];
    let stop_sets: [&[&str]; 5] = [&["ab"], &["aab", "ba"], &["\nUser:"], &["é中", "😀😀", "b\n"], &["abab", "b"]];
    let mut rng = common::ShapeRng::new(31);
    let (mut stopped, mut through) = (0, 0);
    for stops in stop_sets {
        for _ in 0..300 {
            let text: String = (0..rng.range(0, 24)).map(|_| rng.pick(&alphabet)).collect();
            let first = stops.iter().filter_map(|s| text.find(s)).min();
            let mut stop = StopStrings::new(stops).unwrap();
            let mut out = String::new();
            let mut rest = text.as_str();
            while !rest.is_empty() {
                let mut cut = rng.range(1, rest.len()).min(rest.len());
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                out += &stop.push(&rest[..cut]);
                rest = &rest[cut..];
            }
            out += &stop.finish();
            assert_eq!(out, text[..first.unwrap_or(text.len())], "{text:?} with {stops:?}");
            assert_eq!(stop.is_stopped(), first.is_some());
            if first.is_some() {
                stopped += 1;
            } else {
                through += 1;
            }
        }
    }
    assert!(stopped > 200 && through > 200, "{stopped} stopped, {through} through");
    assert!(StopStrings::new(&["", "x"]).is_err(), "an empty stop string matches before any text");
}
