//! The CPU forward pass against the whole-model goldens in `tests/data/tiny-{plain,shared}` (made with HF
//! transformers' `LlamaForCausalLM` in f32; see each folder's README.md for what every tensor means).
//!
//! Tolerance: 1e-4 absolute on logits and hidden states. The goldens' own f32 vs an exact f64 NumPy
//! implementation differ by <= 1.7e-6; our f32 sums run in a different order (8-lane dot products), which
//! moves values of magnitude ~1 by a few 1e-7 per reduction, accumulated over <= 8 layers: still far below
//! 1e-4. Every convention error (RoPE layout, GQA mapping, scale, norm, schedule) shows up at >= 1e-2.

use std::path::{Path, PathBuf};

use mobilellm_kernels::model::safetensors::Safetensors;
use mobilellm_kernels::model::{ModelConfig, ModelWeightsF32, RopeLayout};
use mobilellm_kernels::reference::forward::{argmax, CpuModel, Schedule};
use mobilellm_kernels::Error;

const TOL: f32 = 1e-4;

fn data_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

struct Golden {
    st: Safetensors,
    vocab: usize,
    hidden: usize,
    executed: usize,
}

impl Golden {
    fn open(name: &str, config: &ModelConfig) -> Self {
        let st = Safetensors::open_file(data_dir(name).join("golden.safetensors")).expect("golden file");
        Golden { st, vocab: config.vocab_size, hidden: config.hidden_size, executed: config.executed_layers() }
    }
    fn f32(&self, name: &str, shape: &[usize]) -> Vec<f32> {
        self.st.tensor_f32(name, shape).unwrap_or_else(|e| panic!("{e}"))
    }
    fn ids(&self, name: &str, len: usize) -> Vec<u32> {
        self.st.tensor_i32(name, &[len]).unwrap_or_else(|e| panic!("{e}")).into_iter().map(|i| i as u32).collect()
    }
}

fn load(name: &str) -> CpuModel {
    CpuModel::load(data_dir(name)).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    let d = max_abs_diff(got, want);
    eprintln!("{what}: max |cpu - golden| = {d:.2e}");
    assert!(d <= TOL, "{what}: max |cpu - golden| = {d:.3e} > {TOL:e}");
}

/// Prefill logits of every position, final-norm output and the residual stream after each execution.
fn check_prefill(name: &str, prefix: &str, t: usize) {
    let mut model = load(name);
    let g = Golden::open(name, model.config());
    let (v, h, e) = (g.vocab, g.hidden, g.executed);
    let prompt = g.ids(&format!("{prefix}prompt_ids"), t);
    model.set_capture_hidden(true);
    let logits = model.prefill(&prompt).expect("prefill");
    assert_close(
        &format!("{name} {prefix}prefill_logits"),
        &logits,
        &g.f32(&format!("{prefix}prefill_logits"), &[t, v]),
    );
    assert_close(
        &format!("{name} {prefix}prefill_final_hidden"),
        model.final_hidden(),
        &g.f32(&format!("{prefix}prefill_final_hidden"), &[t, h]),
    );
    assert_close(
        &format!("{name} {prefix}final_hidden"),
        &model.final_hidden()[(t - 1) * h..],
        &g.f32(&format!("{prefix}final_hidden"), &[h]),
    );
    assert_close(
        &format!("{name} {prefix}prefill_layer_hidden"),
        model.layer_hidden(),
        &g.f32(&format!("{prefix}prefill_layer_hidden"), &[e + 1, t, h]),
    );
    assert_eq!(model.position(), t);
}

/// Greedy decoding through the KV cache: ids, every step's logits, and one more step.
fn check_greedy(name: &str, prefix: &str, t: usize) {
    let mut model = load(name);
    let g = Golden::open(name, model.config());
    let v = g.vocab;
    let prompt = g.ids(&format!("{prefix}prompt_ids"), t);
    let want_ids = g.ids(&format!("{prefix}gen_ids"), 20);
    let want_logits = g.f32(&format!("{prefix}gen_logits"), &[20, v]);
    let mut logits = model.prefill_last(&prompt).expect("prefill");
    let (mut ids, mut all) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let id = argmax(&logits) as u32;
        ids.push(id);
        all.extend_from_slice(&logits);
        logits = model.step(id).expect("step");
    }
    assert_close(&format!("{name} {prefix}gen_logits"), &all, &want_logits);
    assert_eq!(ids, want_ids, "{name} {prefix}gen_ids");
    assert_close(
        &format!("{name} {prefix}gen_next_logits"),
        &logits,
        &g.f32(&format!("{prefix}gen_next_logits"), &[v]),
    );
    assert_eq!(model.position(), t + 20);
}

/// Cached steps with fixed, varied tokens (a stronger test of the decode path than greedy ids).
fn forced_logits(model: &mut CpuModel, g: &Golden, prefix: &str, t: usize) -> Vec<f32> {
    let prompt = g.ids(&format!("{prefix}prompt_ids"), t);
    let forced = g.ids(&format!("{prefix}forced_ids"), 20);
    model.reset();
    model.prefill(&prompt).expect("prefill");
    let mut all = Vec::new();
    for &id in &forced {
        all.extend(model.step(id).expect("step"));
    }
    all
}

fn check_forced(name: &str, prefix: &str, t: usize) {
    let mut model = load(name);
    let g = Golden::open(name, model.config());
    let got = forced_logits(&mut model, &g, prefix, t);
    assert_close(
        &format!("{name} {prefix}forced_logits"),
        &got,
        &g.f32(&format!("{prefix}forced_logits"), &[20, g.vocab]),
    );
}

#[test]
fn plain_prefill() {
    check_prefill("tiny-plain", "", 12);
}

#[test]
fn plain_greedy_decode() {
    check_greedy("tiny-plain", "", 12);
}

#[test]
fn plain_forced_decode() {
    check_forced("tiny-plain", "", 12);
}

#[test]
fn plain_single_token_prompt() {
    check_prefill("tiny-plain", "single_", 1);
    check_greedy("tiny-plain", "single_", 1);
    check_forced("tiny-plain", "single_", 1);
}

#[test]
fn shared_prefill() {
    check_prefill("tiny-shared", "", 12);
}

#[test]
fn shared_greedy_decode() {
    check_greedy("tiny-shared", "", 12);
}

#[test]
fn shared_forced_decode() {
    check_forced("tiny-shared", "", 12);
}

#[test]
fn shared_single_token_prompt() {
    check_prefill("tiny-shared", "single_", 1);
    check_greedy("tiny-shared", "single_", 1);
    check_forced("tiny-shared", "single_", 1);
}

/// Wrong schedules must NOT reproduce the layer-shared golden; the README's negative controls report max
/// differences of 0.69 (no sharing), 0.62 (cyclic order) and 0.39 (one cache per unique layer). We only
/// ask for 100x the tolerance, so the test is about "clearly different", not about matching their control.
#[test]
fn wrong_schedules_fail_the_shared_golden() {
    let (config, weights) = ModelWeightsF32::load_dir(data_dir("tiny-shared")).expect("load");
    let g = Golden::open("tiny-shared", &config);
    let n = config.num_hidden_layers;
    let want_prefill = g.f32("prefill_logits", &[12, g.vocab]);
    let want_forced = g.f32("forced_logits", &[20, g.vocab]);
    let prompt = g.ids("prompt_ids", 12);

    let schedules = [
        ("no sharing", Schedule::custom((0..n).collect(), (0..n).collect())),
        ("cyclic order", Schedule::custom((0..2 * n).map(|e| e % n).collect(), (0..2 * n).collect())),
        (
            "one KV cache per unique layer",
            Schedule::custom((0..2 * n).map(|e| e / 2).collect(), (0..2 * n).map(|e| e / 2).collect()),
        ),
    ];
    for (what, schedule) in schedules {
        let mut model =
            CpuModel::with_schedule(config.clone(), weights.clone(), schedule.expect("schedule")).expect("model");
        let prefill = model.prefill(&prompt).expect("prefill");
        let forced = forced_logits(&mut model, &g, "", 12);
        let (dp, df) = (max_abs_diff(&prefill, &want_prefill), max_abs_diff(&forced, &want_forced));
        eprintln!("{what}: max |diff| prefill {dp:.3}, forced decode {df:.3}");
        assert!(df > 100.0 * TOL, "{what}: forced decode logits match the shared golden (max diff {df:.2e})");
    }

    // The correct schedule, spelled out by hand, is the config's.
    let right = Schedule::custom((0..2 * n).map(|e| e / 2).collect(), (0..2 * n).collect()).expect("schedule");
    assert_eq!(&right, CpuModel::new(config.clone(), weights).expect("model").schedule());
}

/// llama.cpp permutes Q/K rows at GGUF conversion so that RoPE pairs (2i, 2i+1); doing that permutation
/// to the tiny model's weights and switching to the interleaved layout must give the same logits, since
/// q.k is unchanged when both are permuted alike within a head.
#[test]
fn interleaved_rope_on_permuted_weights_matches() {
    let (config, mut weights) = ModelWeightsF32::load_dir(data_dir("tiny-plain")).expect("load");
    let g = Golden::open("tiny-plain", &config);
    let (hd, h) = (config.head_dim, config.hidden_size);
    let permute = |w: &[f32], heads: usize| -> Vec<f32> {
        let mut out = vec![0.0; w.len()];
        for head in 0..heads {
            for j in 0..hd / 2 {
                for (dst, src) in [(2 * j, j), (2 * j + 1, j + hd / 2)] {
                    let (d, s) = ((head * hd + dst) * h, (head * hd + src) * h);
                    out[d..d + h].copy_from_slice(&w[s..s + h]);
                }
            }
        }
        out
    };
    for layer in &mut weights.layers {
        layer.q_proj = permute(&layer.q_proj, config.num_attention_heads);
        layer.k_proj = permute(&layer.k_proj, config.num_key_value_heads);
    }
    let prompt = g.ids("prompt_ids", 12);
    let want = g.f32("prefill_logits", &[12, g.vocab]);
    let mut model = CpuModel::new(config.clone().with_rope_layout(RopeLayout::Interleaved), weights.clone()).unwrap();
    assert_close("interleaved rope, permuted weights", &model.prefill(&prompt).unwrap(), &want);
    // And the halves layout on the permuted weights is wrong, so the test does distinguish the layouts.
    let mut wrong = CpuModel::new(config, weights).unwrap();
    let d = max_abs_diff(&wrong.prefill(&prompt).unwrap(), &want);
    assert!(d > 100.0 * TOL, "halves rope on permuted weights should differ, max diff {d:.2e}");
}

/// Prefill in chunks equals one prefill; `prefill_last` is the last row; `reset` starts over.
#[test]
fn chunked_prefill_last_row_and_reset() {
    let mut model = load("tiny-shared");
    let g = Golden::open("tiny-shared", model.config());
    let v = g.vocab;
    let prompt = g.ids("prompt_ids", 12);
    let want = g.f32("prefill_logits", &[12, v]);
    let mut chunked = model.prefill(&prompt[..5]).unwrap();
    chunked.extend(model.prefill(&prompt[5..]).unwrap());
    assert_close("chunked prefill", &chunked, &want);
    model.reset();
    assert_eq!(model.position(), 0);
    assert_close("prefill_last after reset", &model.prefill_last(&prompt).unwrap(), &want[11 * v..]);
    let (k, val) = model.kv_cache(7).unwrap();
    assert_eq!((k.len(), val.len()), (12 * model.config().kv_dim(), 12 * model.config().kv_dim()));
}

#[test]
fn bad_tokens_and_positions_are_typed_errors() {
    let (config, weights) = ModelWeightsF32::load_dir(data_dir("tiny-plain")).expect("load");
    let mut small = config.clone();
    small.max_position_embeddings = 16;
    let mut model = CpuModel::new(small, weights).unwrap();

    let err = model.prefill(&[3, 512, 7]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("512") && msg.contains("vocab_size 512") && msg.contains("index 1"), "{msg}");
    assert_eq!(model.position(), 0, "a rejected prompt must not advance the position");

    assert!(matches!(model.prefill(&[]).unwrap_err(), Error::InvalidArgument { .. }));

    model.prefill(&[5; 10]).unwrap();
    let err = model.prefill(&[5; 7]).unwrap_err();
    assert!(matches!(err, Error::Capacity { requested: 17, capacity: 16, .. }), "{err:?}");
    assert!(err.to_string().contains("17") && err.to_string().contains("16"), "{err}");
    for _ in 0..6 {
        model.step(9).unwrap();
    }
    assert_eq!(model.position(), 16);
    let err = model.step(9).unwrap_err();
    assert!(matches!(err, Error::Capacity { requested: 17, capacity: 16, .. }), "{err:?}");
    let err = model.step(u32::MAX).unwrap_err();
    assert!(err.to_string().contains(&u32::MAX.to_string()), "{err}");
}

#[test]
fn weights_or_schedule_not_fitting_the_config_are_rejected() {
    let (config, weights) = ModelWeightsF32::load_dir(data_dir("tiny-plain")).expect("load");
    let mut bad = weights.clone();
    bad.layers[2].up_proj.pop();
    let err = CpuModel::new(config.clone(), bad).unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. }) && err.to_string().contains("model.layers.2.mlp.up_proj.weight"),
        "{err}"
    );
    let schedule = Schedule::custom(vec![0, 4], vec![0, 1]).unwrap();
    let err = CpuModel::with_schedule(config, weights, schedule).unwrap_err();
    assert!(err.to_string().contains("got 4") && err.to_string().contains("num_hidden_layers 4"), "{err}");
    assert!(Schedule::custom(vec![0, 1], vec![0]).is_err());
}

/// The 125M shape with random weights, 60 executed layers: a smoke test that the pass runs at real
/// widths (GQA 9/3, vocab 32000) and that layer sharing doubles the executions, not the weights.
#[test]
fn mobilellm_125m_shape_runs_with_layer_sharing() {
    let mut config = ModelConfig::mobilellm_125m().with_layer_sharing(true);
    config.num_hidden_layers = 2; // 4 executions keep the test fast at opt-level 1; widths are real
    let weights = ModelWeightsF32::random(&config, 7).unwrap();
    let mut model = CpuModel::new(config.clone(), weights).unwrap();
    assert_eq!(model.schedule().layers(), &[0, 0, 1, 1]);
    let start = std::time::Instant::now();
    let logits = model.prefill(&[1, 500, 31999]).unwrap();
    let next = model.step(argmax(&logits[2 * 32000..]) as u32).unwrap();
    eprintln!("125M widths, 2 unique layers x2, 3-token prefill + 1 step: {:?}", start.elapsed());
    assert_eq!((logits.len(), next.len()), (3 * 32000, 32000));
    assert!(logits.iter().chain(&next).all(|x| x.is_finite()));
}

/// Timing at the full MobileLLM-125M-LS shape (30 unique layers run 60 times, random weights, ~500 MB of
/// f32): `cargo test --release --test forward_cpu -- --ignored --nocapture`.
#[test]
#[ignore = "timing at the full 125M shape; allocates ~500 MB"]
fn mobilellm_125m_full_timing() {
    let config = ModelConfig::mobilellm_125m().with_layer_sharing(true);
    let start = std::time::Instant::now();
    let weights = ModelWeightsF32::random(&config, 7).unwrap();
    eprintln!("random weights: {:?}", start.elapsed());
    let mut model = CpuModel::new(config, weights).unwrap();
    let prompt: Vec<u32> = (0..32).map(|i| (i * 997 % 32000) as u32).collect();
    let start = std::time::Instant::now();
    let mut logits = model.prefill_last(&prompt).unwrap();
    let prefill = start.elapsed();
    let start = std::time::Instant::now();
    let steps = 8;
    for _ in 0..steps {
        logits = model.step(argmax(&logits) as u32).unwrap();
    }
    let decode = start.elapsed() / steps;
    eprintln!(
        "125M-LS (60 executed layers): prefill 32 tokens {prefill:?} ({:.1} tok/s), decode {decode:?}/token",
        32.0 / prefill.as_secs_f64()
    );
}
