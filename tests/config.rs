//! `ModelConfig`: parsing HF `config.json`, MobileLLM's flags, presets and typed errors that name values.

use std::path::Path;

use mobilellm_kernels::model::{ModelConfig, RopeLayout};
use mobilellm_kernels::Error;

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name).join("config.json")
}

/// A valid base config; tests patch one key at a time.
fn base() -> serde_json::Value {
    serde_json::json!({
        "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 512,
    })
}

fn with(key: &str, value: serde_json::Value) -> String {
    let mut v = base();
    if value.is_null() {
        v.as_object_mut().unwrap().remove(key);
    } else {
        v[key] = value;
    }
    v.to_string()
}

/// Asserts a `Error::Config` whose message contains every needle.
fn config_err(json: &str, needles: &[&str]) {
    let err = ModelConfig::from_json_str(json).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "expected Error::Config, got {err:?}");
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "message `{msg}` should name `{n}`");
    }
}

#[test]
fn golden_configs_parse() {
    let plain = ModelConfig::from_file(data("tiny-plain")).unwrap();
    assert_eq!(
        (plain.hidden_size, plain.intermediate_size, plain.num_hidden_layers, plain.num_attention_heads),
        (128, 384, 4, 4)
    );
    assert_eq!(
        (plain.num_key_value_heads, plain.head_dim, plain.vocab_size, plain.max_position_embeddings),
        (2, 32, 512, 512)
    );
    assert_eq!((plain.rms_norm_eps, plain.rope_theta), (1e-5, 10000.0));
    assert!(plain.tied_embeddings() && !plain.layer_sharing);
    assert_eq!(plain.rope_layout, RopeLayout::Halves);
    assert_eq!(plain.executed_layers(), 4);
    assert_eq!((0..4).map(|e| plain.unique_layer_of(e)).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!((plain.q_dim(), plain.kv_dim(), plain.gqa_group()), (128, 64, 2));

    let shared = ModelConfig::from_file(data("tiny-shared").parent().unwrap()).unwrap(); // a directory works too
    assert!(shared.layer_sharing);
    assert_eq!(shared.executed_layers(), 8);
    assert_eq!((0..8).map(|e| shared.unique_layer_of(e)).collect::<Vec<_>>(), [0, 0, 1, 1, 2, 2, 3, 3]);
    assert_eq!(shared.parameter_count(), plain.parameter_count());
    assert_eq!(shared.executed_parameter_count(), plain.parameter_count() + 4 * plain.layer_parameters());
    // The README's byte count: 3416512 bytes of f32 minus the header.
    assert_eq!(plain.parameter_count(), (512 * 128) + 4 * (128 * 128 * 2 + 64 * 128 * 2 + 384 * 128 * 3 + 256) + 128);
}

#[test]
fn defaults_and_flags() {
    let c = ModelConfig::from_json_str(&with("num_key_value_heads", serde_json::Value::Null)).unwrap();
    assert_eq!(c.num_key_value_heads, 4, "kv heads default to heads");
    assert_eq!(c.head_dim, 32, "head_dim defaults to hidden / heads");
    assert!(!c.tied_embeddings() && !c.layer_sharing, "flags default to false");
    // MobileLLM's published configs: tie_word_embeddings false, share_embedding true => tied.
    let c = ModelConfig::from_json_str(&with("share_embedding", true.into())).unwrap();
    assert!(c.tied_embeddings());
    let c = ModelConfig::from_json_str(&with("tie_word_embeddings", true.into())).unwrap();
    assert!(c.tied_embeddings());
    // transformers 5 writes rope_theta inside rope_parameters.
    let mut v = base();
    v.as_object_mut().unwrap().remove("rope_theta");
    v["rope_parameters"] = serde_json::json!({"rope_theta": 100000.0, "rope_type": "default"});
    assert_eq!(ModelConfig::from_json_str(&v.to_string()).unwrap().rope_theta, 100000.0);
    // An explicit head_dim need not divide hidden.
    let mut v = base();
    v["hidden_size"] = 100.into();
    v["head_dim"] = 32.into();
    let c = ModelConfig::from_json_str(&v.to_string()).unwrap();
    assert_eq!((c.head_dim, c.q_dim()), (32, 128));
}

#[test]
fn presets_match_the_design_table() {
    let m = ModelConfig::mobilellm_125m();
    assert_eq!((m.hidden_size, m.num_hidden_layers, m.num_attention_heads, m.num_key_value_heads), (576, 30, 9, 3));
    assert_eq!((m.head_dim, m.intermediate_size, m.vocab_size), (64, 1536, 32000));
    assert!(m.tied_embeddings() && !m.layer_sharing);
    m.validate().unwrap();
    let p = m.parameter_count();
    assert!((124_000_000..126_000_000).contains(&p), "125M has {p} parameters");
    let ls = m.clone().with_layer_sharing(true);
    assert_eq!((ls.executed_layers(), ls.parameter_count()), (60, p));

    let m = ModelConfig::mobilellm_350m();
    assert_eq!((m.hidden_size, m.num_hidden_layers, m.num_attention_heads, m.num_key_value_heads), (960, 32, 15, 5));
    assert_eq!((m.head_dim, m.intermediate_size, m.vocab_size), (64, 2560, 32000));
    let p = m.parameter_count();
    assert!((340_000_000..350_000_000).contains(&p), "350M has {p} parameters");

    let s = ModelConfig::smollm2_135m();
    assert_eq!((s.hidden_size, s.num_hidden_layers, s.num_attention_heads, s.num_key_value_heads), (576, 30, 9, 3));
    assert_eq!((s.vocab_size, s.rope_theta), (49152, 100000.0));
    let p = s.parameter_count();
    assert!((134_000_000..136_000_000).contains(&p), "SmolLM2-135M has {p} parameters");
    assert_eq!(s.kv_elements_per_position(), 2 * 30 * 192);
}

#[test]
fn heads_not_dividing_hidden() {
    let mut v = base();
    v["hidden_size"] = 100.into();
    v["num_attention_heads"] = 3.into();
    config_err(&v.to_string(), &["hidden_size 100", "num_attention_heads 3", "head_dim"]);
}

#[test]
fn kv_heads_not_dividing_heads() {
    config_err(&with("num_key_value_heads", 3.into()), &["num_key_value_heads 3", "num_attention_heads 4"]);
}

#[test]
fn zero_and_absurd_sizes() {
    config_err(&with("vocab_size", 0.into()), &["vocab_size is 0"]);
    config_err(&with("num_hidden_layers", 0.into()), &["num_hidden_layers is 0"]);
    config_err(&with("intermediate_size", 0.into()), &["intermediate_size is 0"]);
    config_err(&with("num_key_value_heads", 0.into()), &["num_key_value_heads is 0"]);
    config_err(&with("num_attention_heads", 0.into()), &["num_attention_heads 0"]);
    config_err(&with("vocab_size", 10_000_000_000u64.into()), &["vocab_size is 10000000000"]);
    config_err(&with("max_position_embeddings", 0.into()), &["max_position_embeddings is 0"]);
    config_err(&with("hidden_size", (1u64 << 20).into()), &["1048576"]);
}

#[test]
fn odd_head_dim() {
    config_err(&with("head_dim", 33.into()), &["head_dim 33", "odd"]);
}

#[test]
fn bad_values_and_types() {
    config_err(&with("hidden_size", serde_json::Value::Null), &["hidden_size", "missing"]);
    config_err(&with("hidden_size", (-5).into()), &["hidden_size is -5"]);
    config_err(&with("hidden_size", "128".into()), &["hidden_size is \"128\""]);
    config_err(&with("rms_norm_eps", (-1.0).into()), &["rms_norm_eps is -1"]);
    config_err(&with("rope_theta", 0.5.into()), &["rope_theta is 0.5"]);
    config_err(&with("layer_sharing", "yes".into()), &["layer_sharing is \"yes\""]);
    config_err(
        &with("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 8.0})),
        &["llama3", "low_freq_factor"],
    );
    config_err(&with("rope_scaling", serde_json::json!({"rope_type": "yarn", "factor": 4.0})), &["yarn"]);
    config_err(&with("rope_scaling", serde_json::json!({"type": "linear", "factor": 0.5})), &["factor is 0.5"]);
    config_err(&with("hidden_act", "gelu".into()), &["gelu"]);
    config_err(&with("model_type", "gemma".into()), &["model_type `gemma`", "llama"]);
    config_err(&with("model_type", "qwen2".into()), &["qwen2"]);
    assert!(ModelConfig::from_json_str(&with("model_type", "llama".into())).is_ok());
    config_err(&with("attention_bias", true.into()), &["attention_bias"]);
    config_err("{not json", &["not valid JSON"]);
    config_err("[1, 2]", &["an array"]);
}

#[test]
fn validate_catches_hand_edited_configs() {
    let mut c = ModelConfig::mobilellm_125m();
    c.num_key_value_heads = 4;
    let err = c.validate().unwrap_err();
    assert!(matches!(err, Error::Config(_)) && err.to_string().contains("num_key_value_heads 4"), "{err}");
    let mut c = ModelConfig::mobilellm_125m();
    c.head_dim = 0;
    assert!(c.validate().unwrap_err().to_string().contains("head_dim is 0"));
}

#[test]
fn missing_file_is_io_error_naming_the_path() {
    let err = ModelConfig::from_file("/nonexistent/dir/config.json").unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("/nonexistent/dir/config.json"), "{err}");
}

/// The shape of facebook/MobileLLM-125M's published config.json (untied by `tie_word_embeddings`, tied by
/// `share_embedding`; custom `model_type` and `auto_map` keys are ignored).
#[test]
fn mobilellm_hub_style_config() {
    let json = r#"{
        "architectures": ["MobileLLMForCausalLM"], "auto_map": {"AutoConfig": "configuration_mobilellm.MobileLLMConfig"},
        "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.02, "intermediate_size": 1536,
        "layer_sharing": false, "max_position_embeddings": 2048, "mlp_bias": false, "model_type": "mobilellm",
        "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0, "share_embedding": true,
        "tie_word_embeddings": false, "torch_dtype": "float16", "use_cache": true, "vocab_size": 32000
    }"#;
    let c = ModelConfig::from_json_str(json).unwrap();
    assert!(c.tied_embeddings() && !c.tie_word_embeddings);
    let mut same = c.clone();
    same.tie_word_embeddings = true; // the preset sets both flags
    assert_eq!(same, ModelConfig::mobilellm_125m());
}

/// RoPE scaling from `config.json`: Llama-3.2-1B's `llama3` parameters give the per-pair divisors that
/// llama.cpp's converter writes as `rope_freqs` (its formula evaluated in Python f64: pairs 0-14 keep
/// their frequency, 15-17 blend, 18-31 are divided by 32), in either place transformers puts them; `linear`
/// divides every pair.
#[test]
fn rope_scaling_llama3_and_linear() {
    let llama32 = serde_json::json!({
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "rope_theta": 500000.0,
        "max_position_embeddings": 131072, "tie_word_embeddings": true,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    });
    let c = ModelConfig::from_json_str(&llama32.to_string()).unwrap();
    assert_eq!(c.rope_freq_factors.len(), 32);
    assert!(c.rope_freq_factors[..15].iter().all(|&f| f == 1.0), "{:?}", c.rope_freq_factors);
    let blended = [1.6513292457638984f64, 3.2922621029408843, 9.666728978753293];
    for (&got, want) in c.rope_freq_factors[15..18].iter().zip(blended) {
        assert_eq!(got, want as f32, "the f64 value rounded once");
    }
    assert!(c.rope_freq_factors[18..].iter().all(|&f| f == 32.0));
    assert_eq!(c.rope_frequency(20), 500000f64.powf(-40.0 / 64.0) / 32.0);
    // transformers 5: the same under rope_parameters, with rope_theta there.
    let mut v5 = llama32.clone();
    let mut params = v5["rope_scaling"].take();
    params["rope_theta"] = 500000.0.into();
    v5.as_object_mut().unwrap().remove("rope_theta");
    v5.as_object_mut().unwrap().remove("rope_scaling");
    v5["rope_parameters"] = params;
    assert_eq!(ModelConfig::from_json_str(&v5.to_string()).unwrap().rope_freq_factors, c.rope_freq_factors);
    let linear =
        ModelConfig::from_json_str(&with("rope_scaling", serde_json::json!({"type": "linear", "factor": 4.0})))
            .unwrap();
    assert_eq!(linear.rope_freq_factors, vec![4.0; 16]);
    let plain = ModelConfig::from_json_str(&with("rope_scaling", serde_json::json!({"rope_type": "default"}))).unwrap();
    assert!(plain.rope_freq_factors.is_empty());
    // A hand-edited config with the wrong number of factors, or a bad one, fails validation.
    let mut bad = plain.clone();
    bad.rope_freq_factors = vec![2.0; 3];
    assert!(bad.validate().unwrap_err().to_string().contains("3 RoPE frequency factors"));
    bad.rope_freq_factors = vec![0.0; 16];
    assert!(bad.validate().unwrap_err().to_string().contains("RoPE frequency factor 0"));
}
