//! Session states (`Model::save_state` / `load_state`, `SessionState` bytes): a restored session continues
//! exactly as the saved one, through the byte format, into a fresh model of another context length; states
//! that do not fit are typed errors that leave the model as it was; an f16 state restores into an f32 cache.
mod common;

use common::{gpus, tiny_config};
use mobilellm_kernels::model::{HostModel, Model, PlanOptions, SessionState};
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::{DType, Error, Gpu};

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
    for gpu in gpus() {
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

    // Bytes: every truncation, a wrong magic, version and type, sizes that overflow.
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
    let mut huge = bytes[..32].to_vec();
    for at in [16, 20, 24, 28] {
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    assert!(SessionState::from_bytes(&huge, "h").unwrap_err().to_string().contains("overflow"));
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
