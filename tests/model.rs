//! The planned GPU model against the whole-model goldens made with transformers (`tests/data/tiny-*`):
//! prefill logits of every position, greedy decode through the KV cache, forced decode, and the
//! one-token prompt from an empty cache; under both feature sets.
mod common;

use common::{data_dir, gpus, max_diff, sentencepiece_checkpoint, Golden};
use mobilellm_kernels::model::safetensors::Safetensors;
use mobilellm_kernels::model::{HostModel, Model, PlanOptions};
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::{DType, FeatureSet, Gpu, GpuOptions, WeightStorage};

fn load(gpu: &Gpu, name: &str, wtype: WeightType, kv_dtype: DType) -> Model {
    load_with_context(gpu, name, wtype, kv_dtype, 64)
}

fn load_with_context(gpu: &Gpu, name: &str, wtype: WeightType, kv_dtype: DType, context: usize) -> Model {
    let host = HostModel::from_safetensors_dir(&data_dir(name), wtype).unwrap();
    Model::new(gpu, &host, &PlanOptions { context, max_batch: 16, kv_dtype: Some(kv_dtype) }).unwrap()
}

/// Runs every golden case of `name` on `gpu` in `wtype`; returns the largest logit difference.
fn run_golden(gpu: &Gpu, name: &str, wtype: WeightType, kv_dtype: DType) -> f32 {
    run_golden_model(&mut load(gpu, name, wtype, kv_dtype), name)
}

fn run_golden_model(model: &mut Model, name: &str) -> f32 {
    let g = Golden::open(name);
    let mut worst = 0.0f32;
    for prefix in ["", "single_"] {
        let prompt = g.ids(&format!("{prefix}prompt_ids"));
        let gen_ids = g.ids(&format!("{prefix}gen_ids"));
        let gen_logits = g.f32(&format!("{prefix}gen_logits"));
        model.reset();
        let (first, prefill) = model.prefill_logits(&prompt).unwrap();
        worst = worst.max(max_diff(&prefill, &g.f32(&format!("{prefix}prefill_logits"))));
        assert_eq!(first, gen_ids[0], "{name} {prefix}: first greedy token");
        let mut token = first;
        for (i, &want) in gen_ids.iter().enumerate().skip(1) {
            let (next, logits) = model.step_logits(token).unwrap();
            worst = worst.max(max_diff(&logits, &gen_logits[i * g.vocab..(i + 1) * g.vocab]));
            assert_eq!(next, want, "{name} {prefix}: greedy token {i}");
            token = next;
        }
        // Forced decode from a fresh cache.
        model.reset();
        model.prefill(&prompt).unwrap();
        let forced = g.f32(&format!("{prefix}forced_logits"));
        for (i, &id) in g.ids(&format!("{prefix}forced_ids")).iter().enumerate() {
            let (_, logits) = model.step_logits(id).unwrap();
            worst = worst.max(max_diff(&logits, &forced[i * g.vocab..(i + 1) * g.vocab]));
        }
    }
    worst
}

/// The goldens were made in f32 by transformers; the README measures HF f32 vs exact f64 at <= 1.2e-6 and
/// our CPU twin matches to ~5e-7. The GPU only sums in other orders (f32 throughout, f32 KV cache), which
/// moves logits of magnitude < 0.8 by ~1e-6. Issue contract: max abs error <= 1e-4.
const F32_BOUND: f32 = 1e-4;

/// With the KV cache in f16 (the default where SHADER_F16 exists), K and V are rounded to 11 significant
/// bits (relative 2^-12 ~ 2.4e-4 per element). Scores q.k then move by ~|q||k| 2^-12 and the attention
/// output by the same relative amount; through o_proj and the tied head the logits (|logit| < 0.8) move by a
/// few 1e-4. Bound: 1e-3, ten times the f32 contract, still far below convention errors (>= 1e-2).
const F16_KV_BOUND: f32 = 1e-3;

fn check(name: &str) {
    for gpu in gpus() {
        let worst = run_golden(gpu, name, WeightType::F32, DType::F32);
        eprintln!("{name} f32, f32 KV [{}]: max |logit diff| {worst:.2e}", gpu.features());
        assert!(worst <= F32_BOUND, "{name} [{}]: {worst}", gpu.features());
        if gpu.features().f16 {
            let worst = run_golden(gpu, name, WeightType::F32, DType::F16);
            eprintln!("{name} f32, f16 KV [{}]: max |logit diff| {worst:.2e}", gpu.features());
            assert!(worst <= F16_KV_BOUND, "{name} f16 KV [{}]: {worst}", gpu.features());
        }
    }
}

#[test]
fn tiny_plain_f32_matches_transformers() {
    check("tiny-plain");
}

/// The GPU launch rules run end to end on the test adapter too (`DeviceClass::Gpu` forced): weights in
/// buffers, the one-dispatch `qkv_rope`, GEMVs with threads sharing a row, `gemm_rows`, the tiled prefill
/// attention, and, with a cache of 300 positions, flash-decoding's split + merge at every decode step.
/// Both feature sets; f32 weights and KV cache, so the f32 bound holds.
#[test]
fn gpu_launch_rules_match_the_goldens() {
    use mobilellm_kernels::{DeviceClass, FeatureSet};
    let serial = gpus();
    for features in [FeatureSet::ALL, FeatureSet::NONE] {
        let base = GpuOptions::from_env().unwrap();
        let options = base.clone().features(base.features.intersect(features)).device_class(DeviceClass::Gpu);
        let gpu = Gpu::with_options(&options).unwrap();
        assert!(!gpu.is_cpu_class());
        for name in ["tiny-plain", "tiny-shared"] {
            let mut model = load_with_context(&gpu, name, WeightType::F32, DType::F32, 300);
            let worst = run_golden_model(&mut model, name);
            eprintln!("{name} under GPU rules [{}]: max |logit diff| {worst:.2e}", gpu.describe());
            assert!(worst <= F32_BOUND, "{name} under GPU rules [{}]: {worst}", gpu.features());
        }
    }
    drop(serial);
}

/// On GPUs each decode step's successor is recorded while the step runs, for the same kind of call: a
/// `step` after a `step_logits` (or the reverse) must not run the other's commands (one copies the logits
/// back, the other does not), nor must a step after a multi-row `prefill_logits`, which grows the logits
/// readback. Alternating the kinds through the golden's greedy decode keeps every token and logit.
#[test]
fn steps_recorded_ahead_match_the_golden() {
    use mobilellm_kernels::DeviceClass;
    let serial = gpus();
    let gpu = Gpu::with_options(&GpuOptions::from_env().unwrap().device_class(DeviceClass::Gpu)).unwrap();
    let g = Golden::open("tiny-shared");
    let (prompt, gen_ids, vocab) = (g.ids("prompt_ids"), g.ids("gen_ids"), g.vocab);
    let (prefill_want, gen_want) = (g.f32("prefill_logits"), g.f32("gen_logits"));
    let last = prompt.len() - 1;
    let mut model = load(&gpu, "tiny-shared", WeightType::F32, DType::F32);
    model.prefill(&prompt[..last - 1]).unwrap();
    let mut worst = 0.0f32;
    for i in last - 1..=last {
        let (_, logits) = model.step_logits(prompt[i]).unwrap();
        worst = worst.max(max_diff(&logits, &prefill_want[i * vocab..(i + 1) * vocab]));
    }
    model.reset();
    let (first, logits) = model.prefill_logits(&prompt).unwrap();
    worst = worst.max(max_diff(&logits, &prefill_want));
    let mut token = first;
    for (i, &want) in gen_ids.iter().enumerate().skip(1) {
        let next = if i % 3 == 0 {
            model.step(token).unwrap()
        } else {
            let (next, logits) = model.step_logits(token).unwrap();
            worst = worst.max(max_diff(&logits, &gen_want[i * vocab..(i + 1) * vocab]));
            next
        };
        assert_eq!(next, want, "greedy token {i}");
        token = next;
    }
    eprintln!("steps recorded ahead [{}]: max |logit diff| {worst:.2e}", gpu.describe());
    assert!(worst <= F32_BOUND, "steps recorded ahead: {worst}");
    drop(serial);
}

#[test]
fn tiny_shared_f32_matches_transformers() {
    check("tiny-shared");
}

/// q8_0 changes the model itself, so it is checked twice. Tight: against the CPU reference running the
/// same dequantized q8_0 weights (same math, only summation order differs: 1e-4 as for f32). Loose:
/// against the f32 golden, within the CPU's own q8_0-vs-f32 distance plus that 1e-4, i.e. the GPU adds
/// nothing to the quantization error.
#[test]
fn tiny_shared_q8_0_matches_its_dequantized_reference() {
    use mobilellm_kernels::reference::forward::CpuModel;
    let g = Golden::open("tiny-shared");
    let host = HostModel::from_safetensors_dir(&data_dir("tiny-shared"), WeightType::Q8_0).unwrap();
    let mut cpu = CpuModel::new(host.config.clone(), host.dequantized()).unwrap();
    let prompt = g.ids("prompt_ids");
    let cpu_logits = cpu.prefill(&prompt).unwrap();
    let quantization_error = max_diff(&cpu_logits, &g.f32("prefill_logits"));
    for gpu in gpus() {
        let mut model =
            Model::new(gpu, &host, &PlanOptions { context: 64, max_batch: 16, kv_dtype: Some(DType::F32) }).unwrap();
        let (_, gpu_logits) = model.prefill_logits(&prompt).unwrap();
        let vs_cpu = max_diff(&gpu_logits, &cpu_logits);
        let vs_golden = max_diff(&gpu_logits, &g.f32("prefill_logits"));
        eprintln!(
            "tiny-shared q8_0 [{}]: vs CPU q8_0 {vs_cpu:.2e}, vs f32 golden {vs_golden:.2e} (CPU q8_0 vs golden {quantization_error:.2e})",
            gpu.features()
        );
        assert!(vs_cpu <= F32_BOUND, "q8_0 GPU vs CPU: {vs_cpu}");
        assert!(vs_golden <= quantization_error + F32_BOUND, "q8_0 GPU vs golden: {vs_golden}");
    }
}

/// A wrong schedule must fail the shared golden: running the shared checkpoint without layer sharing
/// (each unique layer once) moves logits by ~0.7 (the golden README's negative control).
#[test]
fn wrong_schedule_fails_the_shared_golden() {
    let g = Golden::open("tiny-shared");
    let mut host = HostModel::from_safetensors_dir(&data_dir("tiny-shared"), WeightType::F32).unwrap();
    assert!(host.config.layer_sharing);
    host.config.layer_sharing = false;
    let gpu = &gpus()[1];
    let mut model =
        Model::new(gpu, &host, &PlanOptions { context: 64, max_batch: 16, kv_dtype: Some(DType::F32) }).unwrap();
    let (_, logits) = model.prefill_logits(&g.ids("prompt_ids")).unwrap();
    let diff = max_diff(&logits, &g.f32("prefill_logits"));
    assert!(diff > 0.1, "no-sharing schedule should miss the shared golden, got max diff {diff}");
}

/// Shapes the one-dispatch Q/K/V entries decline (head dims that are not multiples of 16, 8 among them, where
/// `rope_cache` once failed to compile; a hidden width over
/// `qkv_rope`'s 1600) plan as the normed GEMV plus `rope_cache` instead of failing, under GPU launch rules
/// (they used to fail there) and CPU ones, and match the CPU forward pass (f32 weights and cache: the f32
/// contract).
#[test]
fn plans_shapes_the_qkv_entries_decline() {
    use mobilellm_kernels::reference::forward::CpuModel;
    use mobilellm_kernels::DeviceClass;
    let serial = gpus();
    let forced = Gpu::with_options(&GpuOptions::from_env().unwrap().device_class(DeviceClass::Gpu)).unwrap();
    for ((hidden, head_dim), gpu) in
        [(64, 24), (64, 8), (1632, 16)].into_iter().flat_map(|s| [(s, &forced), (s, &serial[0])])
    {
        let config = mobilellm_kernels::model::ModelConfig {
            hidden_size: hidden,
            head_dim,
            intermediate_size: 64,
            num_hidden_layers: 1,
            ..common::tiny_config()
        };
        let host = HostModel::synthetic(config.clone(), WeightType::F32, 3).unwrap();
        let mut cpu = CpuModel::new(config, host.dequantized()).unwrap();
        let options = PlanOptions { context: 16, max_batch: 8, kv_dtype: Some(DType::F32) };
        let mut model = Model::new(gpu, &host, &options).unwrap();
        let prompt = [5, 17, 42];
        let (first, logits) = model.prefill_logits(&prompt).unwrap();
        let mut worst = max_diff(&logits, &cpu.prefill(&prompt).unwrap());
        let (_, logits) = model.step_logits(first).unwrap();
        worst = worst.max(max_diff(&logits, &cpu.step(first).unwrap()));
        eprintln!("hidden {hidden} head_dim {head_dim} [{}]: max |logit diff| {worst:.2e}", gpu.describe());
        assert!(worst <= F32_BOUND, "hidden {hidden} head_dim {head_dim}: {worst}");
    }
    drop(serial);
}

/// Seeded random model configurations, each planned under GPU and CPU launch rules and checked against
/// the CPU forward pass on the same (dequantized) weights: a prefill's logits at every position, then two
/// decode steps. Widths in whole blocks (any for f32/f16), query heads in groups of 1-4 over 1-3 KV heads,
/// head dims the KV cache takes (multiples of 4; of 32 for quantized weights), tied or separate heads, layer sharing on and off, both
/// RoPE layouts, every weight type; f32 KV cache, so the f32 contract holds (synthetic logits stay < 1).
#[test]
fn seeded_random_configs() {
    use mobilellm_kernels::model::RopeLayout;
    use mobilellm_kernels::reference::forward::CpuModel;
    use mobilellm_kernels::DeviceClass;
    let serial = gpus();
    let forced = Gpu::with_options(&GpuOptions::from_env().unwrap().device_class(DeviceClass::Gpu)).unwrap();
    let mut rng = common::ShapeRng::new(17);
    for _ in 0..6 {
        let wtype = rng.pick(&WeightType::ALL);
        let width = |rng: &mut common::ShapeRng, most_blocks: usize| match wtype {
            WeightType::F32 | WeightType::F16 => rng.range(4, 32 * most_blocks),
            _ => 32 * rng.range(1, most_blocks),
        };
        let kv_heads = rng.range(1, 3);
        let tied = rng.chance(50);
        let config = mobilellm_kernels::model::ModelConfig {
            hidden_size: width(&mut rng, 12),
            intermediate_size: width(&mut rng, 20),
            num_hidden_layers: rng.range(1, 2),
            num_attention_heads: kv_heads * rng.range(1, 4),
            num_key_value_heads: kv_heads,
            // Quantized o_proj weights take heads * head_dim as in_features: whole blocks.
            head_dim: if matches!(wtype, WeightType::F32 | WeightType::F16) {
                4 * rng.range(1, 24)
            } else {
                32 * rng.range(1, 3)
            },
            vocab_size: rng.range(2, 300),
            tie_word_embeddings: tied,
            share_embedding: tied,
            layer_sharing: rng.chance(50),
            rope_layout: rng.pick(&[RopeLayout::Halves, RopeLayout::Interleaved]),
            ..common::tiny_config()
        };
        let host = HostModel::synthetic(config.clone(), wtype, 5).unwrap();
        let prompt: Vec<u32> = (0..rng.range(1, 9)).map(|_| rng.range(0, config.vocab_size - 1) as u32).collect();
        let forced_ids: Vec<u32> = (0..2).map(|_| rng.range(0, config.vocab_size - 1) as u32).collect();
        let mut cpu = CpuModel::new(config.clone(), host.dequantized()).unwrap();
        let mut want = cpu.prefill(&prompt).unwrap();
        for &id in &forced_ids {
            want.extend(cpu.step(id).unwrap());
        }
        let cpu_rules = rng.pick(&[&serial[0], &serial[1]]);
        for gpu in [&forced, cpu_rules] {
            let options = PlanOptions { context: 16, max_batch: 8, kv_dtype: Some(DType::F32) };
            let mut model = Model::new(gpu, &host, &options).unwrap();
            let mut got = model.prefill_logits(&prompt).unwrap().1;
            for &id in &forced_ids {
                got.extend(model.step_logits(id).unwrap().1);
            }
            let worst = max_diff(&got, &want);
            let c = &config;
            let what = format!(
                "{wtype} hidden {} ffn {} layers {} heads {}/{} hd {} vocab {} tied {} sharing {} {:?}, {} tokens [{}]",
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim,
                c.vocab_size,
                c.tie_word_embeddings,
                c.layer_sharing,
                c.rope_layout,
                prompt.len(),
                gpu.describe()
            );
            eprintln!("{what}: max |logit diff| {worst:.2e}");
            assert!(worst <= F32_BOUND, "{what}: {worst}");
        }
    }
    drop(serial);
}

/// `reuse_prefix` resumes from what the cache holds. After an earlier sequence that shares the golden
/// prompt's first half and then differs, and a reset, only the second half is fed; its logits and the greedy
/// decode after it match transformers' within the f32 contract. The reuse stops at the first differing
/// token, is capped one short of a prompt held whole, and never reaches past a `seek` into unknown
/// positions; a failed call forgets nothing.
#[test]
fn reused_cache_prefix_matches_the_golden() {
    let g = Golden::open("tiny-shared");
    let (prompt, gen_ids) = (g.ids("prompt_ids"), g.ids("gen_ids"));
    let (prefill_want, gen_want, vocab) = (g.f32("prefill_logits"), g.f32("gen_logits"), g.vocab);
    let keep = prompt.len() / 2;
    assert!(keep >= 1 && prompt.len() >= 3, "golden prompt of {} tokens", prompt.len());
    for gpu in gpus() {
        let mut model = load(gpu, "tiny-shared", WeightType::F32, DType::F32);
        let mut earlier = prompt[..keep].to_vec();
        earlier.extend([(prompt[keep] + 1) % vocab as u32, 7]);
        model.prefill(&earlier).unwrap();
        model.step(3).unwrap();
        earlier.push(3);
        assert_eq!(model.cached_tokens(), earlier);
        assert!(model.prefill(&[vocab as u32]).is_err());
        assert_eq!(model.cached_tokens(), earlier, "a rejected call forgets nothing");

        model.reset();
        assert_eq!(model.reuse_prefix(&prompt), keep);
        assert_eq!(model.position(), keep);
        let (first, logits) = model.prefill_logits(&prompt[keep..]).unwrap();
        let mut worst = max_diff(&logits, &prefill_want[keep * vocab..]);
        assert_eq!(first, gen_ids[0], "first greedy token after the reused prefix");
        let mut token = first;
        for (i, &want) in gen_ids.iter().enumerate().skip(1) {
            let (next, logits) = model.step_logits(token).unwrap();
            worst = worst.max(max_diff(&logits, &gen_want[i * vocab..(i + 1) * vocab]));
            assert_eq!(next, want, "greedy token {i} after the reused prefix");
            token = next;
        }
        let fed = [prompt.as_slice(), &gen_ids[..gen_ids.len() - 1]].concat();
        assert_eq!(model.cached_tokens(), fed);

        // The whole prompt is held: the last position is fed again to sample from fresh logits.
        assert_eq!(model.reuse_prefix(&prompt), prompt.len() - 1);
        let (again, last) = model.prefill_logits(&prompt[prompt.len() - 1..]).unwrap();
        worst = worst.max(max_diff(&last, &prefill_want[(prompt.len() - 1) * vocab..]));
        assert_eq!(again, gen_ids[0]);
        eprintln!("tiny-shared reused prefix [{}]: max |logit diff| {worst:.2e}", gpu.features());
        assert!(worst <= F32_BOUND, "reused prefix [{}]: {worst}", gpu.features());

        // Positions a seek skips are unknown: the cache is known only up to where the seek started.
        model.seek(prompt.len() + 2).unwrap();
        model.step(5).unwrap();
        assert_eq!(model.cached_tokens(), prompt);
        let longer = [prompt.as_slice(), &[1, 2, 5, 9]].concat();
        assert_eq!(model.reuse_prefix(&longer), prompt.len());
    }
}

/// After warm-up no model call allocates GPU memory: a prefill of a seen length, 20 `step` and 20
/// `step_logits` (and a profiled step where the device has timestamps) create no buffer (the logits and
/// timestamp readbacks used to be fresh buffers per call). Under CPU launch rules and under GPU ones, where
/// each step records its successor's commands ahead.
#[test]
fn decode_allocates_no_buffers_after_warm_up() {
    use mobilellm_kernels::DeviceClass;
    let _serial = gpus();
    for class in [None, Some(DeviceClass::Gpu)] {
        // A device of its own: the shared test devices allocate for tests running in parallel.
        let options = GpuOptions::from_env().unwrap();
        let gpu = Gpu::with_options(&match class {
            Some(class) => options.device_class(class),
            None => options,
        })
        .unwrap();
        let mut model = load(&gpu, "tiny-shared", WeightType::F32, DType::F32);
        // A CPU driver's prefill of WINDOW_MIN_VECTORS or more tokens stages x in the device's texel textures;
        // the report counts them as scratch.
        let prompt = [13, 218, 116, 5, 9, 7];
        let fresh = model.memory();
        model.prefill(&prompt).unwrap();
        let staging = gpu.staging_bytes();
        assert_eq!(staging > 0, gpu.weight_storage() == WeightStorage::Texture, "staging textures: {staging} B");
        assert_eq!(model.memory().scratch - fresh.scratch, staging);
        model.reset();
        let mut token = model.prefill_logits(&prompt).unwrap().0;
        token = model.step(token).unwrap();
        token = model.step_logits(token).unwrap().0;
        let timestamps = gpu.features().timestamps;
        if timestamps {
            model.profile_step(token).unwrap();
        }
        model.reset();
        let before = gpu.buffers_created();
        let memory = model.memory();
        token = model.prefill_logits(&prompt).unwrap().0;
        for _ in 0..20 {
            token = model.step(token).unwrap();
            token = model.step_logits(token).unwrap().0;
        }
        if timestamps {
            model.profile_step(token).unwrap();
        }
        let what = gpu.describe();
        assert_eq!(gpu.buffers_created() - before, 0, "buffers created by the calls after warm-up [{what}]");
        assert_eq!(model.memory(), memory, "[{what}]");
    }
}

/// `mobilellm run` reproduces tiny-shared's prefill and forced logits from the shell.
#[test]
fn cli_run_dump_reproduces_tiny_shared() {
    cli_run_dump_matches_golden(&data_dir("tiny-shared"));
}

/// `mobilellm run` on `model` reproduces the tiny-shared golden (logits within the f32 contract, the same
/// greedy tokens).
fn cli_run_dump_matches_golden(model: &std::path::Path) {
    let g = Golden::open("tiny-shared");
    let join = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    // Named after the model too: the callers run in parallel threads of one process.
    let stem = model.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let dump = std::env::temp_dir().join(format!("mobilellm-run-{}-{stem}.safetensors", std::process::id()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mobilellm"))
        .args(["run", "--model"])
        .arg(model)
        .args(["--prompt-ids", &join(&g.ids("prompt_ids")), "--max-new", "4"])
        .args(["--forced-ids", &join(&g.ids("forced_ids")), "--context", "64", "--dump"])
        .arg(&dump)
        .env("MOBILELLM_FEATURES", "none")
        .status()
        .unwrap();
    assert!(status.success());
    let out = Safetensors::open_file(&dump).unwrap();
    let read = |name: &str| {
        let shape = out.dtype_and_shape(name).unwrap().1.to_vec();
        out.tensor_f32(name, &shape).unwrap()
    };
    assert!(max_diff(&read("prefill_logits"), &g.f32("prefill_logits")) <= F32_BOUND);
    assert!(max_diff(&read("forced_logits"), &g.f32("forced_logits")) <= F32_BOUND);
    let gen = out.tensor_i32("gen_ids", &[4]).unwrap();
    assert_eq!(gen.iter().map(|&v| v as u32).collect::<Vec<_>>(), g.ids("gen_ids")[..4]);
    let _ = std::fs::remove_file(dump);
}

/// An engine keeps a model on a worker thread and shares the device: these types must stay `Send` and
/// `Sync` (a field like an `Rc` or a `RefCell` would break this at compile time).
/// `mobilellm convert` writes the layer-shared checkpoint as GGUF (interleaved Q/K rows, every block twice
/// plus the sharing key), and `mobilellm run` on that file still reproduces transformers' golden.
#[test]
fn cli_convert_keeps_the_shared_golden() {
    let out = std::env::temp_dir().join(format!("mobilellm-convert-{}.gguf", std::process::id()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mobilellm"))
        .args(["convert", "--model"])
        .arg(data_dir("tiny-shared"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    cli_run_dump_matches_golden(&out);
    let _ = std::fs::remove_file(out);
}

#[test]
fn engine_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Model>();
    send_sync::<Gpu>();
    send_sync::<HostModel>();
    send_sync::<mobilellm_kernels::tokenizer::Tokenizer>();
    send_sync::<mobilellm_kernels::Tensor>();
    send_sync::<mobilellm_kernels::ops::Dispatch>();
}

/// `mobilellm generate` on a checkpoint directory whose tokenizer is a SentencePiece `tokenizer.model`
/// (tiny-plain's weights with the 512-token vocabulary of `tests/data/hf-tokenizers/sentencepiece`): it prints
/// the prompt, then the decoded greedy continuation the library gives for the same ids.
#[test]
fn cli_generate_reads_a_checkpoint_tokenizer() {
    use mobilellm_kernels::tokenizer::Tokenizer;
    let dir = sentencepiece_checkpoint("mobilellm-checkpoint");
    let prompt = "The capital of France is";
    // `mobilellm generate` on the directory, with `extra` options: (stdout, stderr).
    let generate = |extra: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mobilellm"))
            .args(["generate", "--max-new", "6", "--context", "64"])
            .args(extra)
            .arg("--model")
            .arg(&dir)
            .arg(prompt)
            .env("MOBILELLM_FEATURES", "none")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (plain, _) = generate(&[]);

    let tok = Tokenizer::from_hf_dir(&dir).unwrap().unwrap();
    let ids = tok.encode(prompt, true);
    assert_eq!(ids[0], 1, "BOS first, as transformers' LlamaTokenizer");
    let options = GpuOptions { features: FeatureSet::NONE, ..GpuOptions::from_env().unwrap() };
    let gpu = Gpu::with_options(&options).unwrap();
    let host = HostModel::from_safetensors_dir(&dir, WeightType::F32).unwrap();
    let mut model = Model::new(&gpu, &host, &PlanOptions { context: 256, ..PlanOptions::default() }).unwrap();
    let eos = tok.eos().unwrap();
    let generated = model.generate(&ids, 6, &[eos], |_| true).unwrap();
    let mut stream = tok.stream_decoder();
    let mut text: String = generated.iter().filter(|&&id| id != eos).map(|&id| stream.push(id)).collect();
    text.push_str(&stream.finish());
    assert!(!generated.is_empty());
    assert_eq!(plain, format!("{prompt}{text}\n"));
    // --stop: the text up to the first occurrence of a piece of it, which is not printed.
    let piece: String = text.chars().skip(text.chars().count() / 2).take(2).collect();
    assert_eq!(piece.chars().count(), 2, "{text:?}");
    let (stopped, log) = generate(&["--stop".as_ref(), "no such text".as_ref(), "--stop".as_ref(), piece.as_ref()]);
    assert_eq!(stopped, format!("{prompt}{}\n", &text[..text.find(&piece).unwrap()]), "{log}");
    assert!(log.contains("[stopped at a stop string]"), "{log}");

    // --prompt-cache: the first run saves the session, the second restores the prompt's tokens from it
    // (all but the last, which must be fed to sample) and prints the same text.
    let cache = dir.join("prompt.kv");
    let run = || generate(&["--prompt-cache".as_ref(), cache.as_os_str()]);
    let (first, log) = run();
    assert!(log.contains(&format!("0 of {} prompt tokens restored", ids.len())), "{log}");
    let (second, log) = run();
    assert!(log.contains(&format!("{} of {} prompt tokens restored", ids.len() - 1, ids.len())), "{log}");
    assert_eq!((&first, &second), (&format!("{prompt}{text}\n"), &format!("{prompt}{text}\n")));

    // --logprobs: the same text, and one log-probability per token, each the model's own (`Model::score` of
    // the generated tokens after the prompt, within 1e-4).
    let (scored, log) = generate(&["--logprobs".as_ref()]);
    assert_eq!(scored, plain);
    let line = log.lines().find_map(|l| l.strip_prefix("[log-probabilities: ")).unwrap_or_else(|| panic!("{log}"));
    let reported: Vec<f64> = line.trim_end_matches(']').split(' ').map(|v| v.parse().unwrap()).collect();
    let want = model.score(&ids, &generated).unwrap();
    assert_eq!(reported.len(), want.len());
    // Printed with two decimals.
    assert!(reported.iter().zip(&want).all(|(r, w)| (r - w).abs() <= 0.005 + 1e-4), "{reported:?} vs {want:?}");

    // --top-logprobs: one line per token, each listing 3 candidates, the first of them the (greedy) pick.
    let (_, log) = generate(&["--logprobs".as_ref(), "--top-logprobs".as_ref(), "3".as_ref()]);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.strip_prefix('[').is_some_and(|l| l.starts_with(|c: char| c.is_ascii_digit())))
        .collect();
    assert_eq!(lines.len(), generated.len(), "{log}");
    for line in lines {
        let (pick, candidates) = line.split_once(" of ").unwrap();
        let pick = pick.split_once(": ").unwrap().1;
        assert!(candidates.starts_with(pick), "{line}");
        assert_eq!(candidates.matches(", ").count(), 2, "{line}");
    }

    // --grammar and --json-schema: what follows the prompt is a sentence of the grammar (complete within
    // 6 tokens, even spelled one character per token: the model then may only stop).
    let grammar_file = dir.join("answer.gbnf");
    std::fs::write(&grammar_file, "root ::= \" \" (\"yes\" | \"no\") \".\"").unwrap();
    let (out, log) = generate(&["--grammar".as_ref(), grammar_file.as_os_str()]);
    let answer = out.strip_prefix(prompt).and_then(|a| a.strip_suffix('\n'));
    assert!(matches!(answer, Some(" yes." | " no.")), "{out:?} {log}");
    // With --logprobs too: the same answer (greedy), one log-probability per token generated.
    let (scored, log) = generate(&["--grammar".as_ref(), grammar_file.as_os_str(), "--logprobs".as_ref()]);
    assert_eq!(scored, out);
    let line = log.lines().find_map(|l| l.strip_prefix("[log-probabilities: ")).unwrap_or_else(|| panic!("{log}"));
    let decoded = log.split("decode ").nth(1).and_then(|t| t.split(' ').next()?.parse::<usize>().ok());
    assert_eq!(Some(line.split(' ').count()), decoded, "{log}");
    let schema_file = dir.join("colour.json");
    std::fs::write(&schema_file, r#"{"enum": ["red", "green", 7]}"#).unwrap();
    let (out, log) = generate(&["--json-schema".as_ref(), schema_file.as_os_str(), "--print-grammar".as_ref()]);
    let answer = out.strip_prefix(prompt).map(str::trim);
    assert!(matches!(answer, Some("\"red\"" | "\"green\"" | "7")), "{out:?} {log}");
    assert!(log.contains("root ::="), "the grammar printed: {log}");
    // --jump-forward: the forced text goes in unpicked (the stats say how much), the answer still a
    // sentence; in the compact layout a schema's whole document here is forced.
    let forced_count = |log: &str| -> usize {
        let stats = log.lines().find_map(|l| l.strip_prefix("[jump-forward: ")).unwrap_or_else(|| panic!("{log}"));
        stats.split(' ').next().unwrap().parse().unwrap()
    };
    let forced = dir.join("forced.gbnf");
    std::fs::write(&forced, "root ::= \" a: \" [yn] \".\"").unwrap();
    let (out, log) = generate(&["--grammar".as_ref(), forced.as_os_str(), "--jump-forward".as_ref()]);
    let answer = out.strip_prefix(prompt).and_then(|a| a.strip_suffix('\n'));
    assert!(matches!(answer, Some(" a: y." | " a: n.")), "{out:?} {log}");
    assert!(forced_count(&log) >= 1, "{log}");
    // With --lookup too: the same answer (greedy either way), drafts and forced tokens reported.
    let lookup_args = ["--lookup".as_ref(), "4".as_ref()];
    let (again, log) =
        generate(&[&lookup_args[..], &["--grammar".as_ref(), forced.as_os_str(), "--jump-forward".as_ref()]].concat());
    assert_eq!(again, out, "{log}");
    assert!(log.contains("[drafts: ") && log.contains("forced tokens]"), "{log}");
    // --draft-model (the model itself) under the grammar: masked greedy decoding's answer.
    let (masked, _) = generate(&["--grammar".as_ref(), forced.as_os_str()]);
    let (drafted, log) =
        generate(&["--draft-model".as_ref(), dir.as_os_str(), "--grammar".as_ref(), forced.as_os_str()]);
    assert_eq!(drafted, masked, "{log}");
    assert!(log.contains("[drafts: "), "{log}");
    // --regex: the answer is text the expression matches whole.
    let (out, log) = generate(&["--regex".as_ref(), r" [ab]{2}\.".as_ref()]);
    let answer = out.strip_prefix(prompt).and_then(|a| a.strip_suffix('\n'));
    assert!(matches!(answer, Some(" aa." | " ab." | " ba." | " bb.")), "{out:?} {log}");
    std::fs::write(&schema_file, r#"{"type": "array", "items": {"const": 1}, "minItems": 2, "maxItems": 2}"#).unwrap();
    let schema_args = ["--json-schema".as_ref(), schema_file.as_os_str(), "--json-layout".as_ref(), "compact".as_ref()];
    let (out, log) = generate(&[&schema_args[..], &["--jump-forward".as_ref()]].concat());
    assert_eq!(out.strip_prefix(prompt), Some("[1,1]\n"), "{log}");
    assert!(forced_count(&log) >= 2, "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Penalties through the planned model: every sampled token (after a prefill split into chunks, and at each
/// decode step) is what the CPU twin picks from that position's raw logits with the penalties over the last
/// `penalty_last_n` tokens fed, prompt and generated alike. A negative frequency penalty (a reward of 100 per
/// occurrence) with temperature 5 makes every pick one of the window's tokens, nearly uniformly, so a window
/// one token too long or too short, or cut at a chunk, changes picks.
#[test]
fn sampling_penalties_follow_the_recent_tokens() {
    use mobilellm_kernels::model::Sampling;
    use mobilellm_kernels::ops::sample::Penalties;
    use mobilellm_kernels::ops::StepParams;
    use mobilellm_kernels::reference;
    let host = HostModel::from_safetensors_dir(&data_dir("tiny-plain"), WeightType::F32).unwrap();
    let vocab = host.config.vocab_size;
    let penalties = Penalties { repeat: 1.0, frequency: -100.0, presence: 0.0 };
    let last_n = 6;
    // The twin's pick from a raw logits row after `fed`: the step seed is the sampling seed plus the length fed.
    let expected = |seed: u32, fed: &[u32], row: &[f32]| {
        let mut p = StepParams { temperature: 5.0, top_p: 1.0, seed: seed + fed.len() as u32, ..StepParams::default() };
        penalties.write(&fed[fed.len().saturating_sub(last_n)..], &mut p).unwrap();
        reference::sample(row, &p)
    };
    let prompt: Vec<u32> = (0..10).map(|i| 1 + 4 * i).collect();
    for gpu in gpus() {
        let options = PlanOptions { context: 64, max_batch: 4, ..PlanOptions::default() };
        let mut model = Model::new(gpu, &host, &options).unwrap();
        let mut window_picks = 0;
        for seed in 0..6 {
            let sampling = Sampling { temperature: 5.0, penalties, penalty_last_n: last_n, seed, ..Sampling::greedy() };
            model.set_sampling(sampling).unwrap();
            model.reset();
            let (mut token, logits) = model.prefill_logits(&prompt).unwrap();
            let mut fed = prompt.clone();
            let what = gpu.describe();
            assert_eq!(token, expected(seed, &fed, &logits[(prompt.len() - 1) * vocab..]), "seed {seed} [{what}]");
            for _ in 0..6 {
                window_picks += usize::from(fed[fed.len() - last_n..].contains(&token));
                fed.push(token);
                let (next, row) = model.step_logits(token).unwrap();
                assert_eq!(next, expected(seed, &fed, &row), "seed {seed}, after {fed:?} [{what}]");
                token = next;
            }
        }
        assert_eq!(window_picks, 36, "every pick comes from the window");
    }
}

/// A token mask on the planned model: each step's pick is the masked twin's pick from that step's logits
/// (greedy and sampled), so only allowed tokens come out, also after a mask that changes per step; lifting
/// it brings back the unmasked picks; bad masks and speculative decoding under a mask are refused.
#[test]
fn token_masks_constrain_every_pick() {
    use mobilellm_kernels::model::{LookupOptions, Sampling};
    use mobilellm_kernels::ops::sample::TokenMask;
    use mobilellm_kernels::ops::StepParams;
    use mobilellm_kernels::reference;
    let host = HostModel::from_safetensors_dir(&data_dir("tiny-plain"), WeightType::Q8_0).unwrap();
    let vocab = host.config.vocab_size;
    let prompt: Vec<u32> = (0..10).map(|i| 1 + 4 * i).collect();
    for gpu in gpus() {
        let options = PlanOptions { context: 64, max_batch: 4, ..PlanOptions::default() };
        let mut model = Model::new(gpu, &host, &options).unwrap();
        for (temperature, seed) in [(0.0, 0), (2.0, 3)] {
            model.set_sampling(Sampling { temperature, seed, ..Sampling::greedy() }).unwrap();
            model.reset();
            // Odd ids, then a mask that changes per step (ids below 64 + 8 * step).
            let odd = TokenMask::allowing(vocab, (1..vocab as u32).step_by(2)).unwrap();
            model.set_token_mask(Some(&odd)).unwrap();
            let (mut token, logits) = model.prefill_logits(&prompt).unwrap();
            let p = |fed: usize| StepParams {
                temperature,
                top_p: 1.0,
                seed: seed + fed as u32,
                mask: 1,
                ..StepParams::default()
            };
            let last = &logits[(prompt.len() - 1) * vocab..];
            assert_eq!(token, reference::sample_masked(last, &p(prompt.len()), odd.words()));
            let mut fed = prompt.len();
            for step in 0..6u32 {
                assert!(token % 2 == 1 || step > 0 && token < 64 + 8 * step, "{token} at step {step}");
                let low = TokenMask::allowing(vocab, 0..64 + 8 * (step + 1)).unwrap();
                model.set_token_mask(Some(&low)).unwrap();
                let (next, row) = model.step_logits(token).unwrap();
                fed += 1;
                assert_eq!(
                    next,
                    reference::sample_masked(&row, &p(fed), low.words()),
                    "step {step} [{}]",
                    gpu.describe()
                );
                token = next;
            }
            // Lifted: the pick is the unmasked one again.
            model.set_token_mask(None).unwrap();
            let (next, row) = model.step_logits(token).unwrap();
            fed += 1;
            assert_eq!(next, reference::sample(&row, &StepParams { mask: 0, ..p(fed) }));
        }
        // Refused, with the model unchanged: another vocabulary, an empty mask, lookup decoding under a mask.
        model.set_sampling(Sampling::greedy()).unwrap();
        let position = model.position();
        assert!(model.set_token_mask(Some(&TokenMask::all(vocab + 1))).unwrap_err().to_string().contains("513"));
        assert!(model.set_token_mask(Some(&TokenMask::none(vocab))).unwrap_err().to_string().contains("no allowed"));
        assert!(!model.has_token_mask());
        model.set_token_mask(Some(&TokenMask::all(vocab))).unwrap();
        let e = model.generate_lookup(&[1, 2], 4, &[], LookupOptions::default(), |_| true).unwrap_err();
        assert!(e.to_string().contains("token mask"), "{e}");
        assert_eq!(model.position(), position);
    }
}

/// Log-probabilities from the GPU sampler: after a prefill and each step, `last_logprob` is the host's
/// log-softmax of the returned logits at the picked token (within 1e-4: f32 sums in another order), for
/// greedy and sampled picks, and `last_top_logprobs` the host's 5 best tokens of those logits; off, they are
/// `None` and empty.
#[test]
fn logprobs_of_each_pick_match_the_logits() {
    use mobilellm_kernels::model::Sampling;
    use mobilellm_kernels::reference;
    let host = HostModel::from_safetensors_dir(&data_dir("tiny-plain"), WeightType::Q8_0).unwrap();
    let vocab = host.config.vocab_size;
    let prompt: Vec<u32> = (0..10).map(|i| 3 + 5 * i).collect();
    for gpu in gpus() {
        let options = PlanOptions { context: 64, max_batch: 4, ..PlanOptions::default() };
        let mut model = Model::new(gpu, &host, &options).unwrap();
        model.prefill(&prompt).unwrap();
        assert_eq!(model.last_logprob(), None, "off by default");
        model.set_logprobs(true);
        for sampling in [Sampling::greedy(), Sampling { temperature: 1.2, top_k: 20, seed: 4, ..Sampling::greedy() }] {
            model.set_sampling(sampling).unwrap();
            model.reset();
            model.set_top_logprobs(5).unwrap();
            let (mut token, logits) = model.prefill_logits(&prompt).unwrap();
            let mut row = logits[(prompt.len() - 1) * vocab..].to_vec();
            for step in 0..6 {
                let got = model.last_logprob().unwrap();
                let want = reference::sample_logprob(&row, token);
                assert!((got - want).abs() <= 1e-4, "step {step} [{}]: {got} vs {want}", gpu.describe());
                // The 5 best candidates: the host's ranking of the same logits, the same log-probabilities.
                let top = model.last_top_logprobs();
                let params = mobilellm_kernels::ops::StepParams { temperature: 0.0, ..Default::default() };
                let want_top = reference::top_logprobs(&row, &params, None, 5);
                assert_eq!(
                    top.iter().map(|c| c.0).collect::<Vec<_>>(),
                    want_top.iter().map(|c| c.0).collect::<Vec<_>>()
                );
                assert!(top.iter().zip(&want_top).all(|(g, w)| (g.1 - w.1).abs() <= 1e-4), "{top:?} vs {want_top:?}");
                let (next, next_row) = model.step_logits(token).unwrap();
                (token, row) = (next, next_row);
            }
        }
        model.set_logprobs(false);
        model.set_top_logprobs(0).unwrap();
        model.step(1).unwrap();
        assert_eq!((model.last_logprob(), model.last_top_logprobs()), (None, &[][..]));
        assert!(model.set_top_logprobs(21).is_err());
    }
}

/// Scaled RoPE (Llama-3 style: low frequencies divided by 8, the middle blended) through the planned model
/// under CPU and GPU launch rules matches the CPU forward pass on the same config, within the f32 contract;
/// and the scaling matters at these positions (without it the CPU logits move by over 10x that bound).
#[test]
fn scaled_rope_matches_the_cpu_forward() {
    use mobilellm_kernels::model::ModelConfig;
    use mobilellm_kernels::reference::forward::CpuModel;
    use mobilellm_kernels::DeviceClass;
    let plain = common::tiny_config();
    let factors = ModelConfig::llama3_rope_factors(plain.rope_theta, plain.head_dim, 8.0, 1.0, 4.0, 64.0).unwrap();
    assert!(factors.contains(&1.0) && factors.contains(&8.0) && factors.iter().any(|f| *f > 1.0 && *f < 8.0));
    let config = ModelConfig { rope_freq_factors: factors, ..plain.clone() };
    let host = HostModel::synthetic(config.clone(), WeightType::F32, 11).unwrap();
    let prompt: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 96).collect();
    let want = CpuModel::new(config, host.dequantized()).unwrap().prefill(&prompt).unwrap();
    let unscaled = CpuModel::new(plain, host.dequantized()).unwrap().prefill(&prompt).unwrap();
    assert!(max_diff(&want, &unscaled) > 10.0 * 1e-4, "scaling changes the logits: {}", max_diff(&want, &unscaled));
    let forced = Gpu::with_options(&GpuOptions::from_env().unwrap().device_class(DeviceClass::Gpu)).unwrap();
    for gpu in [&gpus()[0], &gpus()[1], &forced] {
        let options = PlanOptions { context: 32, max_batch: 8, kv_dtype: Some(DType::F32) };
        let mut model = Model::new(gpu, &host, &options).unwrap();
        let got = model.prefill_logits(&prompt).unwrap().1;
        let worst = max_diff(&got, &want);
        assert!(worst <= 1e-4, "max |logit diff| {worst} [{}]", gpu.describe());
        eprintln!("scaled RoPE: max |logit diff| {worst:.2e} [{}]", gpu.describe());
    }
}

/// A Llama-3.2-shaped checkpoint directory end to end, with every piece this crate reads from one:
/// `config.json` with `llama3` RoPE scaling, a `tokenizer.json` in Llama-3's layout
/// (`tests/data/hf-tokenizers/llama3`), a `tokenizer_config.json` with a Llama-3 chat template, and synthetic
/// weights as `model.safetensors`. Two turns of `mobilellm chat` print exactly what the library gives for
/// the same conversation (chat template, BOS from the template only, prompt-cache reuse, greedy decode).
#[test]
fn cli_chat_on_a_llama3_style_checkpoint() {
    use mobilellm_kernels::model::safetensors::{write_safetensors, TensorData};
    use mobilellm_kernels::model::weights::{layer_tensor_name, EMBED_TOKENS, FINAL_NORM, LAYER_TENSORS};
    use mobilellm_kernels::model::ModelConfig;
    use mobilellm_kernels::tokenizer::Tokenizer;
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("mobilellm-llama3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokenizers = data_dir("hf-tokenizers/llama3");
    std::fs::copy(tokenizers.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let template = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = \
        '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + \
        '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}\
        {% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
    let tokenizer_config = serde_json::json!({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "chat_template": template,
    });
    std::fs::write(dir.join("tokenizer_config.json"), tokenizer_config.to_string()).unwrap();
    let vocab = Tokenizer::from_hf_dir(&dir).unwrap().unwrap().vocab_size();
    let config_json = serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "max_position_embeddings": 256, "tie_word_embeddings": true,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32},
    });
    std::fs::write(dir.join("config.json"), config_json.to_string()).unwrap();
    let config = ModelConfig::from_json_str(&config_json.to_string()).unwrap();
    assert!(config.rope_freq_factors.iter().any(|&f| f > 1.0));
    let weights = HostModel::synthetic(config.clone(), WeightType::F32, 4).unwrap().dequantized();
    let mut tensors = vec![(EMBED_TOKENS.to_string(), vec![vocab, 64], weights.embed_tokens.clone())];
    for (l, layer) in weights.layers.iter().enumerate() {
        let shapes = mobilellm_kernels::model::weights::expected_tensors(&config);
        for (suffix, values) in LAYER_TENSORS.iter().zip(layer.fields()) {
            let name = layer_tensor_name(l, suffix);
            let shape = shapes.iter().find(|(n, _)| *n == name).unwrap().1.clone();
            tensors.push((name, shape, values.to_vec()));
        }
    }
    tensors.push((FINAL_NORM.to_string(), vec![64], weights.final_norm.clone()));
    let list: Vec<(&str, &[usize], TensorData<'_>)> =
        tensors.iter().map(|(n, s, v)| (n.as_str(), s.as_slice(), TensorData::F32(v))).collect();
    write_safetensors(dir.join("model.safetensors"), &list).unwrap();

    let turns = ["What is 2+3?", "And 4+5?"];
    let chat = |extra: &[&str]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mobilellm"))
            .args(["chat", "--max-new", "6", "--context", "256"])
            .args(extra)
            .arg("--model")
            .arg(&dir)
            .env("MOBILELLM_FEATURES", "none")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("{}\n{}\n", turns[0], turns[1]).as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let out = chat(&[]);
    // Prompt-lookup drafts change how the replies are computed, not what they are.
    assert_eq!(chat(&["--lookup", "4"]).stdout, out.stdout);

    // The same conversation through the library.
    let tok = Tokenizer::from_hf_dir(&dir).unwrap().unwrap();
    let options = GpuOptions { features: FeatureSet::NONE, ..GpuOptions::from_env().unwrap() };
    let gpu = Gpu::with_options(&options).unwrap();
    let host = HostModel::from_safetensors_dir(&dir, WeightType::F32).unwrap();
    let mut model = Model::new(&gpu, &host, &PlanOptions { context: 256, ..PlanOptions::default() }).unwrap();
    let eos = tok.eos().unwrap();
    let (mut history, mut expected): (Vec<(String, String)>, String) = (Vec::new(), String::new());
    for turn in turns {
        history.push(("user".into(), turn.into()));
        let messages: Vec<(&str, &str)> = history.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
        let ids = tok.encode_chat(&messages, true).unwrap();
        assert_eq!(ids.iter().filter(|&&id| Some(id) == tok.bos()).count(), 1, "one BOS: {ids:?}");
        let reused = model.reuse_prefix(&ids);
        let reply: Vec<u32> =
            model.generate(&ids[reused..], 6, &[eos], |_| true).unwrap().into_iter().filter(|&id| id != eos).collect();
        let mut stream = tok.stream_decoder();
        let text: String = reply.iter().map(|&id| stream.push(id)).collect::<String>() + &stream.finish();
        expected.push_str(&text);
        expected.push('\n');
        history.push(("assistant".into(), tok.decode(&reply)));
    }
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    // The second turn starts from what the cache holds of the first.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reused: Vec<usize> =
        stderr.lines().filter_map(|l| l.split("[prompt: ").nth(1)?.split(' ').next()?.parse().ok()).collect();
    assert!(reused.len() == 2 && reused[0] == 0 && reused[1] > 0, "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
