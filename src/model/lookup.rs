//! Prompt-lookup decoding: speculative decoding whose drafts are copied from the sequence itself. When the
//! last few tokens appeared earlier (a quoted passage, code being edited, a list that repeats), the tokens
//! that followed them then are proposed as the continuation, and one batched pass over `[next, drafts...]`
//! checks them all: each row's argmax is the greedy pick after that prefix, so every draft that equals the
//! pick before it is accepted, plus one more token from the first row that disagrees. A pass costs about
//! one decode step where decoding is bound by weight reads (GPUs), and a prefill of a few tokens on CPU
//! drivers; rejected drafts only cost their rows. On lavapipe, SmolLM2 copying a sentence (24 tokens, after
//! warm-up) took 12.5-13.0 ms per token with drafts of 8 (16 of 16 accepted) against 21.4-27.6 without.
//!
//! [`Model::generate_draft`] takes its drafts from a smaller model of the same tokenizer instead (speculative
//! decoding), through the same batched check, and [`Model::generate_lookup_constrained`] checks lookup
//! drafts under a [`Constraint`]'s masks (a JSON answer that quotes its prompt).
//!
//! The output is greedy decoding's: the picks come from the batched product instead of the single-token one,
//! whose sums round differently, so the two can part only where two logits tie to within that rounding.

use super::{Model, Sampling};
use crate::constrain::{forced_tokens, Constraint};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// How drafts are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupOptions {
    /// Tokens that must match: the sequence's last `ngram` tokens are looked up earlier in it.
    pub ngram: usize,
    /// The most tokens drafted per pass.
    pub draft: usize,
}

impl Default for LookupOptions {
    fn default() -> Self {
        LookupOptions { ngram: 3, draft: 8 }
    }
}

/// What a [`Model::generate_lookup`] or [`Model::generate_draft`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Batched passes that checked drafts.
    pub passes: usize,
    /// Tokens drafted.
    pub drafted: usize,
    /// Drafted tokens accepted.
    pub accepted: usize,
    /// Plain decode steps (no draft found, or a pick made again: `repicks`).
    pub steps: usize,
    /// Under a constraint: passes whose pick the constraint forbade, picked again by a masked step.
    pub repicks: usize,
    /// Tokens a constraint forced, fed unpicked ([`Model::generate_lookup_constrained`] with a tokenizer).
    pub forced: usize,
}

/// What a pass of speculative decoding gave: the sampler's pick after its last row (no drafts), or each
/// row's greedy pick (drafts to check).
enum Pass {
    Pick(u32),
    Rows(Vec<u32>),
}

/// A constraint over the output of speculative decoding, and the tokenizer to feed its forced text with.
pub(crate) struct Guide<'a> {
    pub(crate) constraint: &'a mut dyn Constraint,
    pub(crate) jump_forward: Option<&'a Tokenizer>,
}

impl Guide<'_> {
    /// The tokens forced next (accepted into the constraint), at most `limit`; none without a tokenizer.
    fn forced(&mut self, limit: usize) -> Result<Vec<u32>> {
        match self.jump_forward {
            Some(tokenizer) => forced_tokens(self.constraint, tokenizer, limit),
            None => Ok(Vec::new()),
        }
    }
}

/// The continuation of the latest earlier occurrence of `seq`'s last `ngram` tokens: at most `limit`
/// tokens, empty when there is none. A continuation that runs into the end of `seq` goes on through the
/// tokens it has just drafted (a repeating pattern drafts its next period, as an LZ77 copy does).
fn find_draft(seq: &[u32], ngram: usize, limit: usize) -> Vec<u32> {
    if ngram == 0 || limit == 0 || seq.len() <= ngram {
        return Vec::new();
    }
    let key = &seq[seq.len() - ngram..];
    // Latest first: recent text predicts best. A match must leave at least one token after it.
    let Some(start) = (0..seq.len() - ngram).rev().find(|&start| &seq[start..start + ngram] == key) else {
        return Vec::new();
    };
    let mut draft = Vec::with_capacity(limit);
    for i in start + ngram..start + ngram + limit {
        draft.push(if i < seq.len() { seq[i] } else { draft[i - seq.len()] });
    }
    draft
}

impl Model {
    /// [`Model::generate`] with prompt-lookup drafts (see the module docs): the same tokens as greedy
    /// decoding, in fewer passes where the text repeats itself. Needs greedy sampling without penalties
    /// ([`crate::model::Sampling::greedy`]), which the batched check reproduces.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, prompt: &[u32]) -> mobilellm_kernels::Result<()> {
    /// use mobilellm_kernels::model::lookup::LookupOptions;
    /// let (tokens, stats) = model.generate_lookup(prompt, 64, &[], LookupOptions::default(), |_| true)?;
    /// println!("{} tokens, {} of {} drafts accepted", tokens.len(), stats.accepted, stats.drafted);
    /// # Ok(()) }
    /// ```
    pub fn generate_lookup(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        options: LookupOptions,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, LookupStats)> {
        check_greedy("sampling for prompt-lookup decoding", self.sampling())?;
        let propose = |seq: &[u32], limit: usize| Ok(find_draft(seq, options.ngram, limit.min(options.draft)));
        self.speculate(prompt, max_new, stop, None, propose, on_token)
    }

    /// [`Model::generate_lookup`] under a constraint: the tokens are greedy decoding's under the
    /// constraint's mask ([`Model::generate_constrained`]), in fewer passes where the output copies the
    /// text before it (a JSON answer quoting its prompt). A draft counts only as far as the constraint
    /// allows it, and where a pass's pick is a token the constraint forbids, the pick is made again with
    /// the mask (one decode step). With `jump_forward` (the tokenizer the constraint was made over), the
    /// text the constraint forces also goes into each pass unpicked, as [`Model::generate_jump_forward`]
    /// feeds it (those tokens are then the tokenizer's, not necessarily greedy's). `constraint` follows
    /// from where it stands, and may have taken tokens past the last one reported when `on_token` stops
    /// the call; the mask is lifted when the call returns.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, tokenizer: &mobilellm_kernels::tokenizer::Tokenizer,
    /// #         prompt: &[u32]) -> mobilellm_kernels::Result<()> {
    /// use mobilellm_kernels::constrain::JsonConstraint;
    /// use mobilellm_kernels::model::lookup::LookupOptions;
    /// let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    /// let mut json = JsonConstraint::new(tokenizer, &stop);
    /// let options = LookupOptions::default();
    /// let (tokens, stats) =
    ///     model.generate_lookup_constrained(prompt, 128, &stop, options, &mut json, Some(tokenizer), |_| true)?;
    /// println!("{}: {} of {} drafts accepted, {} forced", tokenizer.decode(&tokens), stats.accepted,
    ///     stats.drafted, stats.forced);
    /// # Ok(()) }
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn generate_lookup_constrained(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        options: LookupOptions,
        constraint: &mut dyn Constraint,
        jump_forward: Option<&Tokenizer>,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, LookupStats)> {
        check_greedy("sampling for prompt-lookup decoding", self.sampling())?;
        let propose = |seq: &[u32], limit: usize| Ok(find_draft(seq, options.ngram, limit.min(options.draft)));
        self.speculate_guided(prompt, max_new, stop, Guide { constraint, jump_forward }, propose, on_token)
    }

    /// [`Model::generate`] with drafts from a smaller model of the same vocabulary (speculative decoding,
    /// greedy): `draft` proposes up to `max_draft` tokens by its own greedy steps, and one batched pass of
    /// this model checks them, as [`Model::generate_lookup`] checks its drafts. The tokens are this model's
    /// greedy ones whatever the draft proposes; a draft that agrees often saves passes of this model (a
    /// MobileLLM-125M drafting for a 350M or 1B model of the family, which share a tokenizer). Both models
    /// need greedy sampling without penalties. `draft`'s cache follows the sequence (its position and
    /// cached tokens change; its cache prefix is reused where it already holds the sequence).
    ///
    /// ```no_run
    /// # fn demo(target: &mut mobilellm_kernels::model::Model, small: &mut mobilellm_kernels::model::Model,
    /// #         prompt: &[u32]) -> mobilellm_kernels::Result<()> {
    /// let (tokens, stats) = target.generate_draft(small, prompt, 64, &[], 4, |_| true)?;
    /// println!("{} tokens in {} passes of the large model", tokens.len(), stats.passes + stats.steps + 1);
    /// # Ok(()) }
    /// ```
    pub fn generate_draft(
        &mut self,
        draft: &mut Model,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        max_draft: usize,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, LookupStats)> {
        let propose = self.draft_proposer(draft, max_draft)?;
        self.speculate(prompt, max_new, stop, None, propose, on_token)
    }

    /// [`Model::generate_draft`] under a constraint, as [`Model::generate_lookup_constrained`] checks
    /// lookup drafts: the tokens are this model's masked greedy ones. The draft model proposes without the
    /// mask, so its drafts count as far as the constraint allows them; with `jump_forward`, forced text
    /// goes into each pass unpicked.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_draft_constrained(
        &mut self,
        draft: &mut Model,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        max_draft: usize,
        constraint: &mut dyn Constraint,
        jump_forward: Option<&Tokenizer>,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, LookupStats)> {
        let propose = self.draft_proposer(draft, max_draft)?;
        self.speculate_guided(prompt, max_new, stop, Guide { constraint, jump_forward }, propose, on_token)
    }

    /// [`Model::speculate`] under `guide`, its mask lifted when the call returns (also on an error).
    /// Jump-forward decoding ([`Model::generate_jump_forward`]) is this loop with no drafts.
    pub(crate) fn speculate_guided(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        guide: Guide<'_>,
        propose: impl FnMut(&[u32], usize) -> Result<Vec<u32>>,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, LookupStats)> {
        let result = self.speculate(prompt, max_new, stop, Some(guide), propose, on_token);
        self.set_token_mask(None)?;
        result
    }

    /// Drafts from `draft`'s greedy steps, at most `max_draft` per pass, after checking that both models
    /// sample greedily and share a vocabulary.
    fn draft_proposer<'d>(
        &self,
        draft: &'d mut Model,
        max_draft: usize,
    ) -> Result<impl FnMut(&[u32], usize) -> Result<Vec<u32>> + 'd> {
        check_greedy("sampling for speculative decoding", self.sampling())?;
        check_greedy("the draft model's sampling", draft.sampling())?;
        let (ours, theirs) = (self.config().vocab_size, draft.config().vocab_size);
        if ours != theirs {
            return Err(Error::invalid(
                "draft model vocabulary",
                format!("{theirs} tokens"),
                format!("this model's {ours}: drafts must be ids of the same tokenizer"),
            ));
        }
        let propose = move |seq: &[u32], limit: usize| -> Result<Vec<u32>> {
            // The draft feeds the whole sequence, then `k - 1` of its own tokens.
            let room = (draft.context() + 1).saturating_sub(seq.len());
            let k = limit.min(max_draft).min(room);
            if k == 0 {
                return Ok(Vec::new());
            }
            let known = draft.reuse_prefix(seq);
            let mut token = draft.prefill(&seq[known..])?;
            let mut proposal = vec![token];
            for _ in 1..k {
                token = draft.step(token)?;
                proposal.push(token);
            }
            Ok(proposal)
        };
        Ok(propose)
    }

    /// The loop both kinds of draft share: `propose(sequence, limit)` gives at most `limit` tokens that may
    /// follow `sequence` (which ends with the picked, not yet fed token); one batched pass checks them. A
    /// `guide` masks every pick and may force tokens, which go into the pass before the drafts.
    fn speculate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        mut guide: Option<Guide<'_>>,
        mut propose: impl FnMut(&[u32], usize) -> Result<Vec<u32>>,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, LookupStats)> {
        if self.has_token_mask() {
            // The batched check picks each row's argmax of the raw logits.
            return Err(Error::invalid(
                "token mask during speculative decoding",
                "set",
                "none (Model::set_token_mask(None); a constraint: Model::generate_lookup_constrained)",
            ));
        }
        let mut stats = LookupStats::default();
        let mut out = Vec::new();
        if max_new == 0 {
            return Ok((out, stats));
        }
        // The sequence so far, for lookups: what the cache holds before the prompt, if known, then the prompt.
        let known = self.cached_tokens().get(..self.position()).unwrap_or(&[]);
        let mut seq: Vec<u32> = known.iter().chain(prompt).copied().collect();
        // `feed` goes into the next pass: the tokens to feed (the prompt, or the last pick), then the
        // forced ones; `next` is what that pass picks.
        let mut feed = prompt.to_vec();
        loop {
            // Room after `feed` for forced tokens and drafts: the tokens still wanted (forced ones leave one
            // for a pick), and the cache.
            let room = (max_new - out.len()).min(self.context().saturating_sub(self.position() + feed.len()));
            let forced = match &mut guide {
                Some(g) => g.forced(room.saturating_sub(1))?,
                None => Vec::new(),
            };
            let fed = feed.len();
            feed.extend(&forced);
            seq.extend(&forced);
            let mut draft = if out.is_empty() { Vec::new() } else { propose(&seq, room - forced.len())? };
            if let Some(g) = &mut guide {
                // A draft the constraint forbids from its first token would only cost a pass.
                if draft.first().is_some_and(|&d| !g.constraint.mask().is_ok_and(|m| m.is_allowed(d))) {
                    draft.clear();
                }
            }
            feed.extend(&draft);
            let start = self.position();
            // Emits `token`, fed at `at`; false when generation ends there (the cache then holds every
            // emitted token but the last, as `generate` leaves it).
            let mut emit = |model: &mut Model, out: &mut Vec<u32>, token: u32, at: usize| -> Result<bool> {
                out.push(token);
                if !on_token(token) || stop.contains(&token) || out.len() >= max_new {
                    model.seek(at)?;
                    return Ok(false);
                }
                Ok(true)
            };
            // One pass: a masked pick after the last token (no draft), or each row's greedy pick, made on the
            // GPU (one id per row comes back, not rows of logits).
            let pass = if draft.is_empty() {
                if let Some(g) = &mut guide {
                    self.set_token_mask(Some(&g.constraint.mask()?))?;
                }
                if !out.is_empty() {
                    stats.steps += 1;
                }
                Pass::Pick(self.prefill(&feed)?)
            } else {
                stats.passes += 1;
                stats.drafted += draft.len();
                Pass::Rows(self.prefill_greedy(&feed)?)
            };
            for (i, &token) in forced.iter().enumerate() {
                stats.forced += 1;
                if !emit(self, &mut out, token, start + fed + i)? {
                    return Ok((out, stats));
                }
            }
            let next = match pass {
                Pass::Pick(pick) => pick,
                Pass::Rows(picks) => {
                    // Drafts equal to the pick before them are greedy's next tokens, as far as the constraint
                    // allows them (the pick over all tokens, allowed, is the masked pick); their K/V is cached.
                    let row_of = |i: usize| fed + forced.len() + i - 1;
                    let mut accepted = 0;
                    while accepted < draft.len() && draft[accepted] == picks[row_of(accepted)] {
                        if let Some(g) = &mut guide {
                            if !g.constraint.mask()?.is_allowed(draft[accepted]) {
                                break;
                            }
                            g.constraint.accept(draft[accepted])?;
                        }
                        accepted += 1;
                        seq.push(draft[accepted - 1]);
                        stats.accepted += 1;
                        if !emit(self, &mut out, draft[accepted - 1], start + row_of(accepted))? {
                            return Ok((out, stats));
                        }
                    }
                    // The rows after the last accepted token are discarded.
                    let row = row_of(accepted);
                    self.seek(start + row + 1)?;
                    let mut pick = picks[row];
                    if let Some(g) = &mut guide {
                        let mask = g.constraint.mask()?;
                        if !mask.is_allowed(pick) {
                            // The pass's pick is one the constraint forbids: pick again with the mask,
                            // feeding the row's token once more.
                            self.seek(start + row)?;
                            self.set_token_mask(Some(&mask))?;
                            stats.steps += 1;
                            stats.repicks += 1;
                            pick = self.step(feed[row])?;
                        }
                    }
                    pick
                }
            };
            if let Some(g) = &mut guide {
                g.constraint.accept(next)?;
            }
            seq.push(next);
            if !emit(self, &mut out, next, self.position())? || self.position() >= self.context() {
                return Ok((out, stats));
            }
            feed = vec![next];
        }
    }
}

/// Speculative decoding checks drafts against greedy picks: other sampling would not reproduce.
fn check_greedy(what: &str, sampling: &Sampling) -> Result<()> {
    if sampling.temperature != 0.0 || !sampling.penalties.is_off() {
        return Err(Error::invalid(
            what,
            format!("temperature {}, penalties {:?}", sampling.temperature, sampling.penalties),
            "greedy without penalties (Sampling::greedy())",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::find_draft;

    #[test]
    fn drafts_continue_the_latest_match() {
        let seq = [1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3];
        assert_eq!(find_draft(&seq, 3, 4), [7, 8, 1, 2]);
        assert_eq!(find_draft(&seq, 3, 1), [7]);
        // Past the end, the copy goes on through what it drafted: 7 8 1 2 3 | 7 8 1.
        assert_eq!(find_draft(&seq, 2, 8), [7, 8, 1, 2, 3, 7, 8, 1]);
        assert!(find_draft(&seq, 4, 8).is_empty());
        assert!(find_draft(&seq, 0, 8).is_empty());
        assert_eq!(find_draft(&[5, 5, 5], 1, 4), [5, 5, 5, 5]);
        assert_eq!(find_draft(&[4, 6, 4, 6, 4], 1, 5), [6, 4, 6, 4, 6]);
        assert!(find_draft(&[5], 1, 8).is_empty());
    }
}
