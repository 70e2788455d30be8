//! Session states (`Model::save_state` / `load_state`, `SessionState` bytes): a restored session continues
//! exactly as the saved one, through the byte format, into a fresh model of another context length; states
//! that do not fit are typed errors that leave the model as it was; an f16 state restores into an f32 cache.
//! Context shifts (`Model::shift_context`): keys turned back by RoPE as an f64 rotation says, and the model
//! after a shift against its CPU twin.
mod common;

use common::{gpu_rules_gpu, gpus, tiny_config};
use mobilellm_kernels::model::{HostModel, Model, ModelConfig, ModelWeightsF32, PlanOptions, RopeLayout, SessionState};
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::reference::forward::CpuModel;
use mobilellm_kernels::{reference, DType, Error, Gpu};

const PROMPT: [u32; 12] = [5, 17, 3, 88, 41, 9, 60, 2, 33, 71, 14, 50];

fn host(layer_sharing: bool) -> HostModel {
    HostModel::synthetic(tiny_config().with_layer_sharing(layer_sharing), WeightType::Q4_0, 11).unwrap()
}

fn model(gpu: &Gpu, host: &HostModel, context: usize, kv_dtype: Option<DType>) -> Model {
    Model::new(gpu, host, &PlanOptions { context, max_batch: 8, kv_dtype }).unwrap()
}

/// Feeds `first`, then `steps - 1` greedy tokens; every step's logits.
fn continue_greedy(m: &mut Model, first: u32, steps: usize) -> Vec<Vec<f32>> {
    let mut token = first;
    (0..steps)
        .map(|_| {
            let (next, logits) = m.step_logits(token).unwrap();
            token = next;
            logits
        })
        .collect()
}

#[test]
fn a_restored_session_continues_exactly() {
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        // Layer sharing: each unique layer runs twice, each execution with its own cache slot (4 slots).
        let host = host(true);
        let mut saved = model(gpu, &host, 64, None);
        let first = saved.prefill(&PROMPT).unwrap();
        let state = saved.save_state().unwrap();
        assert_eq!(state.tokens(), PROMPT);
        let want = continue_greedy(&mut saved, first, 6);

        // Through the bytes, into a fresh model with a shorter context.
        let state = SessionState::from_bytes(&state.to_bytes(), "state").unwrap();
        let mut resumed = model(gpu, &host, 24, None);
        resumed.load_state(&state).unwrap();
        assert_eq!((resumed.position(), resumed.cached_tokens()), (PROMPT.len(), &PROMPT[..]));
        let got = continue_greedy(&mut resumed, first, 6);
        assert!(got == want, "[{}] resumed logits differ from the saved session's", gpu.features());

        // The saving model itself rewinds to the state after running on.
        saved.load_state(&state).unwrap();
        assert!(continue_greedy(&mut saved, first, 6) == want);
        // A model that reuses the restored prefix costs only the new tokens and agrees too.
        let mut history = PROMPT.to_vec();
        history.push(first);
        resumed.load_state(&state).unwrap();
        assert_eq!(resumed.reuse_prefix(&history), PROMPT.len());
    }
}

#[test]
fn states_that_do_not_fit_are_refused_without_harm() {
    let gpu = &gpus()[0];
    let mut plain = model(gpu, &host(false), 64, None);
    plain.prefill(&PROMPT).unwrap();
    let state = plain.save_state().unwrap();
    let bytes = state.to_bytes();
    // A model of another shape (layer sharing: twice the cache slots), mid-sequence: refused, unchanged.
    let host_shared = host(true);
    let mut shared = model(gpu, &host_shared, 64, None);
    let first = shared.prefill(&PROMPT[..5]).unwrap();
    let mut reference = model(gpu, &host_shared, 64, None);
    reference.prefill(&PROMPT[..5]).unwrap();
    let e = shared.load_state(&state).unwrap_err().to_string();
    assert!(e.contains("shape") && e.contains("(2, 2, 16)") && e.contains("(4, 2, 16)"), "{e}");
    // Longer than the context: refused, unchanged.
    let mut short = model(gpu, &host(false), 8, None);
    assert!(matches!(short.load_state(&state), Err(Error::Capacity { requested: 12, capacity: 8, .. })));
    assert_eq!(short.position(), 0);
    assert_eq!(shared.position(), 5);
    assert!(continue_greedy(&mut shared, first, 3) == continue_greedy(&mut reference, first, 3));

    // Bytes: every truncation, a wrong magic, version and type, sizes that overflow (the `empty` states
    // below are version 1: six header fields, no fingerprint).
    assert_eq!(SessionState::from_bytes(&bytes, "s").unwrap(), state);
    for cut in [0, 7, 31, 32, 40, bytes.len() - 1] {
        let e = SessionState::from_bytes(&bytes[..cut], "cut.kv").unwrap_err();
        assert!(matches!(&e, Error::Format { path, .. } if path == "cut.kv"), "{cut}: {e}");
    }
    let patched = |at: usize, value: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + value.len()].copy_from_slice(value);
        SessionState::from_bytes(&b, "p").unwrap_err().to_string()
    };
    assert!(patched(0, b"GGUF").contains("not a session state"));
    assert!(patched(8, &7u32.to_le_bytes()).contains("version 7"));
    assert!(patched(12, &9u32.to_le_bytes()).contains("storage type 9"));
    assert!(patched(28, &u32::MAX.to_le_bytes()).contains("bytes, expected"));
    assert!(patched(16, &u32::MAX.to_le_bytes()).contains("expected"));
    let mut huge = bytes[..40].to_vec();
    for at in [16, 20, 24, 28] {
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    assert!(SessionState::from_bytes(&huge, "h").unwrap_err().to_string().contains("layers"));
    // An empty state may not claim a huge layer count or empty heads (it would allocate by the header).
    let empty = |layers: u32, heads: u32| {
        let mut b = b"MLKVSTAT".to_vec();
        for v in [1, 0, layers, heads, 16, 0] {
            b.extend_from_slice(&u32::to_le_bytes(v));
        }
        SessionState::from_bytes(&b, "e")
    };
    assert_eq!(empty(4, 2).unwrap().tokens(), &[] as &[u32]);
    assert!(empty(u32::MAX, 2).unwrap_err().to_string().contains("4096"));
    assert!(empty(4, 0).is_err());
    let mut huge = bytes[..40].to_vec();
    huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    huge[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    huge[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(SessionState::from_bytes(&huge, "h").unwrap_err().to_string().contains("overflow"));
    assert!(SessionState::from_bytes(&bytes[..36], "v2").unwrap_err().to_string().contains("version 2 header"));
    // Files.
    let path = std::env::temp_dir().join(format!("mobilellm-state-{}.kv", std::process::id()));
    state.save(&path).unwrap();
    assert_eq!(SessionState::load(&path).unwrap(), state);
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(SessionState::load(&path), Err(Error::Io { .. })));
    // Positions whose tokens the model does not know cannot be saved.
    plain.seek(20).unwrap();
    assert!(plain.save_state().unwrap_err().to_string().contains("20 positions, 12 known tokens"));
}

/// An f16 state restored into an f32 cache is widened exactly; continuing in f32 differs from continuing in
/// f16 only by the new positions' storage, so by no more than an f32 session differs from an f16 one.
#[test]
fn an_f16_state_restores_into_an_f32_cache() {
    let gpu = &gpus()[0];
    if !gpu.features().f16 {
        eprintln!("[{}] no f16 cache on this device: nothing to convert", gpu.features());
        return;
    }
    let host = host(false);
    let mut f16 = model(gpu, &host, 64, Some(DType::F16));
    let first = f16.prefill(&PROMPT).unwrap();
    let state = f16.save_state().unwrap();
    assert_eq!(state.dtype(), DType::F16);
    let want = continue_greedy(&mut f16, first, 4);
    let mut widened = model(gpu, &host, 64, Some(DType::F32));
    widened.load_state(&state).unwrap();
    let got = continue_greedy(&mut widened, first, 4);
    let mut f32_all = model(gpu, &host, 64, Some(DType::F32));
    assert_eq!(f32_all.prefill(&PROMPT).unwrap(), first);
    let f32_run = continue_greedy(&mut f32_all, first, 4);
    let diff = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
    };
    let (restored, storage) = (diff(&got, &want), diff(&f32_run, &want));
    eprintln!("f16 state in an f32 cache: {restored:.2e} from the f16 session; f32 session: {storage:.2e}");
    assert!(restored <= storage + 1e-6, "restored {restored:.2e} vs storage effect {storage:.2e}");
}

/// `rope_shift` by `-d` takes a key rotated for position `p + d` to the key rotated for `p`: checked against
/// rotations computed in f64 from the unrotated vector, in both layouts, with plain and scaled frequencies.
#[test]
fn rope_shift_moves_keys_between_positions() {
    let head_dim = 16;
    let plain: Vec<f64> = (0..head_dim / 2).map(|i| reference::rope_frequency(i, head_dim, 10_000.0, None)).collect();
    let scaled: Vec<f64> =
        (0..head_dim / 2).map(|i| reference::rope_frequency(i, head_dim, 500_000.0, Some(1.0 + i as f32))).collect();
    let u = common::random_vec(3, 2 * head_dim);
    let rotated = |pos: f64, freqs: &[f64], layout: RopeLayout| -> Vec<f32> {
        let mut out = u.clone();
        for (head, src) in out.chunks_exact_mut(head_dim).zip(u.chunks_exact(head_dim)) {
            for (i, f) in freqs.iter().enumerate() {
                let (ia, ib) = if layout == RopeLayout::Halves { (i, i + head_dim / 2) } else { (2 * i, 2 * i + 1) };
                let (a, b, (sin, cos)) = (f64::from(src[ia]), f64::from(src[ib]), (pos * f).sin_cos());
                head[ia] = (a * cos - b * sin) as f32;
                head[ib] = (a * sin + b * cos) as f32;
            }
        }
        out
    };
    for layout in [RopeLayout::Halves, RopeLayout::Interleaved] {
        for freqs in [&plain, &scaled] {
            for (p, d) in [(0, 5), (37, 11), (1000, 999)] {
                let mut k = rotated((p + d) as f64, freqs, layout);
                reference::rope_shift(&mut k, -(d as i64), head_dim, freqs, layout);
                let want = rotated(p as f64, freqs, layout);
                common::assert_close(&format!("{layout:?} p {p} d {d}"), &k, &want, 2e-6, 2e-6);
            }
        }
    }
}

/// The model after context shifts against its CPU twin: dropping a middle range (the later keys turned
/// back), the last positions (nothing moves), or none. Then the steps that follow match the twin as closely
/// as the same steps without a shift do: the shift adds no error of its own beyond a rounding per key.
#[test]
fn context_shift_matches_the_cpu_twin() {
    let config = common::tiny_config().with_layer_sharing(true);
    let weights = ModelWeightsF32::random(&config, 5).unwrap();
    let host = HostModel::from_f32(config.clone(), &weights, WeightType::F32).unwrap();
    let prompt: Vec<u32> = (0..30).map(|i| (i * 7 + 3) % 96).collect();
    let forced = [4, 61, 17, 90, 33];
    for gpu in gpus().iter().chain(gpu_rules_gpu()) {
        let run = |shift: Option<(usize, usize)>| -> f32 {
            let mut m = model(gpu, &host, 64, Some(DType::F32));
            let mut cpu = CpuModel::new(config.clone(), weights.clone()).unwrap();
            m.prefill(&prompt).unwrap();
            cpu.prefill(&prompt).unwrap();
            if let Some((keep, discard)) = shift {
                m.shift_context(keep, discard).unwrap();
                cpu.shift_context(keep, discard).unwrap();
                assert_eq!(m.position(), prompt.len() - discard);
                let mut kept = prompt.clone();
                kept.drain(keep..keep + discard);
                assert_eq!(m.cached_tokens(), kept);
            }
            let mut worst = 0.0f32;
            for &t in &forced {
                let (_, got) = m.step_logits(t).unwrap();
                let want = cpu.step(t).unwrap();
                worst = worst.max(got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
            }
            worst
        };
        let unshifted = run(None);
        for shift in [(4, 10), (0, 29), (20, 10), (12, 1)] {
            let shifted = run(Some(shift));
            eprintln!("[{}] shift {shift:?}: {shifted:.2e} from the twin (no shift: {unshifted:.2e})", gpu.features());
            assert!(shifted <= 2.0 * unshifted + 1e-5, "shift {shift:?}: {shifted:.2e} vs {unshifted:.2e}");
        }
        // A shift that does not fit changes nothing.
        let mut m = model(gpu, &host, 64, None);
        m.prefill(&prompt[..10]).unwrap();
        assert!(m.shift_context(6, 5).unwrap_err().to_string().contains("keep 6 + discard 5"));
        assert!(m.shift_context(usize::MAX, 1).is_err());
        assert_eq!((m.position(), m.cached_tokens().len()), (10, 10));
    }
}

/// `reuse_with_shift` on a history with a span taken out (a chat's oldest turn dropped) drops that span from
/// the cache and keeps the rest: the next steps equal an explicit `shift_context` bit for bit. Histories
/// without such a span fall back to `reuse_prefix`.
#[test]
fn reuse_with_shift_drops_the_span_a_trimmed_history_lacks() {
    let host = host(true);
    let gpu = &gpus()[0];
    let (system, turn1, turn2) = (&PROMPT[..3], &PROMPT[3..8], &PROMPT[8..]);
    let history: Vec<u32> = [system, turn1, turn2].concat();
    let next_turn = [7, 19, 23];
    let trimmed: Vec<u32> = [system, turn2, &next_turn].concat();

    let mut shifted = model(gpu, &host, 32, None);
    shifted.prefill(&history).unwrap();
    let reused = shifted.reuse_with_shift(&trimmed).unwrap();
    assert_eq!(reused, system.len() + turn2.len(), "system prompt and turn 2 come from the cache");
    assert_eq!(shifted.cached_tokens(), &trimmed[..reused]);
    shifted.prefill(&trimmed[reused..]).unwrap();

    let mut explicit = model(gpu, &host, 32, None);
    explicit.prefill(&history).unwrap();
    explicit.shift_context(system.len(), turn1.len()).unwrap();
    explicit.prefill(&next_turn).unwrap();
    assert_eq!(continue_greedy(&mut shifted, 1, 3), continue_greedy(&mut explicit, 1, 3));

    // A history that only extends the cache, or one that shares nothing after a gap, is reuse_prefix's.
    let mut m = model(gpu, &host, 32, None);
    m.prefill(&history).unwrap();
    assert_eq!(m.reuse_with_shift(&[&history[..], &next_turn].concat()).unwrap(), history.len());
    assert_eq!(m.reuse_with_shift(&[system, &next_turn].concat()).unwrap(), system.len());
    assert_eq!(m.cached_tokens(), history, "no shift: the cache is untouched");
    assert_eq!(m.position(), system.len());
}

/// The weights' fingerprint tells models apart that the shape check cannot (another seed, another weight
/// type, the GGUF's interleaved Q/K rows), and a state saved by one is refused by the other without harm;
/// a version-1 state (no fingerprint) still loads into any model of its shape.
#[test]
fn states_of_other_weights_are_refused() {
    let gpu = &gpus()[0];
    let config = tiny_config();
    let a = HostModel::synthetic(config.clone(), WeightType::Q4_0, 11).unwrap();
    let same = HostModel::synthetic(config.clone(), WeightType::Q4_0, 11).unwrap();
    let others = [
        HostModel::synthetic(config.clone(), WeightType::Q4_0, 12).unwrap(),
        HostModel::synthetic(config.clone(), WeightType::Q8_0, 11).unwrap(),
        HostModel::synthetic(
            ModelConfig { rope_layout: RopeLayout::Interleaved, ..config.clone() },
            WeightType::Q4_0,
            11,
        )
        .unwrap(),
    ];
    assert_eq!(a.fingerprint(), same.fingerprint());
    // One norm weight nudged by one ulp.
    let mut nudged = a.clone();
    nudged.layers[1].post_norm[7] = f32::from_bits(nudged.layers[1].post_norm[7].to_bits() + 1);
    for other in others.iter().chain([&nudged]) {
        assert_ne!(a.fingerprint(), other.fingerprint());
    }

    let mut saver = model(gpu, &a, 32, None);
    saver.prefill(&PROMPT).unwrap();
    let state = saver.save_state().unwrap();
    assert_eq!(state.weights_fingerprint(), Some(a.fingerprint()));
    let mut other = model(gpu, &others[0], 32, None);
    let first = other.prefill(&PROMPT[..4]).unwrap();
    let e = other.load_state(&state).unwrap_err().to_string();
    assert!(e.contains("saved by another model") && e.contains(&format!("{:016x}", a.fingerprint())), "{e}");
    let mut reference = model(gpu, &others[0], 32, None);
    reference.prefill(&PROMPT[..4]).unwrap();
    assert_eq!(other.position(), 4);
    assert!(continue_greedy(&mut other, first, 3) == continue_greedy(&mut reference, first, 3));

    // The same state as version 1 (version field 1, no fingerprint) fits by shape alone.
    let bytes = state.to_bytes();
    let v1: Vec<u8> = [&bytes[..8], &1u32.to_le_bytes(), &bytes[12..32], &bytes[40..]].concat();
    let old = SessionState::from_bytes(&v1, "v1.kv").unwrap();
    assert_eq!((old.weights_fingerprint(), old.tokens()), (None, &PROMPT[..]));
    assert_eq!(old.to_bytes(), v1, "a version-1 state is written back as version 1");
    let mut restored = model(gpu, &a, 32, None);
    restored.load_state(&old).unwrap();
    let mut resumed = model(gpu, &a, 32, None);
    resumed.load_state(&state).unwrap();
    assert!(continue_greedy(&mut restored, 1, 3) == continue_greedy(&mut resumed, 1, 3));
    other.load_state(&old).unwrap();
}
