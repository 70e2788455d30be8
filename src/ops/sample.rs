//! Token sampling launcher (`kernels/sample.wgsl`), CPU twin [`crate::reference::sample`].
//!
//! From one row of f32 logits, two dispatches produce one token id (a `u32` the host reads back, or that the
//! next step's embedding lookup reads directly). Greedy, temperature, top-k, top-p and min-p sampling,
//! repetition / frequency / presence penalties on recent tokens, a token mask and the pick's
//! log-probability are chosen by the per-step uniform [`StepParams`], so a planned step never rebuilds
//! anything. [`sample_rows`] samples every row of a batch in the same two dispatches (one grid layer per
//! row), each row with its own [`StepParams`] from a [`crate::ops::StepTable`], its own mask row and
//! output slot: batched decoding of independent sequences.
//!
//! # Algorithm
//! - **Penalties.** The host lists the distinct recent tokens, sorted, with one offset each
//!   ([`Penalties::write`]); pass 1 finds a logit's entry by binary search and uses `logit * scale - offset`
//!   (two correctly rounded f32 operations, mirrored by the CPU twin) in place of the logit. The logits
//!   buffer itself is not changed, so logits read back are the model's.
//! - **Candidates.** Each logit gets an integer key that orders like the value (NaN below `-inf`, `-0 == +0`);
//!   candidates are ranked by (key descending, index ascending), an exact total order: selection involves no
//!   rounding, and ties go to the lowest index. `R` candidates are kept: 1 when greedy (`temperature == 0`),
//!   else `top_k`, where `top_k == 0` means [`MAX_TOP_K`]. Pass 1 (one workgroup per chunk of the row) finds
//!   each chunk's top `R`, by `R` rounds of a workgroup argmax over the elements ranked after the previous
//!   pick when `R <= 6`, else by a filter: the chunk's 128 strided runs give their maxima, the `R`-th best
//!   of those (`T`) ranks at or after the chunk's `R`-th best logit, and only the logits ranked at or
//!   before `T` (at most `R` runs' worth, typically about `2R`) are sorted, bitonically in workgroup
//!   memory. Pass 2 (one workgroup) merges the chunks' sorted lists (k-way: one head per chunk, `R` rounds).
//!   The filter takes chunks up to 2048 logits (rows up to 131 072); longer rows use the rounds.
//! - **Pick.** One invocation computes, in candidate order and in f32, `w_i = exp((l_i - l_0) / T)`, the
//!   running sums `c_i`, the top-p prefix (the shortest with `c_i >= top_p * c_last`), one uniform `u` in
//!   [0, 1) from a PCG hash of the seed (24 bits, exact in f32), cuts the candidates at the first `w_i <
//!   min_p` (min-p, after temperature as in transformers), and picks the first `i` with `c_i > u * c_count-1`.
//! - **GPU == CPU.** The CPU twin does the same operations in the same order, so the only difference left is
//!   the rounding of `exp` and of the division (WGSL allows a few ULP): the running sums can differ by a few
//!   ULP, and a pick can only differ when the target `u * c` lies within that distance of a boundary `c_i`,
//!   or a weight within that distance of `min_p` (probability about `R * 1e-6` per draw). The tests check
//!   that every mismatch is such a near tie.
//! - **Mask.** With `StepParams::mask` set, pass 1 reads one bit per token from the sampler's mask buffer
//!   ([`TokenMask`]) and ranks a token whose bit is clear as `-inf`: it weighs 0 and is picked only when no
//!   allowed token has a finite logit (constrained decoding: a grammar or a JSON schema allows a set of
//!   tokens at each step). Without the flag the buffer is not read.
//! - **Log-probability.** With `StepParams::logprob` set, pass 1 also reduces its chunk of raw logits to
//!   (max, sum of `exp(l - max)`) and pass 2 merges the chunks' summaries in group order and writes
//!   `l_pick - log_sum_exp(row)` (the model's distribution at temperature 1, before penalties and mask:
//!   what OpenAI-style `logprobs` report) to element 1 of the token buffer. The CPU twin
//!   ([`crate::reference::sample_logprob`]) sums in f64; the GPU's f32 sums in another order differ from it
//!   by about 1e-6 relative.
//! - **Top log-probabilities.** With `StepParams::top_logprobs` = `n`, pass 1 keeps at least `n` candidates
//!   (sampling still picks among its own `R`) and pass 2 writes the best `n`, in the sampler's order (after
//!   penalties and mask), as `(id, log-probability bits)` pairs from element 2 of the token buffer, as far
//!   as it has room ([`top_candidates`] reads them); a slot without a pickable candidate holds
//!   [`NO_TOKEN`]. The CPU twin is [`crate::reference::top_logprobs`].
//! - **Limit.** With `top_k == 0` the distribution is truncated to the [`MAX_TOP_K`] largest logits (and
//!   top-p works within them); the mass beyond rank 64 is dropped.

use bytemuck::{Pod, Zeroable};

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::ops::{make_dispatch, small_kernel_workgroup, uniform, Dispatch, StepBuffer, StepParams, StepTable};
use crate::shader::{ShaderVariant, SAMPLE};
use crate::tensor::{DType, Tensor};

/// The largest `top_k` the kernel supports; `top_k == 0` (off) samples among this many candidates.
pub const MAX_TOP_K: u32 = 64;

/// The most candidates a step may report with [`StepParams::top_logprobs`] (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// The most distinct tokens one step's penalties can cover (the step uniform holds their list).
pub const MAX_PENALTIES: usize = 64;
// Two entries per row of `StepParams::penalties` (and of the kernel's `Step::penalties`).
const _: () = assert!(MAX_PENALTIES == 2 * std::mem::size_of::<[[u32; 4]; 32]>() / 16);

/// Penalties on tokens seen recently (llama.cpp's `penalties` sampler): a token seen `c` times among them
/// has its logit multiplied by `1 / repeat` when positive, by `repeat` otherwise, then lowered by
/// `c * frequency + presence`. [`Penalties::OFF`] changes nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Penalties {
    /// Repetition penalty (1 = off; above 1 discourages repeats).
    pub repeat: f32,
    /// Subtracted once per occurrence (0 = off).
    pub frequency: f32,
    /// Subtracted once for any occurrence (0 = off).
    pub presence: f32,
}

impl Default for Penalties {
    fn default() -> Self {
        Penalties::OFF
    }
}

impl Penalties {
    /// No penalties.
    pub const OFF: Penalties = Penalties { repeat: 1.0, frequency: 0.0, presence: 0.0 };

    /// Whether these penalties change no logit.
    pub fn is_off(&self) -> bool {
        *self == Penalties::OFF
    }

    /// Checks the values: `repeat` finite and `> 0`, `frequency` and `presence` finite.
    pub fn validate(&self) -> Result<()> {
        if !(self.repeat.is_finite() && self.repeat > 0.0) {
            return Err(Error::invalid("repeat penalty", self.repeat, "a finite value > 0 (1 = off)"));
        }
        for (what, v) in [("frequency penalty", self.frequency), ("presence penalty", self.presence)] {
            if !v.is_finite() {
                return Err(Error::invalid(what, v, "a finite value (0 = off)"));
            }
        }
        Ok(())
    }

    /// Writes these penalties over the tokens `recent` into `params` (its `penalty_*` fields): at most
    /// [`MAX_PENALTIES`] distinct tokens. On an error `params` is left as it was.
    pub fn write(&self, recent: &[u32], params: &mut StepParams) -> Result<()> {
        self.validate()?;
        let mut entries: Vec<(u32, u32)> = Vec::new();
        if !self.is_off() {
            let mut sorted = recent.to_vec();
            sorted.sort_unstable();
            for run in sorted.chunk_by(|a, b| a == b) {
                let offset = run.len() as f32 * self.frequency + self.presence;
                if !offset.is_finite() {
                    return Err(Error::invalid(
                        "penalty offset",
                        format!("{} x {} + {}", run.len(), self.frequency, self.presence),
                        "a finite value",
                    ));
                }
                entries.push((run[0], offset.to_bits()));
            }
        }
        if entries.len() > MAX_PENALTIES {
            return Err(Error::invalid(
                "penalised tokens",
                entries.len(),
                format!("at most {MAX_PENALTIES} distinct recent tokens"),
            ));
        }
        params.penalties = Default::default();
        for (i, (id, offset)) in entries.iter().enumerate() {
            params.penalties[i / 2][2 * (i % 2)] = *id;
            params.penalties[i / 2][2 * (i % 2) + 1] = *offset;
        }
        params.penalty_count = entries.len() as u32;
        params.penalty_scale = if entries.is_empty() { [1.0, 1.0] } else { [1.0 / self.repeat, self.repeat] };
        Ok(())
    }
}

/// The penalty entries of `params` in use: `(token, offset)`, sorted by token.
pub fn penalty_entries(params: &StepParams) -> impl Iterator<Item = (u32, f32)> + '_ {
    (0..(params.penalty_count as usize).min(MAX_PENALTIES)).map(|i| {
        let row = params.penalties[i / 2];
        (row[2 * (i % 2)], f32::from_bits(row[2 * (i % 2) + 1]))
    })
}

/// Invocations per pass-1 workgroup on GPUs (a power of two for the tree reduction; CPU drivers:
/// `ops::small_kernel_workgroup`).
const WORKGROUP: u32 = 256;
/// Pass 1 covers the row with at most this many workgroups; pass 2 is one workgroup of this size holding one
/// list head per invocation (a power of two).
const MAX_GROUPS: u32 = 64;
/// Smallest chunk per pass-1 workgroup, and the most logits the filter sorts (8 KiB of workgroup memory).
const MIN_CHUNK: u32 = 1024;
/// Pass 1 keeps up to this many candidates by rounds of workgroup argmax (a barrier tree each), more by the
/// filter (two small sorts): on lavapipe, top-k 6 over 32 000 logits takes 0.3 ms by rounds, 0.8 by filter.
const FILTER_ABOVE: u32 = 6;
/// The id of a reported candidate slot that holds none (fewer pickable tokens than asked for).
pub const NO_TOKEN: u32 = u32::MAX;

/// The `(id, log-probability)` pairs a sampler wrote with [`StepParams::top_logprobs`] = `n`, read from the
/// token buffer's words (`words[2..2 + 2n]`), up to the first empty slot.
pub fn top_candidates(words: &[u32], n: usize) -> Vec<(u32, f32)> {
    words
        .get(2..)
        .unwrap_or(&[])
        .chunks_exact(2)
        .take(n)
        .take_while(|pair| pair[0] != NO_TOKEN)
        .map(|pair| (pair[0], f32::from_bits(pair[1])))
        .collect()
}

/// `Params::row` value meaning "row `step.n - 1`".
const LAST_OF_STEP: u32 = u32::MAX;
/// `Params::row` value meaning "every row, each with its own parameters" ([`sample_rows`]).
const EACH_ROW: u32 = u32::MAX - 1;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    vocab: u32,
    rows: u32,
    row: u32,
    chunk: u32,
    groups: u32,
    token_stride: u32,
    mask_words: u32,
    _pad: u32,
}

/// Which row of a `[rows, vocab]` logits tensor to sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleRow {
    /// The tensor's last row (`rows - 1`).
    Last,
    /// A fixed row.
    Index(usize),
    /// Row `step.n - 1`, read from the step uniform at run time (clamped to the tensor): the last token of a
    /// prefill of any length into a logits buffer planned for the longest one.
    LastOfStep,
}

/// The two planned dispatches of one sampler and the scratch buffer they share.
#[derive(Debug)]
pub struct Sampler {
    partial: Dispatch,
    merge: Dispatch,
}

impl Sampler {
    /// The dispatches, in the order they must be recorded.
    pub fn dispatches(&self) -> [&Dispatch; 2] {
        [&self.partial, &self.merge]
    }
    /// Records both dispatches into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.partial.record(pass);
        self.merge.record(pass);
    }
}

/// Checks the sampling fields of `params` (the planner calls this before writing a step):
/// `temperature` finite and `>= 0` (0 = greedy), `top_p` in (0, 1], `top_k <= MAX_TOP_K` (0 = off),
/// `min_p` in [0, 1], and penalties as [`Penalties::write`] makes them (at most [`MAX_PENALTIES`] entries,
/// sorted by token, finite offsets, finite positive scales).
pub fn validate(params: &StepParams) -> Result<()> {
    let t = params.temperature;
    if !(t.is_finite() && t >= 0.0) {
        return Err(Error::invalid("sampling temperature", t, "a finite value >= 0 (0 = greedy)"));
    }
    let p = params.top_p;
    if !(p > 0.0 && p <= 1.0) {
        return Err(Error::invalid("sampling top_p", p, "a value in (0, 1] (1 = off)"));
    }
    if params.top_k > MAX_TOP_K {
        return Err(Error::invalid("sampling top_k", params.top_k, format!("at most {MAX_TOP_K} (0 = off)")));
    }
    let m = params.min_p;
    if !(0.0..=1.0).contains(&m) {
        return Err(Error::invalid("sampling min_p", m, "a value in [0, 1] (0 = off)"));
    }
    if params.top_logprobs > MAX_TOP_LOGPROBS {
        return Err(Error::invalid(
            "top_logprobs",
            params.top_logprobs,
            format!("at most {MAX_TOP_LOGPROBS} (0 = off)"),
        ));
    }
    if params.penalty_count as usize > MAX_PENALTIES {
        return Err(Error::invalid("penalty count", params.penalty_count, format!("at most {MAX_PENALTIES}")));
    }
    if params.penalty_count > 0 && !params.penalty_scale.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(Error::invalid("penalty scale", format!("{:?}", params.penalty_scale), "finite values > 0"));
    }
    let mut previous = None;
    for (token, offset) in penalty_entries(params) {
        if previous.is_some_and(|p| p >= token) || !offset.is_finite() {
            let entries: Vec<(u32, f32)> = penalty_entries(params).collect();
            return Err(Error::invalid(
                "penalty entries",
                format!("{entries:?}"),
                "distinct tokens in order, finite offsets",
            ));
        }
        previous = Some(token);
    }
    Ok(())
}

/// Validates `params` and writes them to `step` (for work submitted afterwards).
pub fn write_step(gpu: &Gpu, step: &StepBuffer, params: &StepParams) -> Result<()> {
    validate(params)?;
    step.write(gpu, params);
    Ok(())
}

/// Which tokens sampling may pick: one bit per id of a vocabulary (constrained decoding). Upload it with
/// [`TokenMask::upload`] (or [`TokenMask::write`] into an uploaded one) and set [`StepParams::mask`].
///
/// ```
/// use mobilellm_kernels::ops::sample::TokenMask;
/// let digits = TokenMask::allowing(100, [48, 49, 50])?;
/// assert!(digits.is_allowed(49) && !digits.is_allowed(51));
/// assert_eq!(digits.count(), 3);
/// # Ok::<(), mobilellm_kernels::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMask {
    vocab: usize,
    words: Vec<u32>,
}

impl TokenMask {
    /// Nothing allowed yet, over `vocab` ids.
    pub fn none(vocab: usize) -> TokenMask {
        TokenMask { vocab, words: vec![0; vocab.div_ceil(32)] }
    }
    /// Every id allowed.
    pub fn all(vocab: usize) -> TokenMask {
        let mut mask = TokenMask::none(vocab);
        mask.words.iter_mut().for_each(|w| *w = u32::MAX);
        if !vocab.is_multiple_of(32) {
            // Bits past the vocabulary stay clear, so `count` and equality see only real ids.
            if let Some(last) = mask.words.last_mut() {
                *last = (1u32 << (vocab % 32)) - 1;
            }
        }
        mask
    }
    /// Only `ids` allowed; an id outside the vocabulary is an error.
    pub fn allowing(vocab: usize, ids: impl IntoIterator<Item = u32>) -> Result<TokenMask> {
        let mut mask = TokenMask::none(vocab);
        for id in ids {
            mask.set(id, true)?;
        }
        Ok(mask)
    }
    /// Allows (`true`) or forbids `id`; an id outside the vocabulary is an error.
    pub fn set(&mut self, id: u32, allowed: bool) -> Result<()> {
        if id as usize >= self.vocab {
            return Err(Error::invalid("token mask id", id, format!("an id below the vocabulary size {}", self.vocab)));
        }
        let (word, bit) = (id as usize / 32, 1u32 << (id % 32));
        if allowed {
            self.words[word] |= bit;
        } else {
            self.words[word] &= !bit;
        }
        Ok(())
    }
    /// Whether `id` may be picked (false outside the vocabulary).
    pub fn is_allowed(&self, id: u32) -> bool {
        (id as usize) < self.vocab && self.words[id as usize / 32] & (1 << (id % 32)) != 0
    }
    /// How many ids are allowed.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }
    /// The allowed ids, in increasing order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            (0..32).filter(move |bit| word & (1 << bit) != 0).map(move |bit| (i * 32 + bit) as u32)
        })
    }
    /// The ids allowed by either mask (of the same vocabulary; `self`'s size otherwise).
    pub fn union(mut self, other: &TokenMask) -> TokenMask {
        self.words.iter_mut().zip(&other.words).for_each(|(a, b)| *a |= b);
        self
    }
    /// The vocabulary size.
    pub fn vocab(&self) -> usize {
        self.vocab
    }
    /// The bits, word `i / 32` bit `i % 32` for id `i`, as the kernel reads them.
    pub fn words(&self) -> &[u32] {
        &self.words
    }
    /// A GPU buffer holding the mask, to bind with [`sample_masked`].
    pub fn upload(&self, gpu: &Gpu) -> Result<Tensor> {
        Tensor::from_slice(gpu, &[self.words.len()], &self.words)
    }
    /// Writes the mask into a buffer made by [`TokenMask::upload`] for the same vocabulary (for work
    /// submitted afterwards).
    pub fn write(&self, gpu: &Gpu, buffer: &Tensor) -> Result<()> {
        if buffer.dtype() != DType::U32 || buffer.shape() != [self.words.len()] {
            return Err(Error::invalid(
                "token mask buffer",
                format!("{} {:?}", buffer.dtype(), buffer.shape()),
                format!("u32 [{}] (a vocabulary of {})", self.words.len(), self.vocab),
            ));
        }
        gpu.queue().write_buffer(buffer.buffer(), 0, bytemuck::cast_slice(&self.words));
        Ok(())
    }
}

/// The sampling kernel's constants, every entry the same, for pass-1 workgroups of `wg` invocations.
fn variant(wg: u32) -> ShaderVariant {
    ShaderVariant::new()
        .constant("WG", wg)
        .constant("MAX_K", MAX_TOP_K)
        .constant("SORT", MIN_CHUNK)
        .constant("FILTER_ABOVE", FILTER_ABOVE)
        .constant("MAX_GROUPS", MAX_GROUPS)
}

/// Plans sampling one token from `row` of `logits` (`[.., vocab]` f32) into element 0 of `token` (u32, any
/// shape), with the parameters in `step`. Parameters are read at run time: validate them with [`validate`]
/// (or write them with [`write_step`]); invalid ones that slip through never fault the kernel (NaN or
/// negative temperature acts as greedy, top_p outside (0, 1) as 1, top_k above 64 as 64). This sampler has
/// no mask: leave [`StepParams::mask`] at 0 for it (or use [`sample_masked`]).
pub fn sample(gpu: &Gpu, logits: &Tensor, row: SampleRow, step: &StepBuffer, token: &Tensor) -> Result<Sampler> {
    let vocab = *logits.shape().last().unwrap_or(&0);
    // Bound but never read while the step's mask flag is clear: every id allowed, for safety.
    let mask = TokenMask::all(vocab).upload(gpu)?;
    sample_masked(gpu, logits, row, step, &mask, token)
}

/// [`sample`] with a token mask: a u32 buffer of `vocab.div_ceil(32)` words ([`TokenMask::upload`]), read
/// on steps whose [`StepParams::mask`] is set.
pub fn sample_masked(
    gpu: &Gpu,
    logits: &Tensor,
    row: SampleRow,
    step: &StepBuffer,
    mask: &Tensor,
    token: &Tensor,
) -> Result<Sampler> {
    let vocab = *logits.shape().last().unwrap_or(&0);
    let rows = logits.expect_rows("sample logits", DType::F32, vocab)?;
    check_u32("sample token mask", mask, vocab.div_ceil(32), format!("one bit per id of {vocab}"))?;
    check_u32("sample token output", token, 1, "the token".into())?;
    let row = match row {
        SampleRow::Last => (rows - 1) as u32,
        SampleRow::Index(r) if r < rows => r as u32,
        SampleRow::Index(r) => {
            return Err(Error::invalid("sample row", r, format!("a row of the logits {:?}", logits.shape())))
        }
        SampleRow::LastOfStep => LAST_OF_STEP,
    };
    let layout = Layout { rows, row, grid_rows: 1, token_stride: token.len() as u32, mask_words: 0 };
    plan_sampler(gpu, logits, step.buffer(), mask, token, layout)
}

/// Plans sampling every row of `logits` (`[rows, vocab]` f32), row `r` with the settings of entry `r` of
/// `steps` (at least `rows` entries; the `pos` and `n` fields are not read), restricted by row `r` of
/// `masks` (`vocab.div_ceil(32)` words per row, read for rows whose [`StepParams::mask`] is set), into
/// `tokens` from element `r * token_stride`: the pick, then the log-probabilities asked for, as far as the
/// stride has room (the layout of [`sample`]'s token buffer). The same two dispatches as [`sample`], each
/// with one grid layer per row: batched decoding samples each sequence its own way in one submission.
pub fn sample_rows(
    gpu: &Gpu,
    logits: &Tensor,
    steps: &StepTable,
    masks: &Tensor,
    tokens: &Tensor,
    token_stride: usize,
) -> Result<Sampler> {
    let vocab = *logits.shape().last().unwrap_or(&0);
    let rows = logits.expect_rows("sample logits", DType::F32, vocab)?;
    if steps.rows() < rows {
        return Err(Error::invalid(
            "sample step table",
            steps.rows(),
            format!("at least {rows} entries (one per row)"),
        ));
    }
    let words = vocab.div_ceil(32);
    check_u32("sample token masks", masks, rows * words, format!("{words} words per row of {vocab} ids"))?;
    if token_stride == 0 {
        return Err(Error::invalid("sample token stride", 0, "at least 1 (the pick)"));
    }
    check_u32("sample token outputs", tokens, rows * token_stride, format!("{token_stride} per row"))?;
    let (token_stride, mask_words) = (token_stride as u32, words as u32);
    let layout = Layout { rows, row: EACH_ROW, grid_rows: rows as u32, token_stride, mask_words };
    plan_sampler(gpu, logits, steps.buffer(), masks, tokens, layout)
}

/// Which rows a sampler reads (of the logits' `rows`) and where each row's mask and output are.
struct Layout {
    rows: usize,
    row: u32,
    grid_rows: u32,
    token_stride: u32,
    mask_words: u32,
}

/// Errors unless `t` is u32 with at least `min` elements (`what` says what they hold).
fn check_u32(name: &str, t: &Tensor, min: usize, what: String) -> Result<()> {
    if t.dtype() != DType::U32 {
        return Err(Error::DType { what: name.into(), got: t.dtype().to_string(), expected: "u32".into() });
    }
    if t.len() < min {
        return Err(Error::invalid(
            name,
            format!("{} {:?}", t.dtype(), t.shape()),
            format!("u32 with at least {min} elements ({what})"),
        ));
    }
    Ok(())
}

fn plan_sampler(
    gpu: &Gpu,
    logits: &Tensor,
    steps: &wgpu::Buffer,
    mask: &Tensor,
    token: &Tensor,
    layout: Layout,
) -> Result<Sampler> {
    let (vocab, rows) = (*logits.shape().last().unwrap_or(&0), layout.rows);
    let wg = small_kernel_workgroup(gpu, WORKGROUP);
    let chunk = (vocab as u32).div_ceil(MAX_GROUPS).next_multiple_of(wg).max(MIN_CHUNK);
    let groups = (vocab as u32).div_ceil(chunk);
    let variant = variant(wg);
    let partial_pipeline = gpu.pipeline(&SAMPLE, "sample_partial", &variant)?;
    let merge_pipeline = gpu.pipeline(&SAMPLE, "sample_merge", &variant)?;
    let params = Params {
        vocab: vocab as u32,
        rows: rows as u32,
        row: layout.row,
        chunk,
        groups,
        token_stride: layout.token_stride,
        mask_words: layout.mask_words,
        _pad: 0,
    };
    let params = uniform(gpu, "sample params", &params)?;
    // Per sampled row: MAX_TOP_K candidate slots per group, then one log-sum-exp summary per group.
    let candidates = gpu.create_buffer(
        "sample candidates",
        u64::from(layout.grid_rows * groups * (MAX_TOP_K + 1)) * 8,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    )?;
    let partial = make_dispatch(
        gpu,
        "sample:sample_partial".into(),
        partial_pipeline,
        &[
            (0, params.as_entire_binding()),
            (1, steps.as_entire_binding()),
            (2, logits.buffer().as_entire_binding()),
            (3, candidates.as_entire_binding()),
            (5, mask.buffer().as_entire_binding()),
        ],
        [groups, layout.grid_rows, 1],
        vec![params.clone(), candidates.clone(), mask.buffer().clone()],
    )?;
    let merge = make_dispatch(
        gpu,
        "sample:sample_merge".into(),
        merge_pipeline,
        &[
            (0, params.as_entire_binding()),
            (1, steps.as_entire_binding()),
            (2, logits.buffer().as_entire_binding()),
            (3, candidates.as_entire_binding()),
            (4, token.buffer().as_entire_binding()),
        ],
        [1, layout.grid_rows, 1],
        vec![params.clone(), candidates.clone()],
    )?;
    Ok(Sampler { partial, merge })
}

/// Plans the greedy pick of every row of `logits` (`[rows, vocab]` f32) into `picks` (u32, at least `rows`
/// elements): `picks[r]` is row `r`'s [`crate::reference::argmax_rows`] pick (the sampler's greedy order:
/// NaN below `-inf`, ties to the lowest index; no penalties or mask). One dispatch, one workgroup per row.
/// Checking `rows` speculative drafts then reads back `rows` ids instead of `rows * vocab` logits.
pub fn argmax_rows(gpu: &Gpu, logits: &Tensor, picks: &Tensor) -> Result<Dispatch> {
    let vocab = *logits.shape().last().unwrap_or(&0);
    let rows = logits.expect_rows("argmax logits", DType::F32, vocab)?;
    if picks.dtype() != DType::U32 || picks.len() < rows {
        return Err(Error::invalid(
            "argmax picks",
            format!("{} {:?}", picks.dtype(), picks.shape()),
            format!("u32 with at least {rows} elements (one per logits row)"),
        ));
    }
    let wg = small_kernel_workgroup(gpu, WORKGROUP);
    let variant = variant(wg);
    let pipeline = gpu.pipeline(&SAMPLE, "argmax_rows", &variant)?;
    let params = uniform(
        gpu,
        "argmax params",
        &Params {
            vocab: vocab as u32,
            rows: rows as u32,
            row: 0,
            chunk: vocab as u32,
            groups: 1,
            token_stride: 1,
            mask_words: 0,
            _pad: 0,
        },
    )?;
    make_dispatch(
        gpu,
        "sample:argmax_rows".into(),
        pipeline,
        &[
            (0, params.as_entire_binding()),
            (2, logits.buffer().as_entire_binding()),
            (4, picks.buffer().as_entire_binding()),
        ],
        [rows as u32, 1, 1],
        vec![params.clone()],
    )
}
