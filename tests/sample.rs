//! Sampling kernel vs its CPU twin, under both feature sets: greedy argmax (ties, -inf, NaN), seeded
//! temperature / top-k / top-p / min-p sampling (token for token over many seeds), repetition penalties,
//! statistics of the twin against softmax, and parameter validation.
mod common;

use common::{gpu_rules_gpu, gpus, random_vec, ShapeRng};
use mobilellm_kernels::ops::sample::{
    argmax_rows, penalty_entries, sample, sample_masked, sample_rows, top_candidates, validate, write_step, Penalties,
    SampleRow, Sampler, TokenMask, MAX_PENALTIES, MAX_TOP_K, MAX_TOP_LOGPROBS,
};
use mobilellm_kernels::ops::{self, StepBuffer, StepParams, StepTable};
use mobilellm_kernels::{reference, DType, Error, Gpu, Tensor};

fn params(temperature: f32, top_k: u32, top_p: f32, seed: u32) -> StepParams {
    StepParams { pos: 0, n: 1, seed, top_k, temperature, top_p, ..Default::default() }
}

/// A planned sampler over `logits` (`[rows, vocab]`) and its step buffer and output.
struct Setup {
    step: StepBuffer,
    token: Tensor,
    sampler: Sampler,
}

fn setup(gpu: &Gpu, logits: &[f32], rows: usize, row: SampleRow) -> Setup {
    let vocab = logits.len() / rows;
    let logits = Tensor::from_slice(gpu, &[rows, vocab], logits).unwrap();
    let step = StepBuffer::new(gpu).unwrap();
    let token = Tensor::zeros(gpu, DType::U32, &[1]).unwrap();
    let sampler = sample(gpu, &logits, row, &step, &token).unwrap();
    Setup { step, token, sampler }
}

impl Setup {
    fn run(&self, gpu: &Gpu, p: &StepParams) -> u32 {
        write_step(gpu, &self.step, p).unwrap();
        ops::run(gpu, &self.sampler.dispatches()).unwrap();
        self.token.read::<u32>(gpu).unwrap()[0]
    }
}

/// The first index of the largest non-NaN value: the plain definition greedy must match.
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if !v.is_nan() && (row[best].is_nan() || v > row[best]) {
            best = i;
        }
    }
    best as u32
}

/// Logits with a tie for the maximum at two places (the later one written first), -inf and NaN entries.
fn tricky_row(seed: u64, vocab: usize) -> Vec<f32> {
    let mut row: Vec<f32> = random_vec(seed, vocab).iter().map(|v| v * 8.0).collect();
    if vocab >= 7 {
        let (a, b) = (vocab * 5 / 7, vocab / 3);
        row[a] = 9.5;
        row[b] = 9.5;
        row[vocab - 1] = f32::NEG_INFINITY;
        row[1] = f32::NEG_INFINITY;
        row[vocab / 2] = f32::NAN;
        row[0] = -0.0;
    }
    row
}

#[test]
fn greedy_argmax_with_ties_inf_and_nan() {
    for gpu in gpus() {
        for vocab in [1usize, 7, 32000, 49152] {
            let row = tricky_row(vocab as u64, vocab);
            let s = setup(gpu, &row, 1, SampleRow::Last);
            for seed in [0, 7] {
                let p = params(0.0, 0, 1.0, seed);
                let got = s.run(gpu, &p);
                assert_eq!(got, argmax(&row), "vocab {vocab} [{}]", gpu.features());
                assert_eq!(got, reference::sample(&row, &p));
            }
            if vocab >= 7 {
                assert_eq!(argmax(&row), (vocab / 3) as u32, "the tie goes to the lower index");
            }
        }
        // Every logit -inf (or NaN): token 0, like the twin.
        let row = vec![f32::NEG_INFINITY; 300];
        let s = setup(gpu, &row, 1, SampleRow::Last);
        assert_eq!(s.run(gpu, &params(0.0, 0, 1.0, 0)), 0);
        assert_eq!(s.run(gpu, &params(1.0, 0, 1.0, 3)), 0);
        let mut row = vec![f32::NAN; 300];
        row[299] = f32::NEG_INFINITY;
        let s = setup(gpu, &row, 1, SampleRow::Last);
        assert_eq!(s.run(gpu, &params(0.0, 0, 1.0, 0)), 299);
    }
}

/// Every row's greedy pick in one dispatch (speculative verification): equal to the plain argmax, the twin and
/// the one-row greedy sampler, with ties, -inf and NaN in every row, up to the rows the dispatch covers.
#[test]
fn argmax_rows_picks_each_row_like_greedy_sampling() {
    for gpu in gpus() {
        for (rows, vocab) in [(1usize, 1usize), (3, 7), (5, 1000), (8, 49152)] {
            let logits: Vec<f32> = (0..rows).flat_map(|r| tricky_row((r * 31 + vocab) as u64, vocab)).collect();
            let input = Tensor::from_slice(gpu, &[rows, vocab], &logits).unwrap();
            // One spare element: the dispatch writes `rows` ids and leaves the rest alone.
            let picks = Tensor::from_slice(gpu, &[rows + 1], &vec![u32::MAX; rows + 1]).unwrap();
            ops::run(gpu, &[&argmax_rows(gpu, &input, &picks).unwrap()]).unwrap();
            let got = picks.read::<u32>(gpu).unwrap();
            let twin = reference::argmax_rows(&logits, vocab);
            assert_eq!(got[..rows], twin[..], "rows {rows} vocab {vocab} [{}]", gpu.features());
            assert_eq!(got[rows], u32::MAX, "past the rows");
            for (r, row) in logits.chunks_exact(vocab).enumerate() {
                assert_eq!(twin[r], argmax(row));
                assert_eq!(twin[r], reference::sample(row, &params(0.0, 0, 1.0, 0)));
            }
        }
        // Rows of only NaN and -inf: the first -inf, else index 0, as the sampler.
        let mut logits = vec![f32::NAN; 2 * 300];
        logits[300 + 7] = f32::NEG_INFINITY;
        let input = Tensor::from_slice(gpu, &[2, 300], &logits).unwrap();
        let picks = Tensor::zeros(gpu, DType::U32, &[2]).unwrap();
        ops::run(gpu, &[&argmax_rows(gpu, &input, &picks).unwrap()]).unwrap();
        assert_eq!(picks.read::<u32>(gpu).unwrap(), [0, 7]);
        // Too few picks, or logits not f32: typed errors.
        let short = Tensor::zeros(gpu, DType::U32, &[1]).unwrap();
        assert!(matches!(argmax_rows(gpu, &input, &short), Err(Error::InvalidArgument { .. })));
        let ids = Tensor::zeros(gpu, DType::U32, &[2, 300]).unwrap();
        assert!(matches!(argmax_rows(gpu, &ids, &picks), Err(Error::DType { .. })));
    }
}

#[test]
fn picks_the_requested_row() {
    for gpu in gpus() {
        let (rows, vocab) = (4, 2500);
        let mut logits: Vec<f32> = random_vec(5, rows * vocab);
        let hot = [17usize, 2499, 1024, 3];
        for (r, &h) in hot.iter().enumerate() {
            logits[r * vocab + h] = 5.0;
        }
        let greedy = params(0.0, 0, 1.0, 0);
        assert_eq!(setup(gpu, &logits, rows, SampleRow::Last).run(gpu, &greedy), 3);
        assert_eq!(setup(gpu, &logits, rows, SampleRow::Index(1)).run(gpu, &greedy), 2499);
        let s = setup(gpu, &logits, rows, SampleRow::LastOfStep);
        for n in 1..=rows as u32 {
            let p = StepParams { n, ..greedy };
            assert_eq!(s.run(gpu, &p), hot[n as usize - 1] as u32, "row n - 1 for n = {n}");
        }
        // n beyond the tensor clamps to its last row rather than reading out of bounds.
        assert_eq!(s.run(gpu, &StepParams { n: 99, ..greedy }), 3);
    }
}

/// Compares GPU and CPU over `seeds`; a differing pick is accepted only at a near tie: the CPU target within
/// 1e-5 (relative to the sum) of a running-sum boundary, which a few-ULP difference in `exp` can cross
/// (64 terms of a few ULP each stay below 1e-5 relative). Returns the number of such near ties.
fn gpu_equals_cpu(gpu: &Gpu, row: &[f32], temperature: f32, top_k: u32, top_p: f32, seeds: u32) -> usize {
    gpu_equals_cpu_with(gpu, row, &params(temperature, top_k, top_p, 0), seeds)
}

/// [`gpu_equals_cpu`] from any parameters (min-p, penalties); a min-p cut is also a near tie when a weight
/// lies within 1e-5 of `min_p`.
fn gpu_equals_cpu_with(gpu: &Gpu, row: &[f32], base: &StepParams, seeds: u32) -> usize {
    gpu_equals_twin(gpu, &setup(gpu, row, 1, SampleRow::Last), &|p| reference::sample_trace(row, p), base, seeds)
}

/// [`gpu_equals_cpu_with`] on a planned sampler against any twin (the masked one).
fn gpu_equals_twin(
    gpu: &Gpu,
    s: &Setup,
    twin: &dyn Fn(&StepParams) -> reference::SampleTrace,
    base: &StepParams,
    seeds: u32,
) -> usize {
    let mut near_ties = 0;
    for seed in 0..seeds {
        let p = StepParams { seed: seed.wrapping_mul(2_654_435_761), ..*base };
        let got = s.run(gpu, &p);
        let trace = twin(&p);
        if got != trace.token {
            assert!(near_tie(&p, &trace), "seed {seed} {p:?}: GPU {got} CPU {} ({trace:?})", trace.token);
            near_ties += 1;
        }
    }
    near_ties
}

/// Whether the twin's draw lies within f32 rounding of a boundary, so a GPU pick may differ from it: the
/// target within 1e-5 (relative) of a cumulative sum, the top-p limit of one, or a weight of `min_p`.
fn near_tie(p: &StepParams, trace: &reference::SampleTrace) -> bool {
    let total = trace.cumulative[trace.count - 1];
    let weights = trace.cumulative.iter().scan(0.0, |prev, &c| Some(c - std::mem::replace(prev, c)));
    trace.cumulative.iter().any(|c| (c - trace.target).abs() <= 1e-5 * total)
        || (p.top_p < 1.0 && trace.cumulative.iter().any(|c| (c - p.top_p * total).abs() <= 1e-5 * total))
        || (p.min_p > 0.0 && weights.into_iter().any(|w: f32| (w - p.min_p).abs() <= 1e-5))
}

#[test]
fn gpu_matches_cpu_token_for_token() {
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        let row: Vec<f32> = random_vec(11, 3000).iter().map(|v| v * 4.0).collect();
        let mut ties = 0;
        // k <= 6 takes pass 1's rounds path, larger k its filter path.
        for (t, k, p) in [(1.0, 0, 1.0), (0.7, 40, 0.9), (1.5, 64, 0.5), (1.0, 6, 1.0), (2.0, 7, 0.9), (3.0, 0, 0.95)] {
            ties += gpu_equals_cpu(gpu, &row, t, k, p, 60);
        }
        // The multi-chunk path at a real vocabulary: 32 pass-1 workgroups merged.
        let row: Vec<f32> = random_vec(12, 32000).iter().map(|v| v * 3.0).collect();
        ties += gpu_equals_cpu(gpu, &row, 2.0, 0, 1.0, 40);
        eprintln!("[{}] near-tie mismatches: {ties} of 400 draws", gpu.features());
        assert!(ties <= 2, "too many near ties: {ties}");
    }
}

/// Pass 1's filter on the rows that fill it most: the chunk's best logits packed at its start (descending),
/// at its end (ascending), in every run (sawtooth), or all equal (the order is then the index alone), at
/// chunk sizes 1024 (runs of 8) and 2004 or 2048 (Llama-3's 128 256 logits: runs of 16, the most the filter
/// takes).
/// A temperature of 1e30 makes every kept candidate's weight 1, so the picks spread evenly over the exact
/// top-k set and the cumulative sums are small integers: a candidate missing, extra or out of order shows.
#[test]
fn top_k_over_ordered_and_flat_rows() {
    // Also under GPU launch rules: 256-invocation workgroups, as on real GPUs.
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        let mut ties = 0;
        for vocab in [3000usize, 49_152, 128_256] {
            let rows: [(&str, Vec<f32>); 4] = [
                ("descending", (0..vocab).map(|i| -(i as f32) * 1e-3).collect()),
                ("ascending", (0..vocab).map(|i| i as f32 * 1e-3).collect()),
                ("sawtooth", (0..vocab).map(|i| -((i % 16) as f32)).collect()),
                ("flat", vec![0.5; vocab]),
            ];
            for (name, row) in &rows {
                for top_k in [7, 40, MAX_TOP_K] {
                    let got = gpu_equals_cpu(gpu, row, 1e30, top_k, 1.0, 24);
                    assert_eq!(got, 0, "{name} row, vocab {vocab}, top_k {top_k}: mismatches");
                }
                ties += gpu_equals_cpu(gpu, row, 1.0, MAX_TOP_K, 0.9, 8);
            }
        }
        assert!(ties <= 2, "too many near ties: {ties}");
    }
}

/// Seeded random vocabularies (1 to 70 000: one pass-1 chunk or many, a partial last one) and parameters
/// (greedy, temperatures 0.1-4, top-k anywhere in 0..=MAX_TOP_K, top-p 0.05-1), logits with ties, -inf
/// and NaN: greedy picks the argmax exactly, sampling matches the CPU twin token for token up to near ties.
#[test]
fn seeded_random_vocabularies_and_parameters() {
    let mut rng = ShapeRng::new(19);
    let gpus = gpus();
    let mut ties = 0;
    for case in 0..10 {
        let vocab = if rng.chance(30) { rng.range(1, 200) } else { rng.range(200, 70_000) };
        let row = tricky_row(case, vocab);
        let gpu = rng.pick(&[&gpus[0], &gpus[1]]);
        let s = setup(gpu, &row, 1, SampleRow::Last);
        assert_eq!(s.run(gpu, &params(0.0, 0, 1.0, case as u32)), argmax(&row), "greedy, vocab {vocab}");
        let temperature = 0.1 + 3.9 * rng.range(0, 100) as f32 / 100.0;
        let top_k = if rng.chance(25) { 0 } else { rng.range(1, MAX_TOP_K as usize) as u32 };
        let top_p = if rng.chance(40) { 1.0 } else { 0.05 + 0.95 * rng.range(0, 100) as f32 / 100.0 };
        // Finite logits for sampling: the twin's weights are defined there (NaN and -inf are greedy cases).
        let finite: Vec<f32> = row.iter().map(|v| if v.is_finite() { *v } else { -3.0 }).collect();
        ties += gpu_equals_cpu(gpu, &finite, temperature, top_k, top_p, 12);
    }
    assert!(ties <= 2, "too many near ties: {ties} of 120 draws");
}

#[test]
fn top_k_one_and_tiny_top_p_are_greedy() {
    for gpu in gpus() {
        let row = tricky_row(3, 5000);
        let s = setup(gpu, &row, 1, SampleRow::Last);
        let want = argmax(&row);
        for seed in 0..8 {
            assert_eq!(s.run(gpu, &params(1.0, 1, 1.0, seed)), want, "top_k 1");
            assert_eq!(s.run(gpu, &params(1.0, 0, 1e-6, seed)), want, "tiny top_p");
            assert_eq!(s.run(gpu, &params(5.0, 64, 1e-6, seed)), want, "tiny top_p, hot");
        }
    }
}

/// Frequencies of the twin's picks over many seeds against the distribution it claims, within 5 binomial
/// standard deviations per token (a false alarm has probability below 1e-5 across all the checks).
fn check_frequencies(row: &[f32], p: StepParams, want: &[f64], draws: u32) {
    let mut counts = vec![0u32; row.len()];
    for seed in 0..draws {
        counts[reference::sample(row, &StepParams { seed, ..p }) as usize] += 1;
    }
    for (i, (&c, &q)) in counts.iter().zip(want).enumerate() {
        let f = c as f64 / draws as f64;
        let sigma = (q * (1.0 - q) / draws as f64).sqrt();
        assert!((f - q).abs() <= 5.0 * sigma + 1e-12, "token {i}: frequency {f} want {q} (sigma {sigma}) {p:?}");
    }
}

fn softmax(row: &[f32], t: f64) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
    let e: Vec<f64> = row.iter().map(|&v| ((v as f64 - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn frequencies_follow_softmax() {
    let row = [1.0f32, 2.0, 0.5, -1.0, 1.5, 0.0];
    let draws = 40_000;
    check_frequencies(&row, params(1.0, 0, 1.0, 0), &softmax(&row, 1.0), draws);
    check_frequencies(&row, params(0.5, 0, 1.0, 0), &softmax(&row, 0.5), draws);
    // top_k 3 keeps tokens 1, 4, 0 and renormalises.
    let top3 = [row[0], row[1], f32::NEG_INFINITY, f32::NEG_INFINITY, row[4], f32::NEG_INFINITY];
    check_frequencies(&row, params(1.0, 3, 1.0, 0), &softmax(&top3, 1.0), draws);
    // top_p 0.8: probabilities 0.42, 0.25, 0.15, ...: the prefix {1, 4, 0} is the first to reach 0.8.
    let q = softmax(&row, 1.0);
    assert!(q[1] + q[4] < 0.8 && q[1] + q[4] + q[0] >= 0.8);
    check_frequencies(&row, params(1.0, 0, 0.8, 0), &softmax(&top3, 1.0), draws);
    // And the GPU draws the same tokens as the twin for these seeds.
    for gpu in gpus() {
        let ties = gpu_equals_cpu(gpu, &row, 1.0, 0, 1.0, 200) + gpu_equals_cpu(gpu, &row, 1.0, 0, 0.8, 100);
        assert!(ties <= 1, "{ties}");
    }
}

#[test]
fn uniform_draws_are_uniform() {
    let n = 100_000u32;
    let mut bins = [0u32; 16];
    for seed in 0..n {
        let u = reference::sample_uniform(seed);
        assert!((0.0..1.0).contains(&u));
        bins[(u * 16.0) as usize] += 1;
    }
    // Each bin: mean n/16, sigma sqrt(n/16 * 15/16) ~ 242; 5 sigma.
    for b in bins {
        assert!((b as f64 - n as f64 / 16.0).abs() < 5.0 * 242.0, "{bins:?}");
    }
}

#[test]
fn rejects_bad_parameters_and_operands() {
    for bad in [
        params(f32::NAN, 0, 1.0, 0),
        params(-0.5, 0, 1.0, 0),
        params(f32::INFINITY, 0, 1.0, 0),
        params(1.0, 0, 0.0, 0),
        params(1.0, 0, 1.5, 0),
        params(1.0, 0, f32::NAN, 0),
        params(1.0, MAX_TOP_K + 1, 1.0, 0),
    ] {
        let err = validate(&bad).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }
    validate(&params(0.0, 0, 1.0, 0)).unwrap();
    validate(&params(0.8, 64, 1.0, 0)).unwrap();
    let gpu = &gpus()[0];
    let step = StepBuffer::new(gpu).unwrap();
    let err = write_step(gpu, &step, &params(-1.0, 0, 1.0, 0)).unwrap_err();
    assert!(err.to_string().contains("temperature") && err.to_string().contains("-1"), "{err}");
    let token = Tensor::zeros(gpu, DType::U32, &[1]).unwrap();
    let logits16 = Tensor::zeros(gpu, DType::F16, &[2, 8]).unwrap();
    let err = sample(gpu, &logits16, SampleRow::Last, &step, &token).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
    let logits = Tensor::zeros(gpu, DType::F32, &[2, 8]).unwrap();
    let err = sample(gpu, &logits, SampleRow::Index(2), &step, &token).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains('2'), "{err}");
    let token_f32 = Tensor::zeros(gpu, DType::F32, &[1]).unwrap();
    let err = sample(gpu, &logits, SampleRow::Last, &step, &token_f32).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
}

/// Wall time per sampled token (submit, two dispatches, 4-byte readback) at SmolLM2's vocabulary: a ratio
/// between modes on this device, not a speed claim (lavapipe runs shaders 100-400x slower than a GPU).
#[test]
fn reports_time_per_token() {
    for (gpu, vocab) in gpus().iter().flat_map(|g| [(g, 49_152), (g, 128_256)]) {
        let row: Vec<f32> = random_vec(21, vocab).iter().map(|v| v * 5.0).collect();
        let s = setup(gpu, &row, 1, SampleRow::Last);
        for (name, p) in [
            ("greedy", params(0.0, 0, 1.0, 1)),
            ("top_k 40", params(0.8, 40, 0.95, 1)),
            ("top_k 64", params(1.0, 0, 1.0, 1)),
        ] {
            s.run(gpu, &p);
            let reps = 5;
            let start = std::time::Instant::now();
            let tokens: Vec<u32> = (0..reps).map(|seed| s.run(gpu, &StepParams { seed, ..p })).collect();
            let elapsed = start.elapsed();
            for (seed, token) in (0..reps).zip(tokens) {
                assert_eq!(token, reference::sample(&row, &StepParams { seed, ..p }));
            }
            eprintln!(
                "[{}] sample {vocab} {name}: {:.2} ms/token",
                gpu.features(),
                elapsed.as_secs_f64() * 1e3 / reps as f64
            );
        }
    }
}

/// Penalties as llama.cpp's `penalties` sampler defines them, on a hand-checked row, greedy: the GPU, the twin
/// and the arithmetic agree, and the logits buffer keeps the model's values.
#[test]
fn penalties_rerank_recent_tokens() {
    let row = [3.0f32, 2.9, -1.0, -1.1, 0.5, 2.0];
    let pen = Penalties { repeat: 2.0, frequency: 0.25, presence: 0.5 };
    let mut p = params(0.0, 0, 1.0, 0);
    // Token 0 seen twice, token 2 once, token 5 three times.
    pen.write(&[5, 0, 2, 5, 0, 5], &mut p).unwrap();
    let entries: Vec<(u32, f32)> = penalty_entries(&p).collect();
    assert_eq!(entries, [(0, 2.0 * 0.25 + 0.5), (2, 0.25 + 0.5), (5, 3.0 * 0.25 + 0.5)]);
    // 3.0 / 2 - 1.0 = 0.5; -1.0 * 2 - 0.75 = -2.75; 2.0 / 2 - 1.25 = -0.25: token 1 (2.9) leads now.
    let expected = [0.5f32, 2.9, -2.75, -1.1, 0.5, -0.25];
    assert_eq!(reference::penalised_row(&row, &p), expected);
    assert_eq!(reference::sample(&row, &p), 1);
    assert_eq!(reference::sample(&row, &params(0.0, 0, 1.0, 0)), 0, "without penalties");
    for gpu in gpus() {
        let logits = Tensor::from_slice(gpu, &[1, row.len()], &row).unwrap();
        let step = StepBuffer::new(gpu).unwrap();
        let token = Tensor::zeros(gpu, DType::U32, &[1]).unwrap();
        let sampler = sample(gpu, &logits, SampleRow::Last, &step, &token).unwrap();
        write_step(gpu, &step, &p).unwrap();
        ops::run(gpu, &sampler.dispatches()).unwrap();
        assert_eq!(token.read::<u32>(gpu).unwrap()[0], 1, "[{}]", gpu.features());
        assert_eq!(logits.read::<f32>(gpu).unwrap(), row, "the logits buffer is not changed");
    }
    // Off, or nothing recent: no entries.
    let mut q = params(0.0, 0, 1.0, 0);
    Penalties::OFF.write(&[1, 2, 3], &mut q).unwrap();
    assert_eq!(q.penalty_count, 0);
    pen.write(&[], &mut q).unwrap();
    assert_eq!(q.penalty_count, 0);
}

/// Penalties on many tokens of a real vocabulary (every pass-1 chunk, both pass-1 paths), greedy exactly and
/// sampling token for token against the twin; and min-p.
#[test]
fn penalties_and_min_p_match_the_twin() {
    let mut rng = ShapeRng::new(23);
    let mut ties = 0;
    for gpu in gpus() {
        for vocab in [300usize, 49152] {
            let row: Vec<f32> = random_vec(vocab as u64, vocab).iter().map(|v| v * 6.0).collect();
            // The top logits are the recent tokens, so penalties decide the ranking.
            let mut order: Vec<u32> = (0..vocab as u32).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            let recent: Vec<u32> = (0..200).map(|i| order[rng.range(0, 40 + i / 4)]).collect();
            let recent = &recent[recent.len() - MAX_PENALTIES..];
            for pen in [
                Penalties { repeat: 1.3, ..Penalties::OFF },
                Penalties { repeat: 1.1, frequency: 0.4, presence: 0.2 },
                Penalties { repeat: 0.8, frequency: -0.1, presence: 0.0 },
            ] {
                let mut p = params(0.0, 0, 1.0, 0);
                pen.write(recent, &mut p).unwrap();
                let s = setup(gpu, &row, 1, SampleRow::Last);
                let want = reference::sample(&row, &p);
                assert_eq!(s.run(gpu, &p), want, "greedy {pen:?} vocab {vocab} [{}]", gpu.features());
                assert_eq!(want, argmax(&reference::penalised_row(&row, &p)));
                for (t, k, top_p, min_p) in [(1.0, 0, 1.0, 0.0), (0.8, 40, 0.9, 0.05), (1.5, 6, 1.0, 0.2)] {
                    let base = StepParams { min_p, ..params(t, k, top_p, 0) };
                    let mut base = base;
                    pen.write(recent, &mut base).unwrap();
                    ties += gpu_equals_cpu_with(gpu, &row, &base, 12);
                }
            }
        }
    }
    assert!(ties <= 2, "too many near ties: {ties}");
}

/// min-p after temperature: the kept tokens are those whose weight relative to the best reaches min_p, and
/// the twin's picks follow the softmax over them.
#[test]
fn min_p_keeps_tokens_near_the_best() {
    let row = [1.0f32, 2.0, 0.5, -1.0, 1.5, 0.0];
    // Weights relative to token 1: token 4 e^-0.5 = 0.61, token 0 e^-1 = 0.37, the rest below 0.23.
    let kept = [f32::NEG_INFINITY, row[1], f32::NEG_INFINITY, f32::NEG_INFINITY, row[4], f32::NEG_INFINITY];
    check_frequencies(&row, StepParams { min_p: 0.5, ..params(1.0, 0, 1.0, 0) }, &softmax(&kept, 1.0), 40_000);
    // At temperature 2 the weights are their square roots: token 0 (0.61) is kept too.
    let kept = [row[0], row[1], f32::NEG_INFINITY, f32::NEG_INFINITY, row[4], f32::NEG_INFINITY];
    check_frequencies(&row, StepParams { min_p: 0.5, ..params(2.0, 0, 1.0, 0) }, &softmax(&kept, 2.0), 40_000);
    // min_p 1 is greedy.
    for seed in 0..20 {
        assert_eq!(reference::sample(&row, &StepParams { min_p: 1.0, ..params(1.0, 0, 1.0, seed) }), 1);
    }
    for gpu in gpus() {
        let base = StepParams { min_p: 0.5, ..params(1.0, 0, 1.0, 0) };
        assert!(gpu_equals_cpu_with(gpu, &row, &base, 200) <= 1);
    }
}

#[test]
fn rejects_bad_penalties_and_min_p() {
    for min_p in [-0.1, 1.5, f32::NAN] {
        let e = validate(&StepParams { min_p, ..params(1.0, 0, 1.0, 0) }).unwrap_err();
        assert!(e.to_string().contains("min_p"), "{e}");
    }
    let mut p = params(1.0, 0, 1.0, 0);
    for bad in [
        Penalties { repeat: 0.0, ..Penalties::OFF },
        Penalties { repeat: f32::NAN, ..Penalties::OFF },
        Penalties { frequency: f32::INFINITY, ..Penalties::OFF },
        Penalties { presence: f32::NAN, ..Penalties::OFF },
    ] {
        assert!(bad.write(&[1], &mut p).is_err(), "{bad:?}");
    }
    let many: Vec<u32> = (0..MAX_PENALTIES as u32 + 1).collect();
    let pen = Penalties { repeat: 1.2, ..Penalties::OFF };
    pen.write(&[7, 7], &mut p).unwrap();
    let before = p;
    let e = pen.write(&many, &mut p).unwrap_err();
    assert!(e.to_string().contains("65"), "{e}");
    assert_eq!(p, before, "a refused write leaves the parameters as they were");
    pen.write(&many[1..], &mut p).unwrap();
    validate(&p).unwrap();
    // Hand-made entries out of order, too many, or with a bad scale.
    let mut q = p;
    q.penalties[0].swap(0, 2);
    q.penalties[0].swap(1, 3);
    assert!(validate(&q).unwrap_err().to_string().contains("penalty entries"));
    let q = StepParams { penalty_count: MAX_PENALTIES as u32 + 1, ..p };
    assert!(validate(&q).is_err());
    let q = StepParams { penalty_scale: [0.0, 1.0], ..p };
    assert!(validate(&q).unwrap_err().to_string().contains("penalty scale"));
}

/// Token masks (constrained decoding): with the step's mask flag set, every pick is an allowed id and equals
/// the twin's pick from the row with the other ids at -inf (token for token up to near ties), on the rounds
/// and filter paths, with penalties, for masks that leave one id, ids at chunk edges, every 7th id, or all
/// but the row's best 100 (so the candidates come from deep in the row). With the flag clear the mask is
/// not read.
#[test]
fn masked_sampling_picks_only_allowed_tokens() {
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        let mut ties = 0;
        for vocab in [3000usize, 49_152] {
            let row: Vec<f32> = random_vec(31, vocab).iter().map(|v| v * 4.0).collect();
            let mut by_value: Vec<u32> = (0..vocab as u32).collect();
            by_value.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            let last = vocab as u32 - 1;
            let masks = [
                ("one id in the last word", TokenMask::allowing(vocab, [last]).unwrap()),
                ("chunk edges", TokenMask::allowing(vocab, [0, 1023, 1024, 2047, 2048, last]).unwrap()),
                ("every 7th", TokenMask::allowing(vocab, (0..vocab as u32).step_by(7)).unwrap()),
                ("all but the best 100", TokenMask::allowing(vocab, by_value[100..].iter().copied()).unwrap()),
                ("all", TokenMask::all(vocab)),
            ];
            let logits = Tensor::from_slice(gpu, &[1, vocab], &row).unwrap();
            let step = StepBuffer::new(gpu).unwrap();
            let token = Tensor::zeros(gpu, DType::U32, &[1]).unwrap();
            let mask_buffer = TokenMask::none(vocab).upload(gpu).unwrap();
            let sampler = sample_masked(gpu, &logits, SampleRow::Last, &step, &mask_buffer, &token).unwrap();
            let s = Setup { step, token, sampler };
            let mut penalties = params(1.0, 40, 1.0, 0);
            Penalties { repeat: 1.3, frequency: 0.5, ..Penalties::OFF }
                .write(&by_value[100..110], &mut penalties)
                .unwrap();
            for (name, mask) in &masks {
                mask.write(gpu, &mask_buffer).unwrap();
                let twin = |p: &StepParams| reference::sample_masked_trace(&row, p, mask.words());
                let masked: Vec<f32> = row
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| if mask.is_allowed(i as u32) { v } else { f32::NEG_INFINITY })
                    .collect();
                let configs =
                    [params(0.0, 0, 1.0, 0), params(1.0, 40, 0.9, 0), params(0.7, 0, 1.0, 0), params(2.0, 5, 1.0, 0)];
                for p in configs.iter().chain([&penalties]).map(|base| StepParams { mask: 1, ..*base }) {
                    ties += gpu_equals_twin(gpu, &s, &twin, &p, 12);
                    for seed in 0..4 {
                        let p = StepParams { seed, ..p };
                        assert!(mask.is_allowed(s.run(gpu, &p)), "{name}: a masked-out pick ({p:?})");
                        if p.penalty_count == 0 {
                            // The twin's mask is the row with masked ids at -inf.
                            let plain = reference::sample(&masked, &StepParams { mask: 0, ..p });
                            assert_eq!(reference::sample_masked(&row, &p, mask.words()), plain);
                        }
                    }
                }
            }
            // Flag clear: the last mask written (one id) is not applied.
            masks[0].1.write(gpu, &mask_buffer).unwrap();
            assert_eq!(s.run(gpu, &params(0.0, 0, 1.0, 0)), by_value[0]);
            assert_eq!(s.run(gpu, &StepParams { mask: 1, ..params(0.0, 0, 1.0, 0) }), last);
        }
        assert!(ties <= 2, "too many near ties: {ties}");
    }
    // Masks name their errors.
    assert!(TokenMask::allowing(10, [10]).unwrap_err().to_string().contains("10"));
    assert_eq!((TokenMask::all(33).count(), TokenMask::none(33).count()), (33, 0));
}

/// The picked token's log-probability (step flag `logprob`): equal to the twin's f64 log-softmax within
/// 1e-4 absolute (the GPU adds up to 128 256 exp terms in f32, in another order: about 1e-6 relative, and
/// the largest logits here are ~12, so a few 1e-5 at worst), for greedy and sampled picks, one chunk or many,
/// with -inf and NaN logits and under a mask (the log-probability stays the raw model's). A one-element
/// token buffer is left with its token only.
#[test]
fn log_probability_of_the_pick() {
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        for vocab in [3000usize, 49_152, 128_256] {
            let row = tricky_row(vocab as u64 + 1, vocab);
            let logits = Tensor::from_slice(gpu, &[1, vocab], &row).unwrap();
            let step = StepBuffer::new(gpu).unwrap();
            let token = Tensor::zeros(gpu, DType::U32, &[2]).unwrap();
            let mask = TokenMask::allowing(vocab, (0..vocab as u32).step_by(3)).unwrap();
            let mask_buffer = mask.upload(gpu).unwrap();
            let sampler = sample_masked(gpu, &logits, SampleRow::Last, &step, &mask_buffer, &token).unwrap();
            for (i, base) in
                [params(0.0, 0, 1.0, 0), params(1.0, 40, 0.9, 3), params(1.5, 0, 1.0, 9)].iter().enumerate()
            {
                for masked in [0, 1] {
                    let p = StepParams { logprob: 1, mask: masked, ..*base };
                    write_step(gpu, &step, &p).unwrap();
                    ops::run(gpu, &sampler.dispatches()).unwrap();
                    let out = token.read::<u32>(gpu).unwrap();
                    let (picked, logprob) = (out[0], f32::from_bits(out[1]));
                    let want = reference::sample_logprob(&row, picked);
                    let what = format!("vocab {vocab}, config {i}, mask {masked}, pick {picked} [{}]", gpu.features());
                    assert!((logprob - want).abs() <= 1e-4, "{what}: {logprob} vs {want}");
                    assert!(logprob <= 0.0 && logprob.is_finite(), "{what}: {logprob}");
                }
            }
        }
        // Without the flag, element 1 is not written; with a one-element buffer, element 0 keeps the token.
        let row = tricky_row(5, 3000);
        let s = setup(gpu, &row, 1, SampleRow::Last);
        let greedy = params(0.0, 0, 1.0, 0);
        assert_eq!(s.run(gpu, &StepParams { logprob: 1, ..greedy }), argmax(&row));
    }
    // The twin on a row it can do by hand: two equal logits and one far below.
    let lp = reference::sample_logprob(&[2.0, 2.0, -1e9], 0);
    assert!((lp - (0.5f32).ln()).abs() < 1e-7);
}

/// The best candidates with their log-probabilities (`top_logprobs`): the twin's ids in the twin's order
/// (ties, -inf and NaN in the row, penalties, a mask, fewer pickable tokens than asked for), log-probabilities
/// within 1e-4 as for the pick's; the pick itself is what it is without them; a short buffer gets what
/// fits.
#[test]
fn top_logprobs_report_the_best_candidates() {
    let all = MAX_TOP_LOGPROBS as usize;
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        for vocab in [7usize, 3000, 49_152] {
            let row = tricky_row(vocab as u64 + 2, vocab);
            let logits = Tensor::from_slice(gpu, &[1, vocab], &row).unwrap();
            let step = StepBuffer::new(gpu).unwrap();
            let token = Tensor::zeros(gpu, DType::U32, &[2 + 2 * all]).unwrap();
            let mask = TokenMask::allowing(vocab, (0..vocab as u32).step_by(2)).unwrap();
            let sampler =
                sample_masked(gpu, &logits, SampleRow::Last, &step, &mask.upload(gpu).unwrap(), &token).unwrap();
            let mut penalised = params(0.0, 0, 1.0, 0);
            Penalties { repeat: 1.3, frequency: 0.5, presence: 0.2 }
                .write(&[0, 2, 2, vocab as u32 / 3], &mut penalised)
                .unwrap();
            let configs = [params(0.0, 0, 1.0, 0), params(0.9, 3, 1.0, 4), params(1.2, 0, 0.8, 7), penalised];
            for (i, base) in configs.iter().enumerate() {
                for (n, masked) in [(1, 0), (5, 1), (all as u32, 0), (all as u32, 1)] {
                    let p = StepParams { top_logprobs: n, mask: masked, logprob: 1, ..*base };
                    write_step(gpu, &step, &p).unwrap();
                    ops::run(gpu, &sampler.dispatches()).unwrap();
                    let out = token.read::<u32>(gpu).unwrap();
                    let got = top_candidates(&out, n as usize);
                    let allowed = (masked == 1).then_some(mask.words());
                    let want = reference::top_logprobs(&row, &p, allowed, n as usize);
                    let what = format!("vocab {vocab}, config {i}, n {n}, mask {masked} [{}]", gpu.features());
                    let ids = |v: &[(u32, f32)]| v.iter().map(|c| c.0).collect::<Vec<_>>();
                    assert_eq!(ids(&got), ids(&want), "{what}");
                    for ((_, g), (_, w)) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-4, "{what}: {g} vs {w}");
                    }
                    // The pick does not depend on how many candidates are reported.
                    let pick = if masked == 1 {
                        reference::sample_masked(&row, &p, mask.words())
                    } else {
                        reference::sample(&row, &p)
                    };
                    if base.temperature == 0.0 {
                        assert_eq!(out[0], pick, "{what}");
                    }
                    let pick_logprob = f32::from_bits(out[1]);
                    assert!((pick_logprob - reference::sample_logprob(&row, out[0])).abs() <= 1e-4, "{what}");
                }
            }
        }
        // A buffer with room for one pair gets one; a two-element buffer keeps the token and log-probability.
        let row = tricky_row(9, 3000);
        let logits = Tensor::from_slice(gpu, &[1, 3000], &row).unwrap();
        let step = StepBuffer::new(gpu).unwrap();
        for len in [2usize, 4] {
            let token = Tensor::from_slice(gpu, &[len], &vec![7u32; len]).unwrap();
            let sampler = sample(gpu, &logits, SampleRow::Last, &step, &token).unwrap();
            write_step(gpu, &step, &StepParams { top_logprobs: 5, ..params(0.0, 0, 1.0, 0) }).unwrap();
            ops::run(gpu, &sampler.dispatches()).unwrap();
            let out = token.read::<u32>(gpu).unwrap();
            assert_eq!(out[0], argmax(&row));
            assert_eq!(out[1], 7, "element 1 without the logprob flag");
            assert_eq!(top_candidates(&out, 5).len(), len / 2 - 1);
        }
        // More than the limit is refused.
        let p = StepParams { top_logprobs: MAX_TOP_LOGPROBS + 1, ..params(0.0, 0, 1.0, 0) };
        assert!(matches!(validate(&p), Err(Error::InvalidArgument { .. })));
    }
}

/// Every row of a batch sampled with its own settings in one pair of dispatches (`sample_rows`): greedy,
/// top-k / top-p, min-p with penalties, a mask, log-probabilities and reported candidates, side by side.
/// Each row's output equals the one-row sampler's on that row with the same settings, word for word (the
/// same kernel code on the same values), and its pick equals the CPU twin's but at near ties (as
/// `gpu_matches_cpu_token_for_token` argues). A row without the mask flag ignores its mask row (set to
/// allow nothing), and nothing past a row's slot is written.
#[test]
fn each_row_sampled_with_its_own_settings() {
    let stride = 2 + 2 * MAX_TOP_LOGPROBS as usize;
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        let mut ties = 0;
        for vocab in [3000usize, 49_152] {
            let mut penalised = StepParams { min_p: 0.05, ..params(0.7, 0, 1.0, 0) };
            Penalties { repeat: 1.3, frequency: 0.5, presence: 0.2 }.write(&[0, 2, 2, 77], &mut penalised).unwrap();
            let configs = [
                params(0.0, 0, 1.0, 0),
                params(1.0, 40, 0.9, 0),
                penalised,
                StepParams { mask: 1, ..params(2.0, 5, 1.0, 0) },
                StepParams { mask: 1, logprob: 1, top_logprobs: 5, ..params(0.0, 0, 1.0, 0) },
                StepParams { logprob: 1, top_logprobs: MAX_TOP_LOGPROBS, ..params(1.5, 0, 1.0, 0) },
            ];
            let rows = configs.len();
            let logits: Vec<f32> = (0..rows).flat_map(|r| tricky_row((r * 13 + vocab) as u64, vocab)).collect();
            let masks: Vec<TokenMask> = (0..rows)
                .map(|r| match configs[r].mask {
                    0 => TokenMask::none(vocab),
                    _ => TokenMask::allowing(vocab, (r as u32..vocab as u32).step_by(r + 2)).unwrap(),
                })
                .collect();
            let mask_words: Vec<u32> = masks.iter().flat_map(|m| m.words().to_vec()).collect();
            let input = Tensor::from_slice(gpu, &[rows, vocab], &logits).unwrap();
            let steps = StepTable::new(gpu, rows).unwrap();
            let mask_buffer = Tensor::from_slice(gpu, &[mask_words.len()], &mask_words).unwrap();
            // One spare slot past the rows: never written.
            let tokens = Tensor::zeros(gpu, DType::U32, &[(rows + 1) * stride]).unwrap();
            let sampler = sample_rows(gpu, &input, &steps, &mask_buffer, &tokens, stride).unwrap();
            // The one-row sampler with the same settings, for each row.
            let step = StepBuffer::new(gpu).unwrap();
            let one_token = Tensor::zeros(gpu, DType::U32, &[stride]).unwrap();
            for draw in 0..6u32 {
                let row_params: Vec<StepParams> = configs
                    .iter()
                    .enumerate()
                    .map(|(r, c)| StepParams { seed: (draw * 7919 + r as u32).wrapping_mul(2_654_435_761), ..*c })
                    .collect();
                let sentinel = vec![0xABCD_EF01u32; (rows + 1) * stride];
                gpu.queue().write_buffer(tokens.buffer(), 0, bytemuck::cast_slice(&sentinel));
                steps.write(gpu, &row_params).unwrap();
                ops::run(gpu, &sampler.dispatches()).unwrap();
                let out = tokens.read::<u32>(gpu).unwrap();
                for (r, p) in row_params.iter().enumerate() {
                    let row = &logits[r * vocab..(r + 1) * vocab];
                    let slot = &out[r * stride..(r + 1) * stride];
                    let what = format!("vocab {vocab}, row {r}, draw {draw} [{}]", gpu.features());
                    let mask = masks[r].upload(gpu).unwrap();
                    gpu.queue().write_buffer(one_token.buffer(), 0, bytemuck::cast_slice(&sentinel[..stride]));
                    let one = sample_masked(gpu, &input, SampleRow::Index(r), &step, &mask, &one_token).unwrap();
                    write_step(gpu, &step, p).unwrap();
                    ops::run(gpu, &one.dispatches()).unwrap();
                    assert_eq!(slot, &one_token.read::<u32>(gpu).unwrap()[..], "{what}: the one-row sampler's");
                    let trace = match p.mask {
                        0 => reference::sample_trace(row, p),
                        _ => reference::sample_masked_trace(row, p, masks[r].words()),
                    };
                    if p.mask != 0 {
                        assert!(masks[r].is_allowed(slot[0]), "{what}: masked-out pick {}", slot[0]);
                    }
                    if slot[0] != trace.token {
                        assert!(near_tie(p, &trace), "{what}: GPU {} CPU {}", slot[0], trace.token);
                        ties += 1;
                    }
                    let written =
                        if p.top_logprobs > 0 { 2 + 2 * p.top_logprobs as usize } else { 1 + p.logprob as usize };
                    assert!(slot[written..].iter().all(|&w| w == sentinel[0]), "{what}: written past {written}");
                }
                assert!(out[rows * stride..].iter().all(|&w| w == sentinel[0]), "past the rows");
            }
        }
        assert!(ties <= 2, "too many near ties: {ties}");
        // Operands name what is wrong.
        let logits = Tensor::zeros(gpu, DType::F32, &[3, 100]).unwrap();
        let (steps, few_steps) = (StepTable::new(gpu, 3).unwrap(), StepTable::new(gpu, 2).unwrap());
        let masks = Tensor::zeros(gpu, DType::U32, &[3 * 4]).unwrap();
        let tokens = Tensor::zeros(gpu, DType::U32, &[6]).unwrap();
        let err = sample_rows(gpu, &logits, &few_steps, &masks, &tokens, 2).unwrap_err();
        assert!(err.to_string().contains("at least 3 entries"), "{err}");
        let short_masks = Tensor::zeros(gpu, DType::U32, &[11]).unwrap();
        let err = sample_rows(gpu, &logits, &steps, &short_masks, &tokens, 2).unwrap_err();
        assert!(err.to_string().contains("at least 12"), "{err}");
        let err = sample_rows(gpu, &logits, &steps, &masks, &tokens, 3).unwrap_err();
        assert!(err.to_string().contains("at least 9"), "{err}");
        assert!(sample_rows(gpu, &logits, &steps, &masks, &tokens, 0).is_err());
        let float_tokens = Tensor::zeros(gpu, DType::F32, &[6]).unwrap();
        let err = sample_rows(gpu, &logits, &steps, &masks, &float_tokens, 2).unwrap_err();
        assert!(matches!(err, Error::DType { .. }), "{err}");
        assert!(matches!(steps.write(gpu, &[StepParams::default(); 4]), Err(Error::Capacity { .. })));
        assert!(StepTable::new(gpu, 0).is_err());
    }
}
