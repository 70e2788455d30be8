//! The tokenizers on arbitrary text and ids, with fixed small vocabularies (gpt2 byte-level BPE with merges,
//! llama SentencePiece with byte fallback) and with vocabularies made from the input itself. Encoding and
//! decoding never panic; decoding ids outside the vocabulary is skipped (or an error with `try_decode`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mobilellm_kernels::tokenizer::{AddedTokenFlags, SpacePrefix, TokenType, Tokenizer, TokenizerKind, Vocab};

fn vocab(
    kind: TokenizerKind,
    tokens: Vec<String>,
    types: Vec<TokenType>,
    scores: Vec<f32>,
    merges: Vec<String>,
) -> Vocab {
    Vocab {
        kind,
        pre: None,
        tokens,
        token_types: types,
        scores,
        merges,
        bos: Some(0),
        eos: Some(1),
        unk: Some(0),
        add_bos: true,
        add_eos: true,
        space_prefix: if kind == TokenizerKind::Llama { SpacePrefix::EverySegment } else { SpacePrefix::Never },
        isolate_user_defined: false,
        added_token_flags: Default::default(),
        ignore_merges: false,
        chat_template: None,
    }
}

/// GPT-2's byte -> printable character map (the same rule the library uses).
fn byte_char(b: u8) -> char {
    let mut n = 0u32;
    for x in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x);
        let c = if printable {
            char::from(x)
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
        if x == b {
            return c;
        }
    }
    '\0'
}

fn fixed() -> &'static [Tokenizer; 2] {
    static T: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    T.get_or_init(|| {
        // gpt2: two specials, all 256 byte characters, then merged pieces with their merges.
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_end|>".into()];
        let mut types = vec![TokenType::Control, TokenType::Control];
        tokens.extend((0..=255u8).map(|b| byte_char(b).to_string()));
        types.extend(std::iter::repeat_n(TokenType::Normal, 256));
        let sp = byte_char(b' ').to_string();
        let merges: Vec<String> =
            vec!["h e".into(), "l l".into(), "he ll".into(), "hell o".into(), format!("{sp} hello"), "1 2".into()];
        for m in &merges {
            tokens.push(m.replace(' ', ""));
            types.push(TokenType::Normal);
        }
        let mut v = vocab(TokenizerKind::Gpt2, tokens, types, Vec::new(), merges);
        // HF added-token flags: <|im_end|> takes the whitespace around it, <|endoftext|> only whole words.
        v.added_token_flags.insert(1, AddedTokenFlags { lstrip: true, rstrip: true, single_word: false });
        v.added_token_flags.insert(0, AddedTokenFlags { single_word: true, ..Default::default() });
        let gpt2 = Tokenizer::from_vocab(v).unwrap();
        // llama: unk/bos/eos, byte tokens, scored pieces.
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
        let mut scores = vec![0.0f32; 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(TokenType::Byte);
            scores.push(0.0);
        }
        for (t, s) in [("\u{2581}", -1.0), ("h", -2.0), ("e", -2.0), ("he", -1.0), ("ll", -0.5), ("\u{2581}he", -2.0)] {
            tokens.push(t.into());
            types.push(TokenType::Normal);
            scores.push(s);
        }
        let llama = Tokenizer::from_vocab(vocab(TokenizerKind::Llama, tokens, types, scores, Vec::new())).unwrap();
        [gpt2, llama]
    })
}

fn exercise(tok: &Tokenizer, text: &str, raw: &[u8]) {
    for add in [false, true] {
        let ids = tok.encode(text, add);
        assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()), "encode gave an id outside the vocabulary");
        let _ = tok.decode(&ids);
    }
    let ids: Vec<u32> = raw.chunks(2).map(|c| u32::from(c[0]) | (u32::from(*c.get(1).unwrap_or(&0)) << 8)).collect();
    let _ = tok.decode(&ids);
    let _ = tok.try_decode(&ids);
    let mut stream = tok.stream_decoder();
    for &id in &ids {
        let _ = stream.push(id);
    }
    let _ = stream.finish();
    let _ = tok.chat_prompt(&[("user", text)], true);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match mode % 3 {
        0 | 1 => exercise(&fixed()[(mode % 2) as usize], &text, rest),
        _ => {
            // A vocabulary from the input: lines are tokens; the first byte of each picks its type; merges
            // join neighbouring tokens; then the text is the input once more.
            let lines: Vec<&str> = text.split('\n').take(512).collect();
            let tokens: Vec<String> = lines.iter().map(|l| l.chars().skip(1).collect()).collect();
            let types: Vec<TokenType> =
                lines.iter().map(|l| TokenType::from_i64(l.bytes().next().unwrap_or(1) as i64 % 8)).collect();
            let scores: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
            let merges: Vec<String> = tokens.windows(2).map(|w| format!("{} {}", w[0], w[1])).collect();
            let kind = if mode & 8 == 0 { TokenizerKind::Gpt2 } else { TokenizerKind::Llama };
            if let Ok(tok) = Tokenizer::from_vocab(vocab(kind, tokens, types, scores, merges)) {
                exercise(&tok, &text, rest);
            }
        }
    }
});
