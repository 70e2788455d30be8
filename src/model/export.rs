//! Writes a [`HostModel`] as a GGUF `llama` file, the format llama.cpp and this crate's loader read: weights
//! kept in their types (a model converted on load, say to q4_1, is saved converted, and loads again without
//! re-quantizing), the tokenizer in `tokenizer.*` keys.
//!
//! What llama.cpp's converter does, and so this writer too: Q/K rows of a Hugging Face checkpoint
//! ([`RopeLayout::Halves`]) are permuted into the interleaved RoPE layout; norms are f32; RoPE scaling is
//! the `rope_freqs.weight` tensor; a tied head has no `output.weight`.
//!
//! Layer sharing has no GGUF form, so a shared model is written as the plain model it executes (each unique
//! block twice, `llama.block_count` = executed layers), which any GGUF reader runs correctly, plus the key
//! [`LAYER_SHARING_KEY`]: this crate's loader then checks that blocks `2i` and `2i + 1` are identical and
//! uploads each once.

use crate::error::{Error, Result};
use crate::model::config::RopeLayout;
use crate::model::gguf::{names, GgufLlamaConfig, GgufWriter, MetaValue, TensorType};
use crate::model::host::{HostLayer, HostModel};
use crate::quant::{HostWeight, WeightType};

/// Set (true) in files whose blocks come in identical pairs, one MobileLLM shared block each.
pub const LAYER_SHARING_KEY: &str = "mobilellm.layer_sharing";

/// ggml's tensor type for a weight type.
fn ggml_type(wtype: WeightType) -> TensorType {
    match wtype {
        WeightType::F32 => TensorType::F32,
        WeightType::F16 => TensorType::F16,
        WeightType::Q8_0 => TensorType::Q8_0,
        WeightType::Q4_0 => TensorType::Q4_0,
        WeightType::Q4_1 => TensorType::Q4_1,
    }
}

/// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32`, `MOSTLY_F16`, `MOSTLY_Q4_0`, `MOSTLY_Q4_1`,
/// `MOSTLY_Q8_0`).
fn file_type(wtype: WeightType) -> u32 {
    match wtype {
        WeightType::F32 => 0,
        WeightType::F16 => 1,
        WeightType::Q4_0 => 2,
        WeightType::Q4_1 => 3,
        WeightType::Q8_0 => 7,
    }
}

/// The weight's GGUF bytes with the rows of each `head_dim`-row head reordered from the `rotate_half` layout
/// to the interleaved one: new row `2i + j` of a head is old row `j * head_dim / 2 + i` (llama.cpp's
/// `permute`). Whole rows move, so quantized blocks stay as they are.
fn interleave_heads(w: &HostWeight, head_dim: usize) -> Vec<u8> {
    let bytes = w.to_gguf_bytes();
    let row_bytes = bytes.len() / w.rows;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(bytes.len());
    for head in 0..w.rows / head_dim {
        for i in 0..half {
            for j in 0..2 {
                let old = head * head_dim + j * half + i;
                out.extend_from_slice(&bytes[old * row_bytes..(old + 1) * row_bytes]);
            }
        }
    }
    out
}

impl HostModel {
    /// This model as a GGUF `llama` file named `name` (`general.name`), tokenizer keys not included: add
    /// them with [`crate::tokenizer::Vocab::write_gguf`] or [`GgufWriter::copy_metadata`]. See the module
    /// docs for the layout.
    ///
    /// ```
    /// use mobilellm_kernels::model::{gguf::GgufFile, HostModel, ModelConfig};
    /// use mobilellm_kernels::quant::WeightType;
    /// let config = ModelConfig { hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,
    ///     num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, vocab_size: 96,
    ///     ..ModelConfig::mobilellm_125m() };
    /// let model = HostModel::synthetic(config, WeightType::Q8_0, 7)?;
    /// let mut file = model.to_gguf("tiny")?;
    /// file.meta_strings("tokenizer.ggml.tokens", &vec!["t"; model.config.vocab_size]);
    /// let again = HostModel::from_gguf(&GgufFile::from_bytes(file.to_bytes(), "tiny.gguf")?, None)?;
    /// assert_eq!(again.embed.words(), model.embed.words());
    /// # Ok::<(), mobilellm_kernels::Error>(())
    /// ```
    pub fn to_gguf(&self, name: &str) -> Result<GgufWriter> {
        self.check()?;
        let c = &self.config;
        let mut w = GgufWriter::new();
        w.llama_config(&GgufLlamaConfig {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.executed_layers(),
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            rope_dim: c.head_dim,
            rope_theta: c.rope_theta,
            rms_norm_eps: c.rms_norm_eps,
            context_length: c.max_position_embeddings,
            vocab_size: c.vocab_size,
            tied_embeddings: self.lm_head.is_none(),
            rope_interleaved: true,
        });
        if c.head_dim * c.num_attention_heads != c.hidden_size {
            // Readers take hidden / heads otherwise.
            w.meta("llama.attention.key_length", MetaValue::U32(c.head_dim as u32))
                .meta("llama.attention.value_length", MetaValue::U32(c.head_dim as u32));
        }
        w.meta("general.name", MetaValue::String(name.into()))
            .meta("general.file_type", MetaValue::U32(file_type(self.main_weight_type())))
            .meta("general.quantization_version", MetaValue::U32(2));
        if c.layer_sharing {
            w.meta(LAYER_SHARING_KEY, MetaValue::Bool(true));
        }

        let matrix = |w: &mut GgufWriter, name: &str, m: &HostWeight, data: Vec<u8>| {
            w.tensor(name, ggml_type(m.wtype).ggml(), &[m.cols as u64, m.rows as u64], data);
        };
        let vector = |w: &mut GgufWriter, name: &str, v: &[f32]| {
            w.tensor_f32(name, &[v.len() as u64], v);
        };
        matrix(&mut w, names::TOKEN_EMBD, &self.embed, self.embed.to_gguf_bytes());
        if !c.rope_freq_factors.is_empty() {
            vector(&mut w, "rope_freqs.weight", &c.rope_freq_factors);
        }
        let copies = if c.layer_sharing { 2 } else { 1 };
        let qk_rows = |m: &HostWeight| match c.rope_layout {
            RopeLayout::Halves => interleave_heads(m, c.head_dim),
            RopeLayout::Interleaved => m.to_gguf_bytes(),
        };
        for (unique, layer) in self.layers.iter().enumerate() {
            let HostLayer { input_norm, q_proj, k_proj, v_proj, o_proj, post_norm, gate_proj, up_proj, down_proj } =
                layer;
            // Each matrix converted once, written once per copy (the last copy takes the bytes).
            let mut matrices = [
                ("attn_q", q_proj, qk_rows(q_proj)),
                ("attn_k", k_proj, qk_rows(k_proj)),
                ("attn_v", v_proj, v_proj.to_gguf_bytes()),
                ("attn_output", o_proj, o_proj.to_gguf_bytes()),
                ("ffn_gate", gate_proj, gate_proj.to_gguf_bytes()),
                ("ffn_up", up_proj, up_proj.to_gguf_bytes()),
                ("ffn_down", down_proj, down_proj.to_gguf_bytes()),
            ];
            for copy in 0..copies {
                let name = |part: &str| names::block(unique * copies + copy, part);
                vector(&mut w, &name("attn_norm"), input_norm);
                vector(&mut w, &name("ffn_norm"), post_norm);
                for (part, m, bytes) in matrices.iter_mut() {
                    let data = if copy + 1 == copies { std::mem::take(bytes) } else { bytes.clone() };
                    matrix(&mut w, &name(part), m, data);
                }
            }
        }
        vector(&mut w, names::OUTPUT_NORM, &self.final_norm);
        if let Some(head) = &self.lm_head {
            matrix(&mut w, names::OUTPUT, head, head.to_gguf_bytes());
        }
        Ok(w)
    }

    /// The weight type holding the most weights (what `general.file_type` names).
    fn main_weight_type(&self) -> WeightType {
        let mut counts: Vec<(WeightType, usize)> = Vec::new();
        let mut add = |m: &HostWeight| match counts.iter_mut().find(|(t, _)| *t == m.wtype) {
            Some((_, n)) => *n += m.rows * m.cols,
            None => counts.push((m.wtype, m.rows * m.cols)),
        };
        add(&self.embed);
        self.lm_head.iter().for_each(&mut add);
        for l in &self.layers {
            [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj]
                .into_iter()
                .for_each(&mut add);
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map_or(WeightType::F32, |(t, _)| t)
    }
}

/// Checks that the blocks of a file marked with [`LAYER_SHARING_KEY`] come in identical pairs (same types,
/// shapes and bytes), so that reading every other one loses nothing.
pub(crate) fn check_shared_pairs(file: &crate::model::gguf::GgufFile, blocks: usize) -> Result<()> {
    if !blocks.is_multiple_of(2) {
        return Err(Error::Config(format!(
            "{}: {LAYER_SHARING_KEY} is set but llama.block_count {blocks} is odd, expected pairs of identical blocks",
            file.path()
        )));
    }
    for pair in 0..blocks / 2 {
        for part in names::BLOCK_PARTS {
            let (a, b) = (names::block(2 * pair, part), names::block(2 * pair + 1, part));
            let (ia, da) = file.tensor_bytes(&a)?;
            let (ib, db) = file.tensor_bytes(&b)?;
            if ia.ggml_type != ib.ggml_type || ia.dims != ib.dims || da != db {
                return Err(Error::Config(format!(
                    "{}: {LAYER_SHARING_KEY} is set but `{b}` differs from `{a}`; a shared block is stored as two identical copies",
                    file.path()
                )));
            }
        }
    }
    Ok(())
}
