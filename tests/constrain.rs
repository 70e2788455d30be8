//! Constrained decoding: the JSON recognizer, and a GBNF grammar of RFC 8259 run by the grammar
//! recognizer, against serde_json (an independent parser) on thousands of generated and mutated documents; JSON-constrained generation on a model, where every token must be one
//! the mask allowed and the output a JSON prefix; and the real SmolLM2 answering in JSON.
mod common;
#[path = "support/smollm2.rs"]
mod smollm2;

use common::{gpus, tiny_config, ShapeRng};
use mobilellm_kernels::constrain::{Constraint, Grammar, JsonConstraint, JsonPrefix, MAX_WHITESPACE};
use mobilellm_kernels::model::gguf::GgufFile;
use mobilellm_kernels::model::{HostModel, Model, ModelConfig, PlanOptions, Sampling};
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::tokenizer::Tokenizer;

fn smollm2_tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(smollm2::gguf_path()).unwrap()).unwrap()
}

/// A random JSON document (depth at most `depth`), with the escapes, UTF-8 and number forms JSON has.
fn document(rng: &mut ShapeRng, depth: usize, out: &mut String) {
    let ws = |rng: &mut ShapeRng, out: &mut String| {
        if rng.chance(30) {
            out.push_str([" ", "\n", "  ", "\t", "\r\n "][rng.range(0, 4)]);
        }
    };
    ws(rng, out);
    let kind = if depth == 0 { rng.range(2, 7) } else { rng.range(0, 7) };
    match kind {
        0 | 1 => {
            let (open, close) = if kind == 0 { ('{', '}') } else { ('[', ']') };
            out.push(open);
            let n = rng.range(0, 3);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                if kind == 0 {
                    ws(rng, out);
                    string(rng, out);
                    ws(rng, out);
                    out.push(':');
                }
                document(rng, depth - 1, out);
            }
            ws(rng, out);
            out.push(close);
        }
        2 => string(rng, out),
        3 | 4 => {
            let forms = ["0", "-0", "7", "-12", "3.25", "0.5e3", "1E-2", "-4e+10", "120", "9.0"];
            out.push_str(forms[rng.range(0, forms.len() - 1)]);
        }
        _ => out.push_str(["true", "false", "null"][rng.range(0, 2)]),
    }
    ws(rng, out);
}

fn string(rng: &mut ShapeRng, out: &mut String) {
    out.push('"');
    for _ in 0..rng.range(0, 5) {
        let pieces =
            ["a", "Z", " ", "\\n", "\\\"", "\\\\", "\\/", "\\u00e9", "\\u4E2B", "é", "中", "😀", "'", "{", ":"];
        out.push_str(pieces[rng.range(0, pieces.len() - 1)]);
    }
    out.push('"');
}

/// Bytes mutations insert or write: JSON's own alphabet and a few bytes it forbids. No `d`/`D`: a mutated
/// `\u` escape must not become a lone surrogate (serde_json refuses those; JSON's grammar and these
/// recognizers take any four hex digits).
const MUTATION_BYTES: &[u8] = b"{}[]\":,-+.0123456789eEtrufalsn \n\\/abcxyz\x01\x7f\xc3\xa9\xe4\xb8\xff\xed\xa0";

/// Whether serde_json takes `bytes` as one document; `None` where it stops at a number out of f64's range
/// (JSON allows those; serde_json has not read the rest, so it says nothing).
fn serde_verdict(bytes: &[u8]) -> Option<bool> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(_) => Some(true),
        Err(e) if e.to_string().contains("out of range") => None,
        Err(_) => Some(false),
    }
}

fn serde_accepts(bytes: &[u8]) -> bool {
    serde_verdict(bytes) == Some(true)
}

fn ours_accepts(bytes: &[u8]) -> bool {
    let mut json = JsonPrefix::new();
    json.push_bytes(bytes) && json.is_complete()
}

/// Documents and one-byte mutations of them (insert, delete, replace from JSON's own alphabet and a few
/// bytes it forbids): the recognizer calls a string a whole document exactly when serde_json parses it, and
/// every prefix of a document is a prefix to it.
#[test]
fn json_recognizer_agrees_with_serde_json() {
    let mut rng = ShapeRng::new(7);
    let alphabet = MUTATION_BYTES;
    let (mut documents, mut mutants, mut valid_mutants) = (0, 0, 0);
    for _ in 0..3000 {
        let mut doc = String::new();
        document(&mut rng, 4, &mut doc);
        let bytes = doc.as_bytes();
        assert!(serde_accepts(bytes), "generator made invalid JSON: {doc:?}");
        assert!(ours_accepts(bytes), "valid document refused: {doc:?}");
        let mut json = JsonPrefix::new();
        for (i, &b) in bytes.iter().enumerate() {
            assert!(json.push(b), "prefix {:?} refused", &doc[..=i.min(doc.len() - 1)]);
        }
        documents += 1;
        for _ in 0..4 {
            let mut m = bytes.to_vec();
            let at = rng.range(0, m.len());
            match rng.range(0, 2) {
                0 => m.insert(at, alphabet[rng.range(0, alphabet.len() - 1)]),
                1 if at < m.len() => {
                    m.remove(at);
                }
                _ if at < m.len() => m[at] = alphabet[rng.range(0, alphabet.len() - 1)],
                _ => m.push(b'}'),
            }
            let Some(theirs) = serde_verdict(&m) else { continue };
            let ours = ours_accepts(&m);
            assert_eq!(ours, theirs, "{:?}: ours {ours}, serde_json {theirs}", String::from_utf8_lossy(&m));
            mutants += 1;
            valid_mutants += usize::from(theirs);
        }
    }
    eprintln!("{documents} documents, {mutants} mutants ({valid_mutants} still valid JSON)");
    assert!(valid_mutants > 500 && valid_mutants < mutants - 500, "mutants on both sides");

    // UTF-8 inside strings at the edges of validity: overlongs, surrogates, past U+10FFFF, truncations.
    let sequences: [&[u8]; 16] = [
        b"\xc2\x80",
        b"\xc1\xbf",
        b"\xdf\xbf",
        b"\xe0\xa0\x80",
        b"\xe0\x9f\xbf",
        b"\xed\x9f\xbf",
        b"\xed\xa0\x80",
        b"\xee\x80\x80",
        b"\xf0\x90\x80\x80",
        b"\xf0\x8f\xbf\xbf",
        b"\xf4\x8f\xbf\xbf",
        b"\xf4\x90\x80\x80",
        b"\xf5\x80\x80\x80",
        b"\x80",
        b"\xe4\xb8",
        b"\xc3\x28",
    ];
    let mut valid = 0;
    for seq in sequences {
        let quoted = [&b"\""[..], seq, b"\""].concat();
        assert_eq!(Some(ours_accepts(&quoted)), serde_verdict(&quoted), "{seq:x?}");
        valid += usize::from(serde_accepts(&quoted));
    }
    assert_eq!(valid, 7);

    // The limits: nesting and whitespace runs.
    let deep = "[".repeat(32) + &"]".repeat(32);
    assert!(ours_accepts(deep.as_bytes()));
    assert!(!JsonPrefix::new().push_bytes("[".repeat(33).as_bytes()));
    let spaces = " ".repeat(MAX_WHITESPACE as usize);
    assert!(ours_accepts(format!("{spaces}1{spaces}").as_bytes()));
    assert!(!JsonPrefix::new().push_bytes(format!("{spaces} ").as_bytes()));
    // A top-level number is complete but may go on.
    let mut number = JsonPrefix::new();
    assert!(number.push_bytes(b"12") && number.is_complete() && number.push(b'5') && !number.push(b'x'));
}

/// RFC 8259's grammar, written in GBNF.
const JSON_GBNF: &str = r#"
    root   ::= ws value ws
    value  ::= object | array | string | number | "true" | "false" | "null"
    object ::= "{" ws (member ("," ws member)*)? "}"
    member ::= string ws ":" ws value ws
    array  ::= "[" ws (value ws ("," ws value ws)*)? "]"
    string ::= "\"" ([^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}))* "\""
    number ::= "-"? ("0" | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
    ws     ::= [ \t\n\r]*
"#;

/// The grammar recognizer running JSON's grammar says what serde_json says, on generated documents and
/// their one-byte mutants (invalid UTF-8 among them), and takes every prefix of a document.
#[test]
fn json_grammar_agrees_with_serde_json() {
    let json = Grammar::parse(JSON_GBNF).unwrap();
    let mut rng = ShapeRng::new(19);
    let alphabet = MUTATION_BYTES;
    let (mut mutants, mut valid_mutants) = (0, 0);
    for _ in 0..600 {
        let mut doc = String::new();
        document(&mut rng, 4, &mut doc);
        assert!(json.accepts(&doc), "valid document refused: {doc:?}");
        for end in 0..doc.len() {
            assert!(json.is_prefix(&doc.as_bytes()[..end]), "prefix of {doc:?} refused at {end}");
        }
        for _ in 0..4 {
            let mut m = doc.as_bytes().to_vec();
            let at = rng.range(0, m.len() - 1);
            match rng.range(0, 2) {
                0 => m.insert(at, alphabet[rng.range(0, alphabet.len() - 1)]),
                1 => {
                    m.remove(at);
                }
                _ => m[at] = alphabet[rng.range(0, alphabet.len() - 1)],
            }
            let Some(theirs) = serde_verdict(&m) else { continue };
            assert_eq!(json.accepts(&m), theirs, "{:?}", String::from_utf8_lossy(&m));
            mutants += 1;
            valid_mutants += usize::from(theirs);
        }
    }
    eprintln!("{mutants} mutants ({valid_mutants} still valid JSON)");
    assert!(valid_mutants > 100 && valid_mutants < mutants - 100, "mutants on both sides");
}

/// A small model of SmolLM2's vocabulary (random weights) generating under the JSON constraint: every pick
/// is allowed by the mask, the output is a JSON prefix, and the mask is lifted after the call.
#[test]
fn json_constrained_generation_on_a_model() {
    let tokenizer = smollm2_tokenizer();
    let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    let config = ModelConfig { vocab_size: tokenizer.vocab_size(), ..tiny_config() };
    let host = HostModel::synthetic(config, WeightType::Q8_0, 3).unwrap();
    let prompt = tokenizer.encode("Answer in JSON:", false);
    for gpu in gpus() {
        for (temperature, seed) in [(0.0, 0), (1.0, 5)] {
            let mut model = Model::new(gpu, &host, &PlanOptions { context: 64, ..PlanOptions::default() }).unwrap();
            model.set_sampling(Sampling { temperature, seed, ..Sampling::greedy() }).unwrap();
            let mut json = JsonConstraint::new(&tokenizer, &stop);
            let mut masks = 0;
            let out = model
                .generate_constrained(
                    &prompt,
                    40,
                    &stop,
                    |generated| {
                        masks += 1;
                        json.mask_after(generated) // an error if the last pick was not allowed
                    },
                    |_| true,
                )
                .unwrap();
            assert_eq!(masks, out.len(), "a mask before every pick");
            let text: Vec<u8> =
                out.iter().filter(|t| !stop.contains(t)).flat_map(|&t| tokenizer.token_bytes(t).into_owned()).collect();
            let mut check = JsonPrefix::new();
            assert!(check.push_bytes(&text), "{:?} is not a JSON prefix", String::from_utf8_lossy(&text));
            if check.is_complete() {
                assert!(serde_accepts(&text));
            }
            eprintln!("[{}] T={temperature}: {:?}", gpu.features(), String::from_utf8_lossy(&text));
            assert!(!model.has_token_mask(), "the mask is lifted");
        }
    }
}

/// The real SmolLM2 asked for JSON answers with one whole JSON object.
#[test]
fn smollm2_answers_in_json() {
    let gpu = &gpus()[0];
    let file = GgufFile::open(smollm2::gguf_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let host = HostModel::from_gguf(&file, None).unwrap();
    let mut model = Model::new(gpu, &host, &PlanOptions { context: 256, ..PlanOptions::default() }).unwrap();
    let question = "Describe France as a JSON object with keys name, capital and population.";
    let prompt = tokenizer.encode_chat(&[("user", question)], true).unwrap();
    let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    let mut json = JsonConstraint::new(&tokenizer, &stop);
    let next = |generated: &[u32]| json.mask_after(generated);
    let out = model.generate_constrained(&prompt, 100, &stop, next, |_| true).unwrap();
    assert_eq!(out.last().copied(), tokenizer.eos(), "the document ended and the model stopped");
    let text = tokenizer.decode(&out[..out.len() - 1]);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(value.get("capital").and_then(|c| c.as_str()).is_some_and(|c| c.contains("Paris")), "{text}");
    eprintln!("{text}");
}
