//! The safetensors loader: dtypes, shards, the writer, and typed errors for bad files.

mod common;

use std::path::{Path, PathBuf};

use mobilellm_kernels::model::safetensors::{write_safetensors, Dtype, Safetensors, TensorData};
use mobilellm_kernels::model::weights::expected_tensors;
use mobilellm_kernels::model::{ModelConfig, ModelWeightsF32};
use mobilellm_kernels::Error;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-plain")
}

/// A fresh scratch directory per test (tests run in parallel), removed when the test ends.
fn scratch(name: &str) -> common::ScratchDir {
    common::ScratchDir::new(&format!("st-{name}"))
}

#[test]
fn tiny_checkpoint_loads_every_tensor() {
    let st = Safetensors::open(tiny()).unwrap();
    let config = ModelConfig::from_file(tiny().join("config.json")).unwrap();
    let expected = expected_tensors(&config);
    assert_eq!(st.names().len(), expected.len(), "no lm_head in a tied checkpoint");
    for (name, shape) in &expected {
        let (dtype, got) = st.dtype_and_shape(name).unwrap();
        assert_eq!((dtype, got), (Dtype::F32, shape.as_slice()), "{name}");
    }
    let w = ModelWeightsF32::load(&st, &config).unwrap();
    assert_eq!(w.layers.len(), 4);
    assert!(w.lm_head.is_none());
    assert_eq!(w.head().len(), 512 * 128);
    let raw = st.raw("model.norm.weight").unwrap();
    assert_eq!((raw.bytes.len(), raw.shape), (128 * 4, &[128usize][..]));
}

#[test]
fn writer_round_trips_f32_and_i32() {
    let dir = scratch("roundtrip");
    let path = dir.join("t.safetensors");
    let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    let ids = [3i32, -1, 70000];
    write_safetensors(&path, &[("a", &[2, 3], TensorData::F32(&a)), ("ids", &[3], TensorData::I32(&ids))]).unwrap();
    let st = Safetensors::open(&path).unwrap();
    assert_eq!(st.tensor_f32("a", &[2, 3]).unwrap(), a);
    assert_eq!(st.tensor_i32("ids", &[3]).unwrap(), ids);
    // The i32 tensor asked as f32 is a dtype error naming both.
    let err = st.tensor_f32("ids", &[3]).unwrap_err();
    assert!(matches!(err, Error::DType { .. }) && err.to_string().contains("I32"), "{err}");
    // A shape that does not match the data is refused before anything is written.
    let err = write_safetensors(dir.join("bad.safetensors"), &[("a", &[4], TensorData::F32(&a))]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("[4]"), "{err}");
}

#[test]
fn f16_and_bf16_widen_to_f32() {
    let dir = scratch("half");
    let path = dir.join("h.safetensors");
    let values = [1.0f32, -2.5, 0.099975586, 65504.0];
    let f16: Vec<u8> = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let bf16: Vec<u8> = values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    let i64s: Vec<u8> = [1i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        ("h", safetensors::tensor::TensorView::new(Dtype::F16, vec![4], &f16).unwrap()),
        ("b", safetensors::tensor::TensorView::new(Dtype::BF16, vec![2, 2], &bf16).unwrap()),
        ("l", safetensors::tensor::TensorView::new(Dtype::I64, vec![2], &i64s).unwrap()),
    ];
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let st = Safetensors::open(&path).unwrap();
    let want_h: Vec<f32> = values.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
    let want_b: Vec<f32> = values.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect();
    assert_eq!(st.tensor_f32("h", &[4]).unwrap(), want_h);
    assert_eq!(st.tensor_f32("b", &[2, 2]).unwrap(), want_b);
    let err = st.tensor_f32("l", &[2]).unwrap_err();
    assert!(
        matches!(err, Error::DType { .. }) && err.to_string().contains("I64") && err.to_string().contains("`l`"),
        "{err}"
    );
}

#[test]
fn missing_and_misshaped_tensors() {
    let st = Safetensors::open(tiny()).unwrap();
    let err = st.tensor_f32("lm_head.weight", &[512, 128]).unwrap_err();
    assert!(matches!(err, Error::MissingTensor { .. }), "{err:?}");
    assert!(err.to_string().contains("lm_head.weight") && err.to_string().contains("model.safetensors"), "{err}");
    let err = st.tensor_f32("model.layers.0.self_attn.k_proj.weight", &[128, 128]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("[64, 128]") && msg.contains("[128, 128]") && msg.contains("k_proj"), "{msg}");

    // A config that does not fit the checkpoint fails on the first tensor whose shape differs.
    let mut config = ModelConfig::from_file(tiny().join("config.json")).unwrap();
    config.intermediate_size = 256;
    let err = ModelWeightsF32::load(&st, &config).unwrap_err();
    assert!(
        err.to_string().contains("model.layers.0.mlp.gate_proj.weight") && err.to_string().contains("[384, 128]"),
        "{err}"
    );
    config.intermediate_size = 384;
    config.num_hidden_layers = 5;
    let err = ModelWeightsF32::load(&st, &config).unwrap_err();
    assert!(matches!(err, Error::MissingTensor { .. }) && err.to_string().contains("model.layers.4."), "{err}");
}

#[test]
fn truncated_and_garbage_files_are_format_errors() {
    let dir = scratch("bad");
    let bytes = std::fs::read(tiny().join("model.safetensors")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", bytes[..bytes.len() - 100].to_vec(), "truncated"),
        ("header-cut", bytes[..200].to_vec(), "past the end"),
        ("tiny", vec![1, 2, 3], "3 bytes"),
        (
            "garbage",
            {
                let mut b = 20u64.to_le_bytes().to_vec();
                b.extend_from_slice(b"this is not json!!!!");
                b
            },
            "not valid safetensors JSON",
        ),
        (
            "unknown-dtype",
            {
                let header = br#"{"x":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}}"#;
                let mut b = (header.len() as u64).to_le_bytes().to_vec();
                b.extend_from_slice(header);
                b.extend_from_slice(&[0, 0]);
                b
            },
            "Q4",
        ),
    ];
    for (name, content, needle) in cases {
        let path = dir.join(format!("{name}.safetensors"));
        std::fs::write(&path, content).unwrap();
        let err = Safetensors::open(&path).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{name}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(needle) && msg.contains(&format!("{name}.safetensors")), "{name}: {msg}");
    }
    let err = Safetensors::open(dir.join("absent.safetensors")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let err = Safetensors::open(&dir).unwrap_err(); // a directory with neither file
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
}

/// Splits the tiny checkpoint into two shards plus an index, as HF does for large models; the loader must
/// give identical weights, and an index that points at the wrong shard is a missing-tensor error.
#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    let dir = scratch("shards");
    let st = Safetensors::open(tiny()).unwrap();
    let names = st.names();
    let data: Vec<(String, Vec<usize>, Vec<f32>)> = names
        .iter()
        .map(|n| {
            let shape = st.dtype_and_shape(n).unwrap().1.to_vec();
            let v = st.tensor_f32(n, &shape).unwrap();
            (n.to_string(), shape, v)
        })
        .collect();
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in data.chunks(data.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let entries: Vec<(&str, &[usize], TensorData)> =
            part.iter().map(|(n, s, v)| (n.as_str(), s.as_slice(), TensorData::F32(v))).collect();
        write_safetensors(dir.join(&file), &entries).unwrap();
        for (n, _, _) in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::copy(tiny().join("config.json"), dir.join("config.json")).unwrap();

    let (config, sharded) = ModelWeightsF32::load_dir(&dir).unwrap();
    let single = ModelWeightsF32::load(&st, &config).unwrap();
    assert_eq!(sharded, single);

    weight_map.insert("model.norm.weight".into(), "model-00001-of-00002.safetensors".into());
    let norm_in_first =
        data.chunks(data.len().div_ceil(2)).next().unwrap().iter().any(|(n, _, _)| n == "model.norm.weight");
    assert!(!norm_in_first, "sorted names put model.norm.weight last");
    let index = serde_json::json!({"weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let err = Safetensors::open(&dir).unwrap_err();
    assert!(matches!(err, Error::MissingTensor { .. }) && err.to_string().contains("model-00001-of-00002"), "{err}");
}

/// A checkpoint with a tensor a Llama model would not read (here a Qwen2-style q_proj bias) is refused by
/// name rather than run without it; the RoPE `inv_freq` buffers older checkpoints saved may stay.
#[test]
fn tensors_of_other_architectures_are_refused() {
    let st = Safetensors::open(tiny()).unwrap();
    let config = ModelConfig::from_file(tiny().join("config.json")).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .names()
        .into_iter()
        .map(|n| {
            let shape = st.dtype_and_shape(n).unwrap().1.to_vec();
            (n.to_string(), shape.clone(), st.tensor_f32(n, &shape).unwrap())
        })
        .collect();
    let write = |dir: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]| {
        let list: Vec<(&str, &[usize], TensorData<'_>)> =
            tensors.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), TensorData::F32(d))).collect();
        write_safetensors(dir.join("model.safetensors"), &list).unwrap();
        Safetensors::open(dir).unwrap()
    };
    let dir = scratch("extra");
    tensors.push(("model.layers.0.self_attn.rotary_emb.inv_freq".into(), vec![16], vec![1.0; 16]));
    ModelWeightsF32::load(&write(dir.path(), &tensors), &config).unwrap();
    tensors.push(("model.layers.1.self_attn.q_proj.bias".into(), vec![128], vec![0.0; 128]));
    let e = ModelWeightsF32::load(&write(dir.path(), &tensors), &config).unwrap_err().to_string();
    assert!(e.contains("model.layers.1.self_attn.q_proj.bias") && e.contains("model.safetensors"), "{e}");
    tensors.pop();
    tensors.push(("model.layers.4.mlp.up_proj.weight".into(), vec![2], vec![0.0; 2]));
    let e = ModelWeightsF32::load(&write(dir.path(), &tensors), &config).unwrap_err().to_string();
    assert!(e.contains("model.layers.4.mlp.up_proj.weight"), "a fifth layer in a 4-layer config: {e}");
}
