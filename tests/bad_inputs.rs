//! The bad-input matrix (DESIGN §6): every way a caller or a file can be wrong gives a typed error whose
//! message names the bad value and what was expected, never a panic; and a model that refused an input
//! stays usable.
//!
//! Covered elsewhere and not repeated here: every GGUF truncation byte, corrupt GGUF tables, bad magic and
//! version, unknown and unsupported ggml types (`tests/gguf.rs`); `config.json` parsing errors
//! (`tests/config.rs`); a tokenizer's bad metadata (`tests/tokenizer.rs`). Regression inputs found by the
//! fuzz targets in `fuzz/` are at the end of this file.
//!
//! GPU cases use a tiny synthetic model (hidden 64, 2 layers, vocab 96, context 16) so the file runs in
//! seconds even on lavapipe.

mod common;

use mobilellm_kernels::model::config::ModelConfig;
use mobilellm_kernels::model::gguf::{names, GgmlType, GgufError, GgufFile, GgufLlamaConfig, GgufWriter};
use mobilellm_kernels::model::host::HostModel;
use mobilellm_kernels::model::planner::{Model, PlanOptions, Sampling};
use mobilellm_kernels::model::safetensors::{write_safetensors, Safetensors, TensorData};
use mobilellm_kernels::quant::WeightType;
use mobilellm_kernels::{DType, Error, Tensor};

/// Asserts `err` is the variant `pat` and its message contains every needle.
macro_rules! assert_err {
    ($result:expr, $pat:pat, $($needle:expr),+ $(,)?) => {{
        let err = match $result {
            Err(e) => e,
            Ok(_) => panic!("expected an error from `{}`", stringify!($result)),
        };
        assert!(matches!(err, $pat), "`{}`: wrong variant: {err:?}", stringify!($result));
        let msg = err.to_string();
        for needle in [$($needle.to_string()),+] {
            assert!(msg.contains(&needle), "`{}`: message {msg:?} lacks {needle:?}", stringify!($result));
        }
        err
    }};
}

/// A two-tensor safetensors file (`a` f32 [2, 3], `ids` i32 [4]) and its header length.
fn small_safetensors() -> (Vec<u8>, usize) {
    // One file per call: tests run in parallel, and one test's write truncating the file another is reading
    // failed the read (seen on a 16-core machine).
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = common::ScratchDir::new(&format!("bad-inputs-small-{call}"));
    let path = dir.join("small.safetensors");
    let a: Vec<f32> = (0..6).map(|i| i as f32).collect();
    write_safetensors(&path, &[("a", &[2, 3], TensorData::F32(&a)), ("ids", &[4], TensorData::I32(&[1, 2, 3, 4]))])
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 8 + header_len + 6 * 4 + 4 * 4);
    (bytes, header_len)
}

/// A safetensors file with this header JSON and `data_len` zero bytes of data.
fn with_header(header: &str, data_len: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(b.len() + data_len, 0);
    b
}

#[test]
fn safetensors_cut_at_every_section_boundary() {
    let (full, header_len) = small_safetensors();
    Safetensors::from_bytes(full.clone(), "full").unwrap();
    let data = 8 + header_len;
    // (cut length, what the message must say): inside the 8-byte length; inside the header JSON (its length
    // now runs past the end); exactly at the end of the header (no data); inside each tensor's data.
    let cuts: Vec<(usize, String)> = vec![
        (0, "0 bytes, shorter than the 8-byte header length".into()),
        (4, "4 bytes, shorter than the 8-byte header length".into()),
        (7, "7 bytes".into()),
        (8, format!("header length {header_len} runs past the end of the 8-byte file")),
        (8 + header_len / 2, format!("header length {header_len} runs past the end")),
        (data - 1, format!("header length {header_len} runs past the end of the {}-byte file", data - 1)),
        (data, format!("file is {data} bytes but its header describes {} bytes", full.len())),
        (data + 10, format!("file is {} bytes but its header describes {} bytes", data + 10, full.len())),
        (data + 24, "truncated or padded".into()),
        (full.len() - 1, format!("file is {} bytes", full.len() - 1)),
    ];
    for (len, needle) in cuts {
        let name = format!("cut-at-{len}.safetensors");
        assert_err!(Safetensors::from_bytes(full[..len].to_vec(), &name), Error::Format { .. }, needle, name);
    }
    // Padded by one byte is just as wrong.
    let mut padded = full.clone();
    padded.push(0);
    assert_err!(Safetensors::from_bytes(padded, "padded"), Error::Format { .. }, "truncated or padded");
    // The same through a real file (the memory-mapped path).
    let dir = common::ScratchDir::new("bad-inputs-cut");
    let path = dir.join("cut.safetensors");
    std::fs::write(&path, &full[..data + 3]).unwrap();
    assert_err!(
        Safetensors::open(&path),
        Error::Format { .. },
        "cut.safetensors",
        format!("file is {} bytes", data + 3)
    );
}

#[test]
fn safetensors_bad_header_length_and_offsets() {
    // Header length far larger than the file; and over the 100 MB limit; and u64::MAX.
    let mut b = (1u64 << 20).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert_err!(Safetensors::from_bytes(b, "long"), Error::Format { .. }, "header length 1048576", "10-byte file");
    for huge in [200u64 << 20, u64::MAX] {
        let mut b = huge.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert_err!(Safetensors::from_bytes(b, "huge"), Error::Format { .. }, "larger than 100 MB");
    }
    // Overlapping tensors: b starts inside a.
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    assert_err!(
        Safetensors::from_bytes(with_header(h, 12), "overlap"),
        Error::Format { .. },
        "`b`",
        "[4, 12]",
        "ends at 8"
    );
    // A gap between tensors.
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#;
    assert_err!(Safetensors::from_bytes(with_header(h, 20), "gap"), Error::Format { .. }, "`b`", "[12, 20]");
    // Offsets running backwards.
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#;
    assert_err!(Safetensors::from_bytes(with_header(h, 8), "backwards"), Error::Format { .. }, "`a`", "[8, 0]");
    // Offsets past the end of the file.
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert_err!(Safetensors::from_bytes(with_header(h, 4), "short"), Error::Format { .. }, "header describes");
    // Offsets that disagree with shape x dtype.
    let h = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    assert_err!(
        Safetensors::from_bytes(with_header(h, 8), "size"),
        Error::Format { .. },
        "`a`",
        "F32 [3]",
        "8 bytes",
        "expected 12 bytes"
    );
    // A shape whose element count overflows.
    let h = r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
    assert_err!(Safetensors::from_bytes(with_header(h, 8), "overflow"), Error::Format { .. }, "more elements");
    // Not JSON, JSON of the wrong form, an unknown dtype.
    assert_err!(Safetensors::from_bytes(with_header("[1,2]", 0), "array"), Error::Format { .. }, "JSON");
    let h = r#"{"a":{"dtype":"F7","shape":[2],"data_offsets":[0,2]}}"#;
    assert_err!(Safetensors::from_bytes(with_header(h, 2), "dtype"), Error::Format { .. }, "F7");
}

#[test]
fn safetensors_wrong_dtype_missing_and_misshaped_tensor() {
    let (full, _) = small_safetensors();
    let st = Safetensors::from_bytes(full, "small.safetensors").unwrap();
    assert_eq!(st.tensor_f32("a", &[2, 3]).unwrap(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_err!(st.tensor_f32("ids", &[4]), Error::DType { .. }, "`ids`", "I32", "F32, F16 or BF16");
    assert_err!(st.tensor_i32("a", &[2, 3]), Error::DType { .. }, "`a`", "F32", "expected I32");
    assert_err!(st.tensor_f32("b", &[2, 3]), Error::MissingTensor { .. }, "`b`", "small.safetensors");
    assert_err!(st.raw("b"), Error::MissingTensor { .. }, "`b`");
    assert_err!(st.tensor_f32("a", &[3, 2]), Error::Shape { .. }, "`a`", "[2, 3]", "expected [3, 2]");
}

fn tiny_gguf_config() -> GgufLlamaConfig {
    GgufLlamaConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 1,
        num_heads: 2,
        num_kv_heads: 1,
        head_dim: 16,
        rope_dim: 16,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        context_length: 16,
        vocab_size: 8,
        tied_embeddings: true,
        rope_interleaved: true,
    }
}

/// A complete tiny llama GGUF of f32 tensors; `skip` leaves one tensor out, `embd_dims` overrides the
/// embedding's dims.
fn tiny_gguf(skip: Option<&str>, embd_dims: [u64; 2]) -> Vec<u8> {
    tiny_gguf_writer(skip, embd_dims).to_bytes()
}

/// [`tiny_gguf`] before it is written, for adding tensors.
fn tiny_gguf_writer(skip: Option<&str>, embd_dims: [u64; 2]) -> GgufWriter {
    let c = tiny_gguf_config();
    let (h, f, kv) = (c.hidden_size as u64, c.intermediate_size as u64, 16u64);
    let mut w = GgufWriter::new();
    w.llama_config(&c);
    w.meta_strings("tokenizer.ggml.tokens", &["a", "b", "c", "d", "e", "f", "g", "h"]);
    let mut put = |name: &str, dims: &[u64]| {
        if skip != Some(name) {
            let n: u64 = dims.iter().product();
            w.tensor_f32(name, dims, &vec![0.01; n as usize]);
        }
    };
    put(names::TOKEN_EMBD, &embd_dims);
    for (part, dims) in [
        ("attn_norm", vec![h]),
        ("attn_q", vec![h, h]),
        ("attn_k", vec![h, kv]),
        ("attn_v", vec![h, kv]),
        ("attn_output", vec![h, h]),
        ("ffn_norm", vec![h]),
        ("ffn_gate", vec![h, f]),
        ("ffn_up", vec![h, f]),
        ("ffn_down", vec![f, h]),
    ] {
        put(&names::block(0, part), &dims);
    }
    put(names::OUTPUT_NORM, &[h]);
    w
}

#[test]
fn gguf_model_missing_misshaped_unknown_and_truncated() {
    let good = GgufFile::from_bytes(tiny_gguf(None, [32, 8]), "tiny.gguf").unwrap();
    HostModel::from_gguf(&good, None).unwrap();
    // A tensor a llama model would not read (a bias) is refused by name, not ignored.
    let mut biased = tiny_gguf_writer(None, [32, 8]);
    biased.tensor_f32("blk.0.attn_q.bias", &[32], &[0.0; 32]);
    let biased = GgufFile::from_bytes(biased.to_bytes(), "tiny.gguf").unwrap();
    assert_err!(HostModel::from_gguf(&biased, None), Error::Config(_), "blk.0.attn_q.bias", "tiny.gguf");
    let missing = GgufFile::from_bytes(tiny_gguf(Some("blk.0.ffn_up.weight"), [32, 8]), "tiny.gguf").unwrap();
    assert_err!(HostModel::from_gguf(&missing, None), Error::MissingTensor { .. }, "blk.0.ffn_up.weight", "tiny.gguf");
    let misshaped = GgufFile::from_bytes(tiny_gguf(None, [32, 7]), "tiny.gguf").unwrap();
    assert_err!(
        HostModel::from_gguf(&misshaped, None),
        Error::Shape { .. },
        "token_embd.weight",
        "[7, 32]",
        "expected [8, 32]"
    );
    // An unknown ggml type id (the file cannot even be sized).
    let mut w = GgufWriter::new();
    w.tensor("x", GgmlType(77), &[32], vec![0; 32]);
    assert_err!(
        GgufFile::from_bytes(w.to_bytes(), "x.gguf"),
        Error::Gguf { error: GgufError::UnknownTensorType { .. }, .. },
        "`x`",
        "77"
    );
    // Truncation at a few section boundaries (tests/gguf.rs cuts at every byte and checks the section).
    let (bytes, layout) = {
        let mut w = GgufWriter::new();
        w.llama_config(&tiny_gguf_config());
        w.tensor_f32("t", &[8], &[1.0; 8]);
        w.to_bytes_with_layout()
    };
    for len in [3, layout.header_end - 1, layout.kv_ends[0] - 1, layout.tensor_info_ends[0] - 2] {
        assert_err!(
            GgufFile::from_bytes(bytes[..len].to_vec(), "cut.gguf"),
            Error::Gguf { error: GgufError::Truncated { .. }, .. },
            "cut.gguf",
            format!("the file has {len}")
        );
    }
    let len = layout.data_offset + 5;
    assert_err!(
        GgufFile::from_bytes(bytes[..len].to_vec(), "cut.gguf"),
        Error::Gguf { error: GgufError::DataOutOfRange { .. }, .. },
        "`t`",
        len
    );
    // A config that does not fit: kv heads not dividing heads.
    let mut c = tiny_gguf_config();
    c.num_kv_heads = 3;
    let mut w = GgufWriter::new();
    w.llama_config(&c);
    w.meta_strings("tokenizer.ggml.tokens", &["a", "b"]);
    let f = GgufFile::from_bytes(w.to_bytes(), "kv.gguf").unwrap();
    assert_err!(HostModel::from_gguf(&f, None), Error::Config(_), "num_key_value_heads 3", "num_attention_heads 2");
}

fn tiny_config() -> ModelConfig {
    ModelConfig { max_position_embeddings: 16, ..common::tiny_config() }
}

#[test]
fn configs_whose_numbers_do_not_fit() {
    tiny_config().validate().unwrap();
    let bad = |edit: fn(&mut ModelConfig)| {
        let mut c = tiny_config();
        edit(&mut c);
        c
    };
    // Hand-built configs go through the same checks as parsed ones (tests/config.rs has the JSON side).
    assert_err!(bad(|c| c.num_key_value_heads = 3).validate(), Error::Config(_), "num_key_value_heads 3", "4");
    assert_err!(bad(|c| c.hidden_size = 0).validate(), Error::Config(_), "hidden_size is 0", "expected 1..=");
    assert_err!(bad(|c| c.vocab_size = usize::MAX).validate(), Error::Config(_), "vocab_size", "expected 1..=");
    assert_err!(bad(|c| c.num_hidden_layers = 1 << 40).validate(), Error::Config(_), "num_hidden_layers");
    assert_err!(bad(|c| c.head_dim = 15).validate(), Error::Config(_), "head_dim 15");
    assert_err!(bad(|c| c.rms_norm_eps = f32::NAN).validate(), Error::Config(_), "rms_norm_eps is NaN");
    let json =
        r#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":5,"vocab_size":96}"#;
    assert_err!(ModelConfig::from_json_str(json), Error::Config(_), "hidden_size 64", "num_attention_heads 5");
    // Synthetic weights refuse a bad config before allocating anything.
    assert_err!(
        HostModel::synthetic(bad(|c| c.num_key_value_heads = 3), WeightType::F32, 1),
        Error::Config(_),
        "num_key_value_heads 3"
    );
}

#[test]
fn gpu_model_rejects_bad_inputs_and_stays_usable() {
    let host = HostModel::synthetic(tiny_config(), WeightType::F32, 7).unwrap();
    for gpu in common::gpus() {
        let options = PlanOptions { context: 16, max_batch: 8, kv_dtype: None };
        // Plan options and hand-edited models.
        assert_err!(
            Model::new(gpu, &host, &PlanOptions { context: 0, ..options.clone() }),
            Error::InvalidArgument { .. },
            "context 0"
        );
        let mut short = host.clone();
        short.layers.pop();
        assert_err!(Model::new(gpu, &short, &options), Error::InvalidArgument { .. }, "1", "num_hidden_layers = 2");
        let mut edited = host.clone();
        edited.config.num_key_value_heads = 3;
        assert_err!(Model::new(gpu, &edited, &options), Error::Config(_), "num_key_value_heads 3");
        let mut edited = host.clone();
        edited.config.intermediate_size = 96;
        assert_err!(Model::new(gpu, &edited, &options), Error::Shape { .. }, "layer 0 gate_proj", "[128, 64]");

        let mut model = Model::new(gpu, &host, &options).unwrap();
        let vocab = tiny_config().vocab_size;
        // Token ids outside the vocabulary, an empty prompt.
        assert_err!(model.step(vocab as u32), Error::InvalidArgument { .. }, vocab, "vocabulary size 96");
        assert_err!(model.step(u32::MAX), Error::InvalidArgument { .. }, u32::MAX);
        assert_err!(model.prefill(&[1, 2, 500]), Error::InvalidArgument { .. }, "500", "96");
        assert_err!(model.prefill_logits(&[96]), Error::InvalidArgument { .. }, "96");
        assert_err!(model.prefill(&[]), Error::InvalidArgument { .. }, "token count", "at least one");
        assert_eq!(model.position(), 0, "a refused prompt must not advance the position");
        // Sampling settings.
        for t in [-1.0f32, f32::NAN, f32::INFINITY] {
            let s = Sampling { temperature: t, ..Sampling::greedy() };
            assert_err!(model.set_sampling(s), Error::InvalidArgument { .. }, "temperature", t, ">= 0");
        }
        for p in [0.0f32, 1.5, f32::NAN] {
            let s = Sampling { top_p: p, ..Sampling::greedy() };
            assert_err!(model.set_sampling(s), Error::InvalidArgument { .. }, "top_p", p);
        }
        let s = Sampling { top_k: 100_000, ..Sampling::greedy() };
        assert_err!(model.set_sampling(s), Error::InvalidArgument { .. }, "top_k", 100_000);
        let s = Sampling { min_p: 1.5, ..Sampling::greedy() };
        assert_err!(model.set_sampling(s), Error::InvalidArgument { .. }, "min_p", 1.5);
        let s = Sampling { penalty_last_n: 65, ..Sampling::greedy() };
        assert_err!(model.set_sampling(s), Error::InvalidArgument { .. }, "penalty_last_n", 65, "64");
        let penalties = mobilellm_kernels::ops::sample::Penalties { repeat: -1.0, frequency: 0.0, presence: 0.0 };
        assert_err!(
            model.set_sampling(Sampling { penalties, ..Sampling::greedy() }),
            Error::InvalidArgument { .. },
            "repeat"
        );
        // A prompt longer than the context is refused whole.
        let long: Vec<u32> = (0..17).collect();
        assert_err!(model.prefill(&long), Error::Capacity { requested: 17, capacity: 16, .. }, "17", "16");
        assert_eq!(model.position(), 0);
        // Decoding to capacity, one step past it, then reset: the same greedy sequence again.
        let run = |model: &mut Model| -> Vec<u32> {
            let mut out = vec![model.prefill(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).unwrap()];
            while model.position() < 16 {
                let next = model.step(*out.last().unwrap()).unwrap();
                out.push(next);
            }
            out
        };
        let first = run(&mut model);
        assert_eq!(first.len(), 7);
        assert_err!(
            model.step(*first.last().unwrap()),
            Error::Capacity { requested: 17, capacity: 16, .. },
            "KV cache",
            "17",
            "16"
        );
        assert_err!(model.prefill(&[1]), Error::Capacity { .. }, "17");
        assert_eq!(model.position(), 16);
        model.reset();
        assert_eq!(run(&mut model), first, "after reset the model must decode the same sequence");
        // generate stops at the context instead of failing.
        model.reset();
        let out = model.generate(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 100, &[], |_| true).unwrap();
        assert_eq!((out.len(), model.position()), (5, 16));

        // Tensors the device cannot hold in one binding, and shapes that are not shapes.
        let max = gpu.max_binding_bytes() as usize;
        let too_big = max / 4 + 1;
        assert_err!(
            Tensor::zeros(gpu, DType::F32, &[too_big]),
            Error::Capacity { .. },
            format!("[{too_big}]"),
            (too_big * 4),
            max
        );
        assert_err!(Tensor::zeros(gpu, DType::F32, &[usize::MAX / 2, 3]), Error::Shape { .. }, "fits in usize");
        assert_err!(Tensor::zeros(gpu, DType::F32, &[usize::MAX / 2]), Error::Shape { .. }, "fits in usize");
        assert_err!(Tensor::zeros(gpu, DType::F32, &[4, 0]), Error::Shape { .. }, "[4, 0]", "none of them zero");
        assert_err!(Tensor::zeros(gpu, DType::F32, &[]), Error::Shape { .. }, "at least one dimension");
        // The model still works after all of that.
        model.reset();
        assert_eq!(run(&mut model), first);
    }
}

/// Audit finding: metadata arrays nested 100 000 deep (12 bytes a level) recursed once per level and
/// overflowed the stack (an abort, not even a panic). Nesting is now capped.
/// A model the KV cache cannot hold (a head dim that is even, as the config requires, but not a multiple of
/// 4) is refused before any weight is uploaded: the error names the head dim, and no buffer was made.
#[test]
fn model_the_cache_cannot_hold_fails_before_uploading() {
    let _serial = common::gpus();
    // A device of its own, so other tests' buffers do not count.
    let gpu = mobilellm_kernels::Gpu::with_options(&mobilellm_kernels::GpuOptions::from_env().unwrap()).unwrap();
    let config = ModelConfig { head_dim: 6, ..tiny_config() };
    let host = HostModel::synthetic(config, WeightType::F32, 7).unwrap();
    let before = gpu.buffers_created();
    assert_err!(Model::new(&gpu, &host, &PlanOptions::default()), Error::InvalidArgument { .. }, "head_dim", "6");
    assert_eq!(gpu.buffers_created(), before, "buffers made before the refusal");
}

#[test]
fn gguf_deeply_nested_arrays_are_refused() {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // key/values
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes()); // array
    for _ in 0..100_000 {
        b.extend_from_slice(&9u32.to_le_bytes()); // of arrays
        b.extend_from_slice(&1u64.to_le_bytes()); // of one element
    }
    b.extend_from_slice(&4u32.to_le_bytes()); // innermost: u32 array
    b.extend_from_slice(&0u64.to_le_bytes()); // empty
    assert_err!(
        GgufFile::from_bytes(b, "nested.gguf"),
        Error::Gguf { error: GgufError::BadValue { .. }, .. },
        "`k`",
        "nested more than 8 deep",
        "at most 8 levels"
    );
}

/// The fuzz targets' seeds (`fuzz/seeds/`, made by `fuzz/make_seeds.py`) are valid inputs, so fuzzing starts
/// from inputs that reach the deep paths (model building, tokenizers).
#[test]
fn fuzz_seeds_are_valid_inputs() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let gguf = GgufFile::open(seeds.join("gguf/tiny-llama.gguf")).unwrap();
    HostModel::from_gguf(&gguf, None).unwrap();
    let tok = mobilellm_kernels::tokenizer::Tokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(tok.encode("ab ab", false).len(), 2); // "ab", "Ġab"
    let spm = GgufFile::open(seeds.join("gguf/spm-tokenizer.gguf")).unwrap();
    let tok = mobilellm_kernels::tokenizer::Tokenizer::from_gguf(&spm).unwrap();
    assert_eq!(tok.decode(&tok.encode("hello", false)), "hello");
    assert!(!Safetensors::open(seeds.join("safetensors/overflow.safetensors")).unwrap().names().is_empty());
    for name in ["tiny-plain", "tiny-shared"] {
        ModelConfig::from_file(seeds.join(format!("config/{name}.json"))).unwrap();
    }
}
