//! Batched decoding: several independent sequences advanced by one submission, each weight read once for
//! all of them (a decode step reads every weight to produce one token; a batch of `b` sequences produces
//! `b` for about the same bytes, which is what lifts a bandwidth-bound device's throughput).
//!
//! The sequences live in a second KV cache ([`KvCache::with_sequences`], made by
//! [`Model::reserve_sequences`]) beside the model's own one-sequence cache. A batch is a list of rows
//! `(sequence, token)`: each token goes to its sequence's next position, so one call can decode one token of
//! each of many sequences, or feed several tokens of one (a prompt, in order) while others decode. The
//! rows run as a prefill chunk does (batched products over all rows; one row, as the last sequence left
//! does, takes a decode step's products with the norms folded in), except that Q/K/V go to each row's own
//! sequence and position (`rope_cache` with `BATCH`) and attention is per row over that row's sequence
//! (`attention_decode_rows`). Each row is sampled with its sequence's own settings and token mask
//! ([`Model::set_sequence_sampling`], [`Model::set_sequence_mask`]; greedy by default) by one pair of
//! sampler dispatches over all rows (`ops::sample::sample_rows`); each row's pick comes back, and optionally
//! its logits.
//!
//! A sequence can also be filled from the one-sequence context ([`Model::context_to_sequence`], e.g. after
//! a fast `prefill` of a prompt), copied ([`Model::copy_sequence`], e.g. for several continuations of one
//! prompt) or moved back into the context ([`Model::sequence_to_context`]) to go on with the one-sequence
//! API (sampling, constraints, speculation).

use std::collections::HashMap;

use super::{check_sampling, Model, Plan, Sampling, TOKEN_WORDS};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::ops::sample::{top_candidates, TokenMask, MAX_PENALTIES, MAX_TOP_LOGPROBS};
use crate::ops::{StepParams, StepTable};
use crate::tensor::{map_read, DType, Tensor};

/// The batch's sequences, row table, per-row sampling operands and plans (by row count).
pub(super) struct Batch {
    pub(super) cache: KvCache,
    // Positions each sequence holds.
    lens: Vec<usize>,
    // Each sequence's sampling settings, token mask, log-probabilities asked for (the pick's, how many best
    // candidates), and latest tokens fed (at most MAX_PENALTIES, for the penalties).
    sampling: Vec<Sampling>,
    masks: Vec<Option<TokenMask>>,
    logprobs: Vec<(bool, usize)>,
    recent: Vec<Vec<u32>>,
    // The last batch's log-probabilities, one entry per row.
    last_logprobs: Vec<RowLogprobs>,
    // u32 [max_batch, 2]: each row's (sequence, position), written before each submission.
    pub(super) rows: Tensor,
    // Each row's sampling settings and mask (`vocab.div_ceil(32)` words per row), written before each
    // submission (a mask only for rows whose sequence has one).
    pub(super) steps: StepTable,
    pub(super) masks_table: Tensor,
    // u32 [max_batch, TOKEN_WORDS]: each row's pick, log-probability and best candidates, as the one-row
    // sampler's token buffer; and its readback.
    pub(super) tokens: Tensor,
    readback: wgpu::Buffer,
    plans: HashMap<usize, Plan>,
}

/// What one row of a batch reports besides its pick ([`Model::set_sequence_logprobs`]): the pick's
/// log-probability under the model's raw distribution and the best candidates with theirs, as
/// [`Model::last_logprob`] and [`Model::last_top_logprobs`] report them for the model's own sequence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowLogprobs {
    /// The pick's log-probability, when its sequence asks for it.
    pub logprob: Option<f32>,
    /// The best candidates `(id, log-probability)` in the sampler's order, as many as its sequence asks for
    /// (fewer where fewer tokens could be picked).
    pub top: Vec<(u32, f32)>,
}

impl Batch {
    pub(super) fn cache_bytes(&self) -> u64 {
        self.cache.size_bytes()
    }

    /// The row table, each row's sampling settings, masks and outputs, and their readback.
    pub(super) fn scratch_bytes(&self) -> u64 {
        let steps = (self.steps.rows() * std::mem::size_of::<StepParams>()) as u64;
        self.rows.size_bytes() + steps + self.masks_table.size_bytes() + self.tokens.size_bytes() + self.readback.size()
    }
}

impl Model {
    /// Makes room for `sequences` independent sequences of [`Model::context`] positions each, decoded
    /// together by [`Model::decode_batch`]: allocates their KV cache (`sequences` times the model's own, in
    /// one binding per executed layer: its size limits how many fit) and the row table. All sequences start
    /// empty; a batch reserved before is dropped. The model's own sequence ([`Model::position`]) is a
    /// separate context, untouched.
    pub fn reserve_sequences(&mut self, sequences: usize) -> Result<()> {
        self.gpu.take_error()?;
        if sequences == 0 {
            return Err(Error::invalid("sequences to reserve", 0, "at least 1"));
        }
        let c = &self.cache;
        let (slots, capacity, kv_heads, head_dim) = (c.slots(), c.capacity(), c.kv_heads(), c.head_dim());
        let cache = KvCache::with_sequences(&self.gpu, slots, sequences, capacity, kv_heads, head_dim, c.dtype())?;
        let max = self.options.max_batch;
        let rows = Tensor::zeros_labeled(&self.gpu, "batch rows", DType::U32, &[max, 2])?;
        let steps = StepTable::new(&self.gpu, max)?;
        let mask_words = self.config.vocab_size.div_ceil(32);
        let masks_table = Tensor::zeros_labeled(&self.gpu, "batch token masks", DType::U32, &[max * mask_words])?;
        let tokens = Tensor::zeros_labeled(&self.gpu, "batch tokens", DType::U32, &[max * TOKEN_WORDS])?;
        let readback = self.gpu.create_buffer(
            "batch tokens readback",
            tokens.size_bytes(),
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        self.batch = Some(Batch {
            cache,
            lens: vec![0; sequences],
            sampling: vec![Sampling::greedy(); sequences],
            masks: vec![None; sequences],
            logprobs: vec![(false, 0); sequences],
            recent: vec![Vec::new(); sequences],
            last_logprobs: Vec::new(),
            rows,
            steps,
            masks_table,
            tokens,
            readback,
            plans: HashMap::new(),
        });
        Ok(())
    }

    /// How many sequences [`Model::reserve_sequences`] made room for (0 before it is called).
    pub fn sequences(&self) -> usize {
        self.batch.as_ref().map_or(0, |b| b.lens.len())
    }

    /// Positions sequence `seq` holds.
    pub fn sequence_len(&self, seq: usize) -> Result<usize> {
        let batch = self.batch()?;
        batch.lens.get(seq).copied().ok_or_else(|| no_sequence(seq, batch.lens.len()))
    }

    /// Empties sequence `seq` (computes nothing: its positions count as free). Its sampling settings and
    /// mask stay.
    pub fn clear_sequence(&mut self, seq: usize) -> Result<()> {
        self.sequence_len(seq)?;
        let batch = self.batch_mut()?;
        batch.lens[seq] = 0;
        batch.recent[seq].clear();
        Ok(())
    }

    /// Sets how sequence `seq`'s tokens are picked from now on (greedy after [`Model::reserve_sequences`]):
    /// temperature, top-k, top-p, min-p and penalties as [`Model::set_sampling`] takes them, on the GPU.
    /// The seed works as there: the token after position `p` is drawn with `seed + p + 1`, so a sequence
    /// decoded in a batch draws what it would draw alone with the same settings.
    pub fn set_sequence_sampling(&mut self, seq: usize, sampling: Sampling) -> Result<()> {
        self.sequence_len(seq)?;
        check_sampling(&sampling)?;
        self.batch_mut()?.sampling[seq] = sampling;
        Ok(())
    }

    /// Sequence `seq`'s sampling settings ([`Model::set_sequence_sampling`]).
    pub fn sequence_sampling(&self, seq: usize) -> Result<&Sampling> {
        self.sequence_len(seq)?;
        Ok(&self.batch()?.sampling[seq])
    }

    /// Restricts sequence `seq`'s picks to the tokens `mask` allows (constrained decoding, as
    /// [`Model::set_token_mask`] does for the model's own sequence), or lifts the restriction with `None`.
    /// The mask is kept on the host and written for the rows of this sequence at each batch.
    pub fn set_sequence_mask(&mut self, seq: usize, mask: Option<&TokenMask>) -> Result<()> {
        self.sequence_len(seq)?;
        if let Some(mask) = mask {
            self.check_mask(mask)?;
        }
        self.batch_mut()?.masks[seq] = mask.cloned();
        Ok(())
    }

    /// Makes each pick of sequence `seq` also report its log-probability (`logprob`) and the `top` best
    /// candidates with theirs (at most [`MAX_TOP_LOGPROBS`]; 0 = none), as [`Model::set_logprobs`] and
    /// [`Model::set_top_logprobs`] do for the model's own sequence; read them per row with
    /// [`Model::batch_logprobs`]. Off after [`Model::reserve_sequences`].
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model) -> mobilellm_kernels::Result<()> {
    /// model.reserve_sequences(2)?;
    /// model.set_sequence_logprobs(1, true, 3)?;
    /// let picks = model.decode_batch(&[(0, 1), (1, 1)])?;
    /// let row = &model.batch_logprobs()[1];
    /// println!("{} with log p {:?}; alternatives {:?}", picks[1], row.logprob, row.top);
    /// # Ok(()) }
    /// ```
    pub fn set_sequence_logprobs(&mut self, seq: usize, logprob: bool, top: usize) -> Result<()> {
        self.sequence_len(seq)?;
        if top > MAX_TOP_LOGPROBS as usize {
            return Err(Error::invalid("top_logprobs", top, format!("at most {MAX_TOP_LOGPROBS} (0 = off)")));
        }
        self.batch_mut()?.logprobs[seq] = (logprob, top);
        Ok(())
    }

    /// The log-probabilities of the last batch's rows, one entry per row (empty before the first batch):
    /// those its sequence asks for ([`Model::set_sequence_logprobs`]), nothing for the others.
    pub fn batch_logprobs(&self) -> &[RowLogprobs] {
        self.batch.as_ref().map_or(&[], |b| &b.last_logprobs)
    }

    /// Makes sequence `to` a copy of sequence `from` (its K/V on the GPU, its length and the tokens its
    /// penalties look at; `to` keeps its own sampling settings and mask): e.g. several continuations of one
    /// prompt fed once, each with its own seed. WebGPU copies nothing within one buffer or texture, so the
    /// sequence goes through a scratch copy of one sequence per slot, allocated for the call.
    pub fn copy_sequence(&mut self, from: usize, to: usize) -> Result<()> {
        self.gpu.take_error()?;
        let batch = self.batch()?;
        let len = self.sequence_len(from)?;
        self.sequence_len(to)?;
        batch.cache.copy_sequence(&self.gpu, from, to)?;
        let batch = self.batch_mut()?;
        batch.lens[to] = len;
        batch.recent[to] = batch.recent[from].clone();
        Ok(())
    }

    /// Makes sequence `seq` hold the model's own context: the K/V of its [`Model::position`] positions (a
    /// prompt fed by [`Model::prefill`], whose batched attention is faster than a batch's per-row one).
    /// Errors when the two caches differ in storage (a batch too large for texture storage falls back to
    /// buffers on CPU drivers).
    pub fn context_to_sequence(&mut self, seq: usize) -> Result<()> {
        self.gpu.take_error()?;
        self.sequence_len(seq)?;
        self.batch()?.cache.copy_sequence_from(&self.gpu, &self.cache, 0, seq)?;
        let pos = self.pos;
        // The tokens behind the positions, where known (a seek past the known ones leaves none).
        let known = if self.cached.len() >= pos { &self.cached[..pos] } else { &[][..] };
        let recent = known[known.len().saturating_sub(MAX_PENALTIES)..].to_vec();
        let batch = self.batch_mut()?;
        batch.lens[seq] = pos;
        batch.recent[seq] = recent;
        Ok(())
    }

    /// Makes the model's own context hold sequence `seq`: its K/V, and [`Model::position`] its length, so the
    /// one-sequence API (sampling settings, constraints, speculative decoding) goes on from there. The
    /// tokens behind those positions are not known to the model ([`Model::cached_tokens`] is cleared).
    pub fn sequence_to_context(&mut self, seq: usize) -> Result<()> {
        self.gpu.take_error()?;
        let len = self.sequence_len(seq)?;
        self.cache.copy_sequence_from(&self.gpu, &self.batch()?.cache, seq, 0)?;
        self.pos = len;
        self.cached.clear();
        Ok(())
    }

    /// Runs one batch: each row `(sequence, token)` feeds `token` at that sequence's next position (rows
    /// of one sequence take consecutive positions, in order), and returns for each row the token picked
    /// from the logits after it with its sequence's settings ([`Model::set_sequence_sampling`]; greedy,
    /// the argmax with ties to the lowest id, unless set) and mask. One submission, `rows.len()` ids read
    /// back.
    /// At most [`Model::max_batch`] rows; a row whose sequence is full, an unknown sequence or token is an
    /// error that changes nothing.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, prompts: &[Vec<u32>]) -> mobilellm_kernels::Result<()> {
    /// model.reserve_sequences(prompts.len())?;
    /// // Every prompt but its last token, then the last tokens together: one pick per sequence.
    /// for (seq, prompt) in prompts.iter().enumerate() {
    ///     let rows: Vec<(usize, u32)> = prompt[..prompt.len() - 1].iter().map(|&t| (seq, t)).collect();
    ///     if !rows.is_empty() {
    ///         model.decode_batch(&rows)?;
    ///     }
    /// }
    /// let mut next: Vec<u32> = prompts.iter().map(|p| p[p.len() - 1]).collect();
    /// for _ in 0..16 {
    ///     let rows: Vec<(usize, u32)> = next.iter().enumerate().map(|(seq, &t)| (seq, t)).collect();
    ///     next = model.decode_batch(&rows)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn decode_batch(&mut self, rows: &[(usize, u32)]) -> Result<Vec<u32>> {
        Ok(self.run_batch(rows, false)?.0)
    }

    /// [`Model::decode_batch`] that also returns every row's logits (`[rows.len() * vocab]`, the model's,
    /// before penalties and masks).
    pub fn decode_batch_logits(&mut self, rows: &[(usize, u32)]) -> Result<(Vec<u32>, Vec<f32>)> {
        self.run_batch(rows, true)
    }

    /// Generates a continuation of each prompt, up to `max_sequences` of them at a time (continuous
    /// batching): each prompt is prefilled by the one-sequence path and moved into a free sequence of the
    /// batch, every step decodes all unfinished sequences in one [`Model::decode_batch`], and a sequence
    /// that finishes makes room for the next prompt. Each continuation is what `reset` then
    /// [`Model::generate`] gives for its prompt alone with the model's sampling settings (the same seeds):
    /// it ends after a token in `stop` (kept), after `max_new` tokens, when the context is full, or when
    /// `on_token(prompt index, token)` returns false.
    ///
    /// Uses the batch's first `max_sequences` sequences (reserving that many if fewer are) and the model's
    /// own context as scratch: their contents are replaced, their sampling settings become the model's
    /// (without masks or log-probabilities), and the model is [`Model::reset`] at the end. Each prompt is
    /// prefilled after [`Model::reuse_prefix`], so the part it shares with the one before (a chat
    /// template's system prompt) is not fed again. Every prompt is checked first (not empty, known ids,
    /// within the context), and a token mask set with [`Model::set_token_mask`] is an error: nothing is
    /// generated then.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, prompts: &[Vec<u32>], eos: u32) -> mobilellm_kernels::Result<()> {
    /// let answers = model.generate_batch(prompts, 64, &[eos], 8, |_, _| true)?;
    /// assert_eq!(answers.len(), prompts.len());
    /// # Ok(()) }
    /// ```
    pub fn generate_batch<P: AsRef<[u32]>>(
        &mut self,
        prompts: &[P],
        max_new: usize,
        stop: &[u32],
        max_sequences: usize,
        on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        self.generate_batch_with(prompts, (max_new, stop, max_sequences), None, on_token)
    }

    /// [`Model::generate_batch`] under a constraint per prompt: before each pick of prompt `i`'s
    /// continuation, `allowed(i, generated)` gives the tokens that may come next after the tokens generated
    /// so far (the first pick by the prefill's mask, the others by their sequence's,
    /// [`Model::set_sequence_mask`]); each continuation is what [`Model::generate_constrained`] gives its
    /// prompt alone. The masks are lifted when the call returns, also on an error.
    ///
    /// ```no_run
    /// # fn demo(model: &mut mobilellm_kernels::model::Model, tokenizer: &mobilellm_kernels::tokenizer::Tokenizer,
    /// #         prompts: &[Vec<u32>]) -> mobilellm_kernels::Result<()> {
    /// use mobilellm_kernels::constrain::{Constraint, JsonConstraint};
    /// let stop: Vec<u32> = tokenizer.eos().into_iter().collect();
    /// // One JSON document per prompt, each with its own recognizer.
    /// let mut json: Vec<JsonConstraint> = prompts.iter().map(|_| JsonConstraint::new(tokenizer, &stop)).collect();
    /// let answers =
    ///     model.generate_batch_constrained(prompts, 128, &stop, 8, |i, generated| json[i].mask_after(generated), |_, _| true)?;
    /// # Ok(()) }
    /// ```
    pub fn generate_batch_constrained<P: AsRef<[u32]>>(
        &mut self,
        prompts: &[P],
        max_new: usize,
        stop: &[u32],
        max_sequences: usize,
        mut allowed: impl FnMut(usize, &[u32]) -> Result<TokenMask>,
        on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        let result = self.generate_batch_with(prompts, (max_new, stop, max_sequences), Some(&mut allowed), on_token);
        self.set_token_mask(None)?;
        for seq in 0..self.sequences().min(max_sequences) {
            self.set_sequence_mask(seq, None)?;
        }
        result
    }

    /// [`Model::generate_batch`] with an optional mask hook (`allowed(prompt index, generated)` before
    /// each pick).
    fn generate_batch_with<P: AsRef<[u32]>>(
        &mut self,
        prompts: &[P],
        (max_new, stop, max_sequences): (usize, &[u32], usize),
        mut allowed: Option<&mut MaskHook<'_>>,
        mut on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        self.gpu.take_error()?;
        if max_sequences == 0 {
            return Err(Error::invalid("max_sequences", 0, "at least 1"));
        }
        if self.masked {
            return Err(Error::invalid("token mask", "set", "none for generate_batch (Model::set_token_mask(None))"));
        }
        for (i, prompt) in prompts.iter().map(AsRef::as_ref).enumerate() {
            if prompt.is_empty() || prompt.len() > self.context() {
                return Err(Error::invalid(
                    format!("prompt {i}"),
                    format!("{} tokens", prompt.len()),
                    format!("1 to {} (the context)", self.context()),
                ));
            }
            self.check_ids(prompt)?;
        }
        let mut outs = vec![Vec::new(); prompts.len()];
        if max_new == 0 || prompts.is_empty() {
            return Ok(outs);
        }
        let slots = max_sequences.min(prompts.len());
        if self.sequences() < slots {
            self.reserve_sequences(slots)?;
        }
        let sampling = self.sampling;
        for seq in 0..slots {
            self.set_sequence_sampling(seq, sampling)?;
            self.set_sequence_mask(seq, None)?;
            self.set_sequence_logprobs(seq, false, 0)?;
        }
        let context = self.context();
        // Whether prompt `i`'s continuation ends with `token`, its sequence holding `len` positions.
        let mut ends = |outs: &mut [Vec<u32>], i: usize, token: u32, len: usize| {
            outs[i].push(token);
            !on_token(i, token) || stop.contains(&token) || outs[i].len() >= max_new || len >= context
        };
        let mut active: Vec<Option<usize>> = vec![None; slots];
        let mut queue = 0..prompts.len();
        loop {
            for (seq, slot) in active.iter_mut().enumerate().filter(|(_, a)| a.is_none()) {
                for i in queue.by_ref() {
                    // What the previous prompt shares with this one (a system prompt) is not fed again.
                    let prompt = prompts[i].as_ref();
                    let reused = self.reuse_prefix(prompt);
                    if let Some(allowed) = allowed.as_mut() {
                        self.set_token_mask(Some(&allowed(i, &[])?))?;
                    }
                    let first = self.prefill(&prompt[reused..])?;
                    if !ends(&mut outs, i, first, self.pos) {
                        self.context_to_sequence(seq)?;
                        *slot = Some(i);
                        break;
                    }
                }
            }
            // (sequence, prompt index) of each unfinished continuation.
            let running: Vec<(usize, usize)> =
                active.iter().enumerate().filter_map(|(s, a)| a.map(|i| (s, i))).collect();
            if running.is_empty() {
                break;
            }
            if let Some(allowed) = allowed.as_mut() {
                for &(seq, i) in &running {
                    self.set_sequence_mask(seq, Some(&allowed(i, &outs[i])?))?;
                }
            }
            let rows: Vec<(usize, u32)> = running.iter().map(|&(seq, i)| (seq, outs[i][outs[i].len() - 1])).collect();
            let picks = self.decode_batch(&rows)?;
            for (&(seq, i), pick) in running.iter().zip(picks) {
                if ends(&mut outs, i, pick, self.sequence_len(seq)?) {
                    active[seq] = None;
                }
            }
        }
        self.reset();
        Ok(outs)
    }

    fn batch(&self) -> Result<&Batch> {
        self.batch.as_ref().ok_or_else(no_batch)
    }

    fn batch_mut(&mut self) -> Result<&mut Batch> {
        self.batch.as_mut().ok_or_else(no_batch)
    }

    fn run_batch(&mut self, rows: &[(usize, u32)], want_logits: bool) -> Result<(Vec<u32>, Vec<f32>)> {
        self.gpu.take_error()?;
        let n = rows.len();
        if n == 0 {
            return Err(Error::invalid("batch rows", 0, "at least one row"));
        }
        if n > self.options.max_batch {
            return Err(Error::Capacity { what: "batch rows".into(), requested: n, capacity: self.options.max_batch });
        }
        let tokens: Vec<u32> = rows.iter().map(|&(_, t)| t).collect();
        self.check_ids(&tokens)?;
        let batch = self.batch()?;
        let capacity = batch.cache.capacity();
        let mut lens = batch.lens.clone();
        let mut table = Vec::with_capacity(2 * n);
        let mut row_params = Vec::with_capacity(n);
        for (r, &(seq, _)) in rows.iter().enumerate() {
            let len = lens.get_mut(seq).ok_or_else(|| no_sequence(seq, batch.lens.len()))?;
            if *len >= capacity {
                return Err(Error::Capacity {
                    what: format!("KV cache positions of sequence {seq}"),
                    requested: *len + 1,
                    capacity,
                });
            }
            let sampling = &batch.sampling[seq];
            // The tokens the penalties look at: the sequence's before this batch, then its rows' up to this
            // one (gathered only where penalties are on).
            let window: Vec<u32> = match (sampling.penalties.is_off(), sampling.penalty_last_n) {
                (true, _) | (_, 0) => Vec::new(),
                (false, last_n) => {
                    let fed = rows[..=r].iter().filter(|row| row.0 == seq).map(|row| row.1);
                    let history: Vec<u32> = batch.recent[seq].iter().copied().chain(fed).collect();
                    history[history.len().saturating_sub(last_n)..].to_vec()
                }
            };
            // As the one-sequence step that feeds this row's token at `len` (the same seed), with the
            // sequence's mask flag and log-probabilities.
            let params = self.step_params(*len, 1, sampling, &window)?;
            let mask = u32::from(batch.masks[seq].is_some());
            let (logprob, top) = batch.logprobs[seq];
            row_params.push(StepParams { mask, logprob: u32::from(logprob), top_logprobs: top as u32, ..params });
            table.extend([seq as u32, *len as u32]);
            *len += 1;
        }
        if !batch.plans.contains_key(&n) {
            let plan = self.build_plan(n, true, Some(batch))?;
            self.batch_mut()?.plans.insert(n, plan);
        }
        let logits_bytes = (n * self.config.vocab_size * 4) as u64;
        if want_logits {
            self.ensure_logits_staging(logits_bytes)?;
        }
        let commands = self.record_batch(n, want_logits.then_some(logits_bytes))?;
        let gpu = &self.gpu;
        let batch = self.batch()?;
        self.step.write(gpu, &StepParams { n: n as u32, ..StepParams::default() });
        gpu.queue().write_buffer(self.act.ids.buffer(), 0, bytemuck::cast_slice(&tokens));
        gpu.queue().write_buffer(batch.rows.buffer(), 0, bytemuck::cast_slice(&table));
        batch.steps.write(gpu, &row_params)?;
        for (r, &(seq, _)) in rows.iter().enumerate() {
            if let Some(mask) = &batch.masks[seq] {
                let offset = (r * mask.words().len() * 4) as u64;
                gpu.queue().write_buffer(batch.masks_table.buffer(), offset, bytemuck::cast_slice(mask.words()));
            }
        }
        let submission = gpu.submit([commands])?;
        gpu.wait(Some(submission))?;
        let words: Vec<u32> =
            bytemuck::pod_collect_to_vec(&map_read(gpu, &batch.readback, 4 * (n * TOKEN_WORDS) as u64)?);
        let slots = words.chunks_exact(TOKEN_WORDS);
        let picks: Vec<u32> = slots.clone().map(|slot| slot[0]).collect();
        let row_logprobs = slots
            .zip(&row_params)
            .map(|(slot, p)| RowLogprobs {
                logprob: (p.logprob != 0).then(|| f32::from_bits(slot[1])),
                top: top_candidates(slot, p.top_logprobs as usize),
            })
            .collect();
        let logits = match (want_logits, &self.logits_staging) {
            (true, Some(staging)) => bytemuck::pod_collect_to_vec(&map_read(gpu, staging, logits_bytes)?),
            _ => Vec::new(),
        };
        let batch = self.batch_mut()?;
        batch.lens = lens;
        for &(seq, token) in rows {
            let history = &mut batch.recent[seq];
            history.push(token);
            history.drain(..history.len().saturating_sub(MAX_PENALTIES));
        }
        batch.last_logprobs = row_logprobs;
        Ok((picks, logits))
    }

    /// The command buffer of a batch of `n` rows: the plan, then each row's pick and log-probabilities (and
    /// `logits_bytes` of logits) copied to the readbacks.
    fn record_batch(&self, n: usize, logits_bytes: Option<u64>) -> Result<wgpu::CommandBuffer> {
        let batch = self.batch()?;
        let plan = batch.plans.get(&n).ok_or_else(|| Error::Device("missing batch plan".into()))?;
        let mut encoder =
            self.gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("batch") });
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("batch"), timestamp_writes: None });
            plan.embedding.record(&mut pass);
            for d in plan.body.iter().chain(&plan.head) {
                d.record(&mut pass);
            }
            plan.sampler.record(&mut pass);
        }
        let token_bytes = 4 * (n * TOKEN_WORDS) as u64;
        encoder.copy_buffer_to_buffer(batch.tokens.buffer(), 0, &batch.readback, 0, token_bytes);
        if let (Some(bytes), Some(staging)) = (logits_bytes, &self.logits_staging) {
            encoder.copy_buffer_to_buffer(self.act.logits.buffer(), 0, staging, 0, bytes);
        }
        Ok(encoder.finish())
    }
}

/// `allowed(prompt index, tokens generated so far)`: the tokens that may come next.
type MaskHook<'a> = dyn FnMut(usize, &[u32]) -> Result<TokenMask> + 'a;

fn no_batch() -> Error {
    Error::invalid("batch sequences", "none reserved", "Model::reserve_sequences called first")
}

fn no_sequence(seq: usize, count: usize) -> Error {
    Error::invalid("batch sequence", seq, format!("below the {count} reserved"))
}
