//! A whole model in host memory in GPU weight formats ([`HostWeight`]), from any source: safetensors
//! (optionally converted to another weight type), GGUF (types kept), or seeded synthetic weights.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::decode;
use crate::model::export::{check_shared_pairs, LAYER_SHARING_KEY};
use crate::model::gguf::{names as gguf_names, GgufFile, TensorType};
use crate::model::weights::{LayerWeightsF32, ModelWeightsF32};
use crate::quant::{HostWeight, WeightType};

/// One unique decoder layer in GPU formats.
#[derive(Debug, Clone)]
pub struct HostLayer {
    /// `input_layernorm` `[hidden]`.
    pub input_norm: Vec<f32>,
    /// `q_proj` `[heads*head_dim, hidden]`.
    pub q_proj: HostWeight,
    /// `k_proj` `[kv_heads*head_dim, hidden]`.
    pub k_proj: HostWeight,
    /// `v_proj` `[kv_heads*head_dim, hidden]`.
    pub v_proj: HostWeight,
    /// `o_proj` `[hidden, heads*head_dim]`.
    pub o_proj: HostWeight,
    /// `post_attention_layernorm` `[hidden]`.
    pub post_norm: Vec<f32>,
    /// `gate_proj` `[ffn, hidden]`.
    pub gate_proj: HostWeight,
    /// `up_proj` `[ffn, hidden]`.
    pub up_proj: HostWeight,
    /// `down_proj` `[hidden, ffn]`.
    pub down_proj: HostWeight,
}

/// A model's weights in host memory, in the formats they will have on the GPU.
#[derive(Debug, Clone)]
pub struct HostModel {
    /// The architecture (including RoPE layout and layer sharing).
    pub config: ModelConfig,
    /// Token embedding `[vocab, hidden]` (also the LM head when tied).
    pub embed: HostWeight,
    /// Unique layers.
    pub layers: Vec<HostLayer>,
    /// Final norm `[hidden]`.
    pub final_norm: Vec<f32>,
    /// Untied LM head `[vocab, hidden]`, if any.
    pub lm_head: Option<HostWeight>,
}

fn quantize(wtype: WeightType, shape: &[usize], data: &[f32]) -> Result<HostWeight> {
    HostWeight::quantize(wtype, shape[0], shape[1], data)
}

impl HostModel {
    /// Converts f32 weights to `wtype` (every linear matrix and the embedding; norms stay f32).
    pub fn from_f32(config: ModelConfig, weights: &ModelWeightsF32, wtype: WeightType) -> Result<HostModel> {
        let (h, f, q, kv, v) =
            (config.hidden_size, config.intermediate_size, config.q_dim(), config.kv_dim(), config.vocab_size);
        let layers = weights
            .layers
            .iter()
            .map(|l| {
                Ok(HostLayer {
                    input_norm: l.input_norm.clone(),
                    q_proj: quantize(wtype, &[q, h], &l.q_proj)?,
                    k_proj: quantize(wtype, &[kv, h], &l.k_proj)?,
                    v_proj: quantize(wtype, &[kv, h], &l.v_proj)?,
                    o_proj: quantize(wtype, &[h, q], &l.o_proj)?,
                    post_norm: l.post_norm.clone(),
                    gate_proj: quantize(wtype, &[f, h], &l.gate_proj)?,
                    up_proj: quantize(wtype, &[f, h], &l.up_proj)?,
                    down_proj: quantize(wtype, &[h, f], &l.down_proj)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HostModel {
            embed: quantize(wtype, &[v, h], &weights.embed_tokens)?,
            lm_head: weights.lm_head.as_ref().map(|w| quantize(wtype, &[v, h], w)).transpose()?,
            final_norm: weights.final_norm.clone(),
            layers,
            config,
        })
    }

    /// Loads an HF checkpoint directory (`config.json` + safetensors), converting every matrix to `wtype`.
    pub fn from_safetensors_dir(dir: &Path, wtype: WeightType) -> Result<HostModel> {
        let (config, weights) = ModelWeightsF32::load_dir(dir)?;
        HostModel::from_f32(config, &weights, wtype)
    }

    /// Seeded synthetic weights of `config` ([`ModelWeightsF32::random`]) converted to `wtype`.
    pub fn synthetic(config: ModelConfig, wtype: WeightType, seed: u64) -> Result<HostModel> {
        let weights = ModelWeightsF32::random(&config, seed)?;
        HostModel::from_f32(config, &weights, wtype)
    }

    /// The weights as the GPU will see them, dequantized to f32 (for the CPU reference forward pass).
    pub fn dequantized(&self) -> ModelWeightsF32 {
        ModelWeightsF32 {
            embed_tokens: self.embed.dequantize(),
            layers: self
                .layers
                .iter()
                .map(|l| LayerWeightsF32 {
                    input_norm: l.input_norm.clone(),
                    q_proj: l.q_proj.dequantize(),
                    k_proj: l.k_proj.dequantize(),
                    v_proj: l.v_proj.dequantize(),
                    o_proj: l.o_proj.dequantize(),
                    post_norm: l.post_norm.clone(),
                    gate_proj: l.gate_proj.dequantize(),
                    up_proj: l.up_proj.dequantize(),
                    down_proj: l.down_proj.dequantize(),
                })
                .collect(),
            final_norm: self.final_norm.clone(),
            lm_head: self.lm_head.as_ref().map(HostWeight::dequantize),
        }
    }

    /// Checks that every weight has the shape `config` asks for and that there are `num_hidden_layers`
    /// layers (the fields are public, so a model may have been assembled or edited by hand).
    pub fn check(&self) -> Result<()> {
        let c = &self.config;
        c.validate()?;
        let (h, f, q, kv, v) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.vocab_size);
        if self.layers.len() != c.num_hidden_layers {
            return Err(Error::invalid(
                "number of unique layers",
                self.layers.len(),
                format!("num_hidden_layers = {}", c.num_hidden_layers),
            ));
        }
        let matrix = |what: String, w: &HostWeight, rows: usize, cols: usize| {
            if (w.rows, w.cols) == (rows, cols) {
                Ok(())
            } else {
                Err(Error::shape(what, &[w.rows, w.cols], format!("[{rows}, {cols}]")))
            }
        };
        let vector = |what: String, x: &[f32], len: usize| {
            if x.len() == len {
                Ok(())
            } else {
                Err(Error::shape(what, &[x.len()], format!("[{len}]")))
            }
        };
        matrix("embedding".into(), &self.embed, v, h)?;
        if let Some(head) = &self.lm_head {
            matrix("lm_head".into(), head, v, h)?;
        }
        vector("final norm".into(), &self.final_norm, h)?;
        for (i, l) in self.layers.iter().enumerate() {
            let name = |part: &str| format!("layer {i} {part}");
            vector(name("input norm"), &l.input_norm, h)?;
            vector(name("post-attention norm"), &l.post_norm, h)?;
            matrix(name("q_proj"), &l.q_proj, q, h)?;
            matrix(name("k_proj"), &l.k_proj, kv, h)?;
            matrix(name("v_proj"), &l.v_proj, kv, h)?;
            matrix(name("o_proj"), &l.o_proj, h, q)?;
            matrix(name("gate_proj"), &l.gate_proj, f, h)?;
            matrix(name("up_proj"), &l.up_proj, f, h)?;
            matrix(name("down_proj"), &l.down_proj, h, f)?;
        }
        Ok(())
    }

    /// A 64-bit digest of everything that decides what the model computes and what its KV cache holds:
    /// the config's numbers, the RoPE layout, and every weight's type, shape and bits. Two models with the
    /// same fingerprint compute the same K/V for the same tokens; session states carry it
    /// ([`crate::model::SessionState`]). Any one changed word changes it (each step of the mix is a
    /// bijection of the running state); not a cryptographic hash. 11 ms for the 70 MB of a 125M q4_0 model
    /// on a 2-core VM.
    pub fn fingerprint(&self) -> u64 {
        let mut f = Fingerprint::default();
        let c = &self.config;
        for n in [
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.vocab_size,
            c.layer_sharing as usize,
            c.rope_layout as usize,
        ] {
            f.add(n as u64);
        }
        f.floats(&[c.rms_norm_eps, c.rope_theta]);
        f.floats(&c.rope_freq_factors);
        f.weight(&self.embed);
        for l in &self.layers {
            f.floats(&l.input_norm);
            f.floats(&l.post_norm);
            for w in [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj] {
                f.weight(w);
            }
        }
        f.floats(&self.final_norm);
        match &self.lm_head {
            Some(head) => f.weight(head),
            None => f.add(u64::MAX),
        }
        f.0
    }

    /// Bytes of all weights (each unique layer once).
    pub fn weight_bytes(&self) -> u64 {
        let norms = |l: &HostLayer| ((l.input_norm.len() + l.post_norm.len()) * 4) as u64;
        let mats = |l: &HostLayer| {
            [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj]
                .iter()
                .map(|w| w.size_bytes())
                .sum::<u64>()
        };
        self.embed.size_bytes()
            + self.lm_head.as_ref().map_or(0, HostWeight::size_bytes)
            + (self.final_norm.len() * 4) as u64
            + self.layers.iter().map(|l| norms(l) + mats(l)).sum::<u64>()
    }
}

/// FxHash's mix, one u64 at a time: rotate, xor, multiply by an odd constant.
#[derive(Default)]
struct Fingerprint(u64);

impl Fingerprint {
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    /// The words two at a time, and their count (so that lengths are part of the digest).
    fn words(&mut self, words: &[u32]) {
        self.add(words.len() as u64);
        let mut pairs = words.chunks_exact(2);
        for pair in &mut pairs {
            self.add(u64::from(pair[0]) | u64::from(pair[1]) << 32);
        }
        if let [last] = pairs.remainder() {
            self.add(u64::from(*last));
        }
    }
    fn floats(&mut self, values: &[f32]) {
        let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        self.words(&bits);
    }
    fn weight(&mut self, w: &HostWeight) {
        self.add(w.wtype as u64);
        self.add((w.rows as u64) << 32 | w.cols as u64);
        self.words(w.words());
    }
}

/// RoPE scaling in a GGUF file as per-pair divisors: the `rope_freqs.weight` tensor (Llama-3's scaling, as
/// llama.cpp's converter writes it) and `llama.rope.scaling.type` `linear` with its `factor`; other types
/// (`yarn`) are refused by name.
fn gguf_rope_factors(
    file: &GgufFile,
    vector: &dyn Fn(&str, usize) -> Result<Vec<f32>>,
    head_dim: usize,
) -> Result<Vec<f32>> {
    let pairs = head_dim / 2;
    let mut factors =
        if file.tensor_info("rope_freqs.weight").is_some() { vector("rope_freqs.weight", pairs)? } else { Vec::new() };
    let key = "llama.rope.scaling.type";
    match file.get_str(key)? {
        None | Some("none") => {}
        Some("linear") => {
            let factor = file.get_f64("llama.rope.scaling.factor")?.unwrap_or(1.0) as f32;
            if factors.is_empty() {
                factors = vec![1.0; pairs];
            }
            factors.iter_mut().for_each(|f| *f *= factor);
        }
        Some(other) => {
            return Err(Error::Config(format!(
                "{}: {key} `{other}` is not supported, expected none or linear",
                file.path()
            )))
        }
    }
    Ok(factors)
}

/// A matrix of a type no kernel reads (K-quants, Q5_0, Q5_1, IQ4_NL, IQ4_XS: [`decode`]) converted to
/// `convert`, or without one to its nearest kernel type ([`decode::kernel_type`]); `None` for any other type.
fn decoded_matrix(
    file: &GgufFile,
    name: &str,
    rows: usize,
    cols: usize,
    convert: Option<WeightType>,
) -> Result<Option<HostWeight>> {
    let Some(info) = file.tensor_info(name) else { return Ok(None) };
    let Some(nearest) = decode::kernel_type(info.ggml_type) else { return Ok(None) };
    let shape = info.shape();
    if shape != [rows, cols] {
        return Err(Error::shape(format!("GGUF tensor `{name}`"), &shape, format!("[{rows}, {cols}]")));
    }
    let wtype = convert.unwrap_or(nearest);
    let (info, data) = file.tensor_bytes(name)?;
    let values = decode::dequantize(info.ggml_type, data, rows * cols)?;
    HostWeight::quantize(wtype, rows, cols, &values).map(Some)
}

/// A tensor this crate's Llama model would not read (a bias, experts, an extra block) means a variant it
/// does not implement: refused by name rather than run silently wrong.
fn check_no_unused_gguf_tensors(file: &GgufFile, layers: usize) -> Result<()> {
    let known = |name: &str| {
        if [gguf_names::TOKEN_EMBD, gguf_names::OUTPUT_NORM, gguf_names::OUTPUT, "rope_freqs.weight"].contains(&name) {
            return true;
        }
        let Some((block, part)) = name.strip_prefix("blk.").and_then(|r| r.split_once('.')) else { return false };
        let part = part.strip_suffix(".weight").unwrap_or("");
        block.parse::<usize>().is_ok_and(|b| b < layers) && gguf_names::BLOCK_PARTS.contains(&part)
    };
    match file.tensor_infos().iter().find(|t| !known(&t.name)) {
        Some(t) => Err(Error::Config(format!(
            "{}: tensor `{}` is not part of a llama model this crate runs (biases, experts and extra blocks are not supported)",
            file.path(),
            t.name
        ))),
        None => Ok(()),
    }
}

impl HostModel {
    /// Builds a model from a GGUF `llama` file, keeping each tensor's type (F32, F16, Q8_0, Q4_0, Q4_1;
    /// BF16 becomes F32, which this crate has no GPU kernel for) unless `convert` names a type for every
    /// matrix. Matrices of types no kernel reads (K-quants Q2_K to Q6_K, Q5_0, Q5_1, IQ4_NL, IQ4_XS: what
    /// llama.cpp's K-quant and IQ4 files hold) are decoded and quantized to `convert`, or without it to their
    /// nearest kernel type (Q4_1 for Q2_K to Q4_K, else Q8_0: [`crate::model::decode::kernel_type`]). GGUF
    /// llama files use the interleaved RoPE layout. A file written with layer sharing
    /// ([`crate::model::export::LAYER_SHARING_KEY`]) loads as the shared model, each pair of blocks once.
    pub fn from_gguf(file: &GgufFile, convert: Option<WeightType>) -> Result<HostModel> {
        let g = file.llama_config()?;
        let shared = file.get_bool(LAYER_SHARING_KEY)?.unwrap_or(false);
        if shared {
            check_shared_pairs(file, g.num_layers)?;
        }
        if g.rope_dim != g.head_dim {
            // Partial rotary embedding is not implemented: running it as full RoPE would be silently wrong.
            return Err(Error::Config(format!(
                "{}: llama.rope.dimension_count {} differs from the head dim {}; only full-head RoPE is supported",
                file.path(),
                g.rope_dim,
                g.head_dim
            )));
        }
        let mut config = ModelConfig {
            hidden_size: g.hidden_size,
            intermediate_size: g.intermediate_size,
            num_hidden_layers: if shared { g.num_layers / 2 } else { g.num_layers },
            num_attention_heads: g.num_heads,
            num_key_value_heads: g.num_kv_heads,
            head_dim: g.head_dim,
            vocab_size: g.vocab_size,
            rms_norm_eps: g.rms_norm_eps,
            rope_theta: g.rope_theta,
            rope_freq_factors: Vec::new(),
            max_position_embeddings: g.context_length,
            tie_word_embeddings: g.tied_embeddings,
            share_embedding: g.tied_embeddings,
            layer_sharing: shared,
            rope_layout: RopeLayout::Interleaved,
        };
        config.validate()?;
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<HostWeight> {
            if let Some(converted) = decoded_matrix(file, name, rows, cols, convert)? {
                return Ok(converted);
            }
            let t = file.tensor(name)?;
            if t.shape() != [rows, cols] {
                return Err(Error::shape(format!("GGUF tensor `{name}`"), &t.shape(), format!("[{rows}, {cols}]")));
            }
            let native = match t.ty {
                TensorType::F32 => HostWeight::from_gguf_bytes(WeightType::F32, rows, cols, t.data)?,
                TensorType::F16 => HostWeight::from_gguf_bytes(WeightType::F16, rows, cols, t.data)?,
                TensorType::Q8_0 => HostWeight::from_gguf_bytes(WeightType::Q8_0, rows, cols, t.data)?,
                TensorType::Q4_0 => HostWeight::from_gguf_bytes(WeightType::Q4_0, rows, cols, t.data)?,
                TensorType::Q4_1 => HostWeight::from_gguf_bytes(WeightType::Q4_1, rows, cols, t.data)?,
                TensorType::BF16 => {
                    let bf: Vec<half::bf16> =
                        t.data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]])).collect();
                    HostWeight::from_bf16(WeightType::F32, rows, cols, &bf)?
                }
            };
            match convert {
                Some(wtype) if wtype != native.wtype => HostWeight::quantize(wtype, rows, cols, &native.dequantize()),
                _ => Ok(native),
            }
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
            let t = file.tensor(name)?;
            if t.n_elements() != len {
                return Err(Error::shape(format!("GGUF tensor `{name}`"), &t.shape(), format!("[{len}]")));
            }
            Ok(match t.ty {
                TensorType::F32 => {
                    t.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                }
                TensorType::F16 => {
                    t.data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                TensorType::BF16 => {
                    t.data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                TensorType::Q8_0 => HostWeight::from_gguf_bytes(WeightType::Q8_0, 1, len, t.data)?.dequantize(),
                TensorType::Q4_0 => HostWeight::from_gguf_bytes(WeightType::Q4_0, 1, len, t.data)?.dequantize(),
                TensorType::Q4_1 => HostWeight::from_gguf_bytes(WeightType::Q4_1, 1, len, t.data)?.dequantize(),
            })
        };
        config.rope_freq_factors = gguf_rope_factors(file, &vector, g.head_dim)?;
        config.validate()?;
        check_no_unused_gguf_tensors(file, g.num_layers)?;
        let (h, f, q, kv, v) =
            (config.hidden_size, config.intermediate_size, config.q_dim(), config.kv_dim(), config.vocab_size);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            // A shared block is stored twice (see `export`): the first copy is read.
            let block = if shared { 2 * i } else { i };
            let name = |part: &str| gguf_names::block(block, part);
            layers.push(HostLayer {
                input_norm: vector(&name("attn_norm"), h)?,
                q_proj: matrix(&name("attn_q"), q, h)?,
                k_proj: matrix(&name("attn_k"), kv, h)?,
                v_proj: matrix(&name("attn_v"), kv, h)?,
                o_proj: matrix(&name("attn_output"), h, q)?,
                post_norm: vector(&name("ffn_norm"), h)?,
                gate_proj: matrix(&name("ffn_gate"), f, h)?,
                up_proj: matrix(&name("ffn_up"), f, h)?,
                down_proj: matrix(&name("ffn_down"), h, f)?,
            });
        }
        let lm_head =
            if file.tensor_info(gguf_names::OUTPUT).is_some() { Some(matrix(gguf_names::OUTPUT, v, h)?) } else { None };
        Ok(HostModel {
            embed: matrix(gguf_names::TOKEN_EMBD, v, h)?,
            final_norm: vector(gguf_names::OUTPUT_NORM, h)?,
            lm_head,
            layers,
            config,
        })
    }
}
