//! Model configuration: the Llama/MobileLLM numbers from a Hugging Face `config.json`, checked so that every
//! later stage (loader, planner, kernels) can rely on them fitting together.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// How RoPE pairs the elements of a head (DESIGN §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RopeLayout {
    /// HF safetensors, the "rotate_half" form: element `i` pairs with `i + head_dim/2`.
    #[default]
    Halves,
    /// GGUF `llama` files: element `2i` pairs with `2i + 1` (llama.cpp permutes Q/K rows at conversion).
    Interleaved,
}

/// The numbers of a Llama-architecture decoder as MobileLLM defines them.
///
/// `num_hidden_layers` counts UNIQUE layers (the ones stored in the checkpoint); with `layer_sharing` they
/// execute twice each, in the order 0,0,1,1,... (see [`ModelConfig::executed_layers`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the FFN (gate/up output, down input).
    pub intermediate_size: usize,
    /// Unique decoder layers stored in the checkpoint.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA: query head `h` reads KV head `h / (heads / kv_heads)`).
    pub num_key_value_heads: usize,
    /// Width of one head (default `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base: frequencies are `rope_theta^(-2i/head_dim)`, each divided by its
    /// [`ModelConfig::rope_freq_factors`] entry.
    pub rope_theta: f32,
    /// Long-context RoPE scaling as one divisor per rotated pair (`head_dim / 2` of them; empty: none):
    /// `linear` scaling divides every frequency by its factor, Llama-3's divides the low frequencies by
    /// `factor` and blends the middle ones ([`ModelConfig::llama3_rope_factors`]); GGUF files carry them as
    /// the `rope_freqs.weight` tensor.
    pub rope_freq_factors: Vec<f32>,
    /// Context capacity: positions run from 0 to `max_position_embeddings - 1`.
    pub max_position_embeddings: usize,
    /// HF's `tie_word_embeddings`.
    pub tie_word_embeddings: bool,
    /// MobileLLM's `share_embedding` (same meaning as `tie_word_embeddings`; either one ties the head).
    pub share_embedding: bool,
    /// MobileLLM's block-wise layer sharing: each unique layer runs twice in a row.
    pub layer_sharing: bool,
    /// How RoPE pairs elements; `Halves` for HF safetensors checkpoints.
    pub rope_layout: RopeLayout,
}

/// `config.json` `model_type`s this crate runs (absent is taken as Llama too).
const LLAMA_MODEL_TYPES: [&str; 2] = ["llama", "mobilellm"];

// Limits far beyond any model this crate targets; they exist so that a corrupt config fails here with its
// numbers named, not later as an allocation of terabytes.
const MAX_HIDDEN: usize = 1 << 16;
const MAX_INTERMEDIATE: usize = 1 << 18;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_HEAD_DIM: usize = 1024;
const MAX_VOCAB: usize = 1 << 22;
const MAX_POSITIONS: usize = 1 << 24;

impl ModelConfig {
    /// Parses a Hugging Face `config.json` text and validates it.
    ///
    /// Required keys: `hidden_size`, `intermediate_size`, `num_hidden_layers`, `num_attention_heads`,
    /// `vocab_size`. Defaults as `LlamaConfig`: `num_key_value_heads` = heads, `head_dim` = hidden / heads,
    /// `rms_norm_eps` 1e-6, `rope_theta` 10000 (top-level or in transformers 5's `rope_parameters`),
    /// `max_position_embeddings` 2048, `tie_word_embeddings` false; MobileLLM's `share_embedding` and
    /// `layer_sharing` default to false. `rope_scaling` (or transformers 5's `rope_parameters`) may be
    /// `default`, `linear` or `llama3`; other kinds, biases, `hidden_act` other than silu and `model_type`
    /// other than `llama` / `mobilellm` are rejected.
    pub fn from_json_str(json: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| Error::Config(format!("config.json is not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::Config(format!("config.json must be a JSON object, got {}", kind_of(&value))))?;
        Self::from_json_object(obj)
    }

    /// Reads and parses a `config.json` file (or a model directory containing one).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path.push("config.json");
        }
        let text =
            std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    fn from_json_object(obj: &Map<String, Value>) -> Result<Self> {
        // Other architectures share Llama's tensor names (Gemma, Qwen2) but not its math: refused by name.
        if let Some(kind) = obj.get("model_type").and_then(Value::as_str) {
            if !LLAMA_MODEL_TYPES.contains(&kind) {
                return Err(Error::Config(format!(
                    "model_type `{kind}` is not supported, expected one of {LLAMA_MODEL_TYPES:?} (Llama-architecture models)"
                )));
            }
        }
        let hidden_size = req_usize(obj, "hidden_size")?;
        let intermediate_size = req_usize(obj, "intermediate_size")?;
        let num_hidden_layers = req_usize(obj, "num_hidden_layers")?;
        let num_attention_heads = req_usize(obj, "num_attention_heads")?;
        let vocab_size = req_usize(obj, "vocab_size")?;
        let num_key_value_heads = opt_usize(obj, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match opt_usize(obj, "head_dim")? {
            Some(d) => d,
            None => {
                if num_attention_heads == 0 || !hidden_size.is_multiple_of(num_attention_heads) {
                    return Err(Error::Config(format!(
                        "hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads} \
                         and no head_dim is given"
                    )));
                }
                hidden_size / num_attention_heads
            }
        };
        let rms_norm_eps = opt_f64(obj, "rms_norm_eps")?.unwrap_or(1e-6) as f32;
        let rope_params = obj.get("rope_parameters").and_then(Value::as_object);
        let rope_theta = match opt_f64(obj, "rope_theta")? {
            Some(t) => t,
            None => match rope_params {
                Some(p) => opt_f64(p, "rope_theta")?.unwrap_or(10000.0),
                None => 10000.0,
            },
        } as f32;
        let scaling = match obj.get("rope_scaling") {
            None | Some(Value::Null) => rope_params.filter(|p| p.contains_key("rope_type")),
            Some(Value::Object(m)) => Some(m),
            Some(v) => return Err(Error::Config(format!("rope_scaling is {v}, expected null or an object"))),
        };
        let rope_freq_factors = match scaling {
            Some(m) => rope_factors(m, rope_theta, head_dim)?,
            None => Vec::new(),
        };
        let max_position_embeddings = opt_usize(obj, "max_position_embeddings")?.unwrap_or(2048);
        let tie_word_embeddings = opt_bool(obj, "tie_word_embeddings")?.unwrap_or(false);
        let share_embedding = opt_bool(obj, "share_embedding")?.unwrap_or(false);
        let layer_sharing = opt_bool(obj, "layer_sharing")?.unwrap_or(false);
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(Error::Config(format!("hidden_act `{act}` is not supported, expected `silu`")));
            }
        }
        for key in ["attention_bias", "mlp_bias"] {
            if opt_bool(obj, key)? == Some(true) {
                return Err(Error::Config(format!(
                    "{key} is true, but this crate supports Llama models without biases"
                )));
            }
        }
        let config = ModelConfig {
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            rms_norm_eps,
            rope_theta,
            rope_freq_factors,
            max_position_embeddings,
            tie_word_embeddings,
            share_embedding,
            layer_sharing,
            rope_layout: RopeLayout::Halves,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the numbers fit together; every message names the offending values.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("intermediate_size", self.intermediate_size, MAX_INTERMEDIATE),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_key_value_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
        ];
        for (name, value, max) in sizes {
            if value == 0 || value > max {
                return Err(Error::Config(format!("{name} is {value}, expected 1..={max}")));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(Error::Config(format!(
                "num_key_value_heads {} does not divide num_attention_heads {}",
                self.num_key_value_heads, self.num_attention_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::Config(format!("head_dim {} is odd, RoPE needs an even head_dim", self.head_dim)));
        }
        let q_dim = self.num_attention_heads * self.head_dim;
        if q_dim > MAX_HIDDEN {
            return Err(Error::Config(format!(
                "num_attention_heads {} x head_dim {} = {q_dim} exceeds {MAX_HIDDEN}",
                self.num_attention_heads, self.head_dim
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0 && self.rms_norm_eps < 1.0) {
            return Err(Error::Config(format!(
                "rms_norm_eps is {}, expected a finite value in [0, 1)",
                self.rms_norm_eps
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(Error::Config(format!("rope_theta is {}, expected a finite value > 1", self.rope_theta)));
        }
        let pairs = self.head_dim / 2;
        if !self.rope_freq_factors.is_empty() && self.rope_freq_factors.len() != pairs {
            return Err(Error::Config(format!(
                "{} RoPE frequency factors, expected head_dim / 2 = {pairs} (or none)",
                self.rope_freq_factors.len()
            )));
        }
        if let Some(f) = self.rope_freq_factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
            return Err(Error::Config(format!("RoPE frequency factor {f}, expected finite values > 0")));
        }
        Ok(())
    }

    /// Llama-3's RoPE scaling as per-pair divisors, as transformers and llama.cpp's converter compute them
    /// (in f64): pairs whose wavelength `2π / freq` is shorter than `original / high_freq_factor` keep their
    /// frequency, those longer than `original / low_freq_factor` are divided by `factor`, and in between
    /// `1 / ((1 - s) / factor + s)` with `s = (original / wavelength - low) / (high - low)`.
    pub fn llama3_rope_factors(
        theta: f32,
        head_dim: usize,
        factor: f64,
        low: f64,
        high: f64,
        original: f64,
    ) -> Result<Vec<f32>> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !(ok(factor) && ok(low) && ok(high) && ok(original) && high > low) {
            return Err(Error::Config(format!(
                "llama3 rope_scaling factor {factor}, low_freq_factor {low}, high_freq_factor {high}, \
                 original_max_position_embeddings {original}: expected positive values with high > low"
            )));
        }
        let (low_wavelen, high_wavelen) = (original / low, original / high);
        Ok((0..head_dim / 2)
            .map(|i| {
                let freq = (theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor as f32
                } else {
                    let s = (original / wavelen - low) / (high - low);
                    (1.0 / ((1.0 - s) / factor + s)) as f32
                }
            })
            .collect())
    }

    /// The RoPE frequency of pair `i`: `rope_theta^(-2i/head_dim)` divided by its scaling factor, in f64
    /// (the GPU's table and the CPU reference both start from this).
    pub fn rope_frequency(&self, i: usize) -> f64 {
        crate::reference::rope_frequency(i, self.head_dim, self.rope_theta, self.rope_freq_factors.get(i).copied())
    }

    /// Layers executed per token: `2 * num_hidden_layers` with layer sharing, else `num_hidden_layers`.
    pub fn executed_layers(&self) -> usize {
        if self.layer_sharing {
            2 * self.num_hidden_layers
        } else {
            self.num_hidden_layers
        }
    }

    /// The unique layer whose weights execution `exec_index` uses: 0,0,1,1,... with layer sharing,
    /// 0,1,2,... without.
    pub fn unique_layer_of(&self, exec_index: usize) -> usize {
        if self.layer_sharing {
            exec_index / 2
        } else {
            exec_index
        }
    }

    /// Whether the LM head is the embedding matrix (`tie_word_embeddings` or `share_embedding`).
    pub fn tied_embeddings(&self) -> bool {
        self.tie_word_embeddings || self.share_embedding
    }

    /// Rows of `q_proj` (`num_attention_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Rows of `k_proj` and `v_proj` (`num_key_value_heads * head_dim`): one KV-cache row per position.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Query heads per KV head.
    pub fn gqa_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads.max(1)
    }

    /// Parameters of one decoder layer (attention, FFN and both norms).
    pub fn layer_parameters(&self) -> usize {
        let h = self.hidden_size;
        let attn = self.q_dim() * h + 2 * self.kv_dim() * h + h * self.q_dim();
        let ffn = 3 * self.intermediate_size * h;
        attn + ffn + 2 * h
    }

    /// Parameters of the embedding matrix (`vocab_size * hidden_size`).
    pub fn embedding_parameters(&self) -> usize {
        self.vocab_size * self.hidden_size
    }

    /// Parameters stored in the checkpoint: embedding, unique layers, final norm, and a separate LM head
    /// when the embeddings are not tied. Shared layers are counted once.
    pub fn parameter_count(&self) -> usize {
        let head = if self.tied_embeddings() { 0 } else { self.embedding_parameters() };
        self.embedding_parameters() + self.num_hidden_layers * self.layer_parameters() + self.hidden_size + head
    }

    /// Parameters touched per token (shared layers counted at every execution, embedding once).
    pub fn executed_parameter_count(&self) -> usize {
        self.parameter_count() + (self.executed_layers() - self.num_hidden_layers) * self.layer_parameters()
    }

    /// KV-cache elements per position over all executed layers (K and V).
    pub fn kv_elements_per_position(&self) -> usize {
        2 * self.executed_layers() * self.kv_dim()
    }

    /// Returns the config with layer sharing switched on or off.
    pub fn with_layer_sharing(mut self, layer_sharing: bool) -> Self {
        self.layer_sharing = layer_sharing;
        self
    }

    /// Returns the config with the given RoPE layout.
    pub fn with_rope_layout(mut self, layout: RopeLayout) -> Self {
        self.rope_layout = layout;
        self
    }

    /// MobileLLM-125M: hidden 576, 30 layers, 9/3 heads, head dim 64, FFN 1536, vocab 32000, tied head.
    /// Layer sharing off; see [`ModelConfig::with_layer_sharing`].
    pub fn mobilellm_125m() -> Self {
        ModelConfig {
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            vocab_size: 32000,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_freq_factors: Vec::new(),
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            share_embedding: true,
            layer_sharing: false,
            rope_layout: RopeLayout::Halves,
        }
    }

    /// MobileLLM-350M: hidden 960, 32 layers, 15/5 heads, head dim 64, FFN 2560, vocab 32000, tied head.
    pub fn mobilellm_350m() -> Self {
        ModelConfig {
            hidden_size: 960,
            intermediate_size: 2560,
            num_hidden_layers: 32,
            num_attention_heads: 15,
            num_key_value_heads: 5,
            ..Self::mobilellm_125m()
        }
    }

    /// SmolLM2-135M: the MobileLLM-125M shape with vocab 49152, rope theta 100000, context 8192.
    pub fn smollm2_135m() -> Self {
        ModelConfig { vocab_size: 49152, rope_theta: 100000.0, max_position_embeddings: 8192, ..Self::mobilellm_125m() }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn opt_usize(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => usize::try_from(n)
                .map(Some)
                .map_err(|_| Error::Config(format!("{key} is {n}, too large for this platform"))),
            None => Err(Error::Config(format!("{key} is {v}, expected a non-negative integer"))),
        },
    }
}

fn req_usize(obj: &Map<String, Value>, key: &str) -> Result<usize> {
    opt_usize(obj, key)?.ok_or_else(|| Error::Config(format!("missing required key `{key}`")))
}

fn opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::Config(format!("{key} is {v}, expected a number"))),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| Error::Config(format!("{key} is {v}, expected true or false"))),
    }
}

/// The per-pair divisors of a `rope_scaling` object (`rope_type` or `type`: `default`, `linear`, `llama3`).
fn rope_factors(m: &Map<String, Value>, theta: f32, head_dim: usize) -> Result<Vec<f32>> {
    let kind = m.get("rope_type").or_else(|| m.get("type")).and_then(Value::as_str).unwrap_or("?");
    let num = |key: &str| -> Result<f64> {
        opt_f64(m, key)?.ok_or_else(|| Error::Config(format!("rope_scaling of type `{kind}` lacks `{key}`")))
    };
    match kind {
        "default" => Ok(Vec::new()),
        "linear" => {
            let factor = num("factor")?;
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(Error::Config(format!("rope_scaling factor is {factor}, expected a finite value >= 1")));
            }
            Ok(vec![factor as f32; head_dim / 2])
        }
        "llama3" => ModelConfig::llama3_rope_factors(
            theta,
            head_dim,
            num("factor")?,
            num("low_freq_factor")?,
            num("high_freq_factor")?,
            num("original_max_position_embeddings")?,
        ),
        _ => Err(Error::Config(format!(
            "rope_scaling of type `{kind}` is not supported, expected default, linear or llama3"
        ))),
    }
}
