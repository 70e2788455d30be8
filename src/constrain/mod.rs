//! Constrained decoding: the tokens that may come next, as a [`TokenMask`] for the GPU sampler
//! ([`Model::generate_constrained`]), from a [`Constraint`] that follows the generated text:
//! - [`JsonConstraint`]: any JSON document (llama.cpp's JSON mode), by a hand-written recognizer;
//! - [`GrammarConstraint`]: the language of a GBNF grammar (llama.cpp's grammar format, [`Grammar`]), which
//!   [`json_schema_to_gbnf`] writes for a JSON schema (structured output) and [`regex_to_gbnf`] for a
//!   regular expression.
//!
//! [`Model::generate_jump_forward`] also feeds the text a constraint forces ([`Constraint::forced_bytes`])
//! without picking it token by token.
//!
//! ```no_run
//! # fn demo(model: &mut mobilellm_kernels::model::Model, tokenizer: &mobilellm_kernels::tokenizer::Tokenizer,
//! #         prompt: &[u32]) -> mobilellm_kernels::Result<()> {
//! use mobilellm_kernels::constrain::{Constraint, Grammar, GrammarConstraint};
//! let grammar = Grammar::parse(r#"root ::= "yes" | "no" | "maybe, " [0-9]{1,2} "%""#)?;
//! let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
//! let mut answer = GrammarConstraint::new(grammar, tokenizer, &stop);
//! let out = model.generate_constrained(prompt, 16, &stop, |generated| answer.mask_after(generated), |_| true)?;
//! assert!(answer.is_complete() || out.len() == 16);
//! # Ok(()) }
//! ```

mod grammar;
mod json;
mod jump;
mod pattern;
mod schema;

pub use grammar::{Grammar, GrammarConstraint, MAX_ELEMENTS, MAX_EXPANSION, MAX_STACKS, MAX_STACK_DEPTH};
pub use json::{JsonConstraint, JsonPrefix, MAX_DEPTH, MAX_WHITESPACE};
pub(crate) use jump::forced_tokens;
pub use jump::{JumpForward, MAX_FORCED_BYTES};
pub use pattern::regex_to_gbnf;
pub use schema::{json_schema_to_gbnf, json_schema_to_gbnf_with, JsonLayout};

use std::collections::HashMap;
use std::hash::Hash;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::sample::TokenMask;
use crate::tokenizer::Tokenizer;

/// Follows generated tokens and says which may come next.
pub trait Constraint {
    /// The tokens that may come next. An error when none may.
    fn mask(&mut self) -> Result<TokenMask>;
    /// Records that `id` was generated; an error if the mask did not allow it (a stop token after a
    /// complete output is accepted and changes nothing).
    fn accept(&mut self, id: u32) -> Result<()>;
    /// Whether the tokens accepted so far are a whole output (the stop tokens are then allowed).
    fn is_complete(&self) -> bool;
    /// Starts a new output.
    fn reset(&mut self);
    /// The bytes every continuation of the output starts with, at most `limit`: text the constraint leaves
    /// no choice about, which [`Model::generate_jump_forward`] feeds without sampling. Empty when the next
    /// byte is open or the output may end here. By default nothing is forced.
    fn forced_bytes(&mut self, limit: usize) -> Vec<u8> {
        let _ = limit;
        Vec::new()
    }
    /// The mask for a generation hook ([`Model::generate_constrained`]): accepts the last of the tokens
    /// `generated` so far (if any), then gives [`Constraint::mask`].
    fn mask_after(&mut self, generated: &[u32]) -> Result<TokenMask> {
        if let Some(&last) = generated.last() {
            self.accept(last)?;
        }
        self.mask()
    }
}

/// Masks by constraint state, at most `capacity` of them (then it starts over): inside a long string, or
/// between the items of a list, the state and so the mask repeat step after step.
#[derive(Clone, Debug)]
struct MaskCache<K> {
    masks: HashMap<K, TokenMask>,
    capacity: usize,
}

impl<K: Hash + Eq> MaskCache<K> {
    fn new(capacity: usize) -> MaskCache<K> {
        MaskCache { masks: HashMap::new(), capacity }
    }

    fn get(&self, state: &K) -> Option<TokenMask> {
        self.masks.get(state).cloned()
    }

    fn insert(&mut self, state: K, mask: &TokenMask) {
        if self.masks.len() >= self.capacity {
            self.masks.clear();
        }
        self.masks.insert(state, mask.clone());
    }

    fn clear(&mut self) {
        self.masks.clear();
    }
}

/// A computed mask with the stop tokens added when the output is `complete`; an error naming `what` when
/// no token may come next.
fn finish_mask(mut mask: TokenMask, complete: bool, stop: &[u32], what: &str) -> Result<TokenMask> {
    if complete {
        for &id in stop {
            mask.set(id, true)?;
        }
    }
    if mask.count() == 0 {
        return Err(Error::invalid(what, "no token continues the output", "a token that does"));
    }
    Ok(mask)
}

/// The one byte `step` takes (with the state after it), or `None` when no byte or several do: the walk
/// of [`Constraint::forced_bytes`] goes on only while it finds one.
fn only_byte<S>(mut step: impl FnMut(u8) -> Option<S>) -> Option<(u8, S)> {
    let mut only = None;
    for b in 0..=255u8 {
        if let Some(next) = step(b) {
            if only.is_some() {
                return None;
            }
            only = Some((b, next));
        }
    }
    only
}

/// Each token's bytes as a constraint matches them; empty for tokens never allowed (special tokens, and
/// tokens without bytes).
fn vocabulary_bytes(tokenizer: &Tokenizer) -> Vec<Vec<u8>> {
    (0..tokenizer.vocab_size() as u32)
        .map(|id| if tokenizer.is_special(id) { Vec::new() } else { tokenizer.token_bytes(id).into_owned() })
        .collect()
}

impl Model {
    /// [`Model::generate`] under a constraint: before each pick, `allowed(generated)` gives the tokens that
    /// may come next after the tokens generated so far ([`Model::set_token_mask`]). The mask is lifted when
    /// the call returns, also on an error.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, tokenizer: &mobilellm_kernels::tokenizer::Tokenizer,
    /// #         prompt: &[u32]) -> mobilellm_kernels::Result<()> {
    /// use mobilellm_kernels::constrain::{Constraint, JsonConstraint};
    /// let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    /// let mut json = JsonConstraint::new(tokenizer, &stop);
    /// let out = model.generate_constrained(prompt, 128, &stop, |generated| json.mask_after(generated), |_| true)?;
    /// println!("{}", tokenizer.decode(&out)); // a JSON document, if it ended within 128 tokens
    /// # Ok(()) }
    /// ```
    pub fn generate_constrained(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        mut allowed: impl FnMut(&[u32]) -> Result<TokenMask>,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let set_mask = |model: &mut Model, generated: &[u32]| model.set_token_mask(Some(&allowed(generated)?));
        let result = self.generate_with_hook(prompt, max_new, stop, set_mask, on_token);
        self.set_token_mask(None)?;
        result
    }
}
