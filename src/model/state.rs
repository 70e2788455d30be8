//! Session states: the tokens a model has been fed and what its KV cache holds for them, in every executed
//! layer, saved to bytes and restored ([`crate::model::Model::save_state`], [`crate::model::Model::load_state`]),
//! so an app resumes a conversation, or starts from a long system prompt, without prefilling it again.
//!
//! The byte format (little-endian): the magic `MLKVSTAT`, then u32 fields: version (2), storage type (0 f32,
//! 1 f16), executed layers, KV heads, head dim, token count `n`; the weights' fingerprint (u64,
//! [`crate::model::HostModel::fingerprint`]); the `n` token ids (u32); then per executed layer, for K then V,
//! each KV head's `n * head_dim` elements in the storage type. Version 1 is version 2 without the
//! fingerprint, and still loads.
//!
//! A state restores into a model with the same weights (the same fingerprint) whose context holds its
//! tokens; restored into an f32 cache it is widened, into an f16 cache rounded. A state of other weights,
//! even of the same shape, is refused: its K/V would run, with meaningless results (a fine-tune, another
//! quantization, a GGUF's permuted Q/K rows). Version 1 states carry no fingerprint and fit any model of
//! their shape.

use std::path::Path;

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kv_cache::{convert_storage, KvCache};
use crate::tensor::DType;

const MAGIC: &[u8; 8] = b"MLKVSTAT";
const VERSION: u32 = 2;
/// Magic, then six u32 fields (version 1).
const HEADER_V1_BYTES: usize = 8 + 6 * 4;
/// Version 1's header and the fingerprint.
const HEADER_BYTES: usize = HEADER_V1_BYTES + 8;
/// More executed layers than any model has: a header claiming more is corrupt (and would allocate a list of
/// that length for an empty state).
const MAX_LAYERS: usize = 4096;

/// A saved sequence: its tokens and their K/V in every executed layer.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    tokens: Vec<u32>,
    dtype: DType,
    kv_heads: usize,
    head_dim: usize,
    /// The fingerprint of the weights that computed the K/V (`None`: a version-1 state).
    weights: Option<u64>,
    /// Per executed layer: [`KvCache::read_positions`]' bytes for the tokens.
    layers: Vec<Vec<u8>>,
}

impl SessionState {
    /// The tokens fed, position by position.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The storage type of the saved K/V.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The fingerprint of the weights that computed the K/V ([`crate::model::HostModel::fingerprint`];
    /// `None` for a version-1 state, which predates it).
    pub fn weights_fingerprint(&self) -> Option<u64> {
        self.weights
    }

    /// Reads positions `0..tokens.len()` of every slot of `cache`, computed by weights of fingerprint
    /// `weights`.
    pub(crate) fn capture(gpu: &Gpu, cache: &KvCache, tokens: &[u32], weights: u64) -> Result<SessionState> {
        let layers =
            (0..cache.slots()).map(|slot| cache.read_positions(gpu, slot, tokens.len())).collect::<Result<_>>()?;
        Ok(SessionState {
            tokens: tokens.to_vec(),
            dtype: cache.dtype(),
            kv_heads: cache.kv_heads(),
            head_dim: cache.head_dim(),
            weights: Some(weights),
            layers,
        })
    }

    /// Writes the saved K/V into `cache` at positions `0..tokens.len()`, converting the storage type, for
    /// a model whose weights have fingerprint `weights`. Every check comes before the first write, so a
    /// state that does not fit leaves `cache` as it was.
    pub(crate) fn restore(&self, gpu: &Gpu, cache: &KvCache, weights: u64) -> Result<()> {
        let ours = (self.layers.len(), self.kv_heads, self.head_dim);
        let theirs = (cache.slots(), cache.kv_heads(), cache.head_dim());
        if ours != theirs {
            return Err(Error::invalid(
                "session state shape (executed layers, KV heads, head dim)",
                format!("{ours:?}"),
                format!("this model's {theirs:?}"),
            ));
        }
        if self.tokens.len() > cache.capacity() {
            return Err(Error::Capacity {
                what: "session state tokens".into(),
                requested: self.tokens.len(),
                capacity: cache.capacity(),
            });
        }
        if let Some(saved) = self.weights.filter(|&saved| saved != weights) {
            return Err(Error::invalid(
                "session state",
                format!("K/V of weights with fingerprint {saved:016x}"),
                format!("this model's weights ({weights:016x}); the state was saved by another model"),
            ));
        }
        let converted: Vec<Vec<u8>> =
            self.layers.iter().map(|bytes| convert_storage(bytes, self.dtype, cache.dtype())).collect();
        for (slot, bytes) in converted.iter().enumerate() {
            cache.write_positions(gpu, slot, self.tokens.len(), bytes)?;
        }
        Ok(())
    }

    /// The state in the byte format of the module docs.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body: usize = self.layers.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(HEADER_BYTES + 4 * self.tokens.len() + body);
        out.extend_from_slice(MAGIC);
        let dtype = u32::from(self.dtype == DType::F16);
        // A version-1 state (no fingerprint) is written as it was read.
        let version = if self.weights.is_some() { VERSION } else { 1 };
        let fields = [version, dtype, self.layers.len() as u32, self.kv_heads as u32, self.head_dim as u32];
        for v in fields.into_iter().chain([self.tokens.len() as u32]) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(weights) = self.weights {
            out.extend_from_slice(&weights.to_le_bytes());
        }
        for v in &self.tokens {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for layer in &self.layers {
            out.extend_from_slice(layer);
        }
        out
    }

    /// Parses [`SessionState::to_bytes`]' format; `name` labels errors (a file name).
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<SessionState> {
        let bad = |message: String| Error::format(name, message);
        if bytes.len() < HEADER_V1_BYTES || &bytes[..8] != MAGIC {
            return Err(bad(format!("not a session state (no {:?} header)", String::from_utf8_lossy(MAGIC))));
        }
        let field = |i: usize| u32::from_le_bytes(bytes[8 + 4 * i..12 + 4 * i].try_into().unwrap_or([0; 4]));
        let (version, dtype, layers, kv_heads, head_dim, n) =
            (field(0), field(1), field(2) as usize, field(3) as usize, field(4) as usize, field(5) as usize);
        let header = match version {
            1 => HEADER_V1_BYTES,
            VERSION if bytes.len() >= HEADER_BYTES => HEADER_BYTES,
            VERSION => return Err(bad(format!("{} bytes, shorter than a version {VERSION} header", bytes.len()))),
            _ => return Err(bad(format!("session state version {version}, expected 1 or {VERSION}"))),
        };
        let weights = (version == VERSION)
            .then(|| u64::from_le_bytes(bytes[HEADER_V1_BYTES..HEADER_BYTES].try_into().unwrap_or([0; 8])));
        let dtype = match dtype {
            0 => DType::F32,
            1 => DType::F16,
            other => return Err(bad(format!("storage type {other}, expected 0 (f32) or 1 (f16)"))),
        };
        if !(1..=MAX_LAYERS).contains(&layers) || kv_heads == 0 || head_dim == 0 {
            return Err(bad(format!(
                "{layers} layers x {kv_heads} KV heads of {head_dim}: expected 1..={MAX_LAYERS} layers and both others >= 1"
            )));
        }
        // Checked sizes: a corrupt header must not overflow or allocate past the input.
        let layer_bytes = [2, kv_heads, n, head_dim, dtype.size()].iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        let total = layer_bytes
            .and_then(|l| l.checked_mul(layers))
            .and_then(|b| b.checked_add(n.checked_mul(4)?))
            .and_then(|b| b.checked_add(header));
        let (Some(layer_bytes), Some(total)) = (layer_bytes, total) else {
            return Err(bad(format!("sizes overflow: {layers} layers x {kv_heads} heads x {n} tokens x {head_dim}")));
        };
        if bytes.len() != total {
            return Err(bad(format!(
                "{} bytes, expected {total} for {n} tokens, {layers} layers, {kv_heads} KV heads of {head_dim} ({dtype})",
                bytes.len()
            )));
        }
        let ids = &bytes[header..header + 4 * n];
        let tokens = ids.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let body = &bytes[header + 4 * n..];
        let layers = if layer_bytes == 0 {
            // No tokens: `layers` empty layers (at most MAX_LAYERS).
            vec![Vec::new(); layers]
        } else {
            body.chunks_exact(layer_bytes).map(<[u8]>::to_vec).collect()
        };
        Ok(SessionState { tokens, dtype, kv_heads, head_dim, weights, layers })
    }

    /// Writes [`SessionState::to_bytes`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|source| Error::Io { path: path.display().to_string(), source })
    }

    /// Reads a state that [`SessionState::save`] wrote.
    pub fn load(path: impl AsRef<Path>) -> Result<SessionState> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: name.clone(), source })?;
        SessionState::from_bytes(&bytes, &name)
    }
}
