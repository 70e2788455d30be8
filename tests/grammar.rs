//! GBNF grammars (`constrain::Grammar`) and JSON schemas (`constrain::json_schema_to_gbnf`): the
//! recognizer on hand-checked sentences, repetitions, Unicode and partial UTF-8; typed errors for bad
//! grammars and unsupported schemas; the constraint's masks (a lazily built DFA walked over a token trie)
//! equal to trying every token on a fresh recognizer; every document a schema's grammar generates is valid
//! JSON that a small independent validator accepts; and the real SmolLM2 answering to a schema.
mod common;
#[path = "support/smollm2.rs"]
mod smollm2;

use common::{gpus, ScratchDir, ShapeRng};
use mobilellm_kernels::constrain::{
    json_schema_to_gbnf, json_schema_to_gbnf_with, regex_to_gbnf, Constraint, Grammar, GrammarConstraint, JsonLayout,
};
use mobilellm_kernels::model::gguf::GgufFile;
use mobilellm_kernels::model::{HostModel, Model, PlanOptions};
use mobilellm_kernels::tokenizer::Tokenizer;
use mobilellm_kernels::Error;
use serde_json::{json, Value};

fn grammar(text: &str) -> Grammar {
    Grammar::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn recognizes_hand_checked_sentences() {
    let arithmetic = grammar(
        r#"
        # Sums and products of integers, with parentheses; spaces allowed around operators.
        root   ::= expr
        expr   ::= term (ws [-+] ws term)*
        term   ::= factor (ws [*/] ws factor)*
        factor ::= [0-9]+ | "(" ws expr ws ")"
        ws     ::= " "?
        "#,
    );
    for ok in ["1", "12+3", "(1 + 2) * 3", "((4))", "7/ 8 - 9*0"] {
        assert!(arithmetic.accepts(ok), "{ok:?}");
    }
    for bad in ["", "1+", "(1", "1 +  2", "a", "1)", "+1"] {
        assert!(!arithmetic.accepts(bad), "{bad:?}");
    }
    assert!(arithmetic.is_prefix(b"(1 + ") && arithmetic.is_prefix(b"") && !arithmetic.is_prefix(b"1 +)"));
    assert_eq!(arithmetic.longest_prefix(b"(1 + 2))"), 7, "the second `)` closes nothing");
    assert_eq!(arithmetic.longest_prefix(b"(1 + "), 5);

    // Repetitions: exact, at least, bounded, optional; nested groups; alternatives of different lengths.
    let counts = grammar(r#"root ::= "a"{2} "b"{1,3} ("c" | "dd")* "e"{2,} "f"?"#);
    for ok in ["aabee", "aabbbccddcee", "aabbeeeef", "aabddeeef"] {
        assert!(counts.accepts(ok), "{ok:?}");
    }
    for bad in ["abee", "aabbbbee", "aabe", "aabeeff", "aabdee", "aabeef f"] {
        assert!(!counts.accepts(bad), "{bad:?}");
    }
    let zero = grammar(r#"root ::= "x" "y"{0} "z"{0,0}"#);
    assert!(zero.accepts("x") && !zero.accepts("xy"));

    // Unicode: classes over code points, `.` any character, negation, escapes of every form.
    let unicode = grammar(r#"root ::= [α-ω]+ "\u00e9" . [^a-z\x00-\x1F] "\U0001F600" "\t\"\\""#);
    assert!(unicode.accepts("λμéZ中😀\t\"\\"));
    assert!(unicode.accepts("ωé😀!😀\t\"\\"));
    assert!(!unicode.accepts("Aé..😀\t\"\\") && !unicode.accepts("λéxy😀\t\"\\"));
    // A character's UTF-8 may be cut anywhere: a prefix ending inside one is allowed when some character
    // the class holds starts so, and refused when none does.
    let lambda = "λ".as_bytes();
    assert!(unicode.is_prefix(&lambda[..1]));
    assert!(!unicode.is_prefix(&"中".as_bytes()[..1]), "no Greek letter starts with 0xE4");
    assert!(!unicode.is_prefix(&[0xCE, 0x41]), "a continuation byte was due");
    assert!(!grammar("root ::= .").accepts("\u{0}\u{0}"));
    assert!(!grammar("root ::= .*").is_prefix(&[0xC0, 0x80]), "overlong UTF-8");
    assert!(!grammar("root ::= .*").is_prefix(&[0xED, 0xA0]), "a surrogate");

    // Rules defined after use, empty alternatives, names with dashes and digits, comments anywhere.
    let list = grammar(
        "root ::= item-1 (\",\" item-1)* # a list\n item-1 ::= \"[\" inner \"]\" | \"-\"\n inner ::= | item-1 inner",
    );
    assert!(list.accepts("[],-,[[-]-]") && !list.accepts("[,]") && !list.accepts("[[]"));
    assert!(list.rule_count() > 3, "groups and repetitions become rules");
    // Names the parser gives those rules never take a name of the text's, so the grammar prints as GBNF.
    let clash = grammar("root ::= (\"a\" | root-1)+\nroot-1 ::= \"b\" root-2?\nroot-2 ::= \"c\"");
    let printed = grammar(&clash.to_string());
    for s in ["a", "bc", "abab", "c", "", "bcc"] {
        assert_eq!(
            (clash.accepts(s), printed.accepts(s)),
            (["a", "bc", "abab"].contains(&s), clash.accepts(s)),
            "{s:?}"
        );
    }
    // Display writes GBNF that parses to the same language.
    let again = grammar(&list.to_string());
    for s in ["[],-,[[-]-]", "[,]", "-", "[[]"] {
        assert_eq!(again.accepts(s), list.accepts(s), "{s:?} after {list}");
    }
}

#[test]
fn bad_grammars_are_typed_errors_naming_the_place() {
    let cases = [
        ("root ::= \"a\" b", "rule `b`"),
        ("start ::= \"a\"", "root"),
        ("root ::= root \"a\"", "`root` is left-recursive"),
        ("root ::= a\na ::= b? c\nb ::= \"x\"\nc ::= a \"y\"", "left-recursive"),
        ("root ::= \"a\"\nroot ::= \"b\"", "one definition of rule `root`"),
        ("root ::= \"abc", "closing the literal"),
        ("root ::= [abc", "closing the class"),
        ("root ::= (\"a\" | \"b\"", "closing the group"),
        ("root ::= \"a\")", "outside a group"),
        ("root ::= \"\\q\"", "an escape"),
        ("root ::= \"\\xZZ\"", "hex digits"),
        ("root ::= \"\\uD800\"", "hex digits of a code point"),
        ("root ::= [z-a]", "range"),
        ("root ::= \"a\"{3,2}", "m <= n"),
        ("root ::= \"a\"{2", "closing the repetition"),
        ("root ::= \"a\"{5000}", "1000"),
        ("root ::= \"a\" ::=", "a literal, a class"),
        ("\"a\"", "rule definition"),
    ];
    for (text, expected) in cases {
        match Grammar::parse(text) {
            Err(e @ Error::InvalidArgument { .. }) => {
                let message = e.to_string();
                assert!(message.contains(expected), "{text:?}: {message}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    // Errors name line and column.
    let e = Grammar::parse("root ::= a\n\na ::= \"x\" [").unwrap_err().to_string();
    assert!(e.contains("line 3, column 12"), "{e}");
}

/// Grammars that would take exponential time, deep recursion or huge memory stop at the documented limits
/// instead: refused bytes, or a typed error.
#[test]
fn limits_bound_pathological_grammars() {
    use mobilellm_kernels::constrain::{MAX_ELEMENTS, MAX_STACK_DEPTH};
    // Each rule forks into two identical references: 2^40 parses of one "x".
    let mut forks: String = (0..40).map(|i| format!("r{i} ::= r{} | r{}\n", i + 1, i + 1)).collect();
    forks.push_str("root ::= r0\nr40 ::= \"x\"\n");
    let start = std::time::Instant::now();
    assert!(!grammar(&forks).accepts("x"), "more parses than MAX_EXPANSION allows are refused");
    assert!(start.elapsed().as_secs_f64() < 5.0, "{:?}", start.elapsed());
    // A chain of references nested 2 000 deep (each needs its "y" after): deeper than MAX_STACK_DEPTH.
    let chain = |n: usize| -> String {
        let mut g: String = (0..n).map(|i| format!("c{i} ::= c{} \"y\"\n", i + 1)).collect();
        g.push_str(&format!("root ::= c0\nc{n} ::= \"x\"\n"));
        g
    };
    let deep = grammar(&chain(2000));
    assert!(!deep.is_prefix(b"x"));
    let shallow = grammar(&chain(MAX_STACK_DEPTH - 2));
    assert!(shallow.accepts(format!("x{}", "y".repeat(MAX_STACK_DEPTH - 2))));
    // Repetitions written out past MAX_ELEMENTS.
    let long = format!("root ::= \"{}\"{{1000}}", "a".repeat(MAX_ELEMENTS / 999));
    let e = Grammar::parse(&long).unwrap_err().to_string();
    assert!(e.contains("elements"), "{e}");
}

/// A vocabulary of byte strings: ASCII pieces, whole and cut multi-byte characters, empty ids.
fn vocabulary() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "a", "b", "ab", "ba", "abc", "\"", "\",", "{", "}", "{\"", "[", "]", ",", ":", " ", "  ", "\n", "1", "12", "-",
        ".", "e", "true", "false", "null", "é", "中", "😀", "x", "y", "yy", "name", "\\", "\\n", "\\u00", "e9",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Characters cut in two: the tail must continue what the head began.
    for c in ["é", "中", "😀"] {
        let b = c.as_bytes();
        v.push(b[..1].to_vec());
        v.push(b[1..].to_vec());
    }
    v.push(Vec::new()); // a special token: never allowed
    v
}

/// The mask by brute force: each token tried on a fresh recognizer after the whole text so far.
fn brute_force_mask(g: &Grammar, vocab: &[Vec<u8>], text: &[u8], stop: u32) -> Vec<u32> {
    let mut allowed: Vec<u32> = (0..vocab.len() as u32)
        .filter(|&id| !vocab[id as usize].is_empty() && g.is_prefix(&[text, &vocab[id as usize]].concat()))
        .collect();
    if std::str::from_utf8(text).is_ok_and(|t| g.accepts(t)) {
        allowed.push(stop);
    }
    allowed.sort_unstable();
    allowed
}

/// Random walks under the constraint: at every step its mask equals the brute-force one, and the tokens
/// picked from it keep the text a prefix of the language.
#[test]
fn constraint_masks_equal_trying_every_token() {
    let grammars = [
        r#"root ::= "{" ws ("\"" [a-z]* "\"" ws ":" ws val ("," ws "\"" [a-z]* "\"" ws ":" ws val)*)? "}"
           val ::= [0-9]+ | "true" | "[" ws (val ("," ws val)*)? "]" | "\"" ([^"\\] | "\\" [n"\\])* "\""
           ws ::= [ \n]*"#,
        r#"root ::= ([a-c]{1,3} | [é中😀] | "x" "y"*)+ "!"?"#,
        r#"root ::= (. | "\\u00" [0-9a-f]{2})*"#,
    ];
    let vocab = vocabulary();
    let stop = vocab.len() as u32;
    let mut full = vocab.clone();
    full.push(Vec::new()); // the stop token's id, bytes never matched
    let mut rng = ShapeRng::new(11);
    let mut steps = 0;
    for text in grammars {
        let g = grammar(text);
        let mut constraint = GrammarConstraint::with_vocabulary(g.clone(), full.clone(), &[stop]);
        for _walk in 0..12 {
            constraint.reset();
            let mut out: Vec<u8> = Vec::new();
            for _ in 0..40 {
                let mask = constraint
                    .mask()
                    .unwrap_or_else(|e| panic!("{e} {text} after {:?}", String::from_utf8_lossy(&out)));
                let got: Vec<u32> = (0..full.len() as u32).filter(|&id| mask.is_allowed(id)).collect();
                assert_eq!(
                    got,
                    brute_force_mask(&g, &full, &out, stop),
                    "{text} after {:?}",
                    String::from_utf8_lossy(&out)
                );
                steps += 1;
                let pick = got[rng.range(0, got.len() - 1)];
                constraint.accept(pick).unwrap();
                if pick == stop {
                    assert!(constraint.is_complete());
                    break;
                }
                out.extend(&full[pick as usize]);
                assert!(g.is_prefix(&out));
            }
        }
        // A token the mask refuses is an error and changes nothing.
        constraint.reset();
        let refused = (0..full.len() as u32).find(|&id| !constraint.mask().unwrap().is_allowed(id)).unwrap();
        assert!(matches!(constraint.accept(refused), Err(Error::InvalidArgument { .. })));
        assert_eq!(constraint.mask().unwrap(), constraint.clone().mask().unwrap());
        eprintln!("{} DFA states for {text:?}", constraint.dfa_states());
    }
    assert!(steps > 500, "{steps} steps checked");
}

/// A small validator for the schema subset, written from the JSON schema spec (not from the converter).
fn validates(schema: &Value, doc: &Value, root: &Value) -> bool {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = if r == "#" { root } else { root.pointer(&r[1..]).unwrap() };
        return validates(target, doc, root);
    }
    if let Some(c) = schema.get("const") {
        return c == doc;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        return e.contains(doc);
    }
    if let Some(any) = schema.get("anyOf").or(schema.get("oneOf")).and_then(Value::as_array) {
        return any.iter().any(|s| validates(s, doc, root));
    }
    let types: Vec<&str> = match schema.get("type") {
        None => return true,
        Some(Value::String(t)) => vec![t],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return false,
    };
    let count = |k: &str| schema.get(k).and_then(Value::as_u64).map(|n| n as usize);
    types.iter().any(|&t| match (t, doc) {
        ("null", Value::Null) | ("boolean", Value::Bool(_)) | ("number", Value::Number(_)) => true,
        // The spec's integer: no fractional part (`-0` is one; serde_json reads it as a float).
        ("integer", Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
            v.fract() == 0.0
                && bound("minimum").is_none_or(|m| v >= m)
                && bound("maximum").is_none_or(|m| v <= m)
                && bound("exclusiveMinimum").is_none_or(|m| v > m)
                && bound("exclusiveMaximum").is_none_or(|m| v < m)
        }
        ("string", Value::String(s)) => {
            let n = s.chars().count();
            count("minLength").is_none_or(|m| n >= m)
                && count("maxLength").is_none_or(|m| n <= m)
                && schema.get("format").and_then(Value::as_str).is_none_or(|f| has_format(s, f))
        }
        ("array", Value::Array(items)) => {
            // Tuples: `prefixItems` then `items` (2020-12), or `items` as a list then `additionalItems`.
            let (prefix, rest) = match (schema.get("prefixItems"), schema.get("items")) {
                (Some(p), rest) => (p.as_array().cloned().unwrap_or_default(), rest),
                (None, Some(Value::Array(p))) => (p.clone(), schema.get("additionalItems")),
                (None, rest) => (Vec::new(), rest),
            };
            count("minItems").is_none_or(|m| items.len() >= m)
                && count("maxItems").is_none_or(|m| items.len() <= m)
                && items.iter().enumerate().all(|(i, item)| match (prefix.get(i), rest) {
                    (Some(s), _) => validates(s, item, root),
                    (None, Some(Value::Bool(allowed))) => *allowed,
                    (None, Some(s)) => validates(s, item, root),
                    (None, None) => true,
                })
        }
        ("object", Value::Object(members)) => match schema.get("properties").and_then(Value::as_object) {
            Some(props) => {
                let required = schema.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
                members.iter().all(|(k, v)| props.get(k).is_some_and(|s| validates(s, v, root)))
                    && required.iter().all(|r| r.as_str().is_some_and(|r| members.contains_key(r)))
            }
            None => schema
                .get("additionalProperties")
                .filter(|a| a.is_object())
                .is_none_or(|s| members.values().all(|v| validates(s, v, root))),
        },
        _ => false,
    })
}

/// Whether `s` has string format `format`, checked field by field (RFC 3339 dates and times; UUIDs).
fn has_format(s: &str, format: &str) -> bool {
    let number = |t: &str, lo: u32, hi: u32| {
        !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && t.parse::<u32>().is_ok_and(|v| (lo..=hi).contains(&v))
    };
    let two = |t: &str, lo: u32, hi: u32| t.len() == 2 && number(t, lo, hi);
    let date = |d: &str| {
        let parts: Vec<&str> = d.split('-').collect();
        matches!(parts[..], [y, m, d] if y.len() == 4 && number(y, 0, 9999) && two(m, 1, 12) && two(d, 1, 31))
    };
    let time = |t: &str| {
        let Some(at) = t.find(['Z', 'z', '+', '-']) else { return false };
        let (clock, zone) = t.split_at(at);
        let zone_ok = zone.eq_ignore_ascii_case("z")
            || (zone.len() == 6 && two(&zone[1..3], 0, 23) && &zone[3..4] == ":" && two(&zone[4..], 0, 59));
        let (hms, fraction) = clock.split_once('.').unwrap_or((clock, "0"));
        let parts: Vec<&str> = hms.split(':').collect();
        zone_ok
            && !fraction.is_empty()
            && fraction.bytes().all(|b| b.is_ascii_digit())
            && matches!(parts[..], [h, m, s] if two(h, 0, 23) && two(m, 0, 59) && two(s, 0, 60))
    };
    match format {
        "date" => date(s),
        "time" => time(s),
        "date-time" => s.find(['T', 't']).is_some_and(|i| date(&s[..i]) && time(&s[i + 1..])),
        "uuid" => {
            let groups: Vec<&str> = s.split('-').collect();
            groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
                && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
        }
        _ => false,
    }
}

/// One random walk under `constraint` (reset first): up to `steps` tokens, each picked uniformly from the
/// mask (never `stop`), ending at a whole sentence with chance `end_percent`; its text if it is whole.
fn random_walk(
    constraint: &mut GrammarConstraint,
    vocab: &[Vec<u8>],
    stop: u32,
    rng: &mut ShapeRng,
    (steps, end_percent): (usize, u64),
) -> Option<Vec<u8>> {
    constraint.reset();
    let mut text = Vec::new();
    for _ in 0..steps {
        let mask = constraint
            .mask()
            .unwrap_or_else(|e| panic!("{e} after {:?}\n{}", String::from_utf8_lossy(&text), constraint.grammar()));
        if constraint.is_complete() && rng.chance(end_percent) {
            break;
        }
        let allowed: Vec<u32> = mask.ids().filter(|&id| id != stop).collect();
        if allowed.is_empty() {
            break;
        }
        let pick = rng.pick(&allowed);
        constraint.accept(pick).unwrap();
        text.extend(&vocab[pick as usize]);
    }
    constraint.is_complete().then_some(text)
}

fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 3},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b", 7, null]}, "maxItems": 2},
            "ok": {"type": "boolean"}
        }, "required": ["name", "ok"], "title": "a person", "description": "annotations are ignored"}),
        // Only optional members: any subset, in order, commas only between.
        json!({"type": "object", "properties": {"x": {"type": "number"}, "y": {"const": "é"}, "z": {"type": "null"}}}),
        json!({"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": ["string", "null"]}]},
               "minItems": 1, "maxItems": 3}),
        json!({"$defs": {"node": {"type": "object", "properties": {
                   "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}
               }, "required": ["v"]}},
               "$ref": "#/$defs/node"}),
        json!({"type": "object", "additionalProperties": {"type": "boolean"}}),
        json!({"oneOf": [{"type": "string", "maxLength": 2}, {"type": "array", "maxItems": 0}]}),
        json!({}),
        json!({"type": "array", "items": {"anyOf": [
            {"type": "integer", "minimum": -12, "exclusiveMaximum": 130},
            {"type": "string", "format": "date"},
            {"type": "string", "format": "uuid"}
        ]}, "maxItems": 4}),
        // Tuples: closed, open with a schema for the rest, and open to any value.
        json!({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string", "maxLength": 2}],
               "items": false, "minItems": 1}),
        json!({"type": "array", "items": [{"type": "boolean"}], "additionalItems": {"type": "null"}, "maxItems": 3}),
        json!({"type": "array", "prefixItems": [{"const": 1}, {"const": 2}, {"const": 3}], "minItems": 2}),
    ]
}

/// A vocabulary for random documents: JSON's punctuation and literals, keys of the schemas, short texts.
fn json_vocabulary() -> Vec<Vec<u8>> {
    [
        "{", "}", "[", "]", ",", ":", " ", "\n", "\"", "\"name\"", "\"age\"", "\"tags\"", "\"ok\"", "\"x\"", "\"y\"",
        "\"z\"", "\"v\"", "\"kids\"", "\"a\"", "\"b\"", "a", "é", "\\n", "\\u00e9", "0", "1", "7", "-", ".", "5", "e",
        "true", "false", "null", "\"é\"",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    // Every printable ASCII byte too, as real vocabularies have: any text can be spelled.
    .chain((0x20u8..0x7F).map(|b| vec![b]))
    .collect()
}

/// Integer bounds: the grammar takes exactly the integers in range, written as JSON writes them (no leading
/// zeros, no `-0`), for bounds of every sign, one- to many-digit spans and open ends.
#[test]
fn integer_bounds_take_exactly_the_range() {
    let mut rng = ShapeRng::new(5);
    let mut cases: Vec<(Option<i64>, Option<i64>)> = vec![
        (Some(0), None),
        (Some(1), Some(5)),
        (Some(-17), Some(123)),
        (None, Some(-3)),
        (Some(-1000), Some(-10)),
        (Some(7), Some(7)),
        (Some(99), Some(1001)),
        (Some(-5), None),
        (None, Some(0)),
        (Some(0), Some(0)),
    ];
    for _ in 0..40 {
        let a = rng.range(0, 20000) as i64 - 10000;
        let b = a + rng.range(0, 3000) as i64;
        cases.push((Some(a), Some(b)));
    }
    for (lo, hi) in cases {
        let mut schema = json!({"type": "integer"});
        if let Some(lo) = lo {
            schema["minimum"] = json!(lo);
        }
        if let Some(hi) = hi {
            schema["maximum"] = json!(hi);
        }
        let g = grammar(&json_schema_to_gbnf(&schema).unwrap());
        let (from, to) = (lo.unwrap_or(-3000) - 120, hi.unwrap_or(3000) + 120);
        for v in (from..=to).chain([i64::from(i32::MAX), -i64::from(i32::MAX)]) {
            let inside = lo.is_none_or(|lo| v >= lo) && hi.is_none_or(|hi| v <= hi);
            assert_eq!(g.accepts(v.to_string()), inside, "{v} in {lo:?}..={hi:?}");
        }
        assert!(!g.accepts("-0") && !g.accepts("007") && !g.accepts("1.0"), "{lo:?}..={hi:?}");
    }
    // Exclusive and fractional bounds: the nearest integers inside.
    let schema = json!({"type": "integer", "exclusiveMinimum": 0.5, "maximum": 9.7});
    let g = grammar(&json_schema_to_gbnf(&schema).unwrap());
    let taken: Vec<i64> = (-5..20).filter(|v| g.accepts(v.to_string())).collect();
    assert_eq!(taken, (1..=9).collect::<Vec<_>>());
}

/// String formats against hand-picked strings, and the test's own checker (the validator's) agreeing.
#[test]
fn string_formats_take_their_strings() {
    let checks = [
        ("date", "2026-11-29", true),
        ("date", "2026-13-01", false),
        ("date", "2026-02-00", false),
        ("date", "26-02-01", false),
        ("time", "23:59:60.125+05:30", true),
        ("time", "00:00:00Z", true),
        ("time", "24:00:00Z", false),
        ("time", "12:00:00", false),
        ("date-time", "2026-11-29T22:21:43Z", true),
        ("date-time", "2026-11-29 22:21:43Z", false),
        ("uuid", "123e4567-e89b-12d3-a456-426614174000", true),
        ("uuid", "123e4567-e89b-12d3-a456-42661417400", false),
    ];
    for (format, text, want) in checks {
        let g = grammar(&json_schema_to_gbnf(&json!({"type": "string", "format": format})).unwrap());
        assert_eq!(g.accepts(format!("\"{text}\"")), want, "{format} {text}");
        assert_eq!(has_format(text, format), want, "the test's own checker: {format} {text}");
    }
}

/// Each schema's grammar takes hand-written valid documents and refuses invalid ones; random walks under it
/// (stopping as soon as a document is complete, half the time) only ever complete documents that parse as
/// JSON and pass the validator.
#[test]
fn schema_grammars_generate_only_valid_documents() {
    let mut vocab = json_vocabulary();
    let stop = vocab.len() as u32;
    vocab.push(Vec::new());
    let mut rng = ShapeRng::new(3);
    let mut complete = 0;
    for schema in schemas() {
        let gbnf = json_schema_to_gbnf(&schema).unwrap();
        let g = grammar(&gbnf);
        let mut constraint = GrammarConstraint::with_vocabulary(g.clone(), vocab.clone(), &[stop]);
        for _walk in 0..60 {
            if let Some(text) = random_walk(&mut constraint, &vocab, stop, &mut rng, (120, 50)) {
                let doc: Value = match serde_json::from_slice(&text) {
                    Ok(doc) => doc,
                    // JSON allows numbers past f64's range (`2e999`), serde_json does not.
                    Err(e) if e.to_string().contains("out of range") => continue,
                    Err(e) => panic!("{}: {e}\n{gbnf}", String::from_utf8_lossy(&text)),
                };
                assert!(validates(&schema, &doc, &schema), "{doc} against {schema}\n{gbnf}");
                complete += 1;
            }
        }
    }
    assert!(complete > 150, "{complete} complete documents");

    let checks: [(usize, &str, bool); 32] = [
        (0, r#"{"name": "Ada", "ok": true}"#, true),
        (0, r#"{"name":"é","age":-3,"tags":["a",null],"ok":false}"#, true),
        (0, "{\n  \"name\": \"Al\",\n  \"ok\": true\n}", true),
        (0, r#"{"name": "", "ok": true}"#, false),
        (0, r#"{"name": "Adam", "ok": true}"#, false),
        (0, r#"{"ok": true, "name": "Ada"}"#, false),
        (0, r#"{"name": "Ada"}"#, false),
        (0, r#"{"name": "Ada", "age": 1.5, "ok": true}"#, false),
        (0, r#"{"name": "Ada", "tags": ["a", "b", 7], "ok": true}"#, false),
        (0, r#"{"name": "Ada", "ok": true, "extra": 1}"#, false),
        (1, "{}", true),
        (1, r#"{"y": "é", "z": null}"#, true),
        (1, r#"{"x": 1e5, "z": null}"#, true),
        (1, r#"{, "z": null}"#, false),
        (1, r#"{"z": null, "x": 1}"#, false),
        (2, "[1, \"s\", null]", true),
        (2, "[]", false),
        (2, "[1, 2, 3, 4]", false),
        (3, r#"{"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": []}]}"#, true),
        (3, r#"{"kids": []}"#, false),
        (4, r#"{"a": true, "b": false}"#, true),
        (5, r#"[1]"#, false),
        (8, "[7]", true),
        (8, r#"[7, "ab"]"#, true),
        (8, "[]", false),
        (8, r#"[7, "ab", 1]"#, false),
        (8, r#"["ab"]"#, false),
        (9, "[]", true),
        (9, "[true, null, null]", true),
        (9, "[true, null, null, null]", false),
        (10, "[1, 2]", true),
        (10, r#"[1, 2, 3, "x", {}]"#, true),
    ];
    let schemas = schemas();
    for (i, doc, want) in checks {
        let g = grammar(&json_schema_to_gbnf(&schemas[i]).unwrap());
        assert_eq!(g.accepts(doc), want, "{doc} against {}", schemas[i]);
        if let Ok(v) = serde_json::from_str::<Value>(doc) {
            // The validator agrees wherever key order and whitespace are not what differs.
            if want {
                assert!(validates(&schemas[i], &v, &schemas[i]), "{doc}");
            }
        }
    }
}

/// The bytes of a JSON text outside its strings (quotes included), each with its position.
fn outside_strings(text: &[u8]) -> Vec<(usize, u8)> {
    let (mut out, mut in_string, mut escaped) = (Vec::new(), false, false);
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            (in_string, escaped) = (escaped || b != b'"', !escaped && b == b'\\');
        } else {
            in_string = b == b'"';
            out.push((i, b));
        }
    }
    out
}

/// Fixed layouts: random walks under each schema's spaced and compact grammars complete only valid
/// documents, with one space after each `:` and `,` outside strings and no other whitespace (spaced) or none
/// at all (compact), and hand-checked texts are taken or refused by their whitespace alone.
#[test]
fn fixed_layouts_take_only_their_whitespace() {
    let mut vocab = json_vocabulary();
    let stop = vocab.len() as u32;
    vocab.push(Vec::new());
    let mut rng = ShapeRng::new(11);
    let mut complete = 0;
    for schema in schemas() {
        for layout in [JsonLayout::Spaced, JsonLayout::Compact] {
            let gbnf = json_schema_to_gbnf_with(&schema, layout).unwrap();
            let mut constraint = GrammarConstraint::with_vocabulary(grammar(&gbnf), vocab.clone(), &[stop]);
            for _walk in 0..30 {
                let Some(text) = random_walk(&mut constraint, &vocab, stop, &mut rng, (120, 50)) else { continue };
                let shown = String::from_utf8_lossy(&text);
                match serde_json::from_slice::<Value>(&text) {
                    Ok(doc) => assert!(validates(&schema, &doc, &schema), "{shown} against {schema}"),
                    Err(e) if e.to_string().contains("out of range") => continue,
                    Err(e) => panic!("{shown}: {e}\n{gbnf}"),
                }
                // Whitespace outside strings: exactly one space after each `:` and `,` (spaced), none (compact).
                for (i, b) in outside_strings(&text) {
                    let follows_separator = i > 0 && matches!(text[i - 1], b':' | b',');
                    if b.is_ascii_whitespace() {
                        assert!(layout == JsonLayout::Spaced && b == b' ' && follows_separator, "{layout:?}: {shown}");
                    } else if matches!(b, b':' | b',') && layout == JsonLayout::Spaced {
                        assert_eq!(text.get(i + 1), Some(&b' '), "a space after byte {i} of {shown}");
                    }
                }
                complete += 1;
            }
        }
    }
    assert!(complete > 150, "{complete} complete documents");

    let person = &schemas()[0];
    let checks = [
        (JsonLayout::Spaced, r#"{"name": "Ada", "tags": ["a", null], "ok": true}"#, true),
        (JsonLayout::Spaced, r#"{"name":"Ada","ok":true}"#, false),
        (JsonLayout::Spaced, r#"{ "name": "Ada", "ok": true }"#, false),
        (JsonLayout::Spaced, r#"{"name": "Ada",  "ok": true}"#, false),
        (JsonLayout::Compact, r#"{"name":"Ada","tags":["a",null],"ok":true}"#, true),
        (JsonLayout::Compact, r#"{"name": "Ada","ok":true}"#, false),
        (JsonLayout::Compact, "{\"name\":\"Ada\",\"ok\":true}\n", false),
        (JsonLayout::Free, "{ \"name\" :\"Ada\",\n  \"ok\": true }", true),
    ];
    for (layout, doc, want) in checks {
        let g = grammar(&json_schema_to_gbnf_with(person, layout).unwrap());
        assert_eq!(g.accepts(doc), want, "{layout:?}: {doc}");
    }
}

/// `pattern`: random walks under string schemas with patterns complete only strings the pattern matches (as
/// the `fancy-regex` crate, an independent engine, reads it), quotes, backslashes and newlines written as
/// JSON escapes; hand-checked strings are taken or refused; unsupported patterns are typed errors.
#[test]
fn patterns_take_only_matching_strings() {
    let patterns = [
        r"^[a-z]+-[0-9]{3}$",
        r"^\d{3}-\d{4}$",
        r"^(?:\+1 )?\(\d{3}\) \d{3}-\d{4}$",
        r"^[A-Z][a-z]*( [A-Z][a-z]*){0,2}$",
        r#"^say "(hi|bye)"\.?$"#,
        r"^[^aeiou\s]{2,5}$",
        r"^a\\b|c.d$",
        r"^(?<year>\d{4})-(0[1-9]|1[0-2])$",
        r"^\w+@\w+\.(com|org)$",
        r"^[\u00e9\u4e2d-\u4e2f]+\$$",
        r"^(ab|a)*?c$",
        r"^x\ny\tz$",
    ];
    let mut vocab: Vec<Vec<u8>> = (0x20u8..0x7F).map(|b| vec![b]).collect();
    for piece in ["é", "中", "丮", "\\\"", "\\\\", "\\n", "\\t", "hi", "bye", "com", "(555) ", "say \\\""] {
        vocab.push(piece.as_bytes().to_vec());
    }
    let stop = vocab.len() as u32;
    vocab.push(Vec::new());
    let mut rng = ShapeRng::new(17);
    for pattern in patterns {
        let schema = json!({"type": "string", "pattern": pattern});
        let gbnf = json_schema_to_gbnf_with(&schema, JsonLayout::Compact).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        let regex = fancy_regex::Regex::new(pattern).unwrap();
        let mut constraint = GrammarConstraint::with_vocabulary(grammar(&gbnf), vocab.clone(), &[stop]);
        let mut complete = 0;
        for _walk in 0..60 {
            let Some(text) = random_walk(&mut constraint, &vocab, stop, &mut rng, (60, 100)) else { continue };
            let value: String = serde_json::from_slice(&text)
                .unwrap_or_else(|e| panic!("{pattern}: {} is no JSON string: {e}", String::from_utf8_lossy(&text)));
            assert!(regex.is_match(&value).unwrap(), "{pattern} does not match {value:?}\n{gbnf}");
            complete += 1;
        }
        assert!(complete >= 5, "{pattern}: {complete} complete strings\n{gbnf}");
    }

    let checks = [
        (r"^[a-z]+-[0-9]{3}$", r#""abc-123""#, true),
        (r"^[a-z]+-[0-9]{3}$", r#""abc-12""#, false),
        (r"^[a-z]+-[0-9]{3}$", r#""Abc-123""#, false),
        (r#"^say "(hi|bye)"$"#, r#""say \"hi\"""#, true),
        (r#"^say "(hi|bye)"$"#, r#""say "hi"""#, false),
        (r"^a\\b$", r#""a\\b""#, true),
        (r"^x\ny$", r#""x\ny""#, true),
        (r"^.+$", r#""a\nb""#, false),
        (r"^[^a]$", r#""\"""#, true),
        (r"^[^a]$", r#""a""#, false),
        (r"^\$\d+$", r#""$12""#, true),
        (r"^$", r#""""#, true),
    ];
    for (pattern, doc, want) in checks {
        let g = grammar(&json_schema_to_gbnf(&json!({"type": "string", "pattern": pattern})).unwrap());
        assert_eq!(g.accepts(doc), want, "{pattern} on {doc}");
    }

    let refused = [
        ("[a-z]+", "anchored"),
        ("^a(?=b)b$", "lookaround"),
        (r"^(a)\1$", "backreference"),
        (r"^\bword$", "word boundary"),
        ("^a^b$", "anchors only"),
        ("^a{2,1}$", "quantifier"),
        ("^(ab$", ")"),
        ("^ab)$", "("),
        ("^*a$", "before the quantifier"),
        (r"^\q$", "an escape"),
        ("^a{1001}$", "up to 1000"),
        (r"^[\x00-\x08]$", "class"),
        // A repeated part that can match nothing would make a left-recursive GBNF rule.
        ("^(a*)*$", "can match nothing"),
        ("^b(|a){1,}$", "can match nothing"),
    ];
    for (pattern, expected) in refused {
        let err = json_schema_to_gbnf(
            &json!({"properties": {"p": {"type": "string", "pattern": pattern}}, "type": "object"}),
        )
        .expect_err(pattern)
        .to_string();
        assert!(err.contains(expected) && err.contains("#/properties/p"), "{pattern}: {err}");
    }
    let err = json_schema_to_gbnf(&json!({"type": "string", "pattern": "^a$", "maxLength": 3})).unwrap_err();
    assert!(err.to_string().contains("pattern with format, minLength or maxLength"), "{err}");
}

/// `regex_to_gbnf`: plain texts (no JSON escaping; control characters too) that random walks complete all
/// match the expression whole under fancy-regex; anchors are optional; refusals are typed errors.
#[test]
fn regexes_take_only_matching_text() {
    let regexes = [
        r"(yes|no), because \w+( \w+){0,3}\.",
        r"^\d{1,3}(,\d{3})*$",
        r"[A-Z][a-z]+:\n( - [a-z]+\n){1,3}",
        r#"say "[^"\\]*"\\?"#,
        r"\t?[\u00e9\u4e2d]+.$",
    ];
    let mut vocab: Vec<Vec<u8>> = (0x20u8..0x7F).map(|b| vec![b]).chain([vec![b'\n'], vec![b'\t']]).collect();
    for piece in ["é", "中", "yes", "because", " - ", "\n - "] {
        vocab.push(piece.as_bytes().to_vec());
    }
    let stop = vocab.len() as u32;
    vocab.push(Vec::new());
    let mut rng = ShapeRng::new(23);
    for regex in regexes {
        let gbnf = regex_to_gbnf(regex).unwrap_or_else(|e| panic!("{regex}: {e}"));
        let whole =
            fancy_regex::Regex::new(&format!("^(?:{})$", regex.trim_start_matches('^').trim_end_matches('$'))).unwrap();
        let mut constraint = GrammarConstraint::with_vocabulary(grammar(&gbnf), vocab.clone(), &[stop]);
        let mut complete = 0;
        for _walk in 0..60 {
            if let Some(text) = random_walk(&mut constraint, &vocab, stop, &mut rng, (60, 50)) {
                let text = String::from_utf8(text).unwrap();
                assert!(whole.is_match(&text).unwrap(), "{regex} does not match {text:?}\n{gbnf}");
                complete += 1;
            }
        }
        assert!(complete >= 5, "{regex}: {complete} complete texts\n{gbnf}");
    }
    let g = grammar(&regex_to_gbnf(r#"a"b\\c\$"#).unwrap());
    assert!(g.accepts("a\"b\\c$") && !g.accepts("a\\\"b\\\\c$"), "plain text, not JSON escapes");
    for (regex, expected) in [("a(?!b)", "lookaround"), ("(a|b", "`)`"), ("a\\2", "backreference")] {
        let err = regex_to_gbnf(regex).expect_err(regex).to_string();
        assert!(err.contains(expected) && err.contains("the regular expression"), "{regex}: {err}");
    }
}

#[test]
fn unsupported_schemas_are_typed_errors_naming_the_keyword() {
    let cases = [
        (json!({"type": "array", "contains": {"type": "string"}}), "keyword `contains` at #"),
        (json!({"type": "array", "prefixItems": [{}], "items": false, "minItems": 2}), "past a closed tuple of 1"),
        (json!({"type": "array", "prefixItems": {"type": "string"}}), "prefixItems that is not a list"),
        (
            json!({"type": "object", "properties": {"d": {"type": "string", "format": "email"}}}),
            "format \"email\" (date",
        ),
        (json!({"type": "number", "minimum": 0}), "`minimum` on type \"number\""),
        (json!({"type": "integer", "minimum": 3, "exclusiveMaximum": 3}), "no integer between"),
        (json!({"type": "integer", "maximum": 1e20}), "below 1e15"),
        (json!({"$ref": "https://example.com/s.json"}), "$ref"),
        (json!({"$ref": "#/$defs/missing"}), "$ref"),
        (json!({"type": "object", "properties": {"a": {}}, "required": ["b"]}), "required \"b\""),
        (json!({"type": "array", "minItems": 3, "maxItems": 1}), "maxItems below minItems"),
        (json!({"type": "tuple"}), "type \"tuple\""),
        (json!({"allOf": [{"type": "string"}, {"maxLength": 2}]}), "allOf"),
        (json!({"enum": []}), "enum"),
        (json!(false), "schema false"),
        (json!({"maxLength": 3}), "without a `type`"),
    ];
    for (schema, expected) in cases {
        match json_schema_to_gbnf(&schema) {
            Err(e @ Error::InvalidArgument { .. }) => assert!(e.to_string().contains(expected), "{schema}: {e}"),
            other => panic!("{schema}: {other:?}"),
        }
    }
}

/// The real SmolLM2 answering to a JSON schema: the whole answer is a document the schema accepts, keys in
/// the schema's order; the mask's cost per step is reported.
#[test]
fn smollm2_answers_to_a_schema() {
    let gpu = &gpus()[0];
    let file = GgufFile::open(smollm2::gguf_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let host = HostModel::from_gguf(&file, None).unwrap();
    let mut model = Model::new(gpu, &host, &PlanOptions { context: 256, ..PlanOptions::default() }).unwrap();
    let schema = json!({"type": "object", "properties": {
        "country": {"type": "string", "maxLength": 20},
        "capital": {"type": "string", "maxLength": 20},
        "continent": {"enum": ["Africa", "America", "Asia", "Europe", "Oceania"]}
    }, "required": ["country", "capital", "continent"]});
    let g = grammar(&json_schema_to_gbnf(&schema).unwrap());
    let question = "Give the country, capital and continent of France as JSON.";
    let prompt = tokenizer.encode_chat(&[("user", question)], true).unwrap();
    let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    let start = std::time::Instant::now();
    let mut constraint = GrammarConstraint::new(g, &tokenizer, &stop);
    let setup = start.elapsed();
    let mut mask_time = std::time::Duration::ZERO;
    let next = |generated: &[u32]| {
        let t = std::time::Instant::now();
        let mask = constraint.mask_after(generated);
        mask_time += t.elapsed();
        mask
    };
    let out = model.generate_constrained(&prompt, 80, &stop, next, |_| true).unwrap();
    assert_eq!(out.last().copied(), tokenizer.eos(), "the document ended and the model stopped");
    let text = tokenizer.decode(&out[..out.len() - 1]);
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(validates(&schema, &doc, &schema), "{text}");
    assert!(doc["capital"].as_str().is_some_and(|c| c.contains("Paris")), "{text}");
    assert_eq!(doc["continent"], "Europe", "{text}");
    eprintln!(
        "{text}\n{} tokens; constraint setup {:.1} ms, masks {:.2} ms per token, {} DFA states",
        out.len(),
        setup.as_secs_f64() * 1e3,
        mask_time.as_secs_f64() * 1e3 / out.len() as f64,
        constraint.dfa_states()
    );
}

/// `mobilellm grammar`: prints a schema's grammar, passes a file that is a sentence of it, and fails on one
/// that leaves it, naming the byte, line and column.
#[test]
fn cli_checks_files_against_a_schema() {
    let dir = ScratchDir::new("grammar-cli");
    let schema = dir.join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]}"#,
    )
    .unwrap();
    let (good, bad) = (dir.join("good.json"), dir.join("bad.json"));
    std::fs::write(&good, "{\"n\": 12}").unwrap();
    std::fs::write(&bad, "{\n\"n\": 0}").unwrap();
    let run = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mobilellm"))
            .args(["grammar", "--json-schema"])
            .arg(&schema)
            .arg("--check")
            .arg(file)
            .output()
            .unwrap()
    };
    let out = run(&good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.starts_with("root ::= ") && grammar(&printed).accepts("{\"n\": 12}"), "{printed}");
    let out = run(&bad);
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && message.contains("byte 7 (line 2, column 6)"), "{message}");
}
