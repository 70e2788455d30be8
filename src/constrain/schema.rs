//! JSON schema to GBNF, for structured output: [`json_schema_to_gbnf`] writes a grammar whose sentences are
//! the JSON documents a schema accepts (within the subset below), as llama.cpp's `json-schema-to-grammar`
//! does, so [`super::GrammarConstraint`] can hold a model to it.
//!
//! **Supported.** `type` (a name or a list), `properties` with `required` (an object with `properties` is
//! closed, as in OpenAI's strict mode: no other keys; its keys come in the schema's order, optional ones
//! may be left out), `additionalProperties` as a schema (a map, when there are no `properties`), `items`
//! with `minItems` / `maxItems`, tuples (`prefixItems` then `items`, or draft 7's list of `items` then
//! `additionalItems`; `false` closes them), `minLength` / `maxLength` of strings, `enum`, `const`, `anyOf` and
//! `oneOf` (as `anyOf`: exclusivity is not enforced), `allOf` of one schema, `$ref` to `#`,
//! `#/$defs/..` or `#/definitions/..` (recursion allowed), `minimum` / `maximum` and the exclusive ones
//! on integers (below 10^15 in size; a range of digit strings, as llama.cpp writes it), and the string
//! formats `date`, `time`, `date-time` (RFC 3339) and `uuid`, and `pattern` (an anchored regular
//! expression: see `pattern.rs` for the subset). Annotations (`title`, `description`, `default`,
//! `examples`, ...) are ignored. Any other keyword, such as another `format` or bounds on non-integers, is
//! an error that names it: a grammar that ignored it would let through documents the schema rejects.
//!
//! Whitespace between tokens is none, one space, or a newline and up to 20 spaces or tabs (or a fixed
//! layout: [`JsonLayout`]); numbers have at most 16 integer digits.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::error::{Error, Result};

/// The bounds of a number, which integers take.
const BOUNDS: &[&str] = &["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];

/// RFC 3339's `full-date` and `full-time` as GBNF (day numbers up to 31 in every month).
const DATE: &str = r#"[0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])"#;
const TIME: &str = concat!(
    r#"([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" ([0-5] [0-9] | "60") ("." [0-9]+)?"#,
    r#" ([Zz] | [-+] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])"#
);

/// A string format as GBNF inside the quotes: RFC 3339's `date`, `time` and `date-time`, RFC 4122's `uuid`.
fn format_grammar(format: &str) -> Option<String> {
    Some(match format {
        "date" => DATE.to_string(),
        "time" => TIME.to_string(),
        "date-time" => format!("{DATE} [Tt] {TIME}"),
        "uuid" => {
            r#"[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}"#.into()
        }
        _ => return None,
    })
}

/// The keywords the converter understands.
const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "additionalItems",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "format",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
];

/// Keywords that describe a schema without constraining it.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
];

/// The primitives, each added to the grammar once when first used: (name, body, the primitives it uses).
const PRIMITIVES: &[(&str, &str, &[&str])] = &[
    ("ws", r#"| " " | "\n" [ \t]{0,20}"#, &[]),
    ("char", r#"[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})"#, &[]),
    ("string", r#""\"" char* "\"" ws"#, &["char", "ws"]),
    ("number", r#""-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]+)? ([eE] [-+]? [0-9]+)? ws"#, &["ws"]),
    ("integer", r#""-"? ("0" | [1-9] [0-9]{0,15}) ws"#, &["ws"]),
    ("boolean", r#"("true" | "false") ws"#, &["ws"]),
    ("null", r#""null" ws"#, &["ws"]),
    (
        "value",
        "object | array | string | number | boolean | null",
        &["object", "array", "string", "number", "boolean", "null"],
    ),
    (
        "object",
        r#""{" ws (string colon value (comma string colon value)*)? "}" ws"#,
        &["ws", "colon", "comma", "string", "value"],
    ),
    ("array", r#""[" ws (value (comma value)*)? "]" ws"#, &["ws", "comma", "value"]),
    ("colon", r#"":" ws"#, &["ws"]),
    ("comma", r#""," ws"#, &["ws"]),
];

/// Writes a GBNF grammar (rule `root` first) for the JSON documents `schema` accepts; see the module docs
/// for the keywords understood. Errors name the keyword and where in the schema it is.
///
/// ```
/// use mobilellm_kernels::constrain::{json_schema_to_gbnf, Grammar};
/// let schema = serde_json::json!({
///     "type": "object",
///     "properties": { "name": { "type": "string" }, "age": { "type": "integer" } },
///     "required": ["name"]
/// });
/// let grammar = Grammar::parse(&json_schema_to_gbnf(&schema)?)?;
/// assert!(grammar.accepts(r#"{"name": "Ada", "age": 36}"#));
/// assert!(grammar.accepts(r#"{"name": "Ada"}"#));
/// assert!(!grammar.accepts(r#"{"age": 36}"#), "name is required");
/// # Ok::<(), mobilellm_kernels::Error>(())
/// ```
pub fn json_schema_to_gbnf(schema: &Value) -> Result<String> {
    json_schema_to_gbnf_with(schema, JsonLayout::Free)
}

/// Where the JSON of a schema's grammar may have whitespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum JsonLayout {
    /// Whatever the model writes between tokens: none, one space, or a newline and up to 20 spaces or tabs.
    #[default]
    Free,
    /// One space after each `:` and `,` and none elsewhere, as Python's `json.dumps` writes it:
    /// `{"a": 1, "b": [1, 2]}`.
    Spaced,
    /// No whitespace: `{"a":1,"b":[1,2]}`.
    Compact,
}

impl JsonLayout {
    /// The body of a whitespace primitive (`ws`, `colon`, `comma`) in this layout; `None` for the others.
    fn body(self, primitive: &str) -> Option<&'static str> {
        let (ws, colon, comma) = match self {
            JsonLayout::Free => return None,
            JsonLayout::Spaced => (r#""""#, r#"": ""#, r#"", ""#),
            JsonLayout::Compact => (r#""""#, r#"":""#, r#"",""#),
        };
        match primitive {
            "ws" => Some(ws),
            "colon" => Some(colon),
            "comma" => Some(comma),
            _ => None,
        }
    }
}

/// [`json_schema_to_gbnf`] with the whitespace of `layout`. A fixed layout leaves the model no choice
/// between a value and the next key, so that text is forced: [`Model::generate_jump_forward`] feeds it
/// in one pass instead of one step per token.
///
/// [`Model::generate_jump_forward`]: crate::model::Model::generate_jump_forward
///
/// ```
/// use mobilellm_kernels::constrain::{json_schema_to_gbnf_with, Grammar, JsonLayout};
/// let schema = serde_json::json!({ "type": "object", "properties": { "a": { "type": "array" } } });
/// let spaced = Grammar::parse(&json_schema_to_gbnf_with(&schema, JsonLayout::Spaced)?)?;
/// assert!(spaced.accepts(r#"{"a": [1, {"b": null}]}"#));
/// assert!(!spaced.accepts(r#"{"a":[1]}"#) && !spaced.accepts(r#"{ "a": [1] }"#));
/// let compact = Grammar::parse(&json_schema_to_gbnf_with(&schema, JsonLayout::Compact)?)?;
/// assert!(compact.accepts(r#"{"a":[1,{"b":null}]}"#) && !compact.accepts(r#"{"a": [1]}"#));
/// # Ok::<(), mobilellm_kernels::Error>(())
/// ```
pub fn json_schema_to_gbnf_with(schema: &Value, layout: JsonLayout) -> Result<String> {
    let mut c = Converter { document: schema, rules: Vec::new(), taken: HashSet::new(), refs: HashMap::new() };
    c.taken.insert("root".to_string());
    for (name, _, _) in PRIMITIVES {
        c.taken.insert(name.to_string());
    }
    let body = c.visit(schema, "#", "root")?;
    c.rules.insert(0, ("root".to_string(), body));
    let mut text = String::new();
    // The primitives the rules use, and the ones those use.
    let mut used: Vec<&str> = PRIMITIVES.iter().map(|p| p.0).filter(|p| c.uses(p)).collect();
    let mut i = 0;
    while i < used.len() {
        let deps = PRIMITIVES.iter().find(|p| p.0 == used[i]).map_or(&[][..], |p| p.2);
        for d in deps {
            if !used.contains(d) {
                used.push(d);
            }
        }
        i += 1;
    }
    for (name, body) in &c.rules {
        text.push_str(&format!("{name} ::= {body}\n"));
    }
    for (name, body, _) in PRIMITIVES.iter().filter(|p| used.contains(&p.0)) {
        let body = layout.body(name).unwrap_or(body);
        text.push_str(&format!("{name} ::= {body}\n"));
    }
    within_limits(text, "JSON schema")
}

/// `gbnf`, checked to parse: a schema (or pattern) the converter takes can still ask for more than the
/// recognizer's limits ([`super::MAX_ELEMENTS`], say `(a{1000}){1000}`), which is an error naming `what`.
pub(super) fn within_limits(gbnf: String, what: &str) -> Result<String> {
    match super::Grammar::parse(&gbnf) {
        Ok(_) => Ok(gbnf),
        Err(e) => Err(Error::invalid(what, format!("a grammar the recognizer refuses ({e})"), "a smaller one")),
    }
}

struct Converter<'a> {
    document: &'a Value,
    /// Rules made so far, in order: (name, body).
    rules: Vec<(String, String)>,
    taken: HashSet<String>,
    /// The rule of each `$ref` met.
    refs: HashMap<String, String>,
}

fn unsupported(path: &str, what: &str) -> Error {
    Error::invalid(
        "JSON schema",
        format!("{what} at {path}"),
        "type, properties, required, additionalProperties, items, prefixItems, additionalItems, minItems, \
         maxItems, minLength, maxLength, pattern, \
         minimum, maximum, exclusiveMinimum, exclusiveMaximum (integers), format (date, time, date-time, \
         uuid), enum, const, anyOf, oneOf, allOf (of one schema), $ref to #/$defs or #/definitions",
    )
}

/// The count `map[key]` (a bound on items or characters), if given: an integer up to 1000.
fn count(map: &serde_json::Map<String, Value>, key: &str, path: &str) -> Result<Option<usize>> {
    match map.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n <= 1000)
            .map(|n| Some(n as usize))
            .ok_or_else(|| unsupported(path, &format!("{key} {v} (an integer up to 1000)"))),
    }
}

/// A GBNF literal matching `text` exactly.
pub(super) fn literal(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An array of `min..=max` items, each `item`.
fn list(item: &str, min: usize, max: Option<usize>) -> String {
    let more = |lo: usize, hi: Option<usize>| match hi {
        None => format!("(comma {item}){{{lo},}}"),
        Some(hi) => format!("(comma {item}){{{lo},{hi}}}"),
    };
    match (min, max) {
        (_, Some(0)) => r#""[" ws "]" ws"#.to_string(),
        (0, max) => format!("\"[\" ws ({item} {})? \"]\" ws", more(0, max.map(|m| m - 1))),
        (min, max) => format!("\"[\" ws {item} {} \"]\" ws", more(min - 1, max.map(|m| m - 1))),
    }
}

/// A JSON value as the literal of its compact text, then whitespace.
fn json_literal(v: &Value) -> String {
    format!("{} ws", literal(&v.to_string()))
}

impl Converter<'_> {
    fn uses(&self, primitive: &str) -> bool {
        self.rules
            .iter()
            .any(|(_, body)| body.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).any(|w| w == primitive))
    }

    /// A fresh rule name from `hint` (letters, digits and `-` only).
    fn name(&mut self, hint: &str) -> String {
        let base: String = hint.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let base = if base.is_empty() { "rule".to_string() } else { base };
        let mut name = base.clone();
        let mut i = 1;
        while self.taken.contains(&name) {
            name = format!("{base}-{i}");
            i += 1;
        }
        self.taken.insert(name.clone());
        name
    }

    /// Adds rule `name ::= body` and returns `name`.
    fn rule(&mut self, name: String, body: String) -> String {
        self.rules.push((name.clone(), body));
        name
    }

    /// A GBNF expression for the documents `schema` (at JSON pointer `path`) accepts; `hint` names the
    /// rules made for it.
    fn visit(&mut self, schema: &Value, path: &str, hint: &str) -> Result<String> {
        let map = match schema {
            Value::Bool(true) => return Ok("value".into()),
            Value::Object(map) => map,
            _ => return Err(unsupported(path, &format!("schema {schema}"))),
        };
        for key in map.keys() {
            if !KEYWORDS.contains(&key.as_str()) && !ANNOTATIONS.contains(&key.as_str()) {
                return Err(unsupported(path, &format!("keyword `{key}`")));
            }
        }
        if let Some(r) = map.get("$ref") {
            return self.reference(r, path);
        }
        if let Some(v) = map.get("const") {
            return Ok(format!("({})", json_literal(v)));
        }
        if let Some(values) = map.get("enum") {
            let values = values
                .as_array()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| unsupported(path, "enum that is not a non-empty list"))?;
            return Ok(format!("({})", values.iter().map(json_literal).collect::<Vec<_>>().join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = map.get(key) {
                let options = options
                    .as_array()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| unsupported(path, &format!("{key} that is not a non-empty list")))?;
                let mut alternatives = Vec::new();
                for (i, option) in options.iter().enumerate() {
                    alternatives.push(self.visit(option, &format!("{path}/{key}/{i}"), &format!("{hint}-{i}"))?);
                }
                return Ok(format!("({})", alternatives.join(" | ")));
            }
        }
        if let Some(all) = map.get("allOf") {
            return match all.as_array().map(Vec::as_slice) {
                Some([one]) => self.visit(one, &format!("{path}/allOf/0"), hint),
                _ => Err(unsupported(path, "allOf of more than one schema")),
            };
        }
        let types: Vec<&str> = match map.get("type") {
            None => return self.untyped(map, path),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() => ts
                .iter()
                .map(|t| t.as_str().ok_or_else(|| unsupported(path, &format!("type {t}"))))
                .collect::<Result<_>>()?,
            Some(t) => return Err(unsupported(path, &format!("type {t}"))),
        };
        let mut alternatives = Vec::new();
        for t in types {
            alternatives.push(match t {
                "object" => self.object(map, path, hint)?,
                "array" => self.array(map, path, hint)?,
                "string" => self.string(map, path)?,
                "integer" => integer(map, path)?,
                "number" | "boolean" | "null" => {
                    if let Some(k) = BOUNDS.iter().find(|k| map.contains_key(**k)) {
                        return Err(unsupported(path, &format!("keyword `{k}` on type \"{t}\" (integers only)")));
                    }
                    t.to_string()
                }
                _ => return Err(unsupported(path, &format!("type \"{t}\""))),
            });
        }
        Ok(if alternatives.len() == 1 { alternatives.remove(0) } else { format!("({})", alternatives.join(" | ")) })
    }

    /// A schema without `type`: any value, unless it has keywords of one type only.
    fn untyped(&mut self, map: &serde_json::Map<String, Value>, path: &str) -> Result<String> {
        let constraining: Vec<&String> = map.keys().filter(|k| !ANNOTATIONS.contains(&k.as_str())).collect();
        match constraining.first() {
            None => Ok("value".into()),
            Some(k) => Err(unsupported(path, &format!("keyword `{k}` without a `type`"))),
        }
    }

    fn reference(&mut self, r: &Value, path: &str) -> Result<String> {
        let r = r.as_str().ok_or_else(|| unsupported(path, &format!("$ref {r}")))?;
        if let Some(name) = self.refs.get(r) {
            return Ok(name.clone());
        }
        let target = match r.strip_prefix('#') {
            Some("") => Some(self.document),
            Some(pointer) if pointer.starts_with("/$defs/") || pointer.starts_with("/definitions/") => {
                self.document.pointer(pointer)
            }
            _ => None,
        };
        let target =
            target.ok_or_else(|| unsupported(path, &format!("$ref \"{r}\" (not in this document's $defs)")))?;
        let name = if r == "#" { "root".to_string() } else { self.name(r.rsplit('/').next().unwrap_or("ref")) };
        // Named before its body is made, so a recursive reference finds it.
        self.refs.insert(r.to_string(), name.clone());
        if r != "#" {
            let body = self.visit(target, r, &name)?;
            self.rule(name.clone(), body);
        }
        Ok(name)
    }

    fn object(&mut self, map: &serde_json::Map<String, Value>, path: &str, hint: &str) -> Result<String> {
        let additional = map.get("additionalProperties");
        let Some(properties) = map.get("properties") else {
            if map.contains_key("required") {
                return Err(unsupported(path, "required without properties"));
            }
            return match additional {
                None | Some(Value::Bool(true)) => Ok("object".into()),
                Some(Value::Bool(false)) => Ok(r#"("{" ws "}" ws)"#.into()),
                Some(schema) => {
                    let value =
                        self.visit(schema, &format!("{path}/additionalProperties"), &format!("{hint}-value"))?;
                    let member = format!("string colon {value}");
                    let name = self.name(hint);
                    Ok(self.rule(name, format!("\"{{\" ws ({member} (comma {member})*)? \"}}\" ws")))
                }
            };
        };
        if matches!(additional, Some(v) if v != &Value::Bool(false) && v != &Value::Bool(true)) {
            return Err(unsupported(path, "additionalProperties as a schema beside properties"));
        }
        let properties = properties.as_object().ok_or_else(|| unsupported(path, "properties that is not an object"))?;
        let required: Vec<&str> = match map.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r
                .iter()
                .map(|k| k.as_str().ok_or_else(|| unsupported(path, &format!("required entry {k}"))))
                .collect::<Result<_>>()?,
            Some(r) => return Err(unsupported(path, &format!("required {r}"))),
        };
        if let Some(missing) = required.iter().find(|k| !properties.contains_key(**k)) {
            return Err(unsupported(path, &format!("required \"{missing}\" that is not among the properties")));
        }
        // Members in the schema's order: (rule of `"key": value`, required).
        let mut members = Vec::new();
        for (key, schema) in properties {
            let value = self.visit(schema, &format!("{path}/properties/{key}"), &format!("{hint}-{key}"))?;
            let body = format!("{} ws colon {value}", literal(&Value::String(key.clone()).to_string()));
            let name = self.name(&format!("{hint}-{key}-kv"));
            members.push((self.rule(name, body), required.contains(&key.as_str())));
        }
        // `after(i)`: members i.. once one is written (each then after a comma); `first(i)`: the same before
        // any is written, where an optional member may be skipped or open the list.
        let after = |from: usize| -> String {
            members[from..]
                .iter()
                .map(|(kv, req)| if *req { format!("comma {kv}") } else { format!("(comma {kv})?") })
                .collect::<Vec<_>>()
                .join(" ")
        };
        // From the first required member on, each member is after one already written.
        let lead = members.iter().position(|(_, req)| *req).unwrap_or(members.len());
        let mut first = match members.get(lead) {
            Some((kv, _)) => format!("{kv} {}", after(lead + 1)),
            None => String::new(),
        };
        for i in (0..lead).rev() {
            let opened = format!("{} {}", members[i].0, after(i + 1));
            // An empty alternative when every member may be left out.
            let rest = if first.is_empty() { " |".to_string() } else { format!(" | {first}") };
            let name = self.name(&format!("{hint}-from-{i}"));
            first = self.rule(name, format!("{opened}{rest}"));
        }
        let name = self.name(hint);
        Ok(self.rule(name, format!("\"{{\" ws {first} \"}}\" ws")))
    }

    fn array(&mut self, map: &serde_json::Map<String, Value>, path: &str, hint: &str) -> Result<String> {
        let (min, max) = (count(map, "minItems", path)?.unwrap_or(0), count(map, "maxItems", path)?);
        if max.is_some_and(|max| max < min) {
            return Err(unsupported(path, "maxItems below minItems"));
        }
        // Tuples: `prefixItems` then `items` (2020-12), or `items` as a list then `additionalItems` (draft 7).
        let tuple = match (map.get("prefixItems"), map.get("items")) {
            (Some(prefix), rest) => Some((prefix, "prefixItems", rest, "items")),
            (None, Some(items @ Value::Array(_))) => {
                Some((items, "items", map.get("additionalItems"), "additionalItems"))
            }
            _ => None,
        };
        if let Some((prefix, key, rest, rest_key)) = tuple {
            let prefix = prefix.as_array().ok_or_else(|| unsupported(path, &format!("{key} that is not a list")))?;
            let mut items = Vec::new();
            for (i, schema) in prefix.iter().enumerate().take(max.unwrap_or(usize::MAX)) {
                items.push(self.visit(schema, &format!("{path}/{key}/{i}"), &format!("{hint}-{i}"))?);
            }
            let rest = match rest {
                Some(Value::Bool(false)) => None,
                None => Some("value".to_string()),
                Some(schema) => Some(self.visit(schema, &format!("{path}/{rest_key}"), &format!("{hint}-rest"))?),
            };
            return self.tuple(&items, rest, (min, max), path, hint);
        }
        let item = match map.get("items") {
            None => "value".to_string(),
            Some(schema) => self.visit(schema, &format!("{path}/items"), &format!("{hint}-item"))?,
        };
        let name = self.name(hint);
        Ok(self.rule(name, list(&item, min, max)))
    }

    /// An array whose first items follow `items` in turn and the others `rest` (none when `None`), with
    /// `min..=max` items in all: the tuple may end after any of its items at or past `min`.
    fn tuple(
        &mut self,
        items: &[String],
        rest: Option<String>,
        (min, max): (usize, Option<usize>),
        path: &str,
        hint: &str,
    ) -> Result<String> {
        let k = items.len();
        // Items past the tuple's: at least `min - k`, at most `max - k`.
        let extra = match &rest {
            Some(rest) if max.is_none_or(|max| max > k) => {
                let lo = min.saturating_sub(k);
                match max {
                    None => format!(" (comma {rest}){{{lo},}}"),
                    Some(max) => format!(" (comma {rest}){{{lo},{}}}", max - k),
                }
            }
            _ if min > k => return Err(unsupported(path, &format!("minItems {min} past a closed tuple of {k}"))),
            _ => String::new(),
        };
        let name = self.name(hint);
        if k == 0 {
            let body = match rest {
                Some(rest) => list(&rest, min, max),
                None => r#""[" ws "]" ws"#.to_string(),
            };
            return Ok(self.rule(name, body));
        }
        // From the last item back: item j and what may follow it, required up to `min`.
        let mut tail = extra;
        for j in (1..k).rev() {
            let next = format!("comma {}{tail}", items[j]);
            tail = if j < min { format!(" {next}") } else { format!(" ({next})?") };
        }
        let elements = format!("{}{tail}", items[0]);
        let body =
            if min == 0 { format!("\"[\" ws ({elements})? \"]\" ws") } else { format!("\"[\" ws {elements} \"]\" ws") };
        Ok(self.rule(name, body))
    }

    fn string(&mut self, map: &serde_json::Map<String, Value>, path: &str) -> Result<String> {
        if let Some(pattern) = map.get("pattern") {
            if ["format", "minLength", "maxLength"].iter().any(|k| map.contains_key(*k)) {
                return Err(unsupported(path, "pattern with format, minLength or maxLength"));
            }
            let pattern = pattern.as_str().ok_or_else(|| unsupported(path, &format!("pattern {pattern}")))?;
            let body = super::pattern::pattern_to_gbnf(pattern, path)?;
            return Ok(format!("(\"\\\"\" {body} \"\\\"\" ws)"));
        }
        if let Some(format) = map.get("format") {
            if map.contains_key("minLength") || map.contains_key("maxLength") {
                return Err(unsupported(path, "format with minLength or maxLength"));
            }
            let body = format
                .as_str()
                .and_then(format_grammar)
                .ok_or_else(|| unsupported(path, &format!("format {format} (date, time, date-time, uuid)")))?;
            return Ok(format!("(\"\\\"\" {body} \"\\\"\" ws)"));
        }
        Ok(match (count(map, "minLength", path)?, count(map, "maxLength", path)?) {
            (None, None) => "string".into(),
            (min, max) => {
                let min = min.unwrap_or(0);
                if max.is_some_and(|max| max < min) {
                    return Err(unsupported(path, "maxLength below minLength"));
                }
                let max = max.map_or(String::new(), |m| m.to_string());
                format!("(\"\\\"\" char{{{min},{max}}} \"\\\"\" ws)")
            }
        })
    }
}

/// An integer's bound: `minimum` / `maximum`, or the exclusive ones, as the nearest integer inside.
fn integer_bound(map: &serde_json::Map<String, Value>, path: &str, lower: bool) -> Result<Option<i64>> {
    let (inclusive, exclusive) = if lower { ("minimum", "exclusiveMinimum") } else { ("maximum", "exclusiveMaximum") };
    let mut bound: Option<i64> = None;
    for key in [inclusive, exclusive] {
        let Some(v) = map.get(key) else { continue };
        let x = v
            .as_f64()
            .filter(|x| x.abs() < 1e15)
            .ok_or_else(|| unsupported(path, &format!("{key} {v} (a number below 1e15)")))?;
        let b = match (lower, key == exclusive) {
            (true, false) => x.ceil(),
            (true, true) => x.floor() + 1.0,
            (false, false) => x.floor(),
            (false, true) => x.ceil() - 1.0,
        } as i64;
        bound = Some(bound.map_or(b, |old| if lower { old.max(b) } else { old.min(b) }));
    }
    Ok(bound)
}

/// An integer within the schema's bounds, as JSON writes it (no leading zeros, no `-0`), then whitespace.
fn integer(map: &serde_json::Map<String, Value>, path: &str) -> Result<String> {
    let (lo, hi) = (integer_bound(map, path, true)?, integer_bound(map, path, false)?);
    if lo.is_none() && hi.is_none() {
        return Ok("integer".into());
    }
    if let (Some(lo), Some(hi)) = (lo, hi) {
        if lo > hi {
            return Err(unsupported(path, &format!("integer bounds with no integer between ({lo} > {hi})")));
        }
    }
    let mut alternatives = Vec::new();
    // Negative values -m, m in [max(1, -hi), -lo]; then non-negative ones in [max(0, lo), hi].
    if lo.is_none_or(|lo| lo < 0) {
        let (m_lo, m_hi) = (hi.map_or(1, |hi| (-hi).max(1)) as u64, lo.map(|lo| lo.unsigned_abs()));
        if m_hi.is_none_or(|m_hi| m_lo <= m_hi) {
            alternatives.push(format!("\"-\" ({})", digits_from(m_lo, m_hi)));
        }
    }
    if hi.is_none_or(|hi| hi >= 0) {
        alternatives.push(digits_from(lo.map_or(0, |lo| lo.max(0)) as u64, hi.map(|hi| hi as u64)));
    }
    Ok(format!("(({}) ws)", alternatives.join(" | ")))
}

/// GBNF for the decimal forms (no leading zeros) of the integers in `lo..=hi` (`hi` none: up to 16 digits).
fn digits_from(lo: u64, hi: Option<u64>) -> String {
    const MAX_DIGITS: usize = 16;
    let lo_text = lo.to_string();
    let hi_text = hi.map_or("9".repeat(MAX_DIGITS.max(lo_text.len())), |h| h.to_string());
    let mut alternatives = Vec::new();
    for len in lo_text.len()..=hi_text.len() {
        // The numbers of `len` digits within the range, as equal-length bounds.
        let first = if len == lo_text.len() { lo_text.clone() } else { format!("1{}", "0".repeat(len - 1)) };
        let last = if len == hi_text.len() { hi_text.clone() } else { "9".repeat(len) };
        alternatives.push(same_length(first.as_bytes(), last.as_bytes()));
    }
    alternatives.join(" | ")
}

/// GBNF for the digit strings from `a` to `b` (equal lengths, `a <= b`), digit by digit: a shared
/// leading digit, else the first digit at `a`'s (then anything from `a`'s tail up), strictly between
/// (then any digits), or at `b`'s (then anything up to `b`'s tail).
fn same_length(a: &[u8], b: &[u8]) -> String {
    let (Some((&x, a_tail)), Some((&y, b_tail))) = (a.split_first(), b.split_first()) else {
        return String::new();
    };
    // Digit `d`, then the strings from `lo` to `hi`.
    let then = |d: u8, lo: &[u8], hi: &[u8]| match same_length(lo, hi) {
        tail if tail.is_empty() => format!("\"{}\"", d as char),
        tail => format!("\"{}\" ({tail})", d as char),
    };
    if x == y {
        return then(x, a_tail, b_tail);
    }
    let n = a_tail.len();
    let mut alternatives = vec![then(x, a_tail, &vec![b'9'; n])];
    if y - x > 1 {
        let any = if n == 0 { String::new() } else { format!(" [0-9]{{{n}}}") };
        alternatives.push(format!("[{}-{}]{any}", (x + 1) as char, (y - 1) as char));
    }
    alternatives.push(then(y, &vec![b'0'; n], b_tail));
    alternatives.join(" | ")
}
