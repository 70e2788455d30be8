//! HF tokenizer files from arbitrary bytes: `tokenizer.json` text, SentencePiece `tokenizer.model`
//! protobufs and `tokenizer_config.json` never panic; what they build encodes and decodes within the
//! vocabulary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilellm_kernels::tokenizer::{Tokenizer, Vocab};

/// Strings every built tokenizer encodes (besides the input's own text).
const TEXTS: &[&str] = &["", " ", "  a  b ", "Hello, world! 123", "é 日本 🦀", "<s>x</s> y", "a <|tool|> b\n"];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    // Mode 0: the rest is a tokenizer.model. Otherwise: a tokenizer.json, then after a NUL byte a text to
    // encode (mode 1) or a tokenizer_config.json (mode 2).
    let (vocab, extra) = if mode % 3 == 0 {
        (Vocab::from_sentencepiece(rest, "fuzz.model"), String::new())
    } else {
        let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let Ok(json) = std::str::from_utf8(&rest[..split]) else { return };
        let extra = String::from_utf8_lossy(rest.get(split + 1..).unwrap_or(&[])).into_owned();
        (Vocab::from_tokenizer_json(json, "fuzz.json"), extra)
    };
    let Ok(mut vocab) = vocab else { return };
    if mode % 3 == 2 && vocab.apply_tokenizer_config(&extra, "fuzz_config.json").is_err() {
        return;
    }
    let Ok(tok) = Tokenizer::from_vocab(vocab) else { return };
    for text in TEXTS.iter().copied().chain([extra.as_str()]) {
        for add in [false, true] {
            let ids = tok.encode(text, add);
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()), "encode gave an id outside the vocabulary");
            let _ = tok.decode(&ids);
        }
    }
    let _ = tok.chat_prompt(&[("user", &extra)], true);
});
