//! Sampling kernel vs its CPU twin, under both feature sets: greedy argmax (ties, -inf, NaN), seeded
//! temperature / top-k / top-p sampling (token for token over many seeds), statistics of the twin against
//! softmax, and parameter validation.
mod common;

use common::{gpus, random_vec, ShapeRng};
use mobilellm_kernels::ops::sample::{sample, validate, write_step, SampleRow, Sampler, MAX_TOP_K};
use mobilellm_kernels::ops::{self, StepBuffer, StepParams};
use mobilellm_kernels::{reference, DType, Error, Gpu, Tensor};

fn params(temperature: f32, top_k: u32, top_p: f32, seed: u32) -> StepParams {
    StepParams { pos: 0, n: 1, seed, top_k, temperature, top_p, _pad: [0; 2] }
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
    let s = setup(gpu, row, 1, SampleRow::Last);
    let mut near_ties = 0;
    for seed in 0..seeds {
        let p = params(temperature, top_k, top_p, seed.wrapping_mul(2_654_435_761));
        let got = s.run(gpu, &p);
        let trace = reference::sample_trace(row, &p);
        if got != trace.token {
            let total = trace.cumulative[trace.count - 1];
            let near = trace.cumulative.iter().any(|c| (c - trace.target).abs() <= 1e-5 * total)
                || (top_p < 1.0 && trace.cumulative.iter().any(|c| (c - top_p * total).abs() <= 1e-5 * total));
            assert!(near, "seed {seed} T {temperature} k {top_k} p {top_p}: GPU {got} CPU {} ({trace:?})", trace.token);
            near_ties += 1;
        }
    }
    near_ties
}

#[test]
fn gpu_matches_cpu_token_for_token() {
    for gpu in gpus() {
        let row: Vec<f32> = random_vec(11, 3000).iter().map(|v| v * 4.0).collect();
        let mut ties = 0;
        // k <= 6 takes pass 1's rounds path, larger k its sort path.
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
    for gpu in gpus() {
        let row: Vec<f32> = random_vec(21, 49152).iter().map(|v| v * 5.0).collect();
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
                "[{}] sample 49152 {name}: {:.2} ms/token",
                gpu.features(),
                elapsed.as_secs_f64() * 1e3 / reps as f64
            );
        }
    }
}
