//! GBNF grammars and JSON schemas from arbitrary bytes: `Grammar::parse` never panics and never runs away
//! (limits bound every expansion); a grammar that parses prints (`Display`) as GBNF that parses to the same
//! language on the input's own bytes; and every grammar `json_schema_to_gbnf` writes for a JSON input
//! parses (patterns included), its sentences valid JSON, and so does every grammar `regex_to_gbnf` writes.
//! The converters may refuse an input, but never with a grammar the recognizer refuses for left recursion
//! (a converter's bug, as repeating a part that can match nothing was). The first byte picks the mode (GBNF
//! when even, else a regex with the top bit, else a schema, its layout from the middle bits); the rest is
//! the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilellm_kernels::constrain::{json_schema_to_gbnf_with, regex_to_gbnf, Grammar, JsonLayout};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let Ok(grammar) = Grammar::parse(&String::from_utf8_lossy(rest)) else { return };
        let again = Grammar::parse(&grammar.to_string()).expect("a printed grammar parses");
        // Probe with prefixes of the input itself.
        for end in (0..rest.len().min(64)).step_by(7) {
            let probe = &rest[..end];
            assert_eq!(grammar.is_prefix(probe), again.is_prefix(probe), "{grammar}");
            assert_eq!(grammar.accepts(probe), again.accepts(probe), "{grammar}");
        }
    } else if mode & 0x80 != 0 {
        match regex_to_gbnf(&String::from_utf8_lossy(rest)) {
            Ok(gbnf) => drop(Grammar::parse(&gbnf).unwrap_or_else(|e| panic!("{e}\n{gbnf}"))),
            Err(e) => assert!(!e.to_string().contains("left-recursive"), "{e}"),
        }
    } else {
        let Ok(schema) = serde_json::from_slice::<serde_json::Value>(rest) else { return };
        let layout = [JsonLayout::Free, JsonLayout::Spaced, JsonLayout::Compact][usize::from(mode / 2) % 3];
        let gbnf = match json_schema_to_gbnf_with(&schema, layout) {
            Ok(gbnf) => gbnf,
            Err(e) => return assert!(!e.to_string().contains("left-recursive"), "{schema}: {e}"),
        };
        let grammar = Grammar::parse(&gbnf).unwrap_or_else(|e| panic!("{schema}: {e}\n{gbnf}"));
        for probe in ["null", "{}", "[]", "\"\"", "0", "true", r#"{"a": 1}"#, "[1, \"x\"]", r#""a\"b\\c""#] {
            if grammar.accepts(probe) {
                assert!(serde_json::from_str::<serde_json::Value>(probe).is_ok());
            }
        }
    }
});
