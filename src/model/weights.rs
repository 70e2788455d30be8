//! Host-side f32 weights of a whole model, shape-checked against a [`ModelConfig`], plus the HF tensor
//! names and shapes every loader uses.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::safetensors::Safetensors;

/// HF name of the token embedding (`[vocab, hidden]`).
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
/// HF name of the final norm (`[hidden]`).
pub const FINAL_NORM: &str = "model.norm.weight";
/// HF name of the untied LM head (`[vocab, hidden]`).
pub const LM_HEAD: &str = "lm_head.weight";

/// A checkpoint tensor this crate's Llama model would not read (a bias, a QK norm, an extra layer, experts)
/// means the checkpoint is another architecture: running it without would be silently wrong. RoPE
/// `inv_freq` buffers that older checkpoints saved are derived from the config and may stay.
fn check_no_unused_tensors(st: &Safetensors, layers: usize) -> Result<()> {
    let known = |name: &str| {
        if [EMBED_TOKENS, FINAL_NORM, LM_HEAD].contains(&name) || name.ends_with("rotary_emb.inv_freq") {
            return true;
        }
        let Some((layer, suffix)) = name.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) else {
            return false;
        };
        layer.parse::<usize>().is_ok_and(|l| l < layers) && LAYER_TENSORS.contains(&suffix)
    };
    match st.names().into_iter().find(|n| !known(n)) {
        Some(name) => Err(Error::format(
            st.source(),
            format!("tensor `{name}` is not part of a Llama model (biases, QK norms, experts and extra layers are not supported)"),
        )),
        None => Ok(()),
    }
}

/// The per-layer tensors, in the order of [`LayerWeightsF32`]'s fields: suffix after `model.layers.{i}.`.
pub const LAYER_TENSORS: [&str; 9] = [
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

/// The HF name of a per-layer tensor, e.g. `layer_tensor_name(3, "mlp.up_proj.weight")`.
pub fn layer_tensor_name(layer: usize, suffix: &str) -> String {
    format!("model.layers.{layer}.{suffix}")
}

/// Shape of a per-layer tensor (one of [`LAYER_TENSORS`]) for this config; linear weights are
/// `[out_features, in_features]`.
pub fn layer_tensor_shape(config: &ModelConfig, suffix: &str) -> Option<Vec<usize>> {
    let (h, i, q, kv) = (config.hidden_size, config.intermediate_size, config.q_dim(), config.kv_dim());
    Some(match suffix {
        "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![h],
        "self_attn.q_proj.weight" => vec![q, h],
        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, h],
        "self_attn.o_proj.weight" => vec![h, q],
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![i, h],
        "mlp.down_proj.weight" => vec![h, i],
        _ => return None,
    })
}

/// Every tensor a checkpoint of this config must hold, with its shape (the LM head is not listed: it is
/// optional, see [`ModelWeightsF32::load`]).
pub fn expected_tensors(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![(EMBED_TOKENS.to_string(), vec![config.vocab_size, config.hidden_size])];
    for layer in 0..config.num_hidden_layers {
        for suffix in LAYER_TENSORS {
            let shape = layer_tensor_shape(config, suffix).unwrap_or_default();
            out.push((layer_tensor_name(layer, suffix), shape));
        }
    }
    out.push((FINAL_NORM.to_string(), vec![config.hidden_size]));
    out
}

/// One unique decoder layer, f32, row-major `[out_features, in_features]`.
#[derive(Clone, PartialEq)]
pub struct LayerWeightsF32 {
    /// `input_layernorm.weight` `[hidden]`.
    pub input_norm: Vec<f32>,
    /// `q_proj` `[heads*head_dim, hidden]`.
    pub q_proj: Vec<f32>,
    /// `k_proj` `[kv_heads*head_dim, hidden]`.
    pub k_proj: Vec<f32>,
    /// `v_proj` `[kv_heads*head_dim, hidden]`.
    pub v_proj: Vec<f32>,
    /// `o_proj` `[hidden, heads*head_dim]`.
    pub o_proj: Vec<f32>,
    /// `post_attention_layernorm.weight` `[hidden]`.
    pub post_norm: Vec<f32>,
    /// `gate_proj` `[intermediate, hidden]`.
    pub gate_proj: Vec<f32>,
    /// `up_proj` `[intermediate, hidden]`.
    pub up_proj: Vec<f32>,
    /// `down_proj` `[hidden, intermediate]`.
    pub down_proj: Vec<f32>,
}

impl LayerWeightsF32 {
    /// The nine tensors in [`LAYER_TENSORS`] order.
    pub fn fields(&self) -> [&[f32]; 9] {
        [
            &self.input_norm,
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.post_norm,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }

    fn fields_mut(&mut self) -> [&mut Vec<f32>; 9] {
        [
            &mut self.input_norm,
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.post_norm,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ]
    }

    fn empty() -> Self {
        LayerWeightsF32 {
            input_norm: Vec::new(),
            q_proj: Vec::new(),
            k_proj: Vec::new(),
            v_proj: Vec::new(),
            o_proj: Vec::new(),
            post_norm: Vec::new(),
            gate_proj: Vec::new(),
            up_proj: Vec::new(),
            down_proj: Vec::new(),
        }
    }
}

/// All weights of a model as f32 host vectors: one entry per UNIQUE layer (shared layers stored once).
#[derive(Clone, PartialEq)]
pub struct ModelWeightsF32 {
    /// `model.embed_tokens.weight` `[vocab, hidden]`.
    pub embed_tokens: Vec<f32>,
    /// The unique layers, `config.num_hidden_layers` of them.
    pub layers: Vec<LayerWeightsF32>,
    /// `model.norm.weight` `[hidden]`.
    pub final_norm: Vec<f32>,
    /// `lm_head.weight` `[vocab, hidden]` when the head is untied and the checkpoint has one; `None` means
    /// the head is the embedding matrix.
    pub lm_head: Option<Vec<f32>>,
}

impl ModelWeightsF32 {
    /// Loads every tensor of `config` from a checkpoint, widened to f32, each shape checked.
    ///
    /// The head: tied configs (`tie_word_embeddings` or `share_embedding`) use the embedding and ignore any
    /// `lm_head.weight`; untied configs use `lm_head.weight` when present and otherwise fall back to the
    /// embedding (MobileLLM's published configs say untied yet ship no head: they tie at run time).
    pub fn load(st: &Safetensors, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed_tokens = st.tensor_f32(EMBED_TOKENS, &[v, h])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for layer in 0..config.num_hidden_layers {
            let mut w = LayerWeightsF32::empty();
            for (slot, suffix) in w.fields_mut().into_iter().zip(LAYER_TENSORS) {
                let shape = layer_tensor_shape(config, suffix).unwrap_or_default();
                *slot = st.tensor_f32(&layer_tensor_name(layer, suffix), &shape)?;
            }
            layers.push(w);
        }
        let final_norm = st.tensor_f32(FINAL_NORM, &[h])?;
        let lm_head = if !config.tied_embeddings() && st.contains(LM_HEAD) {
            Some(st.tensor_f32(LM_HEAD, &[v, h])?)
        } else {
            None
        };
        check_no_unused_tensors(st, config.num_hidden_layers)?;
        Ok(ModelWeightsF32 { embed_tokens, layers, final_norm, lm_head })
    }

    /// Reads `config.json` and the safetensors checkpoint of a model directory.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<(ModelConfig, Self)> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        let st = Safetensors::open(dir)?;
        let weights = Self::load(&st, &config)?;
        Ok((config, weights))
    }

    /// Deterministic random weights of the right shapes (linear and embedding `0.02 * U(-1.7, 1.7)`, norms
    /// `1 + 0.1 * U(-1, 1)`), for demos and benchmarks at real model shapes without a checkpoint.
    pub fn random(config: &ModelConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = XorShift::new(seed);
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed_tokens = rng.linear(v * h);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            let mut w = LayerWeightsF32::empty();
            for (slot, suffix) in w.fields_mut().into_iter().zip(LAYER_TENSORS) {
                let n: usize = layer_tensor_shape(config, suffix).unwrap_or_default().iter().product();
                *slot = if suffix.ends_with("layernorm.weight") { rng.norm(n) } else { rng.linear(n) };
            }
            layers.push(w);
        }
        let final_norm = rng.norm(h);
        let lm_head = if config.tied_embeddings() { None } else { Some(rng.linear(v * h)) };
        Ok(ModelWeightsF32 { embed_tokens, layers, final_norm, lm_head })
    }

    /// Checks every vector's length against `config` (for weights built by hand or by another loader).
    pub fn check(&self, config: &ModelConfig) -> Result<()> {
        let (v, h) = (config.vocab_size, config.hidden_size);
        let len = |name: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(Error::shape(name, &[got], format!("[{want}] elements")))
            }
        };
        len(EMBED_TOKENS, self.embed_tokens.len(), v * h)?;
        len(FINAL_NORM, self.final_norm.len(), h)?;
        if let Some(head) = &self.lm_head {
            len(LM_HEAD, head.len(), v * h)?;
        }
        if self.layers.len() != config.num_hidden_layers {
            return Err(Error::invalid(
                "number of unique layers",
                self.layers.len(),
                format!("num_hidden_layers = {}", config.num_hidden_layers),
            ));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            for (slot, suffix) in layer.fields().into_iter().zip(LAYER_TENSORS) {
                let n: usize = layer_tensor_shape(config, suffix).unwrap_or_default().iter().product();
                len(&layer_tensor_name(i, suffix), slot.len(), n)?;
            }
        }
        Ok(())
    }

    /// The LM head matrix `[vocab, hidden]`: `lm_head` when present, else the embedding.
    pub fn head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed_tokens)
    }
}

// Debug prints element counts, not hundreds of millions of floats.
impl std::fmt::Debug for LayerWeightsF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<usize> = self.fields().iter().map(|t| t.len()).collect();
        f.debug_struct("LayerWeightsF32").field("element_counts", &lens).finish()
    }
}

impl std::fmt::Debug for ModelWeightsF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelWeightsF32")
            .field("embed_tokens", &self.embed_tokens.len())
            .field("layers", &self.layers)
            .field("final_norm", &self.final_norm.len())
            .field("lm_head", &self.lm_head.as_ref().map(Vec::len))
            .finish()
    }
}

/// Small deterministic generator for [`ModelWeightsF32::random`].
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn linear(&mut self, n: usize) -> Vec<f32> {
        // U(-1.7, 1.7) has standard deviation ~1, like the goldens' 0.02 * N(0, 1).
        (0..n).map(|_| 0.02 * 1.7 * self.next()).collect()
    }
    fn norm(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| 1.0 + 0.1 * self.next()).collect()
    }
}
