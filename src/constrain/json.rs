//! JSON output ([`JsonConstraint`]: the output is a JSON document, llama.cpp's JSON grammar mode).
//!
//! [`JsonPrefix`] is a byte-level JSON (RFC 8259) recognizer that knows at every byte whether the bytes so
//! far can still begin a document, and whether they are one: strings with their escapes and exact UTF-8,
//! numbers, literals, nesting. Two limits keep generation from running away, and make it stricter than the
//! RFC: at most [`MAX_DEPTH`] nested containers and [`MAX_WHITESPACE`] whitespace bytes in a row.
//!
//! A token is allowed when all of its bytes continue the prefix ([`JsonConstraint::mask`]); special tokens
//! and tokens without bytes never are, and once the document is complete only the stop tokens are (a
//! top-level number may also go on with digits). The recognizer is `Copy` (a few dozen bytes), so each
//! token is tried on a copy; inside a string only the tokens with a quote, a backslash, a control byte or
//! partial UTF-8 are tried (the rest are plain text there), and masks are cached by state. SmolLM2's
//! 49 152 tokens: 0.47 ms at the start, 0.07 ms inside a string, 0.40 ms after a value (one core of the
//! 2-core VM); SmolLM2 answering in JSON decodes at the speed it does without (22 ms per token on lavapipe).

use crate::error::{Error, Result};
use crate::ops::sample::TokenMask;
use crate::tokenizer::Tokenizer;

use super::{finish_mask, Constraint, MaskCache};

/// Deepest nesting of objects and arrays accepted.
pub const MAX_DEPTH: usize = 32;
/// Most whitespace bytes accepted in a row (a model that only emits spaces cannot run forever).
pub const MAX_WHITESPACE: u8 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Frame {
    /// Just after `{`: a key or `}`.
    ObjectKeyOrEnd,
    /// After `,` in an object: a key.
    ObjectKey,
    /// After a key: `:`.
    ObjectColon,
    /// After `:`: a value.
    ObjectValue,
    /// After a member: `,` or `}`.
    ObjectCommaOrEnd,
    /// Just after `[`: a value or `]`.
    ArrayValueOrEnd,
    /// After `,` in an array: a value.
    ArrayValue,
    /// After an element: `,` or `]`.
    ArrayCommaOrEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Number {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Number {
    fn accepting(self) -> bool {
        matches!(self, Number::Zero | Number::Int | Number::Frac | Number::ExpDigits)
    }
    fn next(self, b: u8) -> Option<Number> {
        use Number::*;
        Some(match (self, b) {
            (Minus, b'0') => Zero,
            (Minus, b'1'..=b'9') => Int,
            (Int, b'0'..=b'9') => Int,
            (Zero | Int, b'.') => Dot,
            (Dot | Frac, b'0'..=b'9') => Frac,
            (Zero | Int | Frac, b'e' | b'E') => Exp,
            (Exp, b'+' | b'-') => ExpSign,
            (Exp | ExpSign | ExpDigits, b'0'..=b'9') => ExpDigits,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lexeme {
    /// Between tokens.
    Between,
    /// Inside a string (`key`: an object key). `hex`: hex digits of a `\u` escape still due; `utf8`: UTF-8
    /// continuation bytes still due, the next within `lo..=hi`.
    Str {
        key: bool,
        backslash: bool,
        hex: u8,
        utf8: u8,
        lo: u8,
        hi: u8,
    },
    Num(Number),
    /// `word[at..]` of `true`, `false` or `null` still due.
    Literal {
        word: &'static [u8],
        at: u8,
    },
}

/// A byte-level JSON prefix recognizer (see the module docs).
///
/// ```
/// use mobilellm_kernels::constrain::JsonPrefix;
/// let mut json = JsonPrefix::new();
/// assert!(json.push_bytes(br#"{"a": [1, 2.5e3, "x\u00e9"#));
/// assert!(!json.is_complete());
/// assert!(json.push_bytes(b"\"]}") && json.is_complete());
/// assert!(!JsonPrefix::new().push_bytes(b"[01]"), "no leading zeros");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JsonPrefix {
    frames: [Frame; MAX_DEPTH],
    depth: u8,
    lexeme: Lexeme,
    /// The top-level value is finished.
    done: bool,
    whitespace: u8,
}

impl Default for JsonPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonPrefix {
    /// Nothing seen yet.
    pub fn new() -> JsonPrefix {
        JsonPrefix {
            frames: [Frame::ArrayValue; MAX_DEPTH],
            depth: 0,
            lexeme: Lexeme::Between,
            done: false,
            whitespace: 0,
        }
    }

    /// Whether the bytes so far are one whole JSON document (followed by whitespace at most).
    pub fn is_complete(&self) -> bool {
        match self.lexeme {
            Lexeme::Num(n) => self.depth == 0 && n.accepting(),
            Lexeme::Between => self.done,
            _ => false,
        }
    }

    /// Feeds `bytes`; false (and the state is then unspecified) at the first one that no JSON document can
    /// continue with.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.push(b))
    }

    /// Feeds one byte; false when no JSON document continues with it (the state is then unspecified).
    pub fn push(&mut self, b: u8) -> bool {
        match self.lexeme {
            Lexeme::Str { .. } => self.push_in_string(b),
            Lexeme::Num(n) => match n.next(b) {
                Some(next) => {
                    self.lexeme = Lexeme::Num(next);
                    true
                }
                // The number ends here and `b` comes after it.
                None if n.accepting() => {
                    self.lexeme = Lexeme::Between;
                    self.value_done();
                    self.push_between(b)
                }
                None => false,
            },
            Lexeme::Literal { word, at } => {
                if word.get(at as usize) != Some(&b) {
                    return false;
                }
                if at as usize + 1 == word.len() {
                    self.lexeme = Lexeme::Between;
                    self.value_done();
                } else {
                    self.lexeme = Lexeme::Literal { word, at: at + 1 };
                }
                true
            }
            Lexeme::Between => self.push_between(b),
        }
    }

    fn top(&self) -> Option<Frame> {
        self.depth.checked_sub(1).map(|d| self.frames[d as usize])
    }

    fn set_top(&mut self, frame: Frame) {
        if let Some(d) = self.depth.checked_sub(1) {
            self.frames[d as usize] = frame;
        }
    }

    /// A value (scalar or container) just ended.
    fn value_done(&mut self) {
        match self.top() {
            None => self.done = true,
            Some(Frame::ObjectValue) => self.set_top(Frame::ObjectCommaOrEnd),
            Some(_) => self.set_top(Frame::ArrayCommaOrEnd),
        }
    }

    fn open(&mut self, frame: Frame) -> bool {
        if self.depth as usize == MAX_DEPTH {
            return false;
        }
        self.frames[self.depth as usize] = frame;
        self.depth += 1;
        true
    }

    fn close(&mut self) -> bool {
        self.depth -= 1;
        self.value_done();
        true
    }

    fn push_between(&mut self, b: u8) -> bool {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            self.whitespace += 1;
            return self.whitespace <= MAX_WHITESPACE;
        }
        self.whitespace = 0;
        let expects_value = match self.top() {
            None => !self.done,
            Some(f) => matches!(f, Frame::ObjectValue | Frame::ArrayValueOrEnd | Frame::ArrayValue),
        };
        if expects_value {
            let string = Lexeme::Str { key: false, backslash: false, hex: 0, utf8: 0, lo: 0, hi: 0 };
            match b {
                b'{' => return self.open(Frame::ObjectKeyOrEnd),
                b'[' => return self.open(Frame::ArrayValueOrEnd),
                b'"' => self.lexeme = string,
                b'-' => self.lexeme = Lexeme::Num(Number::Minus),
                b'0' => self.lexeme = Lexeme::Num(Number::Zero),
                b'1'..=b'9' => self.lexeme = Lexeme::Num(Number::Int),
                b't' => self.lexeme = Lexeme::Literal { word: b"true", at: 1 },
                b'f' => self.lexeme = Lexeme::Literal { word: b"false", at: 1 },
                b'n' => self.lexeme = Lexeme::Literal { word: b"null", at: 1 },
                b']' if self.top() == Some(Frame::ArrayValueOrEnd) => return self.close(),
                _ => return false,
            }
            return true;
        }
        match (self.top(), b) {
            (Some(Frame::ObjectKeyOrEnd | Frame::ObjectKey), b'"') => {
                self.lexeme = Lexeme::Str { key: true, backslash: false, hex: 0, utf8: 0, lo: 0, hi: 0 };
                true
            }
            (Some(Frame::ObjectKeyOrEnd | Frame::ObjectCommaOrEnd), b'}') => self.close(),
            (Some(Frame::ObjectColon), b':') => {
                self.set_top(Frame::ObjectValue);
                true
            }
            (Some(Frame::ObjectCommaOrEnd), b',') => {
                self.set_top(Frame::ObjectKey);
                true
            }
            (Some(Frame::ArrayCommaOrEnd), b',') => {
                self.set_top(Frame::ArrayValue);
                true
            }
            (Some(Frame::ArrayCommaOrEnd), b']') => self.close(),
            _ => false,
        }
    }

    fn push_in_string(&mut self, b: u8) -> bool {
        let Lexeme::Str { key, backslash, hex, utf8, lo, hi } = self.lexeme else { return false };
        // The string's state after `b`: by default plain text, the next continuation byte (if any) in 80..=BF.
        let (mut backslash_next, mut hex_next, mut utf8_next, mut lo_next, mut hi_next) = (false, 0, 0, 0x80, 0xBF);
        if backslash {
            match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                b'u' => hex_next = 4,
                _ => return false,
            }
        } else if hex > 0 {
            if !b.is_ascii_hexdigit() {
                return false;
            }
            hex_next = hex - 1;
        } else if utf8 > 0 {
            if !(lo..=hi).contains(&b) {
                return false;
            }
            utf8_next = utf8 - 1;
        } else {
            match b {
                b'"' => {
                    self.lexeme = Lexeme::Between;
                    if key {
                        self.set_top(Frame::ObjectColon);
                    } else {
                        self.value_done();
                    }
                    return true;
                }
                b'\\' => backslash_next = true,
                0x00..=0x1F => return false,
                0x20..=0x7F => {}
                // UTF-8 lead bytes and the range of the byte after them (no overlongs, surrogates or code
                // points past U+10FFFF).
                0xC2..=0xDF => utf8_next = 1,
                0xE0 => (utf8_next, lo_next) = (2, 0xA0),
                0xE1..=0xEC | 0xEE..=0xEF => utf8_next = 2,
                0xED => (utf8_next, hi_next) = (2, 0x9F),
                0xF0 => (utf8_next, lo_next) = (3, 0x90),
                0xF1..=0xF3 => utf8_next = 3,
                0xF4 => (utf8_next, hi_next) = (3, 0x8F),
                _ => return false,
            }
        }
        self.lexeme =
            Lexeme::Str { key, backslash: backslash_next, hex: hex_next, utf8: utf8_next, lo: lo_next, hi: hi_next };
        true
    }
}

/// Keeps generated tokens a JSON document (see the module docs).
#[derive(Clone, Debug)]
pub struct JsonConstraint {
    /// Each token's bytes; empty for tokens never allowed (special, or without bytes).
    token_bytes: Vec<Vec<u8>>,
    stop: Vec<u32>,
    state: JsonPrefix,
    /// Masks by recognizer state: inside a long string, or between values at one depth, the state (and so
    /// the mask) repeats step after step.
    masks: MaskCache<JsonPrefix>,
    /// Tokens of plain string text (no `"`, `\`, control bytes or partial UTF-8): allowed in any string
    /// with no escape or UTF-8 sequence pending, which they leave as it was. Most of a vocabulary.
    string_text: TokenMask,
    /// The other tokens, which each state must try.
    others: Vec<u32>,
}

/// States whose masks are kept; a generation seldom meets more.
const MASK_CACHE: usize = 64;

impl JsonConstraint {
    /// A constraint over `tokenizer`'s vocabulary; `stop` are the ids that may end the output once the
    /// document is complete (the end-of-sequence token).
    pub fn new(tokenizer: &Tokenizer, stop: &[u32]) -> JsonConstraint {
        let token_bytes = super::vocabulary_bytes(tokenizer);
        let mut string_text = TokenMask::none(token_bytes.len());
        let mut others = Vec::new();
        for (id, bytes) in token_bytes.iter().enumerate() {
            let plain = !bytes.is_empty()
                && std::str::from_utf8(bytes).is_ok_and(|t| !t.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
            if plain {
                // Within the vocabulary by construction.
                let _ = string_text.set(id as u32, true);
            } else if !bytes.is_empty() {
                others.push(id as u32);
            }
        }
        JsonConstraint {
            token_bytes,
            stop: stop.to_vec(),
            state: JsonPrefix::new(),
            masks: MaskCache::new(MASK_CACHE),
            string_text,
            others,
        }
    }

    /// The recognizer after the tokens accepted so far.
    pub fn state(&self) -> &JsonPrefix {
        &self.state
    }

    fn compute_mask(&self) -> Result<TokenMask> {
        let in_plain_string = matches!(self.state.lexeme, Lexeme::Str { backslash: false, hex: 0, utf8: 0, .. });
        let mut mask = TokenMask::none(self.token_bytes.len());
        let mut try_token = |id: u32| -> Result<()> {
            let bytes = &self.token_bytes[id as usize];
            if !bytes.is_empty() && self.state.clone().push_bytes(bytes) {
                mask.set(id, true)?;
            }
            Ok(())
        };
        if in_plain_string {
            self.others.iter().try_for_each(|&id| try_token(id))?;
            mask = mask.union(&self.string_text);
        } else {
            (0..self.token_bytes.len() as u32).try_for_each(try_token)?;
        }
        finish_mask(mask, self.state.is_complete(), &self.stop, "JSON constraint")
    }
}

impl Constraint for JsonConstraint {
    /// The tokens that may come next. An error when none may (a vocabulary without the pieces JSON needs).
    fn mask(&mut self) -> Result<TokenMask> {
        if let Some(mask) = self.masks.get(&self.state) {
            return Ok(mask);
        }
        let mask = self.compute_mask()?;
        self.masks.insert(self.state, &mask);
        Ok(mask)
    }

    /// Records that `id` was generated; an error if it does not continue the document (a stop token after
    /// a complete one is accepted and changes nothing).
    fn accept(&mut self, id: u32) -> Result<()> {
        if self.stop.contains(&id) && self.state.is_complete() {
            return Ok(());
        }
        let bytes = self.token_bytes.get(id as usize).map_or(&[][..], Vec::as_slice);
        let mut next = self.state;
        if bytes.is_empty() || !next.push_bytes(bytes) {
            return Err(Error::invalid("JSON constraint", format!("token {id} {bytes:?}"), "a token the mask allowed"));
        }
        self.state = next;
        Ok(())
    }

    /// Whether the tokens accepted so far are a whole document.
    fn is_complete(&self) -> bool {
        self.state.is_complete()
    }

    /// Starts a new document.
    fn reset(&mut self) {
        self.state = JsonPrefix::new();
    }

    /// The rest of a keyword (`true`, `false`, `null`) once begun; JSON leaves nothing else forced.
    fn forced_bytes(&mut self, limit: usize) -> Vec<u8> {
        let mut forced = Vec::new();
        let mut state = self.state;
        while forced.len() < limit && !state.is_complete() {
            let Some((b, next)) = super::only_byte(|b| {
                let mut next = state;
                next.push(b).then_some(next)
            }) else {
                break;
            };
            forced.push(b);
            state = next;
        }
        forced
    }
}
