//! Scoring text with a model: the log-probabilities of a continuation ([`Model::score`]), and perplexity
//! ([`Model::perplexity`]).
//!
//! Perplexity of a model on a text, as llama.cpp's `llama-perplexity` measures it: the tokens are cut into
//! chunks of `chunk` tokens, each evaluated from an empty cache, and the second half of each chunk is scored:
//! logits rows `chunk / 2 ..= chunk - 2` each score the token after them, so every scored token has at least
//! `chunk / 2` tokens of context. (llama-perplexity also puts BOS first in each chunk for tokenizers that
//! add one; `mobilellm perplexity` does the same.) The score is `exp(mean negative log-likelihood)`; the
//! standard error of the mean NLL is reported too.
//! What it is for: comparing weight types of one model on one text (does q4_0 hold up against q8_0?).
//!
//! Both feed the context without logits and read back only the scored rows' logits, `max_batch` rows at a
//! time; log-softmax and sums run on the host in f64.

use super::Model;
use crate::error::{Error, Result};
use crate::reference;

/// What [`Model::perplexity`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perplexity {
    /// Tokens scored.
    pub scored: usize,
    /// Mean negative log-likelihood per scored token (nats).
    pub mean_nll: f64,
    /// Standard error of `mean_nll` (the spread of the per-token NLLs over `sqrt(scored)`).
    pub nll_std_error: f64,
}

impl Perplexity {
    /// `exp(mean_nll)`.
    pub fn value(&self) -> f64 {
        self.mean_nll.exp()
    }
}

/// The negative log-likelihoods of `targets[i]` under logits row `i` ([`reference::log_probability`]).
pub fn nlls(logits: &[f32], vocab: usize, targets: &[u32]) -> Vec<f64> {
    logits.chunks_exact(vocab).zip(targets).map(|(row, &t)| -reference::log_probability(row, t)).collect()
}

/// Mean and standard error of per-token NLLs.
pub fn summarize(nlls: &[f64]) -> Perplexity {
    let n = nlls.len() as f64;
    let mean = nlls.iter().sum::<f64>() / n;
    let variance = nlls.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Perplexity { scored: nlls.len(), mean_nll: mean, nll_std_error: (variance / n).sqrt() }
}

impl Model {
    /// The log-probability (natural log, f64) of each token of `continuation` after `context` and the
    /// continuation tokens before it: what an app ranks candidate answers by (multiple choice,
    /// classification by label words). The cache prefix that `context` shares with what was fed before is
    /// reused ([`Model::reuse_prefix`]), so scoring several continuations of one long prompt costs only the
    /// continuations. `context` must not be empty; the cache holds both afterwards.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, question: &[u32], options: &[Vec<u32>]) -> mobilellm_kernels::Result<()> {
    /// let mut best = (f64::NEG_INFINITY, 0);
    /// for (i, option) in options.iter().enumerate() {
    ///     let total: f64 = model.score(question, option)?.iter().sum();
    ///     if total > best.0 {
    ///         best = (total, i);
    ///     }
    /// }
    /// println!("option {} is the most likely", best.1);
    /// # Ok(()) }
    /// ```
    pub fn score(&mut self, context: &[u32], continuation: &[u32]) -> Result<Vec<f64>> {
        let (Some(&last), false) = (context.last(), continuation.is_empty()) else {
            return Err(Error::invalid(
                "scored text",
                format!("{} context and {} continuation tokens", context.len(), continuation.len()),
                "at least one of each",
            ));
        };
        let total = context.len() + continuation.len();
        if total > self.context() {
            return Err(Error::Capacity { what: "scored tokens".into(), requested: total, capacity: self.context() });
        }
        self.check_ids(context)?;
        self.check_ids(continuation)?;
        let vocab = self.config().vocab_size;
        // At most all but the last context token come from the cache; that one's row scores the first
        // continuation token.
        let known = self.reuse_prefix(&context[..context.len() - 1]);
        if known + 1 < context.len() {
            self.prefill(&context[known..context.len() - 1])?;
        }
        let feed: Vec<u32> =
            std::iter::once(last).chain(continuation[..continuation.len() - 1].iter().copied()).collect();
        let mut scores = Vec::with_capacity(continuation.len());
        for (rows, targets) in feed.chunks(self.max_batch()).zip(continuation.chunks(self.max_batch())) {
            let (_, logits) = self.prefill_logits(rows)?;
            scores.extend(nlls(&logits, vocab, targets).into_iter().map(|nll| -nll));
        }
        Ok(scores)
    }

    /// The perplexity of `tokens` (see the module docs) in chunks of `chunk` tokens (at least 2, at most
    /// the context). Resets the model: the cache holds the last chunk afterwards. Tokens past the last
    /// whole chunk are not used.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, text_ids: &[u32]) -> mobilellm_kernels::Result<()> {
    /// let ppl = model.perplexity(text_ids, 512)?;
    /// println!("PPL {:.3} over {} tokens", ppl.value(), ppl.scored);
    /// # Ok(()) }
    /// ```
    pub fn perplexity(&mut self, tokens: &[u32], chunk: usize) -> Result<Perplexity> {
        if chunk < 2 || chunk > self.context() {
            return Err(Error::invalid(
                "perplexity chunk",
                chunk,
                format!("2..={} tokens (the context)", self.context()),
            ));
        }
        if tokens.len() < chunk {
            return Err(Error::invalid(
                "perplexity text",
                format!("{} tokens", tokens.len()),
                format!("at least one chunk of {chunk}"),
            ));
        }
        self.check_ids(tokens)?;
        // Each chunk from an empty cache: the first half as context, the second half's tokens scored.
        let first_scored = chunk / 2;
        let mut all = Vec::new();
        for piece in tokens.chunks_exact(chunk) {
            self.reset();
            let (context, scored) = piece.split_at(first_scored + 1);
            if !scored.is_empty() {
                all.extend(self.score(context, scored)?.into_iter().map(|logprob| -logprob));
            }
        }
        Ok(summarize(&all))
    }
}
