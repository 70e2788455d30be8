//! Jump-forward decoding: text a constraint forces (the next key of a JSON schema's object, the rest of a
//! keyword) is encoded and fed with the next pass, as a prompt is, instead of being picked token by token.
//! One pass of several tokens costs about one decode step on a GPU (the weights are read once), so an
//! answer to a schema takes fewer passes (SGLang's jump-forward, on a GBNF grammar's byte DFA).

use super::Constraint;
use crate::error::Result;
use crate::model::lookup::Guide;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// The most forced bytes looked at before a pass.
pub const MAX_FORCED_BYTES: usize = 256;

/// What [`Model::generate_jump_forward`] generated, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JumpForward {
    /// The tokens generated, forced ones included, in the order `on_token` saw them.
    pub tokens: Vec<u32>,
    /// How many of them the constraint forced (fed without a pick).
    pub forced: usize,
    /// Forward passes run: the prompt's, then one per pick.
    pub passes: usize,
}

/// Tokens for the text `constraint` forces next, at most `limit`, accepted into it: the forced bytes up
/// to their last whole character, encoded as a continuation. The last token goes only if no token the
/// constraint allows in its place runs past the forced text (it would merge the forced text with what the
/// model writes next: the model picks there, under the mask). None unless the tokens spell forced bytes.
pub(crate) fn forced_tokens(constraint: &mut dyn Constraint, tokenizer: &Tokenizer, limit: usize) -> Result<Vec<u32>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let bytes = constraint.forced_bytes(MAX_FORCED_BYTES);
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    };
    let mut ids = tokenizer.encode_continuation(text);
    // Cut by `limit`, the last token is followed by more forced text, so it merges with nothing.
    let cut = ids.len() > limit;
    ids.truncate(limit);
    let mut spelled = Vec::with_capacity(bytes.len());
    for &id in &ids {
        if tokenizer.is_special(id) {
            return Ok(Vec::new());
        }
        spelled.extend_from_slice(&tokenizer.token_bytes(id));
    }
    if !bytes.starts_with(&spelled) {
        return Ok(Vec::new());
    }
    let Some(&last) = ids.last() else { return Ok(ids) };
    for &id in &ids[..ids.len() - 1] {
        constraint.accept(id)?;
    }
    let rest = bytes.len() - (spelled.len() - tokenizer.token_bytes(last).len());
    let merges =
        !cut && constraint.mask()?.ids().any(|id| !tokenizer.is_special(id) && tokenizer.token_bytes(id).len() > rest);
    if merges {
        ids.pop();
    } else {
        constraint.accept(last)?;
    }
    Ok(ids)
}

impl Model {
    /// Generates under `constraint` as [`Model::generate_constrained`] does (`constraint` follows from
    /// where it stands: [`Constraint::reset`] it for a new output), but feeds the text the constraint
    /// forces without sampling it: before each pass, [`Constraint::forced_bytes`] are encoded with
    /// `tokenizer` (the one the constraint was made over; [`Tokenizer::encode_continuation`], less the last
    /// token where an allowed token could merge it with the text after) and go into the pass with the last
    /// pick. The output is still a sentence of the constraint; the forced text is tokenized as the tokenizer
    /// would write it, which may differ from the tokens the model would have picked one by one.
    ///
    /// `on_token` sees forced tokens too, after the pass that feeds them; the KV cache then holds every
    /// token reported but the last (as [`Model::generate`] leaves it). When `on_token` stops the call at a
    /// forced token, the constraint has already taken the rest of that pass's forced text. A token mask set
    /// before the call is an error; the constraint's mask is lifted when the call returns, also on an error.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, tokenizer: &mobilellm_kernels::tokenizer::Tokenizer,
    /// #         prompt: &[u32]) -> mobilellm_kernels::Result<()> {
    /// use mobilellm_kernels::constrain::{json_schema_to_gbnf_with, Grammar, GrammarConstraint, JsonLayout};
    /// let schema = serde_json::json!({ "type": "object", "properties": {
    ///     "city": { "type": "string" }, "country": { "type": "string" } }, "required": ["city", "country"] });
    /// // A fixed layout leaves the text between values forced: `", "country": "` goes in one pass.
    /// let grammar = Grammar::parse(&json_schema_to_gbnf_with(&schema, JsonLayout::Spaced)?)?;
    /// let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    /// let mut constraint = GrammarConstraint::new(grammar, tokenizer, &stop);
    /// let out = model.generate_jump_forward(prompt, 64, &stop, &mut constraint, tokenizer, |_| true)?;
    /// println!("{} ({} of {} tokens forced, {} passes)",
    ///     tokenizer.decode(&out.tokens), out.forced, out.tokens.len(), out.passes);
    /// # Ok(()) }
    /// ```
    pub fn generate_jump_forward(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        constraint: &mut dyn Constraint,
        tokenizer: &Tokenizer,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<JumpForward> {
        // Speculative decoding's guided loop, with no drafts: each pass feeds the last pick and the forced
        // tokens, and picks under the mask.
        let guide = Guide { constraint, jump_forward: Some(tokenizer) };
        let no_drafts = |_: &[u32], _: usize| Ok(Vec::new());
        let (tokens, stats) = self.speculate_guided(prompt, max_new, stop, guide, no_drafts, on_token)?;
        // The prompt's pass, then one per plain step.
        let passes = if tokens.is_empty() { 0 } else { 1 + stats.steps };
        Ok(JumpForward { tokens, forced: stats.forced, passes })
    }
}
