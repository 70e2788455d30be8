//! Device failures (DESIGN §6): an allocation the device cannot make, a driver out-of-memory, a lost device.
//! Each surfaces as a typed error from the call that hits it, and nothing the caller owns is left
//! half-written: a model whose call failed keeps its position and KV cache, so the next valid call gives
//! what it would have given without the failure.
//!
//! Caller mistakes (bad token ids, prompts past the context, bad sampling settings) are in
//! `tests/bad_inputs.rs`; here they only appear mixed into a decode to show the sequence is unaffected.
//! A real driver OOM cannot be provoked safely on a shared machine, so [`Gpu::simulate_oom`] fails
//! allocations on the same path a driver failure takes (wgpu 30 reports a failed buffer allocation through
//! the OUT_OF_MEMORY error scope and keeps the device).

mod common;

use mobilellm_kernels::model::host::HostModel;
use mobilellm_kernels::model::planner::{Model, PlanOptions};
use mobilellm_kernels::ops;
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::{DType, Error, FeatureSet, Gpu, GpuOptions, Tensor};

/// A tiny model (hidden 64, 2 layers, vocab 96) so the file runs in seconds on lavapipe.
fn tiny_host() -> HostModel {
    HostModel::synthetic(common::tiny_config(), WeightType::Q8_0, 5).unwrap()
}

/// A device of its own for a test that injects faults or destroys it (the shared test devices are used by
/// parallel tests, which must not see those). The caller holds `common::gpus()` meanwhile, so on GL this
/// device too is used by one test at a time.
fn own_gpu(features: FeatureSet) -> Gpu {
    let base = GpuOptions::from_env().unwrap();
    Gpu::with_options(&base.clone().features(base.features.intersect(features))).unwrap()
}

const OPTIONS: PlanOptions = PlanOptions { context: 32, max_batch: 8, kv_dtype: Some(DType::F32) };

/// Greedy decode of `steps` tokens after `prompt` from a fresh cache.
fn decode(model: &mut Model, prompt: &[u32], steps: usize) -> Vec<u32> {
    model.reset();
    let mut out = vec![model.prefill(prompt).unwrap()];
    for _ in 0..steps {
        out.push(model.step(*out.last().unwrap()).unwrap());
    }
    out
}

fn expect_err<T>(result: mobilellm_kernels::Result<T>, what: &str) -> Error {
    match result {
        Ok(_) => panic!("{what}: expected an error"),
        Err(e) => e,
    }
}

#[test]
fn allocations_beyond_the_device_limits_are_refused_and_the_model_stays_usable() {
    let host = tiny_host();
    for gpu in common::gpus() {
        let mut model = Model::new(gpu, &host, &OPTIONS).unwrap();
        let prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3];
        let want = decode(&mut model, &prompt, 6);

        let max = gpu.limits().max_buffer_size;
        let err = expect_err(gpu.create_buffer("huge scratch", max + 1, wgpu::BufferUsages::STORAGE), "create_buffer");
        assert!(
            matches!(err, Error::Capacity { requested, capacity, .. } if requested as u64 == max + 1 && capacity as u64 == max),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("huge scratch") && msg.contains(&(max + 1).to_string()), "{msg}");
        // A context whose KV-cache slot exceeds one binding (2 x 2 heads x 16 dims x 4 bytes = 256 B a position).
        let positions = (gpu.max_binding_bytes() / 256 + 1) as usize;
        let err =
            expect_err(Model::new(gpu, &host, &PlanOptions { context: positions, ..OPTIONS }), "a too-long context");
        assert!(matches!(err, Error::Capacity { .. }), "{err:?}");
        assert!(err.to_string().contains("kv cache slot 0"), "{err}");

        // The model from before is untouched: same greedy sequence, and it continues from where it was.
        assert_eq!(decode(&mut model, &prompt, 6), want);
    }
}

#[test]
fn out_of_memory_is_typed_and_leaves_the_model_as_it_was() {
    let host = tiny_host();
    let _serial = common::gpus();
    for features in [FeatureSet::ALL, FeatureSet::NONE] {
        let gpu = &own_gpu(features);
        let kept = Tensor::from_slice(gpu, &[4], &[1.0f32, 2.0, 3.0, 4.0]).unwrap();
        gpu.simulate_oom(Some(0));
        let err = expect_err(Tensor::zeros_labeled(gpu, "activations", DType::F32, &[1000, 64]), "tensor");
        assert!(matches!(err, Error::OutOfMemory(_)), "{err:?}");
        assert!(err.to_string().contains("`activations` of 256000 bytes"), "{err}");
        // Only the one allocation failed, and the tensor made before it is intact.
        Tensor::zeros(gpu, DType::F32, &[4]).unwrap();
        assert_eq!(kept.read::<f32>(gpu).unwrap(), [1.0, 2.0, 3.0, 4.0]);

        // Model::new fails cleanly wherever the allocation fails (first, a middle one, the last).
        let before = gpu.buffers_created();
        let model = Model::new(gpu, &host, &OPTIONS).unwrap();
        let allocations = gpu.buffers_created() - before;
        assert!(allocations > 10, "a model makes tens of buffers, counted {allocations}");
        drop(model);
        for after in [0, allocations / 2, allocations - 1] {
            gpu.simulate_oom(Some(after as usize));
            let err = expect_err(Model::new(gpu, &host, &OPTIONS), "Model::new under OOM");
            assert!(matches!(err, Error::OutOfMemory(_)), "allocation {after}: {err:?}");
        }

        let mut model = Model::new(gpu, &host, &OPTIONS).unwrap();
        // Plan a full chunk now, so that below only the 3-token tail of an 11-token prompt needs a new plan.
        model.prefill(&[1; 8]).unwrap();
        let prompt = [7, 7, 2, 90, 11];
        let want = decode(&mut model, &prompt, 8);
        // The logits the first step_logits should give, from a second model (same device, same dispatches).
        let want_logits = {
            let mut other = Model::new(gpu, &host, &OPTIONS).unwrap();
            other.prefill(&prompt).unwrap();
            other.step_logits(want[0]).unwrap().1
        };

        // Mid-sequence: every call that would allocate (a new prefill length's plan, the first logits
        // readback, a multi-chunk prompt whose second chunk needs a new plan) fails under OOM before
        // touching the GPU; the position does not move and the decode continues identically.
        model.reset();
        assert_eq!(model.prefill(&prompt).unwrap(), want[0]);
        for call in 0..3 {
            gpu.simulate_oom(Some(0));
            let err = match call {
                0 => expect_err(model.prefill(&[1, 2, 3]), "prefill of a new length"),
                1 => expect_err(model.step_logits(want[0]).map(|_| ()), "first step_logits"),
                _ => expect_err(model.prefill(&[1; 11]), "two-chunk prefill (8 + a new 3)"),
            };
            assert!(matches!(err, Error::OutOfMemory(_)), "call {call}: {err:?}");
            assert_eq!(model.position(), prompt.len(), "call {call} moved the position");
        }
        gpu.simulate_oom(None);
        let (next, logits) = model.step_logits(want[0]).unwrap();
        assert_eq!(next, want[1]);
        // Same dispatches on the same inputs: bit-identical logits.
        assert_eq!(logits, want_logits);
        let mut got = vec![want[0], next];
        for _ in 1..8 {
            got.push(model.step(*got.last().unwrap()).unwrap());
        }
        assert_eq!(got, want);
    }
}

/// Refused calls in the middle of a decode (bad token, prompt past the context, OOM) change nothing:
/// the sequence after them is the one decoded without them.
#[test]
fn failed_calls_mid_decode_leave_position_and_cache_unchanged() {
    let host = tiny_host();
    let _serial = common::gpus();
    let gpu = &own_gpu(FeatureSet::ALL);
    let mut model = Model::new(gpu, &host, &OPTIONS).unwrap();
    let prompt = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 12];
    let want = decode(&mut model, &prompt, 12);

    model.reset();
    let mut got = vec![model.prefill(&prompt).unwrap()];
    for i in 0..12 {
        let pos = model.position();
        let err = match i % 4 {
            0 => expect_err(model.step(96), "token outside the vocabulary"),
            1 => expect_err(model.prefill(&[1; 30]), "prompt past the context"),
            2 => {
                gpu.simulate_oom(Some(0));
                // A new prefill length needs a plan (uniform buffers): refused before anything runs.
                let e = expect_err(model.prefill(&[1; 6]), "prefill under OOM");
                gpu.simulate_oom(None);
                e
            }
            _ => expect_err(model.prefill_logits(&[1, 2, 500]), "bad id in a prompt"),
        };
        assert!(
            matches!(err, Error::InvalidArgument { .. } | Error::Capacity { .. } | Error::OutOfMemory(_)),
            "{err:?}"
        );
        assert_eq!(model.position(), pos);
        got.push(model.step(*got.last().unwrap()).unwrap());
    }
    assert_eq!(got, want);
}

/// After the device is destroyed, the next call on everything that lived on it returns
/// [`Error::DeviceLost`] (no panic, no hang), and keeps returning it.
#[test]
fn a_lost_device_gives_typed_errors_from_the_next_call() {
    let _serial = common::gpus();
    let gpu = own_gpu(FeatureSet::NONE);
    let host = tiny_host();
    let mut model = Model::new(&gpu, &host, &OPTIONS).unwrap();
    let first = model.prefill(&[1, 2, 3]).unwrap();
    let x = Tensor::from_slice(&gpu, &[2, 64], &common::random_vec(1, 128)).unwrap();
    let w = Tensor::from_slice(&gpu, &[64], &vec![1.0f32; 64]).unwrap();
    let y = Tensor::zeros(&gpu, DType::F32, &[2, 64]).unwrap();
    let norm = ops::rms_norm::rms_norm(&gpu, &x, &w, &y, 1e-5).unwrap();
    ops::run(&gpu, &[&norm]).unwrap();
    assert!(!gpu.is_lost());

    gpu.device().destroy();

    let lost = |e: Error, what: &str| assert!(matches!(e, Error::DeviceLost(_)), "{what}: {e:?}");
    // The first call after the loss notices it (wgpu reports a loss only when the device is polled).
    lost(expect_err(model.step(first), "Model::step"), "Model::step");
    assert!(gpu.is_lost());
    assert_eq!(model.position(), 3, "a failed step must not move the position");
    lost(expect_err(ops::run(&gpu, &[&norm]), "ops::run"), "ops::run");
    lost(expect_err(y.read::<f32>(&gpu), "Tensor::read"), "Tensor::read");
    lost(expect_err(Tensor::zeros(&gpu, DType::F32, &[4]), "Tensor::zeros"), "Tensor::zeros");
    lost(expect_err(model.step_logits(first), "Model::step_logits"), "Model::step_logits");
    lost(expect_err(model.prefill(&[1, 2]), "Model::prefill"), "Model::prefill");
    lost(expect_err(Model::new(&gpu, &host, &OPTIONS), "Model::new"), "Model::new");
    lost(expect_err(gpu.take_error(), "take_error"), "take_error");
    let msg = expect_err(model.step(first), "again").to_string();
    assert!(msg.contains("device lost") && msg.contains("Destroyed"), "{msg}");
}
