//! A JSON schema's `pattern` (an ECMAScript regular expression) as a GBNF expression over the JSON text of
//! a string's contents, so the decoded string matches the pattern; and a regular expression as a grammar
//! of plain text ([`regex_to_gbnf`]).
//!
//! A schema's pattern must be anchored (`^...$`): JSON schema patterns search, and a grammar for "contains
//! a match" would let the model write anything around it (`^a|b$` is read as `^(a|b)$`, a subset of what
//! it searches for). Understood: literals, `.`, classes (`[a-z]`, `[^...]`, `\d \w \s` and their
//! negations), groups (`(...)`, `(?:...)`, `(?<name>...)`), alternation, and the quantifiers
//! `* + ? {n} {n,} {n,m}` (lazy ones as greedy: the language is the same). Refused by name: lookaround,
//! backreferences, word boundaries, anchors inside the pattern, and repeating without bound a part that can
//! match nothing (`(a*)*`, whose GBNF rule would recurse without reading). In a JSON string, characters
//! JSON must escape are written escaped (`"` as `\"`, a newline as `\n`), and a class or `.` never yields a
//! control character other than tab, newline and carriage return: the grammar may take fewer strings than
//! the pattern, never more.

use super::schema::literal;
use crate::error::{Error, Result};

/// Code points as sorted, disjoint, inclusive ranges.
type Ranges = Vec<(u32, u32)>;

const MAX_CHAR: u32 = 0x10FFFF;
/// Repetition counts taken in `{n,m}`.
const MAX_REPEAT: u32 = 1000;

/// The GBNF for the JSON text of a string's contents that `pattern` (at JSON pointer `path`) matches.
pub(super) fn pattern_to_gbnf(pattern: &str, path: &str) -> Result<String> {
    let (start, end) = anchors(pattern);
    let mut p = RegexParser { chars: pattern.chars().collect(), at: 0, pattern, path, json: true };
    if !(start && end) {
        return Err(p.error("a pattern anchored at both ends (`^...$`): a grammar cannot say \"contains\""));
    }
    p.body(start, end)
}

/// A GBNF grammar (rule `root`) of the texts `pattern`, an ECMAScript regular expression in the subset the
/// module docs give, matches whole (as if anchored by `^` and `$`, which it may also be).
///
/// ```
/// use mobilellm_kernels::constrain::{regex_to_gbnf, Grammar};
/// let grammar = Grammar::parse(&regex_to_gbnf(r"(yes|no), because \w+( \w+){0,8}\.")?)?;
/// assert!(grammar.accepts("yes, because it rains."));
/// assert!(!grammar.accepts("maybe, because it rains."));
/// # Ok::<(), mobilellm_kernels::Error>(())
/// ```
pub fn regex_to_gbnf(pattern: &str) -> Result<String> {
    let (start, end) = anchors(pattern);
    let mut p =
        RegexParser { chars: pattern.chars().collect(), at: 0, pattern, path: "the regular expression", json: false };
    super::schema::within_limits(format!("root ::= {}\n", p.body(start, end)?), "regular expression")
}

/// Whether `pattern` starts with `^` and ends with a `$` that is no escaped literal.
fn anchors(pattern: &str) -> (bool, bool) {
    let escapes = pattern.chars().rev().skip(1).take_while(|&c| c == '\\').count();
    (
        pattern.starts_with('^'),
        pattern.len() > usize::from(pattern.starts_with('^')) && pattern.ends_with('$') && escapes % 2 == 0,
    )
}

struct RegexParser<'a> {
    chars: Vec<char>,
    at: usize,
    pattern: &'a str,
    path: &'a str,
    /// Whether the text is a JSON string's (characters JSON escapes written escaped) or plain.
    json: bool,
}

impl RegexParser<'_> {
    /// The whole pattern, less the anchors given.
    fn body(&mut self, start: bool, end: bool) -> Result<String> {
        self.at = usize::from(start);
        if end {
            self.chars.pop();
        }
        let (body, _) = self.alternation()?;
        if self.at < self.chars.len() {
            return Err(self.error("a `(` before this `)`"));
        }
        Ok(body)
    }

    fn char_gbnf(&self, c: char) -> String {
        if self.json {
            json_char(c)
        } else {
            literal(&c.to_string())
        }
    }

    fn class_gbnf(&self, set: &[(u32, u32)]) -> Result<String> {
        let gbnf = if self.json { class_gbnf(set) } else { plain_class_gbnf(set) };
        gbnf.ok_or_else(|| self.error("a class holding a character the text can"))
    }

    fn error(&self, expected: &str) -> Error {
        Error::invalid(
            "JSON schema pattern",
            format!("{:?} at {}, character {}", self.pattern, self.path, self.at),
            expected,
        )
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn next(&mut self, expected: &str) -> Result<char> {
        let c = self.peek().ok_or_else(|| self.error(expected))?;
        self.at += 1;
        Ok(c)
    }

    fn eat(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        let hit = self.chars.get(self.at..self.at + n).is_some_and(|w| w.iter().copied().eq(s.chars()));
        if hit {
            self.at += n;
        }
        hit
    }

    /// Alternatives as GBNF, and whether they match the empty text.
    fn alternation(&mut self) -> Result<(String, bool)> {
        let (first, mut nullable) = self.sequence()?;
        let mut alternatives = vec![first];
        while self.eat("|") {
            let (next, empty) = self.sequence()?;
            alternatives.push(next);
            nullable |= empty;
        }
        let gbnf =
            if alternatives.len() == 1 { alternatives.remove(0) } else { format!("({})", alternatives.join(" | ")) };
        Ok((gbnf, nullable))
    }

    fn sequence(&mut self) -> Result<(String, bool)> {
        let (mut items, mut nullable) = (Vec::new(), true);
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let start = self.at;
            let (atom, empty) = self.atom()?;
            let (quantifier, min, unbounded) = self.quantifier()?;
            if empty && unbounded {
                // A GBNF repetition of a part that can match nothing recurses without reading a character.
                self.at = start;
                return Err(
                    self.error("no unbounded repetition of a part that can match nothing (write `(a*)*` as `a*`)")
                );
            }
            items.push(format!("{atom}{quantifier}"));
            nullable &= empty || min == 0;
        }
        let gbnf = if items.is_empty() { "\"\"".into() } else { format!("({})", items.join(" ")) };
        Ok((gbnf, nullable))
    }

    /// An atom as GBNF, and whether it matches the empty text.
    fn atom(&mut self) -> Result<(String, bool)> {
        if self.peek() == Some('(') {
            return self.group();
        }
        Ok((self.single()?, false))
    }

    fn group(&mut self) -> Result<(String, bool)> {
        let start = self.at;
        self.at += 1;
        if self.eat("?=") || self.eat("?!") || self.eat("?<=") || self.eat("?<!") {
            self.at = start;
            return Err(self.error("no lookaround (a grammar reads forward only)"));
        }
        if self.eat("?<") {
            while self.next("`>` closing a group's name")? != '>' {}
        } else if !self.eat("?:") && self.peek() == Some('?') {
            return Err(self.error("a group: `(...)`, `(?:...)` or `(?<name>...)`"));
        }
        let (inner, nullable) = self.alternation()?;
        if !self.eat(")") {
            return Err(self.error("`)` closing the group"));
        }
        Ok((format!("({inner})"), nullable))
    }

    /// An atom that is one character: a literal, a class, `.` or an escape.
    fn single(&mut self) -> Result<String> {
        let start = self.at;
        match self.next("an atom")? {
            '[' => {
                let set = self.class()?;
                self.class_gbnf(&set)
            }
            '.' => self.class_gbnf(&complement(&[(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)])),
            '\\' => match self.escape(false)? {
                Escaped::Char(c) => Ok(self.char_gbnf(c)),
                Escaped::Set(set) => self.class_gbnf(&set),
            },
            '^' | '$' => {
                self.at = start;
                Err(self.error("anchors only at the ends of the pattern"))
            }
            '*' | '+' | '?' | '{' => {
                self.at = start;
                Err(self.error("something before the quantifier"))
            }
            ')' => Err(self.error("a `(` before this `)`")),
            c => Ok(self.char_gbnf(c)),
        }
    }

    /// `*`, `+`, `?` or `{n}`, `{n,}`, `{n,m}` as GBNF (empty when none), a lazy `?` after it dropped;
    /// with its least count and whether it has no most.
    fn quantifier(&mut self) -> Result<(String, u32, bool)> {
        let q = match self.peek() {
            Some(c @ ('*' | '+' | '?')) => {
                self.at += 1;
                (c.to_string(), u32::from(c == '+'), c != '?')
            }
            Some('{') => {
                self.at += 1;
                let min = self.count()?;
                let max = if self.eat(",") {
                    if self.peek() == Some('}') {
                        None
                    } else {
                        Some(self.count()?)
                    }
                } else {
                    Some(min)
                };
                if !self.eat("}") || max.is_some_and(|max| max < min) {
                    return Err(self.error("a quantifier {n}, {n,} or {n,m} with n <= m"));
                }
                match max {
                    None => (format!("{{{min},}}"), min, true),
                    Some(max) => (format!("{{{min},{max}}}"), min, false),
                }
            }
            _ => return Ok((String::new(), 1, false)),
        };
        self.eat("?");
        Ok(q)
    }

    fn count(&mut self) -> Result<u32> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        let digits: String = self.chars[start..self.at].iter().collect();
        digits.parse().ok().filter(|&n| n <= MAX_REPEAT).ok_or_else(|| self.error("a repetition count up to 1000"))
    }

    /// After a `\`: a character or a class shorthand (`in_class`: `\b` is a backspace there).
    fn escape(&mut self, in_class: bool) -> Result<Escaped> {
        let start = self.at - 1;
        let hex = |p: &mut Self, digits: usize| -> Result<char> {
            let text: String = p.chars.get(p.at..p.at + digits).unwrap_or_default().iter().collect();
            let c = u32::from_str_radix(&text, 16).ok().filter(|_| text.len() == digits).and_then(char::from_u32);
            p.at += digits;
            c.ok_or_else(|| p.error(&format!("{digits} hex digits of a character")))
        };
        let digit = [(0x30, 0x39)];
        let word = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)];
        let space = [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029)];
        let space = [&space[..], &[(0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)]].concat();
        Ok(match self.next("a character after `\\`")? {
            'd' => Escaped::Set(digit.to_vec()),
            'D' => Escaped::Set(complement(&digit)),
            'w' => Escaped::Set(word.to_vec()),
            'W' => Escaped::Set(complement(&word)),
            's' => Escaped::Set(space),
            'S' => Escaped::Set(complement(&space)),
            'n' => Escaped::Char('\n'),
            'r' => Escaped::Char('\r'),
            't' => Escaped::Char('\t'),
            'f' => Escaped::Char('\x0C'),
            'v' => Escaped::Char('\x0B'),
            '0' => Escaped::Char('\0'),
            'b' if in_class => Escaped::Char('\x08'),
            'x' => Escaped::Char(hex(self, 2)?),
            'u' => Escaped::Char(hex(self, 4)?),
            'b' | 'B' => {
                self.at = start;
                return Err(self.error("no word boundary (`\\b`, `\\B`)"));
            }
            c if c.is_ascii_digit() => {
                self.at = start;
                return Err(self.error("no backreference"));
            }
            c if c.is_ascii_alphanumeric() => {
                self.at = start;
                return Err(self.error(
                    "an escape: \\d \\D \\w \\W \\s \\S \\n \\r \\t \\f \\v \\0 \\xHH \\uHHHH or \\ and a symbol",
                ));
            }
            c => Escaped::Char(c),
        })
    }

    /// A class after its `[`, as the set it matches.
    fn class(&mut self) -> Result<Ranges> {
        let negated = self.eat("^");
        let mut set = Vec::new();
        loop {
            let c = self.next("`]` closing the class")?;
            if c == ']' {
                break;
            }
            let lo = match c {
                '\\' => match self.escape(true)? {
                    Escaped::Set(s) => {
                        set.extend(s);
                        continue;
                    }
                    Escaped::Char(c) => c,
                },
                c => c,
            };
            let mut hi = lo;
            if self.peek() == Some('-') && self.chars.get(self.at + 1).is_some_and(|&c| c != ']') {
                self.at += 1;
                hi = match self.next("the end of a range")? {
                    '\\' => match self.escape(true)? {
                        Escaped::Char(c) => c,
                        Escaped::Set(_) => return Err(self.error("a character ending the range")),
                    },
                    c => c,
                };
                if hi < lo {
                    return Err(self.error("a range whose end is not below its start"));
                }
            }
            set.push((lo as u32, hi as u32));
        }
        let set = normalize(set);
        Ok(if negated { complement(&set) } else { set })
    }
}

enum Escaped {
    Char(char),
    Set(Ranges),
}

/// Sorted and merged.
fn normalize(mut ranges: Ranges) -> Ranges {
    ranges.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Every code point not in `set`.
fn complement(set: &[(u32, u32)]) -> Ranges {
    let mut out = Vec::new();
    let mut next = 0;
    for &(lo, hi) in &normalize(set.to_vec()) {
        if lo > next {
            out.push((next, lo - 1));
        }
        next = hi + 1;
    }
    if next <= MAX_CHAR {
        out.push((next, MAX_CHAR));
    }
    out
}

fn contains(set: &[(u32, u32)], c: char) -> bool {
    set.iter().any(|&(lo, hi)| (lo..=hi).contains(&(c as u32)))
}

/// The GBNF literal of `c` as JSON writes it inside a string (`"` as `\"`, a newline as `\n`).
fn json_char(c: char) -> String {
    let quoted = serde_json::to_string(&c.to_string()).unwrap_or_default();
    literal(&quoted[1..quoted.len() - 1])
}

/// The characters of `set` (surrogates aside) as a GBNF class; `None` when there are none.
fn plain_class_gbnf(set: &[(u32, u32)]) -> Option<String> {
    let chars = subtract(set, &[(0xD800, 0xDFFF)]);
    (!chars.is_empty()).then(|| class_text(&chars))
}

/// `set` less `minus`.
fn subtract(set: &[(u32, u32)], minus: &[(u32, u32)]) -> Ranges {
    let keep = complement(minus);
    normalize(set.to_vec())
        .into_iter()
        .flat_map(|(lo, hi)| keep.iter().map(move |&(a, b)| (lo.max(a), hi.min(b))).filter(|(a, b)| a <= b))
        .collect()
}

/// Ranges as a GBNF class, every character as a code point escape.
fn class_text(ranges: &[(u32, u32)]) -> String {
    let code = |c: u32| if c <= 0xFFFF { format!("\\u{c:04X}") } else { format!("\\U{c:08X}") };
    let ranges: String =
        ranges.iter().map(|&(lo, hi)| if lo == hi { code(lo) } else { format!("{}-{}", code(lo), code(hi)) }).collect();
    format!("[{ranges}]")
}

/// The characters of `set` a JSON string holds as themselves, as a GBNF class, with `"`, `\`, tab,
/// newline and carriage return as their escapes; `None` when there are none.
fn class_gbnf(set: &[(u32, u32)]) -> Option<String> {
    // Control characters, `"`, `\` and the surrogates (no characters) are not written as themselves.
    let plain = subtract(set, &[(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0xD800, 0xDFFF)]);
    let mut alternatives = Vec::new();
    if !plain.is_empty() {
        alternatives.push(class_text(&plain));
    }
    for c in ['"', '\\', '\t', '\n', '\r'] {
        if contains(set, c) {
            alternatives.push(json_char(c));
        }
    }
    match alternatives.len() {
        0 => None,
        1 => alternatives.pop(),
        _ => Some(format!("({})", alternatives.join(" | "))),
    }
}
