//! GGUF export (`HostModel::to_gguf`): what is written is what llama.cpp's converter writes (Q/K rows
//! permuted for interleaved RoPE, GGUF dims, tied head left out), what is read back is the same model, a
//! GGUF file is rewritten byte for byte, and layer sharing survives as identical block pairs.

mod common;
#[path = "support/smollm2.rs"]
mod smollm2;

use mobilellm_kernels::model::export::LAYER_SHARING_KEY;
use mobilellm_kernels::model::gguf::{names, GgufFile, GgufWriter, MetaValue};
use mobilellm_kernels::model::{HostModel, ModelConfig, RopeLayout};
use mobilellm_kernels::quant::{HostWeight, WeightType};
use mobilellm_kernels::reference::forward::CpuModel;
use mobilellm_kernels::Error;

fn tiny_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn reread(w: &GgufWriter) -> GgufFile {
    GgufFile::from_bytes(w.to_bytes(), "exported.gguf").unwrap()
}

/// Logits of a 12-token prompt from the CPU twin of `host` (its weights dequantized).
fn cpu_logits(host: &HostModel) -> Vec<f32> {
    let prompt: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % host.config.vocab_size as u32).collect();
    CpuModel::new(host.config.clone(), host.dequantized()).unwrap().prefill(&prompt).unwrap()
}

/// The largest difference between two logit sets relative to the largest logit.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn rows(w: &HostWeight) -> Vec<Vec<f32>> {
    w.dequantize().chunks(w.cols).map(<[f32]>::to_vec).collect()
}

/// An HF checkpoint (rotate_half RoPE) exported as GGUF: Q/K rows in llama.cpp's order, every other tensor
/// as it was, and the model read back computes the same logits.
#[test]
fn hf_checkpoint_exports_in_llama_cpp_layout() {
    let source = HostModel::from_safetensors_dir(&tiny_dir("tiny-plain"), WeightType::Q8_0).unwrap();
    let c = &source.config;
    assert_eq!(c.rope_layout, RopeLayout::Halves);
    let file = reread(&source.to_gguf("tiny").unwrap());
    assert_eq!(file.get_str("general.name").unwrap(), Some("tiny"));
    assert_eq!(file.get_u64("general.file_type").unwrap(), Some(7), "MOSTLY_Q8_0");
    assert!(file.tensor_info(names::OUTPUT).is_none(), "a tied head is not written");
    let info = file.tensor_info(&names::block(0, "ffn_down")).unwrap();
    assert_eq!(info.dims, [c.intermediate_size as u64, c.hidden_size as u64], "GGUF dims are innermost first");

    let back = HostModel::from_gguf(&file, None).unwrap();
    assert_eq!(back.config, ModelConfig { rope_layout: RopeLayout::Interleaved, ..c.clone() });
    let hd = c.head_dim;
    for (l, (a, b)) in source.layers.iter().zip(&back.layers).enumerate() {
        for (what, src, out) in [("q", &a.q_proj, &b.q_proj), ("k", &a.k_proj, &b.k_proj)] {
            // convert_hf_to_gguf.py's permute: row 2i + j of a head is rotate_half row j * head_dim / 2 + i.
            let (src, out) = (rows(src), rows(out));
            for head in 0..src.len() / hd {
                for i in 0..hd / 2 {
                    for j in 0..2 {
                        assert_eq!(out[head * hd + 2 * i + j], src[head * hd + j * hd / 2 + i], "layer {l} {what}");
                    }
                }
            }
        }
        for (x, y) in [(&a.v_proj, &b.v_proj), (&a.o_proj, &b.o_proj), (&a.gate_proj, &b.gate_proj)]
            .into_iter()
            .chain([(&a.up_proj, &b.up_proj), (&a.down_proj, &b.down_proj)])
        {
            assert_eq!(x.words(), y.words(), "layer {l}");
        }
        assert_eq!((&a.input_norm, &a.post_norm), (&b.input_norm, &b.post_norm));
    }
    assert_eq!(source.embed.words(), back.embed.words());
    // The same math: RoPE turns the same pairs by the same angles; only the order in which q.k adds a
    // head's products differs, so logits agree to f32 rounding (about 1e-7 relative per sum, over 4 layers).
    let diff = max_rel_diff(&cpu_logits(&source), &cpu_logits(&back));
    assert!(diff < 1e-5, "exported model's logits differ by {diff:e} of the largest");
}

/// Weights of every type are written as GGUF blocks and read back bit for bit (a model already in the
/// interleaved layout is not permuted again); the file is padded as llama.cpp reads it.
#[test]
fn every_weight_type_roundtrips_bit_exact() {
    let config = ModelConfig { rope_layout: RopeLayout::Interleaved, ..common::tiny_config() };
    for wtype in [WeightType::F32, WeightType::F16, WeightType::Q8_0, WeightType::Q4_0, WeightType::Q4_1] {
        let model = HostModel::synthetic(config.clone(), wtype, 11).unwrap();
        let writer = model.to_gguf("synthetic").unwrap();
        let bytes = writer.to_bytes();
        assert_eq!(bytes.len() % 32, 0, "{wtype}: the last tensor is padded to the alignment");
        let back = HostModel::from_gguf(&GgufFile::from_bytes(bytes, "synthetic.gguf").unwrap(), None).unwrap();
        assert_eq!(back.config, model.config, "{wtype}");
        let words = |m: &HostModel| -> Vec<Vec<u32>> {
            let mut all = vec![m.embed.words().to_vec()];
            for l in &m.layers {
                for w in [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj] {
                    assert_eq!(w.wtype, wtype);
                    all.push(w.words().to_vec());
                }
            }
            all
        };
        assert_eq!(words(&back), words(&model), "{wtype}");
        assert_eq!(back.final_norm, model.final_norm);
    }
    // An untied head is written as `output.weight` and RoPE scaling as `rope_freqs.weight`.
    let scaled = ModelConfig {
        tie_word_embeddings: false,
        share_embedding: false,
        rope_freq_factors: (0..8).map(|i| 1.0 + i as f32).collect(),
        ..config
    };
    let model = HostModel::synthetic(scaled, WeightType::Q4_1, 3).unwrap();
    let back = HostModel::from_gguf(&reread(&model.to_gguf("untied").unwrap()), None).unwrap();
    assert_eq!(back.config, model.config);
    assert_eq!(back.lm_head.unwrap().words(), model.lm_head.unwrap().words());
}

/// A shared model is written as the plain model it executes (every block twice) plus the sharing key, and
/// read back as the shared model; a file whose pairs differ is refused by tensor name.
#[test]
fn layer_sharing_is_written_as_identical_pairs() {
    let source = HostModel::from_safetensors_dir(&tiny_dir("tiny-shared"), WeightType::Q4_0).unwrap();
    assert!(source.config.layer_sharing);
    let unique = source.config.num_hidden_layers;
    let writer = source.to_gguf("tiny-shared").unwrap();
    let file = reread(&writer);
    assert_eq!(file.get_u64("llama.block_count").unwrap(), Some(2 * unique as u64));
    assert_eq!(file.get_bool(LAYER_SHARING_KEY).unwrap(), Some(true));
    let back = HostModel::from_gguf(&file, None).unwrap();
    assert!(back.config.layer_sharing);
    assert_eq!(back.layers.len(), unique);
    let diff = max_rel_diff(&cpu_logits(&source), &cpu_logits(&back));
    assert!(diff < 1e-5, "exported shared model's logits differ by {diff:e} of the largest");

    // Without the key the same file is the plain model with 2x the layers: the same logits, as llama.cpp
    // would run it.
    let mut plain = writer.clone();
    plain.meta(LAYER_SHARING_KEY, MetaValue::Bool(false));
    let plain = HostModel::from_gguf(&reread(&plain), None).unwrap();
    assert_eq!((plain.config.layer_sharing, plain.layers.len()), (false, 2 * unique));
    assert!(max_rel_diff(&cpu_logits(&back), &cpu_logits(&plain)) == 0.0, "the same computation");

    // One changed weight in a pair's second copy, or an odd block count, is refused.
    let mut tampered = GgufWriter::new();
    let bad = names::block(3, "ffn_up");
    for (key, value) in file.metadata() {
        tampered.meta(key, value.clone());
    }
    for t in file.tensor_infos() {
        let (_, data) = file.tensor_bytes(&t.name).unwrap();
        let mut data = data.to_vec();
        if t.name == bad {
            data[5] ^= 1;
        }
        tampered.tensor(&t.name, t.ggml_type, &t.dims, data);
    }
    // (Not `expect_err`: it would print the whole model.)
    let refused = |w: &GgufWriter| match HostModel::from_gguf(&reread(w), None) {
        Ok(_) => panic!("a file whose pairs differ loaded"),
        Err(e) => e,
    };
    let e = refused(&tampered);
    assert!(matches!(e, Error::Config(_)) && e.to_string().contains(&bad), "{e}");
    tampered.meta("llama.block_count", MetaValue::U32(2 * unique as u32 - 1));
    let e = refused(&tampered);
    assert!(e.to_string().contains("odd"), "{e}");
}

/// The real SmolLM2 file, loaded and exported again, has the same tensors (names, types, dims, bytes) and
/// the same model keys; its tokenizer keys copy over as they are.
#[test]
fn smollm2_gguf_rewrites_byte_for_byte() {
    let source = GgufFile::open(smollm2::gguf_path()).unwrap();
    let model = HostModel::from_gguf(&source, None).unwrap();
    let mut writer = model.to_gguf("SmolLM2").unwrap();
    writer.copy_metadata(&source, "tokenizer.");
    let path = std::env::temp_dir().join(format!("mobilellm-export-{}.gguf", std::process::id()));
    writer.write(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(file.tensor_infos().len(), source.tensor_infos().len());
    for t in source.tensor_infos() {
        let ours = file.tensor_info(&t.name).unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!((ours.ggml_type, &ours.dims), (t.ggml_type, &t.dims), "{}", t.name);
        assert!(file.tensor_bytes(&t.name).unwrap().1 == source.tensor_bytes(&t.name).unwrap().1, "{}", t.name);
    }
    for (key, value) in source.metadata() {
        if key.starts_with("llama.") || key.starts_with("tokenizer.") {
            assert_eq!(file.get(key), Some(value), "{key}");
        }
    }
}
