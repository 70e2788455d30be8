//! GBNF grammars (llama.cpp's `grammars/README.md` format) and the constraint that keeps output in their
//! language.
//!
//! **Format.** Rules `name ::= alternatives`; an alternative is a sequence of string literals (`"..."`,
//! escapes `\n \r \t \\ \" \xHH \uHHHH \UHHHHHHHH`), character classes (`[a-z_]`, negated `[^"\\]`), `.` (any
//! character), rule names and groups `( ... )`, each optionally followed by `*`, `+`, `?`, `{m}`, `{m,}` or
//! `{m,n}`; `#` starts a comment. A rule ends where the next `name ::=` begins. The language is that of
//! rule `root`. Characters are Unicode code points, matched from the output's UTF-8.
//!
//! **Recognizer.** As llama.cpp's: a state is a set of stacks of positions in the rules (a pushdown
//! automaton run on every parse at once); a character advances each stack whose next element is a class
//! holding it, and rule references at the new positions are expanded. A reference in tail position pushes
//! nothing, so right recursion (`list ::= item list | item`, and every `*`) keeps stacks flat. Left
//! recursion would expand forever: [`Grammar::parse`] refuses it. Limits, for a grammar that would
//! otherwise grow without bound: at most [`MAX_STACKS`] parses at once, [`MAX_STACK_DEPTH`] nested rules
//! and [`MAX_EXPANSION`] expansion steps per character (a byte that needs more is refused, like the JSON
//! recognizer's depth limit), and [`MAX_ELEMENTS`] elements once repetitions are written out.
//!
//! **Masks.** [`GrammarConstraint`] runs the recognizer as a lazily built DFA over bytes: each state met is
//! interned and each (state, byte) step is computed once, into a 256-entry row. The mask of a state is a
//! walk of a trie of the vocabulary's token bytes that follows those rows and prunes a subtree at the
//! first byte no parse accepts; masks are also cached by state, so a state met again (inside a string, a
//! repeated list item) costs a lookup.

use std::collections::HashMap;
use std::fmt;

use crate::error::{Error, Result};
use crate::ops::sample::TokenMask;
use crate::tokenizer::Tokenizer;

use super::{finish_mask, Constraint, MaskCache};

/// Most parses (stacks) a grammar state may hold: a byte that would make more is refused (an ambiguous
/// grammar, such as `x* x*`, can multiply them).
pub const MAX_STACKS: usize = 512;
/// Deepest nesting of rule references a parse may reach.
pub const MAX_STACK_DEPTH: usize = 128;
/// Expansion steps allowed per character: references that fork without consuming (`a ::= b | b`,
/// `b ::= c | c`, ...) would otherwise take time exponential in the grammar's size.
pub const MAX_EXPANSION: usize = 1 << 16;
/// Most elements a grammar may have once its repetitions are written out.
pub const MAX_ELEMENTS: usize = 1 << 20;

/// A set of code points: inclusive ranges, or everything outside them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CharClass {
    ranges: Vec<(u32, u32)>,
    negated: bool,
}

impl CharClass {
    fn contains(&self, c: u32) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }

    /// Whether some code point in `lo..=hi` is in the class.
    fn meets(&self, lo: u32, hi: u32) -> bool {
        if !self.negated {
            return self.ranges.iter().any(|&(a, b)| a <= hi && lo <= b);
        }
        // Walk `lo..=hi` past the ranges that cover its start; a gap left means a member.
        let mut sorted = self.ranges.clone();
        sorted.sort_unstable();
        let mut next = lo;
        for (a, b) in sorted {
            if a > next {
                break;
            }
            if b >= next {
                match b.checked_add(1) {
                    Some(after) => next = after,
                    None => return false,
                }
            }
        }
        next <= hi
    }
}

/// One element of an alternative, laid out in [`Grammar::elems`] with an `End` after each alternative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    Class(u32),
    Rule(u32),
    End,
}

/// A parsed GBNF grammar (see the module docs).
///
/// ```
/// use mobilellm_kernels::constrain::Grammar;
/// let g = Grammar::parse(r#"
///     root  ::= item ("," item){0,2}   # one to three items
///     item  ::= [a-z]+ | "\"" [^"]* "\""
/// "#)?;
/// assert!(g.accepts("ab,\"c d\",e"));
/// assert!(!g.accepts("a,b,c,d") && !g.accepts("A"));
/// # Ok::<(), mobilellm_kernels::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Grammar {
    names: Vec<String>,
    /// Per rule, the index in `elems` where each alternative starts.
    alternatives: Vec<Vec<u32>>,
    elems: Vec<Elem>,
    classes: Vec<CharClass>,
    root: u32,
}

/// An element while parsing, before layout.
#[derive(Clone, Debug)]
enum Item {
    Class(CharClass),
    Rule(u32),
}

/// Parses GBNF text into rules of items; groups and repetitions become rules of their own.
struct Parser<'a> {
    text: &'a str,
    at: usize,
    names: Vec<String>,
    index: HashMap<String, u32>,
    /// Per rule: its alternatives, or `None` while only referenced.
    rules: Vec<Option<Vec<Vec<Item>>>>,
    /// Where each rule was first referenced, for the "undefined rule" error.
    first_use: Vec<usize>,
    /// Elements written out by repetitions so far.
    elements: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, at: usize, expected: &str) -> Error {
        let line = self.text[..at].matches('\n').count() + 1;
        let column = at - self.text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
        let near: String = self.text[at..].chars().take(16).collect();
        Error::invalid("GBNF grammar", format!("{near:?} at line {line}, column {column}"), expected)
    }

    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        Some(c)
    }

    /// Skips whitespace, newlines and comments.
    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn name_at(&self, at: usize) -> &'a str {
        let rest = &self.text[at..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Whether a rule definition (`name ::=`) starts here.
    fn at_definition(&self) -> bool {
        let name = self.name_at(self.at);
        !name.is_empty() && self.text[self.at + name.len()..].trim_start().starts_with("::=")
    }

    fn new(text: &'a str) -> Parser<'a> {
        Parser {
            text,
            at: 0,
            names: Vec::new(),
            index: HashMap::new(),
            rules: Vec::new(),
            first_use: Vec::new(),
            elements: 0,
        }
    }

    fn rule_id(&mut self, name: &str, at: usize) -> u32 {
        if let Some(&id) = self.index.get(name) {
            return id;
        }
        let id = self.rules.len() as u32;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), id);
        self.rules.push(None);
        self.first_use.push(at);
        id
    }

    /// A rule made by the parser (a group or a repetition), named after the rule being parsed; not
    /// referable by name (see [`Parser::name_synthetic_rules`]).
    fn synthetic(&mut self, base: &str, alternatives: Vec<Vec<Item>>) -> u32 {
        let id = self.rules.len() as u32;
        self.names.push(format!("{base}-{id}"));
        self.rules.push(Some(alternatives));
        self.first_use.push(self.at);
        id
    }

    fn parse(mut self) -> Result<Grammar> {
        self.skip_space();
        while self.at < self.text.len() {
            let start = self.at;
            let name = self.name_at(start);
            if name.is_empty() || !self.at_definition() {
                return Err(self.error(start, "a rule definition `name ::= ...`"));
            }
            self.at = self.text.len() - self.text[start + name.len()..].trim_start().len() + "::=".len();
            let id = self.rule_id(name, start);
            if self.rules[id as usize].is_some() {
                return Err(self.error(start, &format!("one definition of rule `{name}`")));
            }
            let alternatives = self.alternatives(name, false)?;
            self.rules[id as usize] = Some(alternatives);
        }
        let mut alternatives_of = Vec::with_capacity(self.rules.len());
        for (id, rule) in self.rules.iter().enumerate() {
            match rule {
                Some(alternatives) => alternatives_of.push(alternatives.clone()),
                None => {
                    return Err(self.error(self.first_use[id], &format!("a definition of rule `{}`", self.names[id])))
                }
            }
        }
        let root = *self.index.get("root").ok_or_else(|| {
            Error::invalid("GBNF grammar", "no rule `root`", "a `root ::= ...` rule (the language's start)")
        })?;
        self.name_synthetic_rules();
        Grammar::lay_out(self.names, alternatives_of, root)
    }

    /// Gives the rules the parser made names no rule of the text has (the text may define `root-3`
    /// itself), so that the grammar prints as GBNF that parses.
    fn name_synthetic_rules(&mut self) {
        let mut taken: std::collections::HashSet<String> = self.index.keys().cloned().collect();
        for id in 0..self.names.len() {
            if self.index.get(&self.names[id]) == Some(&(id as u32)) {
                continue;
            }
            let base = self.names[id].clone();
            let mut name = base.clone();
            let mut k = 1;
            while taken.contains(&name) {
                name = format!("{base}-{k}");
                k += 1;
            }
            taken.insert(name.clone());
            self.names[id] = name;
        }
    }

    /// `sequence ("|" sequence)*`, up to the next definition (or the closing `)` of a group).
    fn alternatives(&mut self, rule: &str, in_group: bool) -> Result<Vec<Vec<Item>>> {
        let mut alternatives = vec![self.sequence(rule)?];
        loop {
            self.skip_space();
            match self.peek() {
                Some('|') => {
                    self.bump();
                    alternatives.push(self.sequence(rule)?);
                }
                Some(')') if in_group => {
                    self.bump();
                    return Ok(alternatives);
                }
                None if in_group => return Err(self.error(self.at, "`)` closing the group")),
                Some(')') => return Err(self.error(self.at, "no `)` outside a group")),
                _ => return Ok(alternatives),
            }
        }
    }

    fn sequence(&mut self, rule: &str) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        loop {
            self.skip_space();
            let start = self.at;
            let atom: Vec<Item> = match self.peek() {
                None | Some('|') | Some(')') => return Ok(items),
                Some('"') => {
                    self.bump();
                    self.literal()?
                        .into_iter()
                        .map(|c| Item::Class(CharClass { ranges: vec![(c, c)], negated: false }))
                        .collect()
                }
                Some('[') => {
                    self.bump();
                    vec![Item::Class(self.class()?)]
                }
                Some('.') => {
                    self.bump();
                    vec![Item::Class(CharClass { ranges: Vec::new(), negated: true })]
                }
                Some('(') => {
                    self.bump();
                    let alternatives = self.alternatives(rule, true)?;
                    vec![Item::Rule(self.synthetic(rule, alternatives))]
                }
                Some(_) if self.at_definition() => return Ok(items),
                Some(_) => {
                    let name = self.name_at(start);
                    if name.is_empty() {
                        return Err(self.error(start, "a literal, a class, `.`, a rule name or a group"));
                    }
                    self.at += name.len();
                    vec![Item::Rule(self.rule_id(name, start))]
                }
            };
            let bounds = match self.peek() {
                Some(c @ ('*' | '+' | '?')) => {
                    self.bump();
                    Some(match c {
                        '*' => (0, None),
                        '+' => (1, None),
                        _ => (0, Some(1)),
                    })
                }
                Some('{') => {
                    self.bump();
                    Some(self.bounds()?)
                }
                _ => None,
            };
            match bounds {
                Some(bounds) => items.extend(self.repeat(rule, atom, bounds)?),
                None => items.extend(atom),
            }
        }
    }

    /// `{m}`, `{m,}` or `{m,n}` after the `{`.
    fn bounds(&mut self) -> Result<(usize, Option<usize>)> {
        let start = self.at;
        let close = self.text[start..].find('}').ok_or_else(|| self.error(start, "`}` closing the repetition"))?;
        let inside = &self.text[start..start + close];
        let number = |s: &str| s.trim().parse::<usize>().ok().filter(|&n| n <= 1000);
        let bounds = match inside.split_once(',') {
            None => number(inside).map(|n| (n, Some(n))),
            Some((m, n)) if n.trim().is_empty() => number(m).map(|m| (m, None)),
            Some((m, n)) => number(m).zip(number(n)).filter(|(m, n)| m <= n).map(|(m, n)| (m, Some(n))),
        };
        self.at = start + close + 1;
        bounds.ok_or_else(|| self.error(start, "`{m}`, `{m,}` or `{m,n}` with m <= n <= 1000"))
    }

    /// `atom` `min` times, then up to `max - min` more (or any number more): llama.cpp's expansion, with
    /// the optional copies nested (`x{0,3}` is `(x (x x?)?)?`) so that a parse never forks on which copy.
    fn repeat(&mut self, rule: &str, atom: Vec<Item>, (min, max): (usize, Option<usize>)) -> Result<Vec<Item>> {
        self.elements += atom.len() * max.unwrap_or(min).max(min + 1);
        if self.elements > MAX_ELEMENTS {
            return Err(
                self.error(self.at, &format!("at most {MAX_ELEMENTS} elements once repetitions are written out"))
            );
        }
        let mut items: Vec<Item> = (0..min).flat_map(|_| atom.clone()).collect();
        match max {
            None => {
                // star ::= atom star | (nothing): the reference is in tail position, so stacks stay flat.
                let id = self.rules.len() as u32;
                let mut again = atom.clone();
                again.push(Item::Rule(id));
                let star = self.synthetic(rule, vec![again, Vec::new()]);
                debug_assert_eq!(star, id);
                items.push(Item::Rule(star));
            }
            Some(max) => {
                let mut tail: Option<u32> = None;
                for _ in min..max {
                    let mut more = atom.clone();
                    more.extend(tail.map(Item::Rule));
                    tail = Some(self.synthetic(rule, vec![more, Vec::new()]));
                }
                items.extend(tail.map(Item::Rule));
            }
        }
        Ok(items)
    }

    /// One character of a literal or a class, after any backslash.
    fn char_or_escape(&mut self, what: &str) -> Result<u32> {
        let start = self.at;
        let c = self.bump().ok_or_else(|| self.error(start, what))?;
        if c != '\\' {
            return Ok(c as u32);
        }
        let e = self.bump().ok_or_else(|| self.error(start, "an escape after `\\`"))?;
        let hex = |p: &mut Parser, digits: usize| -> Result<u32> {
            let s = p.text.get(p.at..p.at + digits).filter(|s| s.chars().all(|c| c.is_ascii_hexdigit()));
            let v = s.and_then(|s| u32::from_str_radix(s, 16).ok()).filter(|&v| char::from_u32(v).is_some());
            let v = v.ok_or_else(|| p.error(start, &format!("{digits} hex digits of a code point")))?;
            p.at += digits;
            Ok(v)
        };
        Ok(match e {
            'n' => '\n' as u32,
            'r' => '\r' as u32,
            't' => '\t' as u32,
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            '\\' | '"' | '[' | ']' | '-' | '^' => e as u32,
            _ => {
                return Err(
                    self.error(start, "an escape: \\n \\r \\t \\\\ \\\" \\[ \\] \\- \\^ \\xHH \\uHHHH \\UHHHHHHHH")
                )
            }
        })
    }

    /// A string literal's characters, after the opening quote.
    fn literal(&mut self) -> Result<Vec<u32>> {
        let mut chars = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error(self.at, "`\"` closing the literal")),
                Some('"') => {
                    self.bump();
                    return Ok(chars);
                }
                Some(_) => chars.push(self.char_or_escape("a character")?),
            }
        }
    }

    /// A character class, after the `[`.
    fn class(&mut self) -> Result<CharClass> {
        let negated = self.peek() == Some('^');
        if negated {
            self.bump();
        }
        let mut ranges = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error(self.at, "`]` closing the class")),
                Some(']') => {
                    self.bump();
                    return Ok(CharClass { ranges, negated });
                }
                Some(_) => {
                    let start = self.at;
                    let lo = self.char_or_escape("a character")?;
                    let hi = if self.peek() == Some('-') && !self.text[self.at + 1..].starts_with(']') {
                        self.bump();
                        self.char_or_escape("the end of a range")?
                    } else {
                        lo
                    };
                    if hi < lo {
                        return Err(self.error(start, "a range whose end is not below its start"));
                    }
                    ranges.push((lo, hi));
                }
            }
        }
    }
}

impl Grammar {
    /// Parses GBNF `text`; errors name the line and column (and the rule, for an undefined or
    /// left-recursive one).
    pub fn parse(text: &str) -> Result<Grammar> {
        Parser::new(text).parse()
    }

    /// The rules' alternatives laid out in one element list, checked for left recursion.
    fn lay_out(names: Vec<String>, rules: Vec<Vec<Vec<Item>>>, root: u32) -> Result<Grammar> {
        let mut grammar = Grammar {
            names,
            alternatives: Vec::with_capacity(rules.len()),
            elems: Vec::new(),
            classes: Vec::new(),
            root,
        };
        for alternatives in rules {
            let mut starts = Vec::with_capacity(alternatives.len());
            for items in alternatives {
                starts.push(grammar.elems.len() as u32);
                for item in items {
                    let elem = match item {
                        Item::Rule(r) => Elem::Rule(r),
                        Item::Class(class) => {
                            grammar.classes.push(class);
                            Elem::Class(grammar.classes.len() as u32 - 1)
                        }
                    };
                    grammar.elems.push(elem);
                }
                grammar.elems.push(Elem::End);
            }
            grammar.alternatives.push(starts);
        }
        grammar.check_left_recursion()?;
        Ok(grammar)
    }

    /// The rules that can match the empty string.
    fn nullable(&self) -> Vec<bool> {
        let mut nullable = vec![false; self.alternatives.len()];
        let mut changed = true;
        while changed {
            changed = false;
            for r in 0..nullable.len() {
                if nullable[r] {
                    continue;
                }
                let empty = self.alternatives[r].iter().any(|&start| {
                    self.elems[start as usize..]
                        .iter()
                        .take_while(|e| **e != Elem::End)
                        .all(|e| matches!(e, Elem::Rule(s) if nullable[*s as usize]))
                });
                if empty {
                    nullable[r] = true;
                    changed = true;
                }
            }
        }
        nullable
    }

    /// A rule that can reach itself without consuming a character would make expansion loop forever.
    fn check_left_recursion(&self) -> Result<()> {
        let nullable = self.nullable();
        // The rules each rule can start with (through nullable prefixes).
        let corners: Vec<Vec<u32>> = self
            .alternatives
            .iter()
            .map(|starts| {
                let mut out = Vec::new();
                for &start in starts {
                    for e in &self.elems[start as usize..] {
                        match *e {
                            Elem::Rule(s) => {
                                out.push(s);
                                if !nullable[s as usize] {
                                    break;
                                }
                            }
                            Elem::Class(_) | Elem::End => break,
                        }
                    }
                }
                out
            })
            .collect();
        // Depth-first search for a cycle: 0 unseen, 1 on the path, 2 done.
        let mut mark = vec![0u8; corners.len()];
        for start in 0..corners.len() {
            if mark[start] != 0 {
                continue;
            }
            let mut path = vec![(start, 0usize)];
            mark[start] = 1;
            while let Some(&mut (r, ref mut next)) = path.last_mut() {
                if let Some(&s) = corners[r].get(*next) {
                    *next += 1;
                    match mark[s as usize] {
                        0 => {
                            mark[s as usize] = 1;
                            path.push((s as usize, 0));
                        }
                        1 => {
                            return Err(Error::invalid(
                                "GBNF grammar",
                                format!("rule `{}` is left-recursive", self.names[s as usize]),
                                "rules that consume a character before referring back to themselves",
                            ))
                        }
                        _ => {}
                    }
                } else {
                    mark[r] = 2;
                    path.pop();
                }
            }
        }
        Ok(())
    }

    /// The number of rules, those made for groups and repetitions included.
    pub fn rule_count(&self) -> usize {
        self.alternatives.len()
    }

    /// Whether `text` (UTF-8) is in the grammar's language (false also when a limit is hit).
    pub fn accepts(&self, text: impl AsRef<[u8]>) -> bool {
        self.run(text.as_ref()).is_some_and(|state| state.is_complete())
    }

    /// Whether `bytes` (UTF-8, possibly ending inside a character) can begin a sentence of the language:
    /// what [`GrammarConstraint`] allows a token by.
    pub fn is_prefix(&self, bytes: &[u8]) -> bool {
        self.run(bytes).is_some()
    }

    /// How many bytes of `bytes` the language can begin with: the index of the first byte no parse takes
    /// (`bytes.len()` when [`Grammar::is_prefix`] holds).
    pub fn longest_prefix(&self, bytes: &[u8]) -> usize {
        self.walk(bytes).0
    }

    fn run(&self, bytes: &[u8]) -> Option<GrammarState> {
        match self.walk(bytes) {
            (taken, state) if taken == bytes.len() => Some(state),
            _ => None,
        }
    }

    /// The bytes of `bytes` some parse takes, and the state after them.
    fn walk(&self, bytes: &[u8]) -> (usize, GrammarState) {
        let mut state = self.start();
        for (i, &b) in bytes.iter().enumerate() {
            match state.step(self, b) {
                Some(next) => state = next,
                None => return (i, state),
            }
        }
        (bytes.len(), state)
    }

    /// The state before any character: the root's alternatives, expanded (no parse at all if that
    /// exceeds [`MAX_EXPANSION`]).
    fn start(&self) -> GrammarState {
        let mut stacks = Vec::new();
        let mut budget = MAX_EXPANSION;
        for &start in &self.alternatives[self.root as usize] {
            if !self.expand(vec![start], &mut stacks, &mut budget) {
                return GrammarState::new(Vec::new());
            }
        }
        GrammarState::new(stacks)
    }

    /// Moves `stack` on to positions where a class comes next (or to the empty stack: the root is done)
    /// and adds them to `out`: ends of alternatives return to the position below, references open each
    /// alternative of their rule. A parse that would nest deeper than [`MAX_STACK_DEPTH`] is dropped;
    /// false when the expansion took more than `budget` steps.
    fn expand(&self, stack: Vec<u32>, out: &mut Vec<Vec<u32>>, budget: &mut usize) -> bool {
        let mut work = vec![stack];
        while let Some(mut stack) = work.pop() {
            loop {
                if *budget == 0 {
                    return false;
                }
                *budget -= 1;
                let Some(&top) = stack.last() else {
                    out.push(stack);
                    break;
                };
                match self.elems[top as usize] {
                    Elem::End => {
                        stack.pop();
                    }
                    Elem::Class(_) => {
                        out.push(stack);
                        break;
                    }
                    Elem::Rule(r) => {
                        stack.pop();
                        // In tail position nothing is left to return to: push nothing (flat right recursion).
                        if self.elems[top as usize + 1] != Elem::End {
                            stack.push(top + 1);
                        }
                        if stack.len() < MAX_STACK_DEPTH {
                            for &start in &self.alternatives[r as usize] {
                                let mut opened = stack.clone();
                                opened.push(start);
                                work.push(opened);
                            }
                        }
                        break;
                    }
                }
            }
        }
        true
    }

    /// The stacks after character `c`; `None` when no parse takes it or the expansion exceeds
    /// [`MAX_EXPANSION`].
    fn advance_char(&self, stacks: &[Vec<u32>], c: u32) -> Option<Vec<Vec<u32>>> {
        let mut out = Vec::new();
        let mut budget = MAX_EXPANSION;
        for stack in stacks {
            let Some(&top) = stack.last() else { continue };
            if let Elem::Class(k) = self.elems[top as usize] {
                if self.classes[k as usize].contains(c) {
                    let mut next = stack.clone();
                    next.pop();
                    next.push(top + 1);
                    if !self.expand(next, &mut out, &mut budget) {
                        return None;
                    }
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Whether some stack's next class has a code point in `lo..=hi` (a character whose UTF-8 has begun).
    fn admits_range(&self, stacks: &[Vec<u32>], lo: u32, hi: u32) -> bool {
        stacks.iter().any(|s| {
            s.last().is_some_and(|&top| match self.elems[top as usize] {
                Elem::Class(k) => self.classes[k as usize].meets(lo, hi),
                _ => false,
            })
        })
    }
}

impl fmt::Display for Grammar {
    /// The grammar as GBNF, one rule per line (groups and repetitions as the rules they became).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let char_text = |c: u32| match char::from_u32(c) {
            Some('"') => "\\\"".to_string(),
            Some('\\') => "\\\\".to_string(),
            Some(']') => "\\]".to_string(),
            Some('-') => "\\-".to_string(),
            Some('^') => "\\^".to_string(),
            Some(c) if !c.is_control() => c.to_string(),
            _ => format!("\\U{c:08X}"),
        };
        for (r, starts) in self.alternatives.iter().enumerate() {
            write!(f, "{} ::=", self.names[r])?;
            for (i, &start) in starts.iter().enumerate() {
                if i > 0 {
                    write!(f, " |")?;
                }
                for e in self.elems[start as usize..].iter().take_while(|e| **e != Elem::End) {
                    match *e {
                        Elem::Rule(s) => write!(f, " {}", self.names[s as usize])?,
                        Elem::Class(k) => {
                            let class = &self.classes[k as usize];
                            write!(f, " [{}", if class.negated { "^" } else { "" })?;
                            for &(lo, hi) in &class.ranges {
                                write!(f, "{}", char_text(lo))?;
                                if hi != lo {
                                    write!(f, "-{}", char_text(hi))?;
                                }
                            }
                            write!(f, "]")?;
                        }
                        Elem::End => {}
                    }
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Where a parse stands: its stacks (sorted, without duplicates) and the bytes of a character whose UTF-8
/// has begun.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GrammarState {
    stacks: Vec<Vec<u32>>,
    /// The code point's bits so far, the continuation bytes still due, and the range of the next one
    /// (UTF-8's rules against overlong forms, surrogates and code points past U+10FFFF).
    partial: u32,
    due: u8,
    next_lo: u8,
    next_hi: u8,
}

impl GrammarState {
    fn new(mut stacks: Vec<Vec<u32>>) -> GrammarState {
        stacks.sort_unstable();
        stacks.dedup();
        GrammarState { stacks, partial: 0, due: 0, next_lo: 0x80, next_hi: 0xBF }
    }

    fn is_complete(&self) -> bool {
        self.due == 0 && self.stacks.iter().any(Vec::is_empty)
    }

    /// The state after byte `b`, if some parse takes it.
    fn step(&self, g: &Grammar, b: u8) -> Option<GrammarState> {
        let (value, due, lo, hi) = if self.due > 0 {
            if !(self.next_lo..=self.next_hi).contains(&b) {
                return None;
            }
            (self.partial << 6 | u32::from(b & 0x3F), self.due - 1, 0x80, 0xBF)
        } else {
            match b {
                0x00..=0x7F => (u32::from(b), 0, 0x80, 0xBF),
                0xC2..=0xDF => (u32::from(b & 0x1F), 1, 0x80, 0xBF),
                0xE0 => (0, 2, 0xA0, 0xBF),
                0xE1..=0xEC | 0xEE..=0xEF => (u32::from(b & 0x0F), 2, 0x80, 0xBF),
                0xED => (0x0D, 2, 0x80, 0x9F),
                0xF0 => (0, 3, 0x90, 0xBF),
                0xF1..=0xF3 => (u32::from(b & 0x07), 3, 0x80, 0xBF),
                0xF4 => (0x04, 3, 0x80, 0x8F),
                _ => return None,
            }
        };
        if due > 0 {
            // Prune now if no class holds any character this UTF-8 can still become: the next byte within
            // `lo..=hi`, any bits after it.
            let rest = 6 * u32::from(due - 1);
            let first = (value << 6 | u32::from(lo & 0x3F)) << rest;
            let last = (value << 6 | u32::from(hi & 0x3F)) << rest | ((1 << rest) - 1);
            if !g.admits_range(&self.stacks, first, last) {
                return None;
            }
            let mut next = self.clone();
            (next.partial, next.due, next.next_lo, next.next_hi) = (value, due, lo, hi);
            return Some(next);
        }
        let stacks = g.advance_char(&self.stacks, value)?;
        let next = GrammarState::new(stacks);
        (next.stacks.len() <= MAX_STACKS).then_some(next)
    }
}

/// Sentinels of a DFA row: the step was not computed yet, or no parse takes the byte.
const UNKNOWN: u32 = u32::MAX;
const DEAD: u32 = u32::MAX - 1;
/// States kept before the DFA starts over (each costs a 1 KiB row plus its stacks).
const MAX_DFA_STATES: usize = 1 << 14;
/// Masks kept by state.
const MASK_CACHE: usize = 256;

/// The vocabulary as a trie of token bytes: node 0 is the root; the children of a node, and the tokens
/// ending at it, are slices of the flat lists.
#[derive(Clone, Debug, Default)]
struct TokenTrie {
    /// Per node: the range of `edges` holding its children, and of `ends` holding its tokens.
    children: Vec<(u32, u32)>,
    tokens: Vec<(u32, u32)>,
    edges: Vec<(u8, u32)>,
    ends: Vec<u32>,
}

impl TokenTrie {
    fn new(token_bytes: &[Vec<u8>]) -> TokenTrie {
        // Sorted by bytes, a node's tokens and subtree are contiguous; build breadth-first from the sorted
        // list by splitting it at each depth.
        let mut order: Vec<u32> =
            (0..token_bytes.len() as u32).filter(|&id| !token_bytes[id as usize].is_empty()).collect();
        order.sort_by(|&a, &b| token_bytes[a as usize].cmp(&token_bytes[b as usize]));
        let mut trie = TokenTrie::default();
        // (node, depth, the node's slice of `order`)
        let mut queue = std::collections::VecDeque::from([(0usize, 0usize, 0usize, order.len())]);
        trie.children.push((0, 0));
        trie.tokens.push((0, 0));
        while let Some((node, depth, lo, hi)) = queue.pop_front() {
            let mut i = lo;
            let ends_start = trie.ends.len() as u32;
            while i < hi && token_bytes[order[i] as usize].len() == depth {
                trie.ends.push(order[i]);
                i += 1;
            }
            trie.tokens[node] = (ends_start, trie.ends.len() as u32);
            let edges_start = trie.edges.len() as u32;
            while i < hi {
                let b = token_bytes[order[i] as usize][depth];
                let mut j = i;
                while j < hi && token_bytes[order[j] as usize][depth] == b {
                    j += 1;
                }
                let child = trie.children.len();
                trie.children.push((0, 0));
                trie.tokens.push((0, 0));
                trie.edges.push((b, child as u32));
                queue.push_back((child, depth + 1, i, j));
                i = j;
            }
            trie.children[node] = (edges_start, trie.edges.len() as u32);
        }
        trie
    }
}

/// Keeps generated tokens in a grammar's language (see the module docs).
#[derive(Clone, Debug)]
pub struct GrammarConstraint {
    grammar: Grammar,
    token_bytes: Vec<Vec<u8>>,
    trie: TokenTrie,
    stop: Vec<u32>,
    /// The DFA: states met, their ids, and per state its 256 steps (`UNKNOWN`, `DEAD` or a state id).
    states: Vec<GrammarState>,
    ids: HashMap<GrammarState, u32>,
    rows: Vec<[u32; 256]>,
    current: u32,
    masks: MaskCache<u32>,
}

impl GrammarConstraint {
    /// A constraint over `tokenizer`'s vocabulary; `stop` are the ids that may end the output once it is a
    /// whole sentence of the grammar.
    pub fn new(grammar: Grammar, tokenizer: &Tokenizer, stop: &[u32]) -> GrammarConstraint {
        GrammarConstraint::with_vocabulary(grammar, super::vocabulary_bytes(tokenizer), stop)
    }

    /// [`GrammarConstraint::new`] over token byte strings (`token_bytes[id]`; empty: never allowed).
    pub fn with_vocabulary(grammar: Grammar, token_bytes: Vec<Vec<u8>>, stop: &[u32]) -> GrammarConstraint {
        let trie = TokenTrie::new(&token_bytes);
        let mut c = GrammarConstraint {
            grammar,
            token_bytes,
            trie,
            stop: stop.to_vec(),
            states: Vec::new(),
            ids: HashMap::new(),
            rows: Vec::new(),
            current: 0,
            masks: MaskCache::new(MASK_CACHE),
        };
        c.reset();
        c
    }

    /// The grammar constrained to.
    pub fn grammar(&self) -> &Grammar {
        &self.grammar
    }

    /// States of the DFA built so far (each a set of parses met while generating or masking).
    pub fn dfa_states(&self) -> usize {
        self.states.len()
    }

    fn intern(&mut self, state: GrammarState) -> u32 {
        if let Some(&id) = self.ids.get(&state) {
            return id;
        }
        let id = self.states.len() as u32;
        self.ids.insert(state.clone(), id);
        self.states.push(state);
        self.rows.push([UNKNOWN; 256]);
        id
    }

    /// The DFA step from state `from` on byte `b`: a state id or `DEAD`.
    fn step(&mut self, from: u32, b: u8) -> u32 {
        let known = self.rows[from as usize][b as usize];
        if known != UNKNOWN {
            return known;
        }
        let to = match self.states[from as usize].step(&self.grammar, b) {
            Some(next) => self.intern(next),
            None => DEAD,
        };
        self.rows[from as usize][b as usize] = to;
        to
    }

    /// Starts the DFA over (it grew past [`MAX_DFA_STATES`]), keeping the current state.
    fn trim(&mut self) {
        if self.states.len() <= MAX_DFA_STATES {
            return;
        }
        let current = self.states[self.current as usize].clone();
        self.states.clear();
        self.ids.clear();
        self.rows.clear();
        self.masks.clear();
        self.current = self.intern(current);
    }

    fn compute_mask(&mut self) -> Result<TokenMask> {
        let mut mask = TokenMask::none(self.token_bytes.len());
        let mut pending = vec![(0u32, self.current)];
        while let Some((node, state)) = pending.pop() {
            let node = node as usize;
            if node != 0 {
                let (lo, hi) = self.trie.tokens[node];
                for &id in &self.trie.ends[lo as usize..hi as usize] {
                    mask.set(id, true)?;
                }
            }
            let (lo, hi) = self.trie.children[node];
            for e in lo..hi {
                let (b, child) = self.trie.edges[e as usize];
                let next = self.step(state, b);
                if next != DEAD {
                    pending.push((child, next));
                }
            }
        }
        finish_mask(mask, self.is_complete(), &self.stop, "grammar constraint")
    }
}

impl Constraint for GrammarConstraint {
    fn mask(&mut self) -> Result<TokenMask> {
        if let Some(mask) = self.masks.get(&self.current) {
            return Ok(mask);
        }
        let mask = self.compute_mask()?;
        self.masks.insert(self.current, &mask);
        self.trim();
        Ok(mask)
    }

    fn accept(&mut self, id: u32) -> Result<()> {
        if self.stop.contains(&id) && self.is_complete() {
            return Ok(());
        }
        let len = self.token_bytes.get(id as usize).map_or(0, Vec::len);
        let mut state = self.current;
        for i in 0..len {
            state = self.step(state, self.token_bytes[id as usize][i]);
            if state == DEAD {
                break;
            }
        }
        if len == 0 || state == DEAD {
            let bytes = self.token_bytes.get(id as usize);
            return Err(Error::invalid(
                "grammar constraint",
                format!("token {id} {bytes:?}"),
                "a token the mask allowed",
            ));
        }
        self.current = state;
        self.trim();
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.states[self.current as usize].is_complete()
    }

    fn reset(&mut self) {
        let start = self.grammar.start();
        self.current = self.intern(start);
    }

    /// Follows the DFA while a state has one byte out and is no whole sentence (each state tries all 256
    /// bytes once; the DFA keeps the steps).
    fn forced_bytes(&mut self, limit: usize) -> Vec<u8> {
        let mut forced = Vec::new();
        let mut state = self.current;
        while forced.len() < limit && !self.states[state as usize].is_complete() {
            let Some((b, next)) = super::only_byte(|b| Some(self.step(state, b)).filter(|&s| s != DEAD)) else {
                break;
            };
            forced.push(b);
            state = next;
        }
        self.trim();
        forced
    }
}
